"""Clocks that never run backwards: restored after a (simulated) reboot, in GDB and headless.

A later boot, or another host, is simulated by restoring from inside a time namespace
whose clocks read as if the machine had booted 30 s ago (unshare --time).
"""

import json
import subprocess
import time

import pytest
from harness import (
    BATCH,
    REPO,
    batch_restore,
    example,
    read,
    uninterrupted,
    uninterrupted_later,
    wait_for_output,
)

from gdbckpt import clocks

ARGV = [example("clock"), "30", "40"]


def booted_30s_ago(fork: bool = True) -> tuple[str, ...]:
    """A prefix that runs a command where both clocks read about 30 s; without fork, only
    what the command starts does (GDB, whose children are the restored processes: unshare
    --fork would stand between GDB and the signals that end it)."""
    mono = int(time.clock_gettime(time.CLOCK_MONOTONIC)) - 30
    boot = int(time.clock_gettime(time.CLOCK_BOOTTIME)) - 30
    return ("unshare", "--time", *(("--fork",) if fork else ()), f"--monotonic=-{mono}",
            f"--boottime=-{boot}")


def saved_running(tmp_path, img: str) -> str:
    """clock, saved by pid while it runs (and killed); returns its output file."""
    out = str(tmp_path / "out")
    with open(out, "w") as f:
        p = subprocess.Popen(ARGV, stdout=f, stdin=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for_output(out, r"^step 3 ")
        subprocess.run([*BATCH, str(p.pid), "-o", img, "--kill", "--no-sync"], check=True,
                       capture_output=True, cwd=REPO)
        p.wait(timeout=30)
    finally:
        p.kill()
    return out


def test_headless_restore_after_a_reboot_keeps_the_clocks_going_on(tmp_path):
    img = str(tmp_path / "c.img")
    want = uninterrupted_later(ARGV)
    out = saved_running(tmp_path, img)
    r = batch_restore(img, prefix=booted_30s_ago())
    assert "jumps back" not in r.stdout
    assert read(out) == want()                  # every step's clocks ok: none went back


def test_with_the_hosts_clocks_the_program_sees_them_go_back(tmp_path):
    """The same restore with --clocks=host: the restore says how far the clocks jump back,
    and the program does see it (so the test above does test something)."""
    img = str(tmp_path / "c.img")
    out = saved_running(tmp_path, img)
    r = batch_restore(img, "--clocks=host", prefix=booted_30s_ago())
    assert "CLOCK_MONOTONIC jumps back by" in r.stdout
    assert "clocks WRONG" in read(out)


def test_in_gdb_at_a_breakpoint_and_saved_again_from_the_namespace(sessions, tmp_path):
    """Saved in GDB, restored (vDSO patched, in GDB) as if after a reboot, saved again there
    and restored again, headless: the clocks go on each time."""
    img, img2 = str(tmp_path / "a.img"), str(tmp_path / "b.img")
    before, after = str(tmp_path / "before"), str(tmp_path / "after")
    s = sessions()
    s.start(ARGV, before, breakpoint="check_clocks if step == 4")
    s.save(img)
    assert "Clocks:    monotonic" in s.cli(f"ckpt info --brief {img}")
    s.cli("kill")
    r = sessions(prefix=booted_30s_ago(fork=False))
    out = r.restore(img, after, "/dev/null", "--vdso=patch")
    assert "jumps back" not in out and "vDSO: patch" in out, out
    r.cli("delete")
    r.cli("break check_clocks if step == 12")
    assert r.finish().get("reason") == "breakpoint-hit"
    pid = r.pid()
    mono_off, _ = clocks.offsets(pid)
    assert mono_off != 0, "the restored process is not in a time namespace"
    r.save(img2)
    r.cli("kill")
    after2 = str(tmp_path / "after2")
    batch_restore(img2, "--stdout", after2)
    assert read(before) + read(after) + read(after2) == uninterrupted(ARGV)


@pytest.mark.parametrize("how", ["info"])
def test_info_says_what_a_restore_here_does_with_the_clocks(tmp_path, how):
    img = str(tmp_path / "c.img")
    saved_running(tmp_path, img)
    info = subprocess.run([*BATCH, "info", "--brief", img], capture_output=True, text=True,
                          cwd=REPO, check=True).stdout
    assert "Clocks:    monotonic" in info and "a restore here: they go on" in info
    data = json.loads(subprocess.run([*BATCH, "info", "--json", img], capture_output=True,
                                     text=True, cwd=REPO, check=True).stdout)
    assert data["process"]["clocks"]["monotonic_ns"] > 0 and data["clocks_restore"]
