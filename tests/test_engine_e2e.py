"""The engine, end to end: nothing depends on GDB writing registers, vector state comes
back bit for bit, and a tracer that dies leaves the process running as if untraced."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from harness import (
    BATCH,
    REPO,
    SHIM,
    batch_restore,
    error_of,
    example,
    read,
    saved_by_pid,
    shimmed_gdb,
    uninterrupted,
    uninterrupted_later,
    wait_for_output,
    wait_gone,
)

from gdbckpt.engine import xstate


def test_the_shim_makes_gdb_fail_as_on_amx_hosts(sessions, tmp_path):
    """Every GDB of the suite runs with the shim: its own xstate writes fail, as GDB 13's
    do on AMX hosts, while the engine's (ctypes) pass through."""
    s = sessions()
    s.start([example("vectors"), "1"], str(tmp_path / "o"), breakpoint="held")
    s.cli("delete")
    msg = error_of(s, "print held()")
    assert "Couldn't write extended state status: Bad address" in msg, msg
    pid = s.pid()
    out = s.cli("python import gdbckpt.engine.ptrace as p; "
                f"x = p.get_xstate({pid}); p.set_xstate({pid}, x); print('engine wrote', len(x))")
    assert re.search(r"engine wrote \d+", out), out
    assert os.path.exists(SHIM)


def vector_run(sessions, tmp_path, hit: int) -> tuple[str, str]:
    """vectors stopped at its hit-th call of held(), saved, killed, restored, finished."""
    argv = [example("vectors"), "12345"]
    img, before, after = (str(tmp_path / n) for n in ("v.img", "before", "after"))
    s = sessions()
    s.start(argv, before, breakpoint="held")
    for _ in range(hit - 1):
        assert s.finish().get("reason") == "breakpoint-hit"
    s.save(img)
    s.cli("kill")
    r = sessions()
    out = r.restore(img, after)
    assert "Restored process" in out, out
    assert "held" in r.cli("bt 1")
    r.cli("delete")
    assert r.finish().get("reason") == "exited-normally"
    return read(before) + read(after), uninterrupted(argv)


def test_ymm_x87_and_mxcsr_come_back_bit_for_bit(sessions, tmp_path):
    got, want = vector_run(sessions, tmp_path, 1)
    assert got == want
    if "avx yes" in want:
        assert "registers intact" in got and "fcw 0xc7f mxcsr 0x7f80" in got


def test_avx512_zmm16_31_and_k1_7_come_back_bit_for_bit(sessions, tmp_path):
    if not xstate.live_xcr0() & 0xE0 == 0xE0:
        pytest.skip("this CPU has no AVX-512 (XCR0 lacks opmask and zmm state)")
    got, want = vector_run(sessions, tmp_path, 2)
    assert "avx512 yes" in want and got == want


AMX = "amx_tile" in open("/proc/cpuinfo").read()


@pytest.mark.skipif(not AMX, reason="this CPU has no AMX (no amx_tile in /proc/cpuinfo)")
def test_amx_tiles_and_permission_come_back(sessions, tmp_path):
    argv = [example("amx"), "99"]
    img, before, after = (str(tmp_path / n) for n in ("a.img", "before", "after"))
    s = sessions()
    s.start(argv, before, breakpoint="held")
    s.save(img)
    s.cli("kill")
    r = sessions()
    assert "Restored process" in r.restore(img, after)
    r.cli("delete")
    assert r.finish().get("reason") == "exited-normally"
    assert read(before) + read(after) == uninterrupted(argv)


# --- a tracer that dies -----------------------------------------------------------------

def gdb_pid(g) -> int:
    """The pid of GDB itself (the shim runs it through env, which execs it)."""
    return g.ctl.gdb_process.pid


def attached_counter(tmp_path):
    """A counter running on its own, and a GDB attached to it, stopped."""
    out = tmp_path / "out"
    prog = subprocess.Popen([example("counter"), "6", "300"], stdout=open(out, "w"),
                            stdin=subprocess.DEVNULL)
    wait_for_output(str(out), r"^step 1 ")
    g = shimmed_gdb()
    g.cli(f"attach {prog.pid}")
    return prog, g, out


@pytest.mark.parametrize("when", ["after a save", "after an injected call"])
def test_process_runs_on_when_gdb_is_killed(tmp_path, when):
    prog, g, out = attached_counter(tmp_path)
    try:
        if when == "after a save":
            g.cli(f"ckpt save {tmp_path / 'p.img'}", timeout=120)
        else:
            g.cli("python from gdbckpt.ingdb.front import stopped_process; "
                  "print(stopped_process().syscall(39))")     # getpid, injected
        os.kill(gdb_pid(g), signal.SIGKILL)
        assert prog.wait(timeout=60) == 0, "the process died with its tracer"
    finally:
        prog.kill()
        g.close()
    assert read(str(out)) == uninterrupted([example("counter"), "6", "300"])


