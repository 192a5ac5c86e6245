"""Event loops and servers: pipes, sockets, eventfd, timerfd, signalfd and epoll come
back with their state, in GDB and headless; asyncio, node and redis-server run on."""

import json
import os
import re
import shutil
import socket
import subprocess

import pytest
from harness import (
    batch,
    batch_restore,
    by_pid_and_back,
    example,
    leaves_no_process,
    read,
    saved_by_pid,
    spawn,
    uninterrupted,
    uninterrupted_later,
    wait_for_output,
    wait_gone,
)

from gdbckpt import tcprepair

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
needs_repair = pytest.mark.skipif(not tcprepair.can_repair(),
                                  reason="TCP_REPAIR needs CAP_NET_ADMIN")


def kill_and_reap(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait()


def test_every_kind_comes_back_in_a_fresh_gdb(sessions, tmp_path):
    """events holds every kind, with data pending in each, at checkpoint_here."""
    argv = [example("events"), str(tmp_path), "0"]
    want = uninterrupted(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "e.img")
    s = sessions()
    s.start(argv, out, breakpoint="checkpoint_here")
    text = s.save(img)
    assert "cannot be restored" not in text and "lost" not in text, text
    s.cli("kill")
    r = sessions()
    text = r.restore(img, out)
    assert "/dev/null" not in text and "reset" not in text, text
    r.cli("delete")
    assert r.finish().get("reason") == "exited-normally"
    assert read(out) == want.removeprefix("ready\n")
    assert "FAILED" not in want and "timeout" not in want
    for line in ("memfd: /memfd:events-memfd (deleted); read 10 at 100 same 1; seals 8; "
                 "write refused 1", "in flight: 'carrier' carrying a file that reads 'ried file'",
                 "locks: flock held 1", "pidfd: names this process 1"):
        assert line in want, line
    assert "fanotify: event open, from this process 1" in want or \
        (os.geteuid() != 0 and "fanotify: unavailable" in want), want


@needs_repair
def test_every_kind_comes_back_headless_while_running(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    want = uninterrupted_later([example("events"), str(ref), "1.5"])
    argv = [example("events"), str(tmp_path), "1.5"]
    out, img = str(tmp_path / "out"), str(tmp_path / "e.img")
    saved_by_pid(argv, out, img, "^ready")
    batch_restore(img)
    assert read(out) == want()


@needs_repair
def test_asyncio_server_and_its_client_run_on(tmp_path):
    argv = ["/usr/bin/python3", os.path.join(EXAMPLES, "aioserver.py"), "20"]
    by_pid_and_back(argv, r"^ROUND 6 ", tmp_path)


@needs_repair
def test_node_http_server_keeps_its_keepalive_connection(tmp_path):
    argv = ["/usr/bin/node", os.path.join(EXAMPLES, "nodehttp.js"), "20"]
    want = uninterrupted_later(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "n.img")
    p = spawn(argv, out)
    try:
        wait_for_output(out, r"^6 200 ")
        if uses_io_uring(p.pid):
            # libuv 1.50 (Debian 13) always has io_uring descriptors, which no restore
            # gives back: --kill must keep node running, and say why in one line.
            r = batch(str(p.pid), "-o", img, "--kill", check=1)
            assert "io_uring" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
            assert p.poll() is None
            return
        batch(str(p.pid), "-o", img, "--kill", check=0)
    finally:
        kill_and_reap(p)
    batch_restore(img)
    got = want()
    assert read(out) == got
    assert "connections=1 " in got


def uses_io_uring(pid: int) -> bool:
    fds = f"/proc/{pid}/fd"
    return any(os.readlink(f"{fds}/{n}") == "anon_inode:[io_uring]" for n in os.listdir(fds))


def resp(*words: str) -> bytes:
    return b"".join([f"*{len(words)}\r\n".encode()] +
                    [f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words])


def ask(s: socket.socket, *words: str) -> bytes:
    s.sendall(resp(*words))
    data = b""
    while not data.endswith(b"\r\n"):
        data += s.recv(65536)
    return data


@needs_repair
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is missing "
                    "(./dev installs it)")
def test_redis_serves_its_data_on_its_port_after_a_restore(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path)]
    out, img = str(tmp_path / "out"), str(tmp_path / "r.img")
    p = spawn(argv, out)
    kept = None
    try:
        wait_for_output(out, "Ready to accept connections")
        kept = socket.create_connection(("127.0.0.1", port))
        for i in range(100):
            assert ask(kept, "SET", f"key{i}", f"value{i}") == b"+OK\r\n"
        assert ask(kept, "INCRBY", "counter", "41") == b":41\r\n"
        batch(str(p.pid), "-o", img, "--kill", check=0)
        wait_gone(p.pid)
        kill_and_reap(p)
        r = batch("restore", img, "--json", check=0)
        pid = json.loads(r.stdout.splitlines()[-1])["pid"]
        # The client's connection was saved with the server and goes on.
        assert ask(kept, "INCR", "counter") == b":42\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
            assert ask(fresh, "GET", "key77") == b"$7\r\nvalue77\r\n"
            assert ask(fresh, "DBSIZE") == b":101\r\n"
            fresh.sendall(resp("SHUTDOWN", "NOSAVE"))
        wait_gone(pid)
    finally:
        if kept is not None:
            kept.close()
        kill_and_reap(p)


