"""Core: save a stopped process in GDB, kill it, restore it in a fresh GDB, finish it."""

import os
import re
import shutil
import time

import pytest
from harness import (
    EXAMPLES,
    NOBODY,
    SYSTEM_PYTHON,
    example,
    read,
    restore_and_finish,
    save_and_kill,
    uninterrupted,
    uninterrupted_later,
)

from gdbckpt.image.format import FORMAT_VERSION
from gdbckpt.mi import MiError


def save_at_break(sessions, tmp_path, argv, bp, **kw):
    """Saved at bp and killed: (image, the output file up to the save)."""
    img, before = str(tmp_path / "p.img"), str(tmp_path / "before.out")
    save_and_kill(sessions, img, argv, before, bp, **kw)
    return img, before


def restore_to_end(sessions, tmp_path, img, stdin="/dev/null"):
    """Restored in a new GDB with its output to a new file, run to the end:
    (the session, what the restore printed, that file)."""
    after = str(tmp_path / "after.out")
    r, text, _ = restore_and_finish(sessions, img, f"--stdin={stdin}", f"--stdout={after}")
    return r, text, after


# What GDB shows at the saved point; a restore must show the same.
VIEWS = ("bt", "info args", "info locals", "print tls_acc", "print global_table[3]",
         "print/x $rip", "print/x $rsp", "print $_siginfo.si_signo")


def views(session) -> dict[str, str]:
    out = {}
    for v in VIEWS:
        try:
            out[v] = re.sub(r"^\$\d+ = ", "$N = ", session.cli(v))
        except MiError as e:
            # e.g. GDB 13 reads no TLS of static programs: then neither session can.
            out[v] = "error: " + re.sub(r"process \d+", "process N", e.msg)
    return out


@pytest.mark.parametrize("variant", ["counter", "counter-nopie", "counter-static"])
def test_counter_restores_and_finishes_identically(sessions, tmp_path, variant):
    argv = [example(variant), "12", "10"]
    img = str(tmp_path / "p.img")
    before = str(tmp_path / "before.out")
    s = sessions()
    s.start(argv, before, breakpoint="compute_step if step == 5")
    seen = views(s)
    s.save(img)
    assert views(s) == seen, "saving changed what GDB shows"
    s.cli("kill")
    assert oct(os.stat(img).st_mode & 0o777) == "0o600"
    r = sessions()
    after = str(tmp_path / "after.out")
    r.restore(img, after)
    restored = views(r)
    for v in VIEWS:
        if v != "print $_siginfo.si_signo":
            assert restored[v] == seen[v], v
    assert re.search(r"#0 .*compute_step", restored["bt"]) and "main" in restored["bt"]
    stop = r.finish()
    assert stop.get("reason") == "exited-normally", stop
    assert read(before) + read(after) == uninterrupted(argv)


def test_new_breakpoint_after_restore(sessions, tmp_path):
    argv = [example("counter"), "10", "5"]
    img, before = save_at_break(sessions, tmp_path, argv, "compute_step if step == 3")
    r = sessions()
    after = str(tmp_path / "after.out")
    r.restore(img, after)
    r.cli("break compute_step if step == 7")
    stop = r.resume("-exec-continue")
    assert stop.get("reason") == "breakpoint-hit", stop
    assert "step = 7" in r.cli("info args")
    assert read(after).splitlines()[-1].startswith("step 6 ")
    stop = r.finish()
    assert read(before) + read(after) == uninterrupted(argv)


@pytest.mark.parametrize("aslr", [False, True], ids=["aslr-off", "aslr-on"])
def test_clocks_work_after_restore(sessions, tmp_path, aslr):
    argv = [example("clock"), "10", "10"]
    img, before = save_at_break(sessions, tmp_path, argv, "check_clocks if step == 4", aslr=aslr)
    r, out, after = restore_to_end(sessions, tmp_path, img)
    assert "vDSO: move" in out
    text = read(before) + read(after)
    assert text == uninterrupted(argv)
    assert "WRONG" not in text


def test_sched_getcpu_right_after_restore(sessions, tmp_path):
    argv = [example("cpuhop"), "12", "5"]
    img, before = save_at_break(sessions, tmp_path, argv, "hop if step == 5")
    r, out, after = restore_to_end(sessions, tmp_path, img)
    text = read(before) + read(after)
    assert "STALE" not in text
    assert text == uninterrupted(argv)


def test_saved_inside_nanosleep_restarts_the_sleep(sessions, tmp_path):
    argv = [example("sleeper"), "2"]
    img = str(tmp_path / "p.img")
    before = str(tmp_path / "before.out")
    stdin = tmp_path / "input"
    stdin.write_text("hello\n")
    want = uninterrupted_later(argv, str(stdin))
    s = sessions()
    s.start(argv, before)
    s.interrupt_when(before, "^sleeping")
    s.save(img)
    s.cli("kill")
    info = sessions().cli(f"ckpt info --brief {img}")
    assert "inside clock_nanosleep: restarts" in info
    r, out, after = restore_to_end(sessions, tmp_path, img, str(stdin))
    assert read(before) + read(after) == want()
    assert "nanosleep returned 0 errno 0" in read(after)


