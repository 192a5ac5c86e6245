"""Soak: save and restore one running program many times in a row, then check its output.

    .venv/bin/python tools/soak.py [--rounds 200] [--program counter]

Each round restores the previous round's image in a fresh GDB, lets the
program run to its next step, saves it again and kills it. At the end the
program finishes, and its output file (which every restored process kept
writing at the saved offset) must equal an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gdbckpt.mi import Gdb  # noqa: E402

BREAK = {"counter": "compute_step", "threads": "worker_step if id == 1", "clock": "check_clocks"}


def soak(rounds: int, program: str = "counter", work: str | None = None, log=print,
         make_gdb=Gdb) -> float:
    """Run the soak; returns seconds per round. Raises AssertionError on a wrong result.

    make_gdb starts each GDB (the tests pass one that runs GDB with their shim)."""
    prog = os.path.join(REPO, "examples", "build", program)
    argv = [prog, str(rounds + 5), "1"]
    work = work or tempfile.mkdtemp(prefix="gdbckpt-soak-")
    out, img = os.path.join(work, "out"), os.path.join(work, "p.img")
    with make_gdb() as g:
        g.cli(f"file {prog}")
        g.cli(f"break {BREAK[program]}")
        g.cmd(f"-exec-arguments {' '.join(argv[1:])} < /dev/null > {out}")
        g.events.clear()
        g.cmd("-exec-run")
        g.wait_stopped()
        g.cli(f"ckpt save {img}")
        g.cli("kill")
    t0 = time.perf_counter()
    for n in range(rounds):
        with make_gdb() as g:
            g.cli("handle SIGUSR2 nostop noprint pass")
            g.cli(f"ckpt restore {img}", timeout=120)
            g.cli(f"break {BREAK[program]}")
            g.events.clear()
            g.cmd("-exec-continue")
            stop = g.wait_stopped(timeout=60)
            assert stop.get("reason") == "breakpoint-hit", (n, stop)
            g.cli(f"ckpt save {img}")
            g.cli("kill")
        if (n + 1) % 20 == 0:
            log(f"round {n + 1}/{rounds}: {(time.perf_counter() - t0) / (n + 1):.2f} s a round")
    per_round = (time.perf_counter() - t0) / max(rounds, 1)
    with make_gdb() as g:
        g.cli("handle SIGUSR2 nostop noprint pass")
        g.cli(f"ckpt restore {img}", timeout=120)
        g.events.clear()
        g.cmd("-exec-continue")
        stop = g.wait_stopped(timeout=60)
        assert stop.get("reason") == "exited-normally", stop
    expected = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    with open(out) as f:
        got = f.read()
    assert got == expected, f"output differs after {rounds} rounds (see {out})"
    return per_round


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--program", choices=sorted(BREAK), default="counter")
    args = ap.parse_args()
    t0 = time.perf_counter()
    per = soak(args.rounds, args.program)
    print(f"soak: {args.rounds} save/restore rounds of {args.program} in "
          f"{time.perf_counter() - t0:.1f} s ({per:.2f} s a round): output identical to an "
          "uninterrupted run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
