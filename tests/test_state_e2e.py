"""Process state beyond memory: descriptors, signals, attributes, through real GDB."""

import os
import pty
import re
import subprocess
import time

import pytest
from harness import (
    REPO,
    example,
    read,
    restore_and_finish,
    save_and_kill,
    shm_scenario,
    uninterrupted,
)

from gdbckpt.mi import MiError

GDBINIT = os.path.join(REPO, "gdbinit.py")
QUIET_SIGNALS = "handle SIGUSR1 SIGUSR2 SIGTERM SIGHUP SIGALRM SIG34 nostop noprint pass"


def test_files_end_byte_identical(sessions, tmp_path):
    prog = example("files")
    inp = tmp_path / "input"
    inp.write_text("".join(f"line {i} {'x' * (i * 7 % 23)}\n" for i in range(14)))
    ref, work = tmp_path / "ref", tmp_path / "work"
    ref.mkdir()
    work.mkdir()
    expected = uninterrupted([prog, str(ref)], stdin=str(inp))
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    save_and_kill(sessions, img, [prog, str(work)], out, "step_done if step == 6", stdin=str(inp))
    info = sessions().cli(f"ckpt info --brief {img}")
    assert re.search(r"\b0 file .*input .*reopened at its offset", info), info
    assert re.search(r"deleted .*scratch .*recreated from the image", info), info
    # No --stdin/--stdout: every descriptor comes back from the image.
    _, text, _ = restore_and_finish(sessions, img)
    assert "fd 2 (pipe" in text      # GDB/MI's stderr pipe: /dev/null, with a warning
    assert read(out) == expected
    for name in ("data.bin", "log.txt"):
        assert (work / name).read_bytes() == (ref / name).read_bytes(), name
    assert "scratch" not in os.listdir(work)


def test_file_gone_or_truncated_refuses_unless_forced(sessions, tmp_path):
    prog = example("files")
    inp = tmp_path / "input"
    inp.write_text("".join(f"line {i}\n" for i in range(10)))
    work = tmp_path / "work"
    work.mkdir()
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    save_and_kill(sessions, img, [prog, str(work)], out, "step_done if step == 4", stdin=str(inp))
    (work / "data.bin").write_bytes(b"short")
    with pytest.raises(MiError) as e:
        sessions().cli(f"ckpt restore {img}")
    assert "data.bin is now 5 bytes, shorter than the saved offset" in e.value.msg
    assert "--force" in e.value.msg
    os.unlink(work / "data.bin")
    with pytest.raises(MiError) as e:
        sessions().cli(f"ckpt restore {img}")
    assert "data.bin: No such file or directory" in e.value.msg
    _, text, _ = restore_and_finish(sessions, img, "--force")
    assert "/dev/null in its place (--force)" in text
    # It ran to its end, its data.bin writes going to /dev/null: the file stays gone.
    assert re.search(r"^done 10 steps, scratch [0-9a-f]{16}$", read(out), re.M), read(out)
    assert not (work / "data.bin").exists()


def test_signal_state_comes_back(sessions, tmp_path):
    argv = [example("signals"), "8"]
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    save_and_kill(sessions, img, argv, out, "report if step == 3", setup=[QUIET_SIGNALS])
    info = sessions().cli(f"ckpt info --brief {img}")
    # Its own handlers (and SIG_IGN for SIGTERM); the launcher may have left others ignored.
    listed = re.search(r"Signals: +\d+ handlers set \(([\d, ]+)\)", info).group(1)
    assert {1, 10, 12, 14, 15} <= {int(s) for s in listed.split(", ")}, info
    restore_and_finish(sessions, img, setup=[QUIET_SIGNALS])
    text = read(out)
    assert text == uninterrupted(argv)
    assert "hup_pending=1 hup_handled=0" in text.splitlines()[5]
    assert text.splitlines()[-1].endswith("hup_pending=0 hup_handled=1 alarm_ticking=1")


def test_a_pipe_comes_back_with_both_ends_and_its_bytes(sessions, tmp_path):
    argv = [example("piper"), "6"]
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    s = sessions()
    s.start(argv, out, breakpoint="tick if step == 2")
    s.save(img)
    s.cli("kill")
    r = sessions()
    text = r.cli(f"ckpt restore {img}")
    assert "/dev/null" not in text, text
    ends = [os.readlink(f"/proc/{r.pid()}/fd/{n}") for n in (3, 4)]
    assert ends[0] == ends[1] and ends[0].startswith("pipe:["), ends
    assert r.finish().get("reason") == "exited-normally"
    assert read(out) == uninterrupted(argv)
    assert read(out).endswith("read back 6: queued\n")