def test_saved_inside_read_restarts_the_read(sessions, tmp_path):
    argv = [example("sleeper"), "0"]
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    # Hold the fifo open for writing so the program blocks in read, not at EOF.
    hold = os.open(fifo, os.O_RDWR)
    img = str(tmp_path / "p.img")
    before = str(tmp_path / "before.out")
    try:
        s = sessions()
        s.start(argv, before, stdin=fifo)
        s.interrupt_when(before, "^reading")
        s.save(img)
        s.cli("kill")
    finally:
        os.close(hold)
    stdin = tmp_path / "input"
    stdin.write_text("hello\n")
    r, out, after = restore_to_end(sessions, tmp_path, img, str(stdin))
    assert read(after) == "read returned 6 errno 0: hello\n\n"
    assert read(before) + read(after) == uninterrupted(argv, str(stdin))


def test_system_python_restores_mid_loop(sessions, tmp_path):
    """A real program no one here wrote: /usr/bin/python3, stopped while it runs."""
    argv = [SYSTEM_PYTHON, os.path.join(EXAMPLES, "pyloop.py"), "30", "0.02"]
    img = str(tmp_path / "p.img")
    before = str(tmp_path / "before.out")
    s = sessions()
    s.start(argv, before)
    s.interrupt_when(before, "^12 ")
    s.save(img)
    s.cli("kill")
    r, out, after = restore_to_end(sessions, tmp_path, img)
    assert read(before) + read(after) == uninterrupted(argv)


@pytest.mark.parametrize("who", ["root", "nobody"])
def test_exe_link_and_privileges(sessions, shared_dir, who):
    """As root the exe link names the program; unprivileged it cannot, and says so."""
    prefix = NOBODY if who == "nobody" else ()
    argv = [example("counter"), "8", "5"]
    img = os.path.join(shared_dir, "p.img")
    before = os.path.join(shared_dir, "before.out")
    after = os.path.join(shared_dir, "after.out")
    s = sessions(prefix=prefix)
    s.start(argv, before, breakpoint="compute_step if step == 2")
    s.save(img)
    s.cli("kill")
    r = sessions(prefix=prefix)
    out = r.restore(img, after)
    exe = os.readlink(f"/proc/{r.pid()}/exe")
    if who == "root":
        assert exe == argv[0]
    else:
        assert "exe link" in out and "not permitted" in out.lower(), out
        assert os.path.basename(exe) == "gdbckpt-stub"
        # A restored process saves again: the program is known from GDB.
        again = os.path.join(shared_dir, "again.img")
        r.save(again)
        assert f"Program:   {argv[0]}" in r.cli(f"ckpt info --brief {again}")
    assert r.finish().get("reason") == "exited-normally"
    assert read(before) + read(after) == uninterrupted(argv)


@pytest.mark.parametrize("change", ["rebuilt", "deleted"])
def test_changed_program_file_restores_from_the_image(sessions, tmp_path, change):
    """A mapped file that changed after the save is not trusted: its pages come from the image."""
    prog = str(tmp_path / "counter")
    shutil.copy(example("counter"), prog)
    argv = [prog, "10", "5"]
    expected = uninterrupted(argv)
    img = str(tmp_path / "p.img")
    before = str(tmp_path / "before.out")
    s = sessions()
    s.start(argv, before, breakpoint="compute_step if step == 3")
    s.save(img)
    s.cli("kill")
    if change == "rebuilt":
        shutil.copy(example("clock"), prog)     # same name, other content
    else:
        os.unlink(prog)
    r = sessions()
    after = str(tmp_path / "after.out")
    out = r.restore(img, after)
    assert "restored from the image as private copies" in out, out
    assert r.finish().get("reason") == "exited-normally"
    assert read(before) + read(after) == expected


def test_info_describes_the_image(sessions, tmp_path):
    img = str(tmp_path / "p.img")
    s = sessions()
    s.start([example("counter"), "5", "1"], str(tmp_path / "o"),
            breakpoint="compute_step if step == 2")
    s.save(img)
    info = s.cli(f"ckpt info {img}")
    for want in (f"Format:    version {FORMAT_VERSION}", f"Program:   {example('counter')}",
                 "Threads:   1",
                 "[heap]", "[stack]", "libc.so.6", "a restore here would move", "Kernel:    "
                 + os.uname().release):
        assert want in info, want
    import json
    data = json.loads(s.cli(f"ckpt info --json {img}"))
    assert data["process"]["exe"] == example("counter")
    assert data["vdso_restore"]["mode"] == "move"
    assert {v["path"] for v in data["vmas"]} >= {"[heap]", "[stack]", "[vdso]"}