def test_process_runs_on_when_the_batch_tool_is_killed(tmp_path):
    """SIGKILLed while it holds the process stopped, reading its memory (--no-snapshot):
    the kernel lets go of the process, and it runs on. Not while one of its injected
    calls runs (a few ms of a save): the process would meet the call's trap untraced
    and end with SIGTRAP (README, limits); SIGTERM and SIGINT wait for the call."""
    argv = [example("bigmem"), "256", "3", "300"]
    out = tmp_path / "out"
    prog = subprocess.Popen(argv, stdout=open(out, "w"), stdin=subprocess.DEVNULL)
    try:
        wait_for_output(str(out), r"^step 0 ")
        batch = subprocess.Popen([os.path.join(os.path.dirname(__file__), "..", ".venv", "bin",
                                               "gdbckpt-batch"), str(prog.pid), "--no-snapshot",
                                  "-o", str(tmp_path / "p.img")], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (_traced(prog.pid) and
                                                   _image_holds(tmp_path, 16 << 20)):
            time.sleep(0.001)
        batch.kill()
        batch.wait()
        assert prog.wait(timeout=60) == 0, "the process died with the batch tool"
    finally:
        prog.kill()
    assert read(str(out)) == uninterrupted(argv)


def _image_holds(directory, size: int) -> bool:
    """The image being written (its temporary file) holds size bytes of memory."""
    for name in os.listdir(directory):
        if name.startswith(".p.img.tmp-"):
            try:
                return os.path.getsize(os.path.join(directory, name)) >= size
            except FileNotFoundError:
                return False
    return False


def _traced(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        return re.search(r"^TracerPid:\s+[1-9]", f.read(), re.M) is not None


# --- injected calls leave the kernel's own state as it was ------------------------------

def test_a_thread_in_sigsuspend_keeps_its_real_mask(tmp_path):
    """In sigsuspend the kernel shows a temporary mask; the image must hold the real one,
    and the restored program still sleeps in sigsuspend until its signal comes."""
    argv = [example("suspender"), "8"]
    want = uninterrupted_later(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    with open(out, "w") as f:
        p = subprocess.Popen(argv, stdout=f, stdin=subprocess.DEVNULL)
    try:
        wait_for_output(out, r"^step 2 ")
        subprocess.run([*BATCH, str(p.pid), "-o", img, "--kill"], check=True,
                       capture_output=True, cwd=REPO)
        p.wait(timeout=30)
    finally:
        p.kill()
    batch_restore(img)
    assert read(out) == want()


def occupy(pid: int) -> subprocess.Popen | None:
    """A sleeper holding pid (root: ns_last_pid), or None if another process took it."""
    for _ in range(20):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        p = subprocess.Popen(["sleep", "60"])
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="choosing a pid needs root")
def test_a_thread_id_taken_during_the_restore_gives_new_ids_and_runs_right(tmp_path):
    """The kernel refuses a saved thread id that another process took after the check
    (a busy machine): the restore starts over with new thread ids and patches them in."""
    argv = [example("threads"), "100", "5000"]
    want = uninterrupted_later(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "t.img")
    saved_by_pid(argv, out, img, r"^round 5 ")
    from gdbckpt.image import Image
    tids = [t.tid for t in Image.open(img).threads]
    holder = occupy(tids[-1])
    if holder is None:
        pytest.skip("could not hold the thread id on this busy machine")
    try:
        # The check says every id is free; the kernel then finds the last one taken.
        code = ("import sys, gdbckpt.engine.restore as r, gdbckpt.batch as b\n"
                "r._exists = lambda t: False\n"
                "sys.exit(b.main(sys.argv[1:]))\n")
        r = subprocess.run([sys.executable, "-c", code, "restore", img, "--json"],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 0, r.stderr
        wait_gone(json.loads(r.stdout.splitlines()[-1])["pid"])
    finally:
        holder.kill()
        holder.wait()
    assert "was taken meanwhile: the threads got new ids" in r.stdout, r.stdout
    assert read(out) == want()


def test_a_program_without_a_c_library_in_gdb_with_another_language_set(sessions, tmp_path):
    """No glibc (as Go's binaries), and GDB's language set to Go: neither leaks into
    the save or the restore."""
    argv = [example("nolibc"), "25"]
    out, after, img = (str(tmp_path / n) for n in ("out", "after", "n.img"))
    s = sessions()
    s.start(argv, out, breakpoint="tick if step == 10")
    s.cli("set language go")
    s.save(img)
    s.cli("kill")
    r = sessions()
    r.cli("set language go")
    assert "Restored process" in r.restore(img, after)
    assert "tick" in r.cli("bt 1")
    r.cli("delete")
    assert r.finish().get("reason") == "exited-normally"
    assert read(out) + read(after) == uninterrupted(argv)


def test_a_program_without_a_c_library_headless(tmp_path):
    argv = [example("nolibc"), "30"]
    want = uninterrupted_later(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "n.img")
    saved_by_pid(argv, out, img, r"^tick 10 ")
    batch_restore(img)
    assert read(out) == want()