def test_process_attributes_come_back(sessions, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    argv = [example("attrs"), str(cwd), "6"]
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    save_and_kill(sessions, img, argv, out, "show if step == 3")
    r = sessions()
    r.cli(f"ckpt restore {img}", timeout=120)
    pid = r.pid()
    timers = open(f"/proc/{pid}/timers").read()
    # The thread-directed timer aims at the restored thread, whatever its id now.
    assert f"notify: signal/tid.{pid}" in timers, timers
    assert r.finish().get("reason") == "exited-normally"
    text = read(out)
    assert text == uninterrupted(argv)
    assert f"umask=027 cwd={cwd} name=attrs-demo nofile=100/" in text
    assert "nnp=1 dumpable=0 timer=1 itimer_interval=9" in text.splitlines()[-1]


@pytest.mark.parametrize("segment", ["kept", "removed"])
def test_shared_memory_comes_back(sessions, tmp_path, segment):
    """A MAP_SHARED file, SysV segments (still there, or gone and recreated), shared views."""
    key = 0x5EED0000 + os.getpid() % 0xFFFF
    argv, expected = shm_scenario(tmp_path, key)
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    save_and_kill(sessions, img, argv, out, "step_done if step == 3")
    if segment == "removed":
        subprocess.run(["ipcrm", "-M", str(key)], check=True)
    _, text, _ = restore_and_finish(sessions, img)
    assert read(out) == expected
    assert (tmp_path / "work" / "shared.bin").read_bytes() == \
        (tmp_path / "ref" / "shared.bin").read_bytes()
    assert "detach private=0 keyed=0" in read(out)
    assert f"{key:#010x}" not in subprocess.run(["ipcs", "-m"], capture_output=True,
                                                text=True).stdout


def run_gdb_on_pty(commands: list[str], timeout: float = 60) -> str:
    """Run gdb -batch with a new pseudo-terminal as its terminal; returns what it showed."""
    master, slave = pty.openpty()
    args = ["gdb", "-nx", "-q", "-batch", "-x", GDBINIT]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=_set_ctty)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:      # the terminal closed: gdb is gone
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=10)
    os.close(master)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def _set_ctty():
    import fcntl
    import termios
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_terminal_goes_to_the_restoring_session(tmp_path):
    argv = [example("counter"), "8", "5"]
    img = str(tmp_path / "p.img")
    first = run_gdb_on_pty([f"file {argv[0]}", "break compute_step if step == 3",
                            f"run {' '.join(argv[1:])}",
                            f"ckpt save {img}", "kill"], timeout=60)
    assert "Saved process" in first, first
    info = subprocess.run(["gdb", "-nx", "-batch", "-x", GDBINIT, "-ex", f"ckpt info {img}"],
                          capture_output=True, text=True).stdout
    assert re.search(r"\b0 tty +/dev/pts/\d+ .*this session's terminal", info), info
    assert re.search(r"\b1 tty +/dev/pts/\d+ .*same as fd 0", info), info
    second = run_gdb_on_pty([f"ckpt restore {img}", "info proc", "continue"], timeout=60)
    assert "Restored process" in second, second
    lines = [ln for ln in second.splitlines() if ln.startswith(("step ", "done "))]
    expected = uninterrupted(argv).splitlines()
    assert lines == expected[3:], second


def test_a_deleted_file_comes_back_from_a_compressed_image(tmp_path):
    """--compress leaves a deleted file's bytes as they are (the stub copies them)."""
    from harness import batch_restore, saved_by_pid
    code = ("import hashlib, os, sys, time\n"
            "path = os.path.join(sys.argv[1], 'scratch')\n"
            "f = open(path, 'w+b'); os.unlink(path)\n"
            "f.write(b'compressible ' * 20000); f.flush()\n"
            "print('ready', flush=True)\n"
            "time.sleep(0.3)\n"
            "f.seek(0); print(hashlib.sha256(f.read()).hexdigest(), flush=True)\n")
    argv = ["/usr/bin/python3", "-c", code, str(tmp_path)]
    from harness import uninterrupted_later
    (tmp_path / "ref").mkdir()
    want = uninterrupted_later([*argv[:-1], str(tmp_path / "ref")])
    out, img = str(tmp_path / "out"), str(tmp_path / "c.img")
    saved_by_pid(argv, out, img, "^ready", "--compress")
    batch_restore(img)
    assert read(out) == want()