@pytest.mark.parametrize("mode", ["set breakpoint always-inserted on", "set non-stop on"])
def test_breakpoints_inserted_at_save_are_not_in_the_image(sessions, tmp_path, mode):
    """With breakpoints left in memory while stopped, the image still holds the real code:
    the user's (on step) and GDB's own (the shared-library event dlopen reaches)."""
    argv = [example("dlopener"), "6"]
    img, before, after = (str(tmp_path / n) for n in ("p.img", "before", "after"))
    s = sessions()
    s.cli(mode)
    s.start(argv, before, breakpoint="step if n == 1")
    s.save(img)
    s.cli("kill")
    r = sessions()
    r.restore(img, after)
    # No int3 left behind: the restored program runs to the end without SIGTRAPs.
    assert r.finish().get("reason") == "exited-normally"
    assert read(before) + read(after) == uninterrupted(argv)


def test_inside_restart_syscall_the_sleep_is_made_again(sessions, tmp_path):
    """Interrupted twice: the second time the thread is inside restart_syscall, whose call
    only the code before it tells (glibc's mov $nr, %eax)."""
    argv = [example("sleeper"), "2"]
    img, before = str(tmp_path / "p.img"), str(tmp_path / "before.out")
    s = sessions()
    s.start(argv, before)
    s.interrupt_when(before, "^sleeping")
    s.gdb.events.clear()
    s.gdb.cmd("-exec-continue")
    # Until the kernel shows it asleep again in restart_syscall (219).
    deadline = time.monotonic() + 30
    while not open(f"/proc/{s.pid()}/syscall").read().startswith("219 "):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    s.resume("-exec-interrupt")
    assert "restart_syscall" in s.cli("print $orig_rax == 219 ? \"restart_syscall\" : \"x\"")
    s.save(img)
    s.cli("kill")
    stdin = tmp_path / "input"
    stdin.write_text("hello\n")
    r, out, after = restore_to_end(sessions, tmp_path, img, str(stdin))
    assert "nanosleep returned 0 errno 0" in read(after)


def test_large_prot_none_reservation(sessions, tmp_path):
    argv = [example("reserve"), "6"]
    img, before = str(tmp_path / "p.img"), str(tmp_path / "before.out")
    s = sessions()
    s.start(argv, before, breakpoint="step if n == 2")
    s.save(img)
    s.cli("kill")
    assert os.path.getsize(img) < 16 << 20
    r, out, after = restore_to_end(sessions, tmp_path, img)
    assert read(before) + read(after) == uninterrupted(argv)


@pytest.mark.parametrize("sig, signo", [("SIGUSR1", 10), ("SIG34", 34)])   # 34: SIGRTMIN
def test_signal_the_process_stopped_with_is_delivered_after_restore(sessions, tmp_path, sig,
                                                                     signo):
    """GDB holds a signal it stopped on and would pass: the image keeps it pending."""
    argv = [example("signals"), "6"]
    img, out = str(tmp_path / "p.img"), str(tmp_path / "out")
    quiet = {"SIGUSR1", "SIGUSR2", "SIGTERM", "SIGHUP", "SIGALRM", "SIG34"}
    s = sessions()
    s.cli(f"handle {' '.join(sorted(quiet - {sig}))} nostop noprint pass")
    s.cli(f"handle {sig} stop print pass")
    s.start(argv, out)
    stop = s.gdb.wait_stopped(30)
    assert stop.get("signal-name") == sig, stop
    siginfo = s.cli("output $_siginfo._sifields._kill")
    assert f"stopped with signal {signo}" in s.save(img)
    # The calls the save made in the process did not replace the signal GDB holds.
    assert s.cli("output $_siginfo._sifields._kill") == siginfo
    assert f"= {signo}" in s.cli("print $_siginfo.si_signo")
    s.cli("kill")
    r = sessions()
    r.cli(f"handle {' '.join(sorted(quiet))} nostop noprint pass")
    r.cli(f"ckpt restore --stdin=/dev/null {img}", timeout=120)
    assert r.finish().get("reason") == "exited-normally"
    assert read(out) == uninterrupted(argv)      # the counts match: the signal was not lost


SECCOMP_PYTHON = """
import ctypes, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
# A filter that allows everything: any filter makes a process unsaveable.
prog = struct.pack("<HBBI", 0x06, 0, 0, 0x7fff0000)
fprog = struct.pack("<HxxxxxxQ", 1, ctypes.addressof(ctypes.create_string_buffer(prog)))
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("<H6xQ", 1, ctypes.addressof(buf))
libc.prctl(38, 1, 0, 0, 0)
assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, ctypes.get_errno()
print("filtered", flush=True)
time.sleep(30)
"""


def test_process_under_seccomp_is_refused(sessions, tmp_path):
    script = tmp_path / "sec.py"
    script.write_text(SECCOMP_PYTHON)
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    s = sessions()
    s.start([SYSTEM_PYTHON, str(script)], out)
    s.interrupt_when(out, "^filtered")
    with pytest.raises(MiError) as e:
        s.cli(f"ckpt save {img}")
    assert "runs under seccomp (a filter)" in e.value.msg and "cannot be saved" in e.value.msg
    assert not os.path.exists(img)
    assert "Python" not in e.value.msg
