"""Multi-threaded processes: every thread saved and restored, as root and unprivileged."""

import os
import re

import pytest
from harness import EXAMPLES, NOBODY, SYSTEM_PYTHON, example, pid_cursor, read, uninterrupted

QUIET = "handle SIGUSR2 nostop noprint pass"


@pytest.mark.parametrize("who", ["root", "nobody"])
def test_workers_mutex_condvar_and_held_errorcheck_mutex(sessions, shared_dir, who):
    prefix = NOBODY if who == "nobody" else ()
    argv = [example("threads"), "8"]
    img = os.path.join(shared_dir, "p.img")
    out = os.path.join(shared_dir, "out")
    s = sessions(prefix=prefix)
    s.cli(QUIET)
    # Worker 2 at its breakpoint; the others wait on the condition variable or
    # the mutex, the holder keeps its error-checking mutex, main is in join.
    s.start(argv, out, breakpoint="worker_step if id == 2 && step == 3")
    saved_lwps = sorted(re.findall(r"LWP (\d+)", s.cli("info threads")))
    assert len(saved_lwps) == 6
    s.save(img)
    s.cli("kill")
    info = sessions().cli(f"ckpt info --brief {img}")
    assert "Threads:   6" in info
    assert re.search(r"Pending: +1 signals", info), info    # the holder's blocked SIGUSR1
    r = sessions(prefix=prefix)
    r.cli(QUIET)
    cursor = pid_cursor()
    text = r.cli(f"ckpt restore --stdin=/dev/null {img}", timeout=120)
    threads = r.cli("info threads")
    assert len(re.findall(r"LWP \d+", threads)) == 6, threads
    assert "worker_step (id=id@entry=2, step=step@entry=3)" in threads
    bts = r.cli("thread apply all bt")
    assert bts.count("worker (arg=") == 4 and "holder (arg=" in bts and "main (" in bts, bts
    if who == "nobody":
        assert "thread ids change" in text and "held mutexes are patched" in text
    else:
        # Root may choose ids, and the old ones are free: the same pid and tids come back.
        assert sorted(re.findall(r"LWP (\d+)", threads)) == saved_lwps
        # Nor did it rewind the kernel's pid cursor (the next process gets a new pid).
        assert pid_cursor() >= max(cursor, *map(int, saved_lwps))
        assert "thread ids change" not in text
    assert r.finish(60).get("reason") == "exited-normally"
    got = read(out)
    assert "unlock of the error-checking mutex returned 0" in got
    # Queued by the holder itself: the kernel refuses a kill() siginfo from another thread.
    assert "SIGUSR1 from main still pending, si_code 0" in got
    assert got == uninterrupted(argv)


@pytest.mark.parametrize("who", ["root", "nobody"])
def test_python_threads(sessions, shared_dir, who):
    prefix = NOBODY if who == "nobody" else ()
    argv = [SYSTEM_PYTHON, os.path.join(EXAMPLES, "pythreads.py"), "60"]
    img = os.path.join(shared_dir, "p.img")
    out = os.path.join(shared_dir, "out")
    s = sessions(prefix=prefix)
    s.start(argv, out)
    s.interrupt_when(out, "^19 ")
    assert len(re.findall(r"LWP \d+", s.cli("info threads"))) == 4
    s.save(img)
    s.cli("kill")
    r = sessions(prefix=prefix)
    r.cli(f"ckpt restore --stdin=/dev/null {img}", timeout=120)
    assert r.finish(60).get("reason") == "exited-normally"
    assert read(out) == uninterrupted(argv)
