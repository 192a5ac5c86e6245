"""Two or more versions of gdbckpt-batch saving (or restoring) the same process, interleaved.

    .venv/bin/python benchmarks/ab.py [--mib 64] [--reps 30] [--restore] REV [REV ...]

On these VMs the host's speed swings by a third from one minute to the next
(page cache, reclaimed memory), so two runs of headless.py taken apart cannot
tell a change of a few ms from the weather. Here each REV (a git revision, or
"." for the working tree) is checked out into a temporary worktree and the
versions take turns, in alternating order, saving one running ticker: whole
commands (the venv's Python with that version first on its path, run from its
own directory, since `python -c` puts the current directory first; with that
version's own restart stub and helpers, built in its worktree), each from warm
memory, each image a new file.
Prints each version's median and fastest save and its median and worst pause
(the ticker's longest gap between two iterations, as headless.py measures it).
With --restore, the ticker is saved once (by the working tree) and killed, and
the versions take turns restoring that image (`gdbckpt-batch restore`, the
whole command), each restored process killed and reaped before the next.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from headless import REPO, Ticker
from warm import Memory, MiB

PY = os.path.join(REPO, ".venv", "bin", "python")
PR_SET_CHILD_SUBREAPER = 36


def checkout(rev: str, into: str) -> str:
    """A directory holding version rev of the package, compiled (as an install is)."""
    if rev == ".":
        tree = REPO
    else:
        tree = os.path.join(into, rev.replace("/", "_"))
        subprocess.run(["git", "-C", REPO, "worktree", "add", "-f", "--detach", tree, rev],
                       check=True, capture_output=True)
    # Its own stub and helpers, built (the working tree's too: an edited stub.c counts).
    made = subprocess.run(["make", "-s", "-C", os.path.join(tree, "native")],
                          capture_output=True, text=True)
    if made.returncode:
        sys.exit(f"ab.py: building {rev}'s native/ failed:\n{made.stderr}")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([PY, "-m", "compileall", "-q", os.path.join(tree, "gdbckpt")], env=env,
                   check=True)
    return tree


def batch(tree: str, *args: str) -> tuple[float, str]:
    """gdbckpt-batch ARGS of that version: seconds taken, and its last line of output."""
    env = dict(os.environ, PYTHONPATH=tree, GDBCKPT_NATIVE=os.path.join(tree, "native"))
    t = time.perf_counter()
    r = subprocess.run([PY, "-c", "from gdbckpt.batch import cli; cli()", *args], env=env,
                       cwd=tree, check=True, capture_output=True, text=True)
    return time.perf_counter() - t, (r.stdout.splitlines() or [""])[-1]


def saves(trees: dict[str, str], revs: list[str], mib: int, reps: int, work: str) -> None:
    img = os.path.join(work, "ab.img")
    warm = Memory("warm", work, (mib + 4) * MiB).prepare
    seconds = {rev: [] for rev in trees}
    pauses = {rev: [] for rev in trees}
    t = Ticker(mib)
    try:
        time.sleep(0.3)
        for rep in range(reps):
            for rev in (revs if rep % 2 else revs[::-1]):
                if os.path.exists(img):
                    os.unlink(img)
                warm()
                t.gap_ms()
                seconds[rev].append(batch(trees[rev], str(t.p.pid), "-o", img, "--no-sync")[0])
                pauses[rev].append(t.gap_ms())
    finally:
        t.close()
    print(f"{mib} MiB ticker, {reps} saves each, interleaved")
    for rev in revs:
        s, g = seconds[rev], pauses[rev]
        print(f"  {rev:<12} save median {1000 * statistics.median(s):6.1f} ms, fastest "
              f"{1000 * min(s):6.1f} ms; pause median {statistics.median(g):5.1f} ms, worst "
              f"{max(g):5.1f} ms")


def restores(trees: dict[str, str], revs: list[str], mib: int, reps: int, work: str) -> None:
    img = os.path.join(work, "ab.img")
    warm = Memory("warm", work, (mib + 4) * MiB).prepare
    t = Ticker(mib)
    try:
        batch(REPO, str(t.p.pid), "-o", img, "--no-sync")
    finally:
        t.close()
    # Restored processes are orphans: as their subreaper, we reap each at once, so that
    # the next restore can have the saved pid again.
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    seconds = {rev: [] for rev in trees}
    for rep in range(reps):
        for rev in (revs if rep % 2 else revs[::-1]):
            warm()
            took, last = batch(trees[rev], "restore", img, "--json", "--stdout", "/dev/null",
                               "--stderr", "/dev/null")
            seconds[rev].append(took)
            pid = json.loads(last)["pid"]
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    print(f"{mib} MiB ticker's image, {reps} restores each, interleaved")
    for rev in revs:
        s = seconds[rev]
        print(f"  {rev:<12} restore median {1000 * statistics.median(s):6.1f} ms, fastest "
              f"{1000 * min(s):6.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("revs", nargs="+", help='git revisions; "." is the working tree')
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--restore", action="store_true", help="time restores instead of saves")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="gdbckpt-ab-")
    trees = {rev: checkout(rev, work) for rev in args.revs}
    try:
        (restores if args.restore else saves)(trees, args.revs, args.mib, args.reps, work)
    finally:
        for tree in trees.values():
            if tree != REPO:
                subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree],
                               capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
