"""Headless speed, whole commands as a user types them, against gcore and this machine.

    .venv/bin/python benchmarks/headless.py [--sizes 10,64,512,2048] [--reps 3] [--dir DIR]

For each size, examples/build/ticker holds that many MiB of non-zero memory
and runs, writing a page per loop iteration and timing each iteration. On
that same running process the benchmark times, alternating which goes first,
`gcore -o CORE PID` and `gdbckpt-batch PID -o IMG --no-sync` (and with
--sync, as a cron job that wants the image on disk would); around each
gdbckpt save the ticker reports the longest gap between two iterations: the
pause the process itself saw. Then `gdbckpt-batch restore IMG` (the whole
command: it returns once the process runs) against the fill floor, a fresh
process writing the same amount of memory (`bigmem N 0`, also a whole
command). The start floor, measured first: Python starting and importing what
each command loads, and nothing else. Prints medians, ratios and the targets of the speed
issue, and writes benchmarks/results/headless.json. Every timed command
starts from warm memory (benchmarks/warm.py), the same for gdbckpt, gcore and
the fill floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from warm import Memory, MiB

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = os.path.join(REPO, ".venv", "bin", "gdbckpt-batch")
TICKER = os.path.join(REPO, "examples", "build", "ticker")
BIGMEM = os.path.join(REPO, "examples", "build", "bigmem")
# (what, MiB, the largest ratio or seconds allowed)
TARGETS = [("save / gcore", 512, 0.8), ("save / gcore", 64, 0.6), ("pause ms", 512, 50),
           ("pause ms", 2048, 100), ("restore / fill floor", 512, 1.3), ("restore s", 10, 0.06)]


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


class Ticker:
    def __init__(self, mib: int):
        self.p = subprocess.Popen([TICKER, str(mib)], stdout=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL)
        assert self.p.stdout.readline().strip() == "ready"

    def gap_ms(self) -> float:
        """The longest gap since the last call, in ms."""
        self.p.send_signal(signal.SIGUSR1)
        return int(self.p.stdout.readline().split()[1]) / 1000

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


def _reap_orphans() -> None:
    """Detached helpers of the tools (an old image's removal) end up ours to reap."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def start_floor(reps: int) -> dict:
    """The fixed cost of a command on this machine, measured in the same run: the venv's
    Python starting and importing what `gdbckpt-batch` and a save or a restore load, and
    nothing else (whole commands, medians). A small save or restore cannot be faster.
    Each ends with os._exit, as gdbckpt-batch does: Python's own shutdown would add
    ~7 ms that the command never pays."""
    py = os.path.join(REPO, ".venv", "bin", "python")
    floors = {}
    for what, code in (("save", "import gdbckpt.batch, gdbckpt.engine.save"),
                       ("restore", "import gdbckpt.batch, gdbckpt.engine.restore"),
                       ("python", "pass")):
        argv = [py, "-c", f"{code}; import os; os._exit(0)"]
        floors[what] = statistics.median(timed(argv) for _ in range(max(reps, 5)))
    return floors


def cpu() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def bench_size(mib: int, reps: int, work: str) -> dict:
    img, core = os.path.join(work, "h.img"), os.path.join(work, "core")
    warm = Memory("warm", work, (mib + 4) * MiB).prepare    # before every timed command
    t = Ticker(mib)
    saves, synced, gcores, pauses = [], [], [], []
    try:
        time.sleep(0.3)
        for rep in range(reps):
            order = ("gcore", "save") if rep % 2 else ("save", "gcore")
            for what in order:
                warm()
                if what == "gcore":
                    gcores.append(timed(["gcore", "-o", core, str(t.p.pid)]))
                    os.unlink(f"{core}.{t.p.pid}")
                else:
                    # A new file each time, as gcore writes one: no older image to retire.
                    _unlink(img)
                    t.gap_ms()
                    saves.append(timed([BATCH, str(t.p.pid), "-o", img, "--no-sync"]))
                    pauses.append(t.gap_ms())
            _unlink(img)
            warm()
            synced.append(timed([BATCH, str(t.p.pid), "-o", img]))
    finally:
        t.close()
    restores, floors = [], []
    for _ in range(reps):
        warm()
        floors.append(timed([BIGMEM, str(mib), "0"]))
        warm()
        t0 = time.perf_counter()
        # Its stdout was our pipe (and its stderr may be): a restored process would get
        # our own, and hold this capture open.
        r = subprocess.run([BATCH, "restore", img, "--json", "--stdout", "/dev/null",
                            "--stderr", "/dev/null"],
                           check=True, capture_output=True, text=True)
        restores.append(time.perf_counter() - t0)
        # The restored process is an orphan, and we its subreaper: reaped at once, its pid
        # is free for the next restore (which would otherwise need new ids).
        pid = json.loads(r.stdout.splitlines()[-1])["pid"]
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _reap_orphans()
    os.unlink(img)
    med = statistics.median
    return {"MiB": mib, "save s": med(saves), "save --sync s": med(synced),
            "gcore s": med(gcores), "save / gcore": med(saves) / med(gcores),
            "pause ms": max(pauses), "restore s": med(restores), "fill floor s": med(floors),
            "restore / fill floor": med(restores) / med(floors)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,64,512,2048")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where images go (default: a temporary dir)")
    args = ap.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="gdbckpt-bench-")
    PR_SET_CHILD_SUBREAPER = 36
    import ctypes
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"CPU: {cpu()}, {os.cpu_count()} cores; kernel {platform.release()}; "
          f"{args.reps} runs each, medians (pause: the worst)")
    cols = ("MiB", "save s", "save --sync s", "gcore s", "save / gcore", "pause ms",
            "restore s", "fill floor s", "restore / fill floor")
    print("  ".join(f"{c:>10}" for c in cols))
    # First, before the large sizes leave the machine freeing their memory and files.
    floor = start_floor(args.reps)
    rows = []
    for mib in sizes:
        row = bench_size(mib, args.reps, work)
        rows.append(row)
        print("  ".join(f"{row[c]:>10.3f}" if isinstance(row[c], float) else f"{row[c]:>10}"
                        for c in cols), flush=True)
    print(f"\nStart floor (Python starting: {floor['python']:.3f} s; then importing what "
          f"the command loads, no work): save {floor['save']:.3f} s, restore "
          f"{floor['restore']:.3f} s")
    print("\nTargets:")
    for what, mib, limit in TARGETS:
        row = next((r for r in rows if r["MiB"] == mib), None)
        if row is None:
            continue
        ok = "met" if row[what] <= limit else "NOT met"
        print(f"  {what:<22} at {mib:>4} MiB: {row[what]:8.3f}  (at most {limit})  {ok}")
    os.makedirs(os.path.join(REPO, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(REPO, "benchmarks", "results", "headless.json"), "w") as f:
        json.dump({"cpu": cpu(), "kernel": platform.release(), "rows": rows,
                   "start floor s": floor}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
