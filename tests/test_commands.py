"""The ckpt commands in real GDB: help, one-line errors, loading, replacing a live process."""

import os
import select
import subprocess

import pytest
from harness import REPO, SYSTEM_PYTHON, error_of, example, read, uninterrupted

from gdbckpt.mi import MiError

GDBINIT = os.path.join(REPO, "gdbinit.py")


def test_help_lists_subcommands(sessions):
    out = sessions().cli("help ckpt")
    for sub in ("save", "restore", "info"):
        assert f"ckpt {sub}" in out
    assert "Usage: ckpt save" in sessions().cli("help ckpt save")


def test_gdb_and_batch_take_the_same_options_described_the_same(sessions):
    """One definition (gdbckpt/options.py) makes both front ends' options and help."""
    import re

    from gdbckpt import options
    s = sessions()
    for command, opts in (("save", options.SAVE), ("restore", options.RESTORE),
                          ("info", options.INFO)):
        gdb_help = " ".join(s.cli(f"help ckpt {command}").split())
        sub = ["restore"] if command == "restore" else ["info"] if command == "info" else []
        batch_help = " ".join(subprocess.run([SYSTEM_PYTHON, "-m", "gdbckpt.batch", *sub,
                                              "--help"], capture_output=True, text=True,
                                             cwd=REPO).stdout.split())
        for o in opts:
            first_words = " ".join(o.help.split()[:6])
            if o.only != "batch":
                assert f"--{o.name}" in gdb_help and first_words in gdb_help, (command, o)
            if o.only != "gdb":
                assert re.search(rf"--{o.name}\b", batch_help), (command, o.name)
                assert first_words in batch_help, (command, o.name)


def test_usage_errors_are_one_line(sessions):
    s = sessions()
    assert error_of(s, "ckpt save").startswith("ckpt save: missing arguments; usage: ckpt save")
    assert "unknown option '--bogus'" in error_of(s, "ckpt save --bogus x.img")
    assert "too many arguments" in error_of(s, "ckpt info a b")
    assert "--vdso takes one of auto, move, patch" in error_of(s, "ckpt restore --vdso=x a")
    assert error_of(s, "ckpt save /tmp/x.img") == (
        "ckpt save: there is no process: start or attach one first")


def test_bad_images_are_refused_in_one_line(sessions, tmp_path):
    s = sessions()
    missing = tmp_path / "missing.img"
    assert "cannot open" in error_of(s, f"ckpt restore {missing}")
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not an image at all" * 500)
    assert "is not a gdbckpt image" in error_of(s, f"ckpt info {junk}")
    assert "is not a gdbckpt image" in error_of(s, f"ckpt restore {junk}")
    assert "is not a regular file" in error_of(s, f"ckpt info {tmp_path}")
    assert s.pid() == 0


def test_batch_gdb_exits_non_zero_on_error(tmp_path):
    r = subprocess.run(["gdb", "-nx", "-batch", "-x", GDBINIT, "-ex",
                        f"ckpt info {tmp_path / 'nope.img'}"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "ckpt info: cannot open" in r.stderr


def test_loading_twice_is_harmless_and_quiet(tmp_path):
    r = subprocess.run(["gdb", "-nx", "-batch", "-x", GDBINIT, "-x", GDBINIT, "-ex",
                        "help ckpt"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("gdbckpt loaded") == 1
    assert r.stderr == ""


def test_prompt_toolkit_never_loads_in_gdb(sessions, tmp_path):
    s = sessions()
    s.start([example("counter"), "3", "1"], str(tmp_path / "o"), breakpoint="compute_step")
    s.save(str(tmp_path / "p.img"))
    s.cli(f"ckpt info {tmp_path / 'p.img'}")
    out = s.cli("python print(sorted(m for m in sys.modules "
                "if m.startswith(('prompt_toolkit', 'readline'))))")
    assert out.strip() == "[]"


def test_restore_replaces_a_live_process(sessions, tmp_path):
    argv = [example("counter"), "8", "1"]
    img = str(tmp_path / "p.img")
    before = str(tmp_path / "before.out")
    s = sessions()
    s.start(argv, before, breakpoint="compute_step if step == 4")
    s.save(img)
    old = s.pid()
    s.cli("continue")        # the original runs on after a save
    s.cli("delete")
    s.start([example("counter"), "50", "1"], str(tmp_path / "other.out"),
            breakpoint="compute_step if step == 1")
    other = s.pid()
    # A pidfd, not /proc/PID: restores elsewhere (run in parallel) rewind the kernel's
    # pid cursor, so the pid may already belong to someone else.
    other_fd = os.pidfd_open(other)
    after = str(tmp_path / "after.out")
    out = s.restore(img, after)
    assert "Restored process" in out
    # The original ran on and ended: its pid is free, and as root the restore takes it back.
    assert s.pid() not in (0, other)
    assert s.pid() == old or os.geteuid() != 0
    gone = select.poll()
    gone.register(other_fd, select.POLLIN)
    assert gone.poll(0), "the process being debugged was not killed"
    os.close(other_fd)
    assert s.finish().get("reason") == "exited-normally"
    assert read(before).splitlines()[:4] + read(after).splitlines() == \
        uninterrupted(argv).splitlines()


PIN_AT_STUB = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
addr = libc.mmap(0x100000000000, 4096, 3, 0x22 | 0x100000, -1, 0)
print("mapped", hex(addr), flush=True)
time.sleep(30)
"""


def test_failed_restore_kills_the_stub_and_keeps_gdb_usable(sessions, tmp_path):
    """An image that needs the stub's own addresses is refused; nothing is left running."""
    script = tmp_path / "pin.py"
    script.write_text(PIN_AT_STUB)
    img = str(tmp_path / "p.img")
    out = str(tmp_path / "o")
    s = sessions()
    s.start([SYSTEM_PYTHON, str(script)], out)
    s.interrupt_when(out, "^mapped 0x100000000000")
    s.save(img)
    s.cli("kill")
    r = sessions()
    msg = error_of(r, f"ckpt restore {img}")
    assert msg.startswith("ckpt restore: the image maps 0x100000000000"), msg
    assert "restart stub" in msg
    assert r.pid() == 0
    assert "gdbckpt-stub" not in r.children()
    assert "No symbol" not in r.cli("print 1 + 1")


def test_ckpt_alone_and_show_ckpt_say_something(sessions):
    s = sessions()
    assert "ckpt save -- " in s.cli("ckpt")
    shown = s.cli("show ckpt")
    for setting in ("traceback", "flushes the image", "checksum", "progress", "copies memory"):
        assert setting in shown, shown
    assert "Undefined ckpt command" in error_of(s, "ckpt frobnicate")


def test_debug_on_shows_the_traceback_of_an_internal_error(sessions, tmp_path):
    s = sessions()
    s.cli("python import gdbckpt.info as i; i.text = None")   # a bug, on purpose
    img = tmp_path / "x.img"
    s.start([example("counter"), "3", "1"], str(tmp_path / "o"), breakpoint="compute_step")
    s.save(str(img))
    assert "set ckpt debug on" in error_of(s, f"ckpt info {img}")
    s.cli("set ckpt debug on")
    s.gdb.stderr.clear()
    with pytest.raises(MiError) as e:
        s.cli(f"ckpt info {img}")
    assert "internal error: TypeError" in e.value.msg
    assert "Traceback" in "".join(s.gdb.stderr) + e.value.stderr