def outside_peer(tmp_path):
    """A program with a unix connection to this test (which a restore cannot give
    back: the test's end is not saved), and the test's end of it."""
    path = str(tmp_path / "peer.sock")
    lsn = socket.socket(socket.AF_UNIX)
    lsn.bind(path)
    lsn.listen()
    code = ("import socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    out = str(tmp_path / "out")
    p = spawn(["/usr/bin/python3", "-c", code, path], out)
    conn, _ = lsn.accept()
    lsn.close()
    wait_for_output(out, "^ready")
    return p, conn


def test_kill_keeps_a_process_that_would_not_come_back_whole_unless_forced(tmp_path):
    p, conn = outside_peer(tmp_path)
    img = str(tmp_path / "x.img")
    try:
        r = batch(str(p.pid), "-o", img, "--kill", "--json", check=1)
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "left running" in err and re.search(r"unix stream \S+peer\.sock \(connected\)\)"
                                                   r": its peer is another process", err), err
        assert p.poll() is None
        batch(str(p.pid), "-o", img, "--strict", check=1)
        r = batch(str(p.pid), "-o", img, "--kill", "--force", check=0)
        wait_gone(p.pid)
    finally:
        conn.close()
        kill_and_reap(p)


def test_strict_refuses_and_keeps_the_old_image(tmp_path):
    p, conn = outside_peer(tmp_path)
    img = tmp_path / "x.img"
    img.write_bytes(b"old image")
    try:
        r = batch(str(p.pid), "-o", str(img), "--strict", check=1)
        assert "(--strict)" in r.stderr and "peer.sock" in r.stderr, r.stderr
        assert img.read_bytes() == b"old image"
    finally:
        conn.close()
        kill_and_reap(p)


def test_a_lock_held_elsewhere_refuses_the_restore_in_one_line(tmp_path):
    """The saved process still holds its flock: the restore must not hand a copy a
    lock it does not have, nor leave a half-made process behind."""
    code = ("import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    out, img = str(tmp_path / "out"), str(tmp_path / "l.img")
    p = spawn(["/usr/bin/python3", "-c", code, str(tmp_path / "held")], out)
    try:
        wait_for_output(out, "^ready")
        batch(str(p.pid), "-o", img, check=0)
        with leaves_no_process("gdbckpt-stub"):
            r = batch("restore", img, check=1)
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert re.search(r"take the write flock lock on fd \d+\) failed: .*flock.*"
                         r"Resource temporarily unavailable", err), err
    finally:
        kill_and_reap(p)


def test_a_memfd_comes_back_with_its_name_bytes_offset_and_seals(tmp_path):
    code = ("import fcntl, os, time\n"
            "fd = os.memfd_create('scratchpad', os.MFD_ALLOW_SEALING)\n"
            "os.write(fd, b'memfd data ' * 1000)\n"
            "os.lseek(fd, 11, os.SEEK_SET)\n"
            "fcntl.fcntl(fd, 1033, 8)\n"                    # F_ADD_SEALS F_SEAL_WRITE
            "print('ready', flush=True)\n"
            "time.sleep(0.5)\n"
            "print(os.read(fd, 10), fcntl.fcntl(fd, 1034), os.readlink(f'/proc/self/fd/{fd}'))\n"
            "try:\n"
            "    os.write(fd, b'x')\n"
            "except OSError as e:\n"
            "    print('write refused:', e.strerror)\n")
    argv = ["/usr/bin/python3", "-c", code]
    want = uninterrupted_later(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "m.img")
    saved_by_pid(argv, out, img, "^ready")
    batch_restore(img)
    got = want()
    assert read(out) == got
    assert "b'memfd data' 8 /memfd:scratchpad (deleted)" in got and "write refused" in got


@pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs CAP_SYS_ADMIN")
def test_a_fanotify_mark_comes_back_and_reports(tmp_path):
    watched = tmp_path / "watched"
    watched.write_text("x")
    code = ("import ctypes, os, struct, sys, time\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "fd = libc.fanotify_init(0, os.O_RDONLY)\n"                # FAN_CLASS_NOTIF
            "assert libc.fanotify_mark(fd, 1, ctypes.c_uint64(0x20), -100,\n"   # ADD, FAN_OPEN
            "                          sys.argv[1].encode()) == 0\n"
            "print('ready', flush=True)\n"
            "time.sleep(0.5)\n"
            "open(sys.argv[1]).close()\n"
            "ev = os.read(fd, 4096)\n"
            "length, ver, _, meta, mask, efd, pid = struct.unpack_from('=IBBHQii', ev)\n"
            "os.close(efd)\n"
            "print('event', hex(mask), pid == os.getpid(), flush=True)\n")
    argv = ["/usr/bin/python3", "-c", code, str(watched)]
    other = tmp_path / "other"          # the reference run watches a file of its own
    other.write_text("x")
    want = uninterrupted_later([*argv[:-1], str(other)])
    out, img = str(tmp_path / "out"), str(tmp_path / "f.img")
    saved_by_pid(argv, out, img, "^ready")
    batch_restore(img)
    got = want()
    assert read(out) == got and "event 0x20 True" in got
