"""Two or more versions of gdbckpt-batch saving the same running process, interleaved.

    .venv/bin/python benchmarks/ab.py [--mib 64] [--reps 30] REV [REV ...]

On these VMs the host's speed swings by a third from one minute to the next
(page cache, reclaimed memory), so two runs of headless.py taken apart cannot
tell a change of a few ms from the weather. Here each REV (a git revision, or
"." for the working tree) is checked out into a temporary worktree and the
versions take turns, in alternating order, saving one running ticker: whole
commands (the venv's Python with that version first on its path, run from its
own directory, since `python -c` puts the current directory first; the native
helpers are this checkout's), each from warm memory, each image a new file.
Prints each version's median and fastest save and its median and worst pause
(the ticker's longest gap between two iterations, as headless.py measures it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from headless import REPO, Ticker
from warm import Memory, MiB

PY = os.path.join(REPO, ".venv", "bin", "python")


def checkout(rev: str, into: str) -> str:
    """A directory holding version rev of the package, compiled (as an install is)."""
    if rev == ".":
        tree = REPO
    else:
        tree = os.path.join(into, rev.replace("/", "_"))
        subprocess.run(["git", "-C", REPO, "worktree", "add", "-f", "--detach", tree, rev],
                       check=True, capture_output=True)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([PY, "-m", "compileall", "-q", os.path.join(tree, "gdbckpt")], env=env,
                   check=True)
    return tree


def save(tree: str, pid: int, img: str) -> float:
    env = dict(os.environ, PYTHONPATH=tree, GDBCKPT_NATIVE=os.path.join(REPO, "native"))
    t = time.perf_counter()
    subprocess.run([PY, "-c", "from gdbckpt.batch import cli; cli()", str(pid), "-o", img,
                    "--no-sync"], env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("revs", nargs="+", help='git revisions; "." is the working tree')
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="gdbckpt-ab-")
    trees = {rev: checkout(rev, work) for rev in args.revs}
    img = os.path.join(work, "ab.img")
    warm = Memory("warm", work, (args.mib + 4) * MiB).prepare
    seconds = {rev: [] for rev in trees}
    pauses = {rev: [] for rev in trees}
    t = Ticker(args.mib)
    try:
        time.sleep(0.3)
        for rep in range(args.reps):
            for rev in (args.revs if rep % 2 else args.revs[::-1]):
                if os.path.exists(img):
                    os.unlink(img)
                warm()
                t.gap_ms()
                seconds[rev].append(save(trees[rev], t.p.pid, img))
                pauses[rev].append(t.gap_ms())
    finally:
        t.close()
        for tree in trees.values():
            if tree != REPO:
                subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree],
                               capture_output=True)
    print(f"{args.mib} MiB ticker, {args.reps} saves each, interleaved")
    for rev in args.revs:
        s, g = seconds[rev], pauses[rev]
        print(f"  {rev:<12} save median {1000 * statistics.median(s):6.1f} ms, fastest "
              f"{1000 * min(s):6.1f} ms; pause median {statistics.median(g):5.1f} ms, worst "
              f"{max(g):5.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
