"""gdbckpt-batch: headless save by pid, restore, info, verify, periodic saves, errors."""

import glob
import json
import os
import re
import resource
import signal
import subprocess
import time

import pytest
from harness import (
    BATCH,
    NOBODY,
    REPO,
    batch,
    batch_restore,
    example,
    leaves_no_process,
    rewrite_record,
    saved_by_pid,
    spawn,
    uninterrupted,
    uninterrupted_later,
    wait_for_output,
    wait_gone,
)

from gdbckpt.image import format as fmt


def one_line_error(r, code):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    first = r.stderr.splitlines()[0]
    assert first.startswith("gdbckpt-batch: ") and "Traceback" not in r.stderr, r.stderr
    return first


@pytest.mark.parametrize("prog", ["counter", "threads"])
def test_running_program_saved_by_pid_killed_and_restored_headless(tmp_path, prog):
    argv = [example(prog), "80", "20"] if prog == "counter" else [example(prog), "200", "5000"]
    want = uninterrupted_later(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    p = spawn(argv, out)
    try:
        wait_for_output(out, r"^(step|round) 5 ")
        r = batch(str(p.pid), "-o", img, "--json", check=0)
        assert json.loads(r.stdout.splitlines()[-1])["process"] == "running"
        time.sleep(0.2)
        assert p.poll() is None            # it ran on after the save
    finally:
        p.kill()
        p.wait()
    r = batch_restore(img)
    assert open(out).read() == want()
    assert "grew since the save" in r.stdout


@pytest.mark.parametrize("snapshot", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_a_save_of_a_busy_process_is_one_instant(tmp_path, snapshot):
    """mutator rewrites 64 MiB round after round and checks each page: an image whose
    memory is not one instant, or not the instant of its registers, restores into a
    program that says TORN. By default the save reads a copy-on-write snapshot while
    the process runs on; the process is stopped only for a few tens of ms."""
    argv = [example("mutator"), "64", "12000"]
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    p = spawn(argv, out)
    want = uninterrupted_later(argv)
    try:
        wait_for_output(out, r"^round 500 ")
        opts = () if snapshot else ("--no-snapshot",)
        r = batch(str(p.pid), "-o", img, "--no-sync", "--json", *opts, check=0)
        result = json.loads(r.stdout.splitlines()[-1])
        assert result["process"] == "running"
        assert p.poll() is None
        children = subprocess.run(["ps", "--ppid", str(p.pid), "-o", "pid="],
                                  capture_output=True, text=True).stdout
        assert children.strip() == "", "the snapshot was left behind"
    finally:
        p.kill()
        p.wait()
    batch_restore(img)
    assert open(out).read() == want()


def test_kill_and_stop_after_a_save(tmp_path):
    out = str(tmp_path / "out")
    p = spawn([example("counter"), "1000", "20"], out)
    try:
        wait_for_output(out, r"^step 2 ")
        batch(str(p.pid), "--stop", "-o", str(tmp_path / "a.img"), check=0)
        with open(f"/proc/{p.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "T"
        os.kill(p.pid, signal.SIGCONT)
        batch(str(p.pid), "--kill", "-o", str(tmp_path / "b.img"), check=0)
        assert p.wait(timeout=10) == -signal.SIGKILL
    finally:
        p.kill()
    assert batch("verify", str(tmp_path / "b.img"), check=0).stdout.startswith(
        str(tmp_path / "b.img") + ": good")


def test_default_image_name_info_and_verify(tmp_path):
    out = str(tmp_path / "out")
    p = spawn([example("counter"), "1000", "20"], out)
    try:
        wait_for_output(out, r"^step 1 ")
        r = subprocess.run([*BATCH, str(p.pid)], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
        assert r.returncode == 0, r.stderr
    finally:
        p.kill()
    (img,) = glob.glob(str(tmp_path / f"counter-{p.pid}-*.img"))
    assert oct(os.stat(img).st_mode & 0o777) == "0o600"
    data = json.loads(batch("info", img, "--json", check=0).stdout)
    assert data["process"]["pid"] == p.pid and data["process"]["comm"] == "counter"
    assert "Threads:   1" in batch("info", img, "--brief", check=0).stdout
    v = json.loads(batch("verify", img, "--json", check=0).stdout)
    assert v["ok"] and v["chunks"] > 0
    # Not on a terminal: plain lines, no escape codes.
    assert "\x1b" not in r.stdout + r.stderr


def seen_rotate(pattern: str, count: int, timeout: float = 60) -> None:
    """Until count different images have matched pattern (names change as --every
    rotates them)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only {sorted(seen)} appeared"
        seen.update(p for p in glob.glob(pattern) if not p.endswith(".tmp"))
        time.sleep(0.02)


def test_every_keeps_rotating_valid_images_and_stops_cleanly(tmp_path):
    out = str(tmp_path / "out")
    p = spawn([example("counter"), "100000", "10"], out)
    d = tmp_path / "imgs"
    d.mkdir()
    try:
        wait_for_output(out, r"^step 1 ")
        job = subprocess.Popen([*BATCH, str(p.pid), "--every", "0.3", "--keep", "2", "--no-sync",
                                "-o", str(d / "job.img")], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Until rotation has gone on: three images seen, the oldest removed.
        seen_rotate(str(d / "job-*.img"), 3)
        job.send_signal(signal.SIGTERM)
        stdout, stderr = job.communicate(timeout=60)
        assert job.returncode == 130, stderr
        saved = stdout.count("saved ")
        assert saved >= 3, stdout
        assert p.poll() is None, "the job must keep running"
    finally:
        p.kill()
        p.wait()
    images = sorted(glob.glob(str(d / "job-*.img")))
    assert len(images) == 2, os.listdir(d)
    assert not [f for f in os.listdir(d) if ".tmp-" in f]
    for img in images:
        batch("verify", img, check=0)


def test_every_stops_when_the_process_ends(tmp_path):
    out = str(tmp_path / "out")
    p = spawn([example("counter"), "30", "50"], out)
    r = batch(str(p.pid), "--every", "0.2", "--keep", "1", "--no-sync", "-o",
              str(tmp_path / "j.img"), check=0, timeout=120)
    p.wait()
    assert f"process {p.pid} ended; stopping" in r.stdout
    assert len(glob.glob(str(tmp_path / "j-*.img"))) == 1


def test_errors_are_one_line_with_documented_codes(tmp_path):
    assert "no process 999999" in one_line_error(batch("999999"), 3)
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"x" * 5000)
    assert "is not a gdbckpt image" in one_line_error(batch("restore", str(junk)), 5)
    assert "cannot open" in one_line_error(batch("info", str(tmp_path / "none.img")), 5)
    one_line_error(batch("--every", "0", "1"), 2)
    assert "exit codes" in batch("--help", check=0).stdout


def test_process_we_may_not_trace_is_left_alone(tmp_path):
    out = str(tmp_path / "out")
    p = spawn([example("counter"), "1000", "20"], out)
    try:
        wait_for_output(out, r"^step 1 ")
        # Unprivileged, against root's process.
        msg = one_line_error(batch(str(p.pid), "-o", "/tmp/never.img", prefix=NOBODY), 4)
        assert "belongs to uid 0" in msg
        # Already traced by another debugger.
        holder = subprocess.Popen(["gdb", "-nx", "-q", "-p", str(p.pid)], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with open(f"/proc/{p.pid}/status") as f:
                    if "TracerPid:\t0" not in f.read():
                        break
                time.sleep(0.05)
            msg = one_line_error(batch(str(p.pid), "-o", str(tmp_path / "x.img")), 4)
            assert f"already traced by process {holder.pid} (gdb)" in msg
        finally:
            holder.kill()
            holder.wait()
        assert not os.path.exists(tmp_path / "x.img")
        with open(f"/proc/{p.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] in "RS"
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("compress", [False, True])
def test_a_corrupt_chunk_refuses_the_restore_before_anything_outside_changes(tmp_path,
                                                                            compress):
    """The checksums are checked on a thread while the restore begins (restore.Checksums):
    a corrupt chunk still refuses it before the --stdout file is made, and leaves no
    process. A compressed chunk, which the engine itself reads (and checks) before then,
    gives the same one line."""
    argv = [example("counter"), "60", "20"]
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    saved_by_pid(argv, out, img, r"^step 4 ", *(["--compress"] if compress else []))
    chunks = json.loads(batch("info", "--json", img, check=0).stdout)["chunks"]
    last = max((c for c in chunks if c["stored"] and (c["codec"] == "ZSTD") == compress),
               key=lambda c: c["offset"])
    data = bytearray(open(img, "rb").read())
    data[last["offset"] + last["stored"] // 2] ^= 0x40
    bad, made = str(tmp_path / "bad.img"), str(tmp_path / "made.out")
    open(bad, "wb").write(bytes(data))
    with leaves_no_process(f"gdbckpt-stub|{argv[0]}"):
        for opts in ((), ("--dry-run",)):
            first = one_line_error(batch("restore", bad, "--stdout", made, *opts), 5)
            assert f"chunk at {last['vaddr']:#x}" in first and "is corrupt" in first, first
            assert not os.path.exists(made)
    if compress:    # a compressed chunk is checked as it is read, --no-verify or not
        first = one_line_error(batch("restore", bad, "--no-verify", "--stdout", made), 5)
        assert "is corrupt" in first and not os.path.exists(made)
        return
    # Unchecked, the same image restores (the flipped byte is the program's business).
    r = batch("restore", bad, "--no-verify", "--stdout", made, check=0)
    wait_gone(int(r.stdout.split("as process ")[1].split()[0]))
    assert os.path.exists(made)


@pytest.mark.slow        # --stdout is also checked by the test that it stands in for a file
def test_restore_with_redirected_stdout(tmp_path):
    argv = [example("counter"), "60", "20"]
    want = uninterrupted_later(argv)
    out, img, other = str(tmp_path / "out"), str(tmp_path / "p.img"), str(tmp_path / "other")
    saved_by_pid(argv, out, img, r"^step 4 ")
    before = open(out).read()
    r = batch("restore", img, "--stdout", other, check=0)
    wait_gone(int(r.stdout.split("as process ")[1].split()[0]))
    assert before + open(other).read() == want()


def test_on_a_terminal_picks_a_process_and_shows_progress(tmp_path):
    """No pid on a terminal: a prompt_toolkit picker; the save draws a progress bar."""
    import pty
    import select
    out = str(tmp_path / "out")
    p = spawn([example("bigmem"), "64", "1000", "50"], out)
    try:
        wait_for_output(out, r"^step 0 ")
        master, slave = pty.openpty()
        job = subprocess.Popen([*BATCH, "-o", str(tmp_path / "picked.img")], cwd=REPO,
                               stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        seen = b""

        def read_until(needle: bytes, timeout: float = 30) -> None:
            nonlocal seen
            deadline = time.monotonic() + timeout
            while needle not in seen and time.monotonic() < deadline:
                if select.select([master], [], [], 0.1)[0]:
                    try:
                        seen += os.read(master, 65536)
                    except OSError:
                        break
            assert needle in seen, seen[-2000:]
        read_until(b"pid or name>")
        if b"\x1b[6n" in seen:
            os.write(master, b"\x1b[1;1R")      # answer the cursor position request
        time.sleep(0.3)
        os.write(master, f"{p.pid}\r".encode())
        read_until(b"Saved process", timeout=120)
        assert job.wait(timeout=60) == 0
        os.close(master)
    finally:
        p.kill()
        p.wait()
    assert b"\x1b[" in seen                   # drawn for a terminal
    assert b"saving" in seen                  # the progress bar's title
    batch("verify", str(tmp_path / "picked.img"), check=0)


def test_every_without_a_name_below_a_second_and_a_ctrl_c(tmp_path):
    """Default names stay unique at sub-second intervals; a Ctrl-C at the terminal (SIGINT
    to the whole process group) ends the job cleanly, with every image whole."""
    out = str(tmp_path / "out")
    p = spawn([example("counter"), "100000", "10"], out)
    try:
        wait_for_output(out, r"^step 1 ")
        job = subprocess.Popen([*BATCH, str(p.pid), "--every", "0.2", "--keep", "2",
                                "--no-sync"], cwd=tmp_path, text=True, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": REPO},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pattern = str(tmp_path / f"counter-{p.pid}-*.img")
        seen_rotate(pattern, 3)
        os.killpg(job.pid, signal.SIGINT)
        stdout, stderr = job.communicate(timeout=60)
        assert job.returncode == 130, (stdout, stderr)
        assert stdout.count("saved ") >= 3
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()
    images = glob.glob(pattern)
    assert len(images) == 2, os.listdir(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    for img in images:
        batch("verify", img, check=0)


def nobodys(path: str):
    """A file nobody owns, open for writing (the restore reopens it as nobody)."""
    f = open(path, "w")
    os.chown(path, 65534, 65534)
    return f


def saved_by_nobody(argv: list[str], shared_dir: str, saver=NOBODY) -> tuple[str, str]:
    """argv run as nobody (stdout to a file of nobody's) until its third step, then
    saved by pid with --kill, as nobody (saver () : as root); returns (output file, image)."""
    out, img = os.path.join(shared_dir, "out"), os.path.join(shared_dir, "p.img")
    p = subprocess.Popen([*NOBODY, *argv], stdout=nobodys(out), stdin=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        wait_for_output(out, r"^step 3 ")
        batch(str(p.pid), "-o", img, "--kill", prefix=saver, check=0)
        p.wait(timeout=30)
    finally:
        p.kill()
    return out, img


def test_root_saves_another_users_process_with_its_limits(shared_dir):
    """Root may trace nobody's process but, without CAP_SYS_RESOURCE (a container's root;
    this machine's), not prlimit it: the limits then come from /proc/PID/limits."""
    argv = [example("counter"), "40", "20"]
    out, img = saved_by_nobody(argv, shared_dir, saver=())
    info = json.loads(batch("info", "--json", img, check=0).stdout)
    limits = {r["resource"]: (r["soft"], r["hard"]) for r in info["process"]["rlimits"]}
    assert sorted(limits) == list(range(16))
    assert limits[7] == resource.getrlimit(resource.RLIMIT_NOFILE)    # inherited from us
    r = batch("restore", img, "--json", check=0)
    wait_gone(json.loads(r.stdout.splitlines()[-1])["pid"])
    assert open(out).read() == uninterrupted(argv)


def test_root_restoring_a_users_image_gets_a_process_running_as_that_user(shared_dir):
    """Credentials come back: root restoring nobody's image does not run nobody's code as
    root; and nobody may not restore root's image."""
    argv = [example("counter"), "40", "20"]
    out, img = saved_by_nobody(argv, shared_dir)
    r = batch("restore", img, "--json", check=0)
    pid = json.loads(r.stdout.splitlines()[-1])["pid"]
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    assert "\nUid:\t65534\t65534\t65534\t65534\n" in status, status
    assert "\nCapEff:\t0000000000000000\n" in status
    wait_gone(pid)
    assert open(out).read() == uninterrupted(argv)
    # Files are reopened as nobody: one that only root may write is refused.
    os.chown(out, 0, 0)
    r = batch("restore", img, check=1)
    assert re.search(r"open \S+/out as fd 1 .* Permission denied", r.stderr), r.stderr
    # The other way round: refused before anything runs, naming the user.
    mine = os.path.join(shared_dir, "root.img")
    q = spawn(argv, os.path.join(shared_dir, "out2"))
    try:
        wait_for_output(os.path.join(shared_dir, "out2"), r"^step 1 ")
        batch(str(q.pid), "-o", mine, "--no-sync", check=0)
    finally:
        q.kill()
        q.wait()
    os.chmod(mine, 0o644)
    msg = one_line_error(batch("restore", mine, prefix=NOBODY), 1)
    assert "ran as uid 0/0/0 (root)" in msg and "only root or that user" in msg


def test_paths_in_an_image_are_never_opened_blindly(tmp_path):
    """A FIFO where a saved file was, or a 'device' entry that names another path, must
    not hang or open anything: the dry run answers at once."""
    inp = tmp_path / "input"
    inp.write_text("x\n" * 10)
    argv = [example("counter"), "100", "20"]
    out, img = str(tmp_path / "out"), str(tmp_path / "p.img")
    with open(inp) as stdin, open(out, "w") as f:
        p = subprocess.Popen(argv, stdout=f, stdin=stdin, stderr=subprocess.DEVNULL)
    try:
        wait_for_output(out, r"^step 1 ")
        batch(str(p.pid), "-o", img, "--no-sync", check=0)
    finally:
        p.kill()
        p.wait()
    os.unlink(inp)
    os.mkfifo(inp)
    r = batch("restore", "--dry-run", img, timeout=30)
    assert r.returncode == 1 and "no longer a file" in r.stderr, r.stderr

    def to_etc(fds):
        fds["fds"][0]["kind"], fds["fds"][0]["target"] = "chardev", "/dev/../etc/shadow"
        return fds
    forged = rewrite_record(img, fmt.RecordType.FDS, to_etc)
    r = batch("restore", "--dry-run", forged, timeout=30, check=0)
    assert "not a device path: /dev/null in its place" in r.stdout


EXT4_IOC_SHUTDOWN, NOLOGFLUSH = 0x8004587D, 2


def test_a_power_cut_after_a_save_over_an_image_leaves_one_that_verifies(tmp_path):
    """A save over an older image with sync off, then the filesystem shut down without
    flushing (a power cut) once its journal has committed the rename: at least one image
    in the directory still verifies."""
    import fcntl
    import shutil
    import struct
    if not shutil.which("mkfs.ext4") or os.geteuid() != 0:
        pytest.skip("needs root and mkfs.ext4 (e2fsprogs) to make a filesystem to cut")
    fs, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    subprocess.run(["dd", "if=/dev/zero", f"of={fs}", "bs=1M", "count=96", "status=none"],
                   check=True)
    subprocess.run(["mkfs.ext4", "-q", str(fs)], check=True)
    mnt.mkdir()
    # commit=1: the journal commits every second (5 s by default), so the test waits less.
    if subprocess.run(["mount", "-o", "loop,commit=1", str(fs), str(mnt)]).returncode != 0:
        pytest.skip("this machine cannot mount a loop device")
    try:
        out = str(tmp_path / "out")
        p = spawn([example("bigmem"), "24", "1000", "20"], out)
        try:
            wait_for_output(out, r"^step 1 ")
            img = str(mnt / "p.img")
            batch(str(p.pid), "-o", img, check=0)             # synced: on disk
            batch(str(p.pid), "-o", img, "--no-sync", check=0)
        finally:
            p.kill()
            p.wait()
        time.sleep(1.5)          # the journal commits every second: the exchange is in it
        fd = os.open(mnt, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("<I", NOLOGFLUSH))
        finally:
            os.close(fd)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["mount", "-o", "loop", str(fs), str(mnt)], check=True)
    try:
        good = [n for n in os.listdir(mnt) if n.endswith(".img") or ".tmp-" in n
                if batch("verify", str(mnt / n)).returncode == 0]
        assert good, os.listdir(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_the_picker_matches_pids_in_full_and_names_uniquely():
    from gdbckpt.batch import BatchError, matching, picked
    procs = [(3014, "/usr/bin/python3 worker.py", 10), (30149, "redis-server *:6379", 20),
             (812, "/usr/bin/python3 other.py", 5)]
    assert [p for p, _ in matching(procs, "3014")] == [3014, 30149]
    assert picked(procs, "3014") == 3014           # never the other one that starts so
    assert picked(procs, "redis") == 30149
    with pytest.raises(BatchError, match="matches 2 processes"):
        picked(procs, "python3")
    with pytest.raises(BatchError, match="none of your processes"):
        picked(procs, "301")


def test_in_gdb_root_restoring_a_users_image_runs_it_as_that_user(sessions, shared_dir):
    """The same in GDB: the restored process runs as nobody, GDB (root) attached to it,
    and it finishes right; a bad --clocks value is a one-line error."""
    from harness import error_of, read
    argv = [example("counter"), "40", "20"]
    out, img = saved_by_nobody(argv, shared_dir)
    s = sessions()
    assert "--clocks takes one of continue, host" in error_of(s, f"ckpt restore --clocks=x {img}")
    assert "Restored process" in s.restore(img, None, "/dev/null")
    with open(f"/proc/{s.pid()}/status") as f:
        assert "\nUid:\t65534\t65534\t65534\t65534\n" in f.read()
    assert s.finish().get("reason") == "exited-normally"
    assert read(out) == uninterrupted(argv)


def test_in_gdb_root_saves_another_users_process_with_its_limits(sessions, shared_dir):
    """GDB (root, without CAP_SYS_RESOURCE here) attached to nobody's process: ckpt save
    reads its limits from /proc/PID/limits where prlimit is refused; the image restores."""
    from harness import read
    argv = [example("counter"), "40", "20"]
    out, img = os.path.join(shared_dir, "out"), os.path.join(shared_dir, "p.img")
    p = subprocess.Popen([*NOBODY, *argv], stdout=nobodys(out), stdin=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        wait_for_output(out, r"^step 3 ")
        with open(f"/proc/{p.pid}/limits") as f:
            nofile = next(line.split()[3:5] for line in f if line.startswith("Max open files"))
        s = sessions()
        s.cli(f"attach {p.pid}")
        assert "Saved process" in s.save(img)
        s.cli("kill")
    finally:
        p.kill()
        p.wait()
    info = json.loads(batch("info", "--json", img, check=0).stdout)
    limits = {r["resource"]: (r["soft"], r["hard"]) for r in info["process"]["rlimits"]}
    assert sorted(limits) == list(range(16))
    assert limits[resource.RLIMIT_NOFILE] == tuple(int(n) for n in nofile)
    r = sessions()
    assert "Restored process" in r.restore(img, None, "/dev/null")
    assert r.finish().get("reason") == "exited-normally"
    assert read(out) == uninterrupted(argv)


def test_a_terminal_program_restored_headless_writes_to_the_restoring_terminal(tmp_path):
    """Saved on one terminal, restored from another: the output appears on the
    restoring terminal, and the command returns once the process runs."""
    import pty
    argv = [example("counter"), "30", "20"]
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    img = str(tmp_path / "t.img")
    try:
        seen = b""
        while b"step 3 " not in seen:
            seen += os.read(master, 4096)
        batch(str(p.pid), "-o", img, "--kill", check=0)
    finally:
        p.kill()
        p.wait()
        os.close(master)
        os.close(slave)
    master, slave = pty.openpty()
    try:
        r = subprocess.run([*BATCH, "restore", img, "--json"], stdin=slave, capture_output=True,
                           cwd=REPO, timeout=60, text=True)
        assert r.returncode == 0, r.stderr
        pid = json.loads(r.stdout.splitlines()[-1])["pid"]
        got = b""
        while b"done" not in got:
            got += os.read(master, 4096)
        wait_gone(pid)
    finally:
        os.close(master)
        os.close(slave)
    text = got.decode().replace("\r\n", "\n")
    assert "step 29 " in text and "\ndone " in text, text


def test_stdout_stands_in_for_a_saved_output_file_that_is_gone(tmp_path):
    argv = [example("counter"), "20", "10"]
    want = uninterrupted_later(argv)
    out, img, other = str(tmp_path / "out"), str(tmp_path / "p.img"), str(tmp_path / "other")
    saved_by_pid(argv, out, img, r"^step 3 ")
    before = open(out).read()
    os.unlink(out)
    r = batch("restore", img, check=1)         # without --stdout: the file is gone
    assert "restore with --force" in r.stderr, r.stderr
    r = batch("restore", img, "--stdout", other, "--json", check=0)
    wait_gone(json.loads(r.stdout.splitlines()[-1])["pid"])
    assert before + open(other).read() == want()


def test_a_crafted_image_cannot_make_roots_restore_map_a_root_only_file(shared_dir, tmp_path):
    """nobody's image, edited to map a file only root may read, shared and writable,
    with that file's size, mtime and inode (so that it passes as unchanged): root's
    restore opens it as nobody, and is refused; the file is untouched."""
    argv = [example("counter"), "40", "20"]
    out, img = saved_by_nobody(argv, shared_dir)
    secret = tmp_path / "secret"
    secret.write_bytes(b"root's own" * 1000)
    os.chmod(secret, 0o600)
    st = os.stat(secret)

    def files(rec):
        rec["files"][0].update(path=str(secret), size=st.st_size, mtime_ns=st.st_mtime_ns,
                               ino=st.st_ino, dev=st.st_dev, build_id=None, hash=None)
        return rec

    def vmas(rec):
        v = next(v for v in rec["vmas"] if v["file"] == 0)
        v.update(shared=True, prot=3, end=v["start"] + 4096, offset=0)
        return rec
    crafted = rewrite_record(rewrite_record(img, fmt.RecordType.FILES, files),
                             fmt.RecordType.VMAS, vmas)
    r = batch("restore", crafted, check=None)
    assert r.returncode != 0, r.stdout
    assert f"open {secret} as fd" in r.stderr and "Permission denied" in r.stderr, r.stderr
    assert secret.read_bytes() == b"root's own" * 1000


def test_a_snapshot_finds_the_same_pages_as_the_stopped_process(tmp_path):
    """A running save takes the pages to read of private memory from the snapshot's
    pagemap, not the process's: of a process asleep, the snapshot's image and a
    --no-snapshot image hold the same chunks. Not the same bytes: one CI run differed
    in one 8 KiB chunk, likely the TLS page where the kernel writes the CPU a thread
    last ran on (glibc's rseq area), which may differ for the snapshot."""
    from gdbckpt.image.reader import Image
    p = subprocess.Popen([example("sleeper"), "60"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "sleeping"
        tables = []
        for name, opts in (("snap", ()), ("stopped", ("--no-snapshot",))):
            img = str(tmp_path / f"{name}.img")
            batch(str(p.pid), "-o", img, "--no-sync", *opts, check=0)
            tables.append(sorted((c.vaddr, c.size, c.flags) for c in Image.open(img).chunks))
    finally:
        p.kill()
        p.wait()
    assert len(tables[0]) > 5
    assert tables[0] == tables[1]


@pytest.mark.parametrize("when", ["while stopped", "while running on"])
def test_a_snapshot_killed_during_the_save_fails_it_and_leaves_no_image(tmp_path, when):
    """Something else kills the snapshot (an administrator, the OOM killer): the save
    fails in one line, not an image short of memory, whenever that happens."""
    from gdbckpt.engine import save as engine_save
    from gdbckpt.engine.front import Front
    from gdbckpt.engine.process import Process
    from gdbckpt.errors import SaveError
    out, img = str(tmp_path / "out"), str(tmp_path / "k.img")
    p = spawn([example("bigmem"), "64", "1000", "1000"], out)
    resumed = []

    class KillsTheSnapshot(Front):
        def progress(self, phase, total):
            def advance(done, final=False):
                if (when == "while running on") == bool(resumed):
                    with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                        for child in f.read().split():
                            os.kill(int(child), signal.SIGKILL)
            return advance
    try:
        wait_for_output(out, r"^step 0 ")
        proc = Process.seize(p.pid)
        try:
            with pytest.raises(SaveError, match="ended while"):
                engine_save.save(proc, img, front=KillsTheSnapshot(),
                                 resume=lambda: resumed.append(proc.release()))
        finally:
            proc.release()
        assert not os.path.exists(img)
        assert os.listdir(tmp_path) == ["out"]          # no temporary file either
    finally:
        p.kill()
        p.wait()
