"""The main job, end to end: save a running program, kill it, restore it, see it finish right.

Run by `./dev demo`. It drives real GDB sessions through GDB/MI (pygdbmi),
exactly as a user would type the commands, and exits non-zero if the
restored program's output differs from an uninterrupted run's.
"""

import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gdbckpt.mi import Gdb  # noqa: E402

PROGRAM = os.path.join(REPO, "examples", "build", "counter")
ARGS = ["12", "100"]


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"   {line}")


def main() -> int:
    work = tempfile.mkdtemp(prefix="gdbckpt-demo-")
    img = os.path.join(work, "counter.img")
    before, after = os.path.join(work, "before.out"), os.path.join(work, "after.out")

    say(f"GDB runs {os.path.relpath(PROGRAM, REPO)} {' '.join(ARGS)} and stops it at step 5")
    with Gdb() as g:
        g.cli(f"file {PROGRAM}")
        g.cli("break compute_step if step == 5")
        g.cmd(f"-exec-arguments {' '.join(ARGS)} < /dev/null > {before}")
        g.events.clear()
        g.cmd("-exec-run")
        g.wait_stopped()
        show(g.cli("bt"))
        say(f"(gdb) ckpt save {img}")
        show(g.cli(f"ckpt save {img}"))
        say("(gdb) kill")
        g.cli("kill")
    show(open(before).read())

    say(f"A new GDB: (gdb) ckpt restore --stdout={after} {img}")
    with Gdb() as g:
        show(g.cli(f"ckpt restore --stdin=/dev/null --stdout={after} {img}"))
        say("(gdb) bt")
        show(g.cli("bt"))
        say("(gdb) print tls_acc")
        show(g.cli("print tls_acc"))
        say("(gdb) continue")
        g.events.clear()
        g.cmd("-exec-continue")
        stop = g.wait_stopped(timeout=60)
        show(f"[{stop.get('reason')}]")
    show(open(after).read())

    full = subprocess.run([PROGRAM, *ARGS], capture_output=True, text=True, check=True).stdout
    joined = open(before).read() + open(after).read()
    if joined == full:
        say("The output before the save plus the output after the restore equals an "
            "uninterrupted run's: the restore is exact.")
        return 0
    say("MISMATCH with an uninterrupted run:")
    show(full)
    return 1


if __name__ == "__main__":
    sys.exit(main())
