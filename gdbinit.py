"""Source this file in GDB to get the `ckpt` commands: `source /path/to/gdbckpt/gdbinit.py`.

It puts this repository and its .venv's site-packages (made by `./dev setup`
with GDB's own Python) first on GDB's sys.path, then registers the commands.
Sourcing it twice is harmless. It prints at most one line.
"""

import os
import sys

import gdb


def _setup_path() -> str | None:
    """Returns a problem to report, or None."""
    repo = os.path.dirname(os.path.realpath(__file__))
    venv = os.environ.get("GDBCKPT_VENV", os.path.join(repo, ".venv"))
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    problem = None
    site = os.path.join(venv, "lib", f"python{want}", "site-packages")
    cfg = os.path.join(venv, "pyvenv.cfg")
    if not os.path.isfile(cfg):
        problem = f"no environment at {venv}: run './dev setup' in {repo}"
    else:
        with open(cfg) as f:
            version = next((line.split("=", 1)[1].strip() for line in f
                            if line.startswith("version")), "")
        if not version.startswith(want + "."):
            problem = (f"{venv} was made for Python {version}, GDB runs {sys.version.split()[0]}: "
                       f"remove it and run './dev setup' in {repo}")
    # First on the path: an older copy of a package installed for the system
    # Python must not win over the environment's.
    for path in (site, repo):
        if path in sys.path:
            sys.path.remove(path)
        if os.path.isdir(path) and not (problem and path == site):
            sys.path.insert(0, path)
    return problem


_problem = _setup_path()
try:
    from gdbckpt.ingdb import commands as _commands
except ImportError as e:
    gdb.write(f"gdbckpt: not loaded: {e}" + (f" ({_problem})" if _problem else "") + "\n")
else:
    if _commands.register():
        gdb.write("gdbckpt loaded: 'help ckpt'" + (f" (warning: {_problem})" if _problem else "")
                  + "\n")
