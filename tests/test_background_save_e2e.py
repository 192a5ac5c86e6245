"""ckpt save --snapshot in GDB: the command returns once the state is read and a
copy-on-write snapshot made; the image is written while the process runs on, and
GDB says when. The image is the process as it was at the save, exactly."""

import os
import re
import stat
import subprocess
import time

from harness import (
    error_of,
    example,
    gdb_prefix,
    leaves_no_process,
    pages,
    read,
    restore_and_finish,
    uninterrupted,
    wait_gone,
)

from gdbckpt.engine.tree import children
from gdbckpt.image import Image
from gdbckpt.mi import GDBINIT


def wait_saved(s, img: str, timeout: float = 60) -> str:
    """What GDB printed until it reported the background save to img as done. GDB says
    so at its next prompt, stop or ckpt command once the image is in place."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(img):
            s.cli(f"ckpt info --brief {img}")
            seen = "".join(s.gdb.printed)
            if f"to {img}:" in seen or "background save failed" in seen:
                return seen
        time.sleep(0.05)
    raise AssertionError(f"no end of the background save: {''.join(s.gdb.printed)!r}")


def batch_gdb(*args: str) -> subprocess.CompletedProcess:
    """gdb -batch with gdbckpt and the shim (GDB cannot write extended registers, as
    on AMX hosts); what it runs gets no shim."""
    return subprocess.run([*gdb_prefix(), "gdb", "-nx", "-batch", "-ex", f"source {GDBINIT}",
                           "-ex", "unset environment LD_PRELOAD", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_process_runs_on_while_the_image_is_written_and_restores_exactly(sessions, tmp_path):
    argv = [example("counter"), "8", "1"]
    img, before, after = (str(tmp_path / n) for n in ("c.img", "before.out", "after.out"))
    s = sessions()
    s.start(argv, before, breakpoint="compute_step if step == 4")
    text = s.cli(f"ckpt save --snapshot {img}")
    assert "in the background" in text, text
    pid = s.pid()
    # The snapshot (a child of the process, let go of by GDB's thread) is none of GDB's.
    assert len(children(pid)) <= 1
    assert len(re.findall(r"process \d+", s.cli("info inferiors"))) == 1
    assert len(re.findall(r"^\*? +\d+ +", s.cli("info threads"), re.M)) == 1
    s.cli("delete")
    s.cli("break compute_step if step == 6")
    assert s.finish().get("reason") == "breakpoint-hit"     # it ran on meanwhile
    saved = wait_saved(s, img)
    assert re.search(rf"Saved process {pid} \(counter\) to {re.escape(img)}", saved), saved
    assert stat.S_IMODE(os.stat(img).st_mode) == 0o600
    # Its ended snapshot was reaped by the process, stopped here, as GDB said so.
    assert children(pid) == []
    s.cli("delete")
    assert s.finish().get("reason") == "exited-normally"
    r = sessions()
    text = r.restore(img, after)
    assert "Restored process" in text, text
    assert "compute_step" in r.cli("bt") and "step = 4" in r.cli("info args") + r.cli(
        "info locals")
    assert r.finish().get("reason") == "exited-normally"
    assert read(before).splitlines()[:4] + read(after).splitlines() == \
        uninterrupted(argv).splitlines()


def test_the_image_is_the_one_of_a_stopped_save_even_if_the_process_ends(sessions, tmp_path):
    """Saved in the foreground and in the background at one stop, the process then
    running to its end at once (its orphaned process group's SIGHUP and SIGCONT must
    not end the snapshot): the two images hold the same memory, and both restore."""
    argv = [example("bigmem"), "128", "1", "0"]
    fg, bg = str(tmp_path / "fg.img"), str(tmp_path / "bg.img")
    s = sessions()
    s.start(argv, str(tmp_path / "out"), breakpoint="sum_all")
    s.cli(f"ckpt save {fg}")
    s.cli(f"ckpt save --snapshot {bg}")
    s.cli("delete")
    assert s.finish().get("reason") == "exited-normally"
    saved = wait_saved(s, bg)
    assert "could not be read" not in saved, saved
    a, b = (pages(Image.open(p)) for p in (fg, bg))
    assert a.keys() == b.keys()
    assert [v for v in a if a[v] != b[v]] == []
    _, text, _ = restore_and_finish(sessions, bg, "--stdout=/dev/null")
    assert "Restored process" in text
    for img in (fg, bg):
        _, text, _ = restore_and_finish(sessions, img, "--stdout=/dev/null")
        assert "Restored process" in text


def test_a_second_save_meanwhile_is_refused_and_the_snapshot_reaped_after(sessions, tmp_path):
    """Another save of the process while its background save runs would take the
    snapshot (a child of the process) for one of its children: refused until GDB has
    said the first is done; by then the process, stopped, has reaped the snapshot."""
    img = str(tmp_path / "b.img")
    s = sessions()
    s.start([example("bigmem"), "256", "2", "0"], "/dev/null", breakpoint="sum_all")
    pid = s.pid()
    s.cli(f"ckpt save --snapshot {img}")
    msg = error_of(s, f"ckpt save {img}")
    assert "is still being written by a background save" in msg, msg
    msg = error_of(s, f"ckpt save {tmp_path / 'other.img'}")
    assert f"a background save of process {pid} is still being written" in msg, msg
    assert "Saved process" in wait_saved(s, img)
    assert children(pid) == []
    s.cli(f"ckpt save {tmp_path / 'other.img'}")
    assert "could not be read" not in "".join(s.gdb.printed)


def test_a_snapshot_does_not_outlive_a_killed_gdb(sessions, tmp_path):
    """GDB SIGKILLed while the image is written: the snapshot (parked, its reader's
    tracee with EXITKILL) ends with it instead of holding its memory for good."""
    s = sessions()
    s.start([example("bigmem"), "512", "2", "0"], "/dev/null", breakpoint="sum_all")
    pid = s.pid()
    s.cli(f"ckpt save --snapshot {tmp_path / 'k.img'}")
    snaps = children(pid)
    s.gdb.ctl.gdb_process.kill()
    try:
        for snap in snaps:
            wait_gone(snap, timeout=20)
    finally:
        for snap in snaps:      # a snapshot left would hold GDB's stderr open: a hang
            try:
                os.kill(snap, 9)
            except ProcessLookupError:
                pass


def test_gdb_leaving_an_attached_process_reaps_its_snapshot(tmp_path):
    """gdb -p, a background save, quit: the process runs on without a zombie child."""
    p = subprocess.Popen([example("bigmem"), "64", "1000", "1000"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        r = batch_gdb("-p", str(p.pid), "-ex", f"ckpt save --snapshot {tmp_path / 'a.img'}")
        assert r.returncode == 0, r.stderr
        assert os.path.exists(tmp_path / "a.img")
        assert p.poll() is None and children(p.pid) == []
    finally:
        p.kill()
        p.wait()


def test_quitting_gdb_waits_for_the_image_and_leaves_no_snapshot(tmp_path):
    img = str(tmp_path / "q.img")
    with leaves_no_process("bigmem"):
        r = batch_gdb("-ex", "break sum_all", "-ex", "run 256 2 0 > /dev/null",
                      "-ex", f"ckpt save --snapshot {img}", example("bigmem"))
        assert r.returncode == 0, r.stderr
        _reap_orphans()
    r = batch_gdb("-ex", f"ckpt verify {img}")
    assert ": good:" in r.stdout, r.stdout + r.stderr


def _reap_orphans() -> None:
    """The snapshot, orphaned when GDB killed the process, came to us (a subreaper):
    a zombie then, not a stopped copy."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        assert os.WIFSIGNALED(status) or os.WIFEXITED(status), status


def test_bad_input_to_a_background_save_is_one_line(sessions, tmp_path):
    s = sessions()
    assert error_of(s, f"ckpt save --snapshot {tmp_path / 'x.img'}") == (
        "ckpt save: there is no process: start or attach one first")
    s.start([example("counter"), "8", "1"], str(tmp_path / "out"),
            breakpoint="compute_step if step == 2")
    msg = error_of(s, f"ckpt save --snapshot {tmp_path / 'no' / 'dir' / 'x.img'}")
    assert msg.startswith("ckpt save: cannot create an image in ") and "no/dir" in msg, msg
    assert children(s.pid()) == []          # no snapshot made, or left, for it
    assert os.listdir(tmp_path) == ["out"]
