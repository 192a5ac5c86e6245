"""Source this file in GDB to get the `ckpt` commands from an installed gdbckpt
(`pip install .`, `pipx install .`): `gdbckpt-batch --gdbinit` prints the line to put
in ~/.gdbinit. A checkout uses gdbinit.py at its top instead, which finds its .venv.

GDB embeds its own Python: the package (and xxhash, zstandard, ...) must have been
installed for that Python's version; if not, this says so in one line.
"""

import os
import sys

import gdb

_SITE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
if _SITE not in sys.path:
    sys.path.insert(0, _SITE)
try:
    from gdbckpt.ingdb import commands as _commands
except ImportError as _e:
    _have = f"{sys.version_info.major}.{sys.version_info.minor}"
    gdb.write(f"gdbckpt: not loaded: {_e} (GDB runs Python {_have}; {_SITE} must hold "
              "gdbckpt installed for that version)\n")
else:
    if _commands.register():
        gdb.write("gdbckpt loaded: 'help ckpt'\n")
