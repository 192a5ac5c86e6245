"""gdbckpt.tcprepair on real loopback connections: save, close in repair mode, make again."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import msgspec
import pytest

from gdbckpt.tcprepair import (
    SIOCINQ,
    SO_BUF_LOCK,
    TCP_NO_QUEUE,
    TCP_REPAIR_QUEUE,
    TCP_SEND_QUEUE,
    RepairError,
    TcpConn,
    _ioctl_int,
    can_repair,
    enter_repair,
    leave_repair,
    make,
    save,
)

pytestmark = pytest.mark.skipif(
    not can_repair(), reason="TCP_REPAIR refused: this process lacks CAP_NET_ADMIN")

FAMILIES = [pytest.param(socket.AF_INET, "127.0.0.1", id="ipv4"),
            pytest.param(socket.AF_INET6, "::1", id="ipv6")]
TCP_STATES = {1: "ESTABLISHED", 6: "TIME_WAIT"}


@pytest.fixture
def sockets():
    """Every socket a test opens here is closed at its end."""
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def pair(opened: list, family: int, host: str) -> tuple[socket.socket, socket.socket]:
    """A connected (client, server) over loopback; the listener stays open, as in a server."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    opened.append(listener)
    listener.bind((host, 0))
    listener.listen()
    a = socket.create_connection(listener.getsockname()[:2])
    b, _ = listener.accept()
    opened += [a, b]
    return a, b


def wait_inq(sock: socket.socket, n: int) -> None:
    """Until n bytes sit unread in sock's receive queue (loopback is quick, not instant)."""
    deadline = time.monotonic() + 5
    while _ioctl_int(sock, SIOCINQ) < n:
        assert time.monotonic() < deadline, f"only {_ioctl_int(sock, SIOCINQ)} of {n} bytes came"
        time.sleep(0.005)


def recv_exactly(sock: socket.socket, n: int, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(min(n - len(got), 1 << 20))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def assert_nothing_more(sock: socket.socket) -> None:
    """No byte, no EOF and no reset waiting on sock."""
    timeout = sock.gettimeout()
    sock.settimeout(0)      # with a timeout set, Python would wait whatever the flags
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(1)
    finally:
        sock.settimeout(timeout)


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def kernel_states(family: int, local_port: int, peer_port: int) -> set[str]:
    """States of the kernel's sockets (TIME_WAIT included) for this pair of ports.

    /proc/net/tcp is read in page-sized pieces, and a busy hash table can
    make it list a socket twice or skip it: read three times, keep the union.
    """
    path = "/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp"
    found = set()
    for _ in range(3):
        with open(path) as f:
            for line in f.readlines()[1:]:
                local, remote, state = line.split()[1:4]
                if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (
                        local_port, peer_port):
                    found.add(TCP_STATES.get(int(state, 16), state))
    return found


def close_in_repair(sock: socket.socket) -> None:
    """Close as the caller will (by killing the process): silently, leaving nothing behind."""
    local, peer = sock.getsockname()[1], sock.getpeername()[1]
    assert kernel_states(sock.family, local, peer) == {"ESTABLISHED"}
    sock.close()
    assert kernel_states(sock.family, local, peer) == set()     # no TIME_WAIT, no FIN_WAIT


def exchange(x: socket.socket, y: socket.socket, size: int) -> None:
    """size fresh bytes from x to y and size from y to x, at the same time."""
    def pump(src: socket.socket, dst: socket.socket) -> None:
        data = os.urandom(size)
        sender = threading.Thread(target=src.sendall, args=(data,))
        sender.start()
        try:
            assert recv_exactly(dst, size) == data
        finally:
            sender.join(10)
    other = threading.Thread(target=pump, args=(y, x))
    other.start()
    pump(x, y)
    other.join(10)
    assert not other.is_alive()


def lose_in_flight(sock: socket.socket, data: bytes) -> None:
    """Queue data on sock as sent but never transmitted: what a lost segment leaves behind.

    In repair mode with the send queue selected, send() marks the bytes as
    sent without putting them on the wire; only a retransmission delivers them.
    """
    enter_repair(sock)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    assert sock.send(data) == len(data)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)


def assert_json_friendly(conn: TcpConn) -> None:
    d = msgspec.structs.asdict(conn)
    for k, v in d.items():
        assert type(v) in (int, str, bool, bytes, list), k
    text = json.dumps(d, default=bytes.hex)
    back = {k: bytes.fromhex(v) if isinstance(d[k], bytes) else v
            for k, v in json.loads(text).items()}
    assert TcpConn(**back) == conn


@pytest.mark.parametrize("family,host", FAMILIES)
def test_both_ends_saved_and_made_again(sockets, family, host):
    a, b = pair(sockets, family, host)
    a_to_b, b_to_a, lost = os.urandom(3000), os.urandom(5000), os.urandom(1500)
    a.sendall(a_to_b)
    b.sendall(b_to_a)
    wait_inq(b, len(a_to_b))
    wait_inq(a, len(b_to_a))
    lose_in_flight(a, lost)         # a is now in repair mode
    enter_repair(b)
    ca, cb = save(a), save(b)

    assert (ca.recv_queue, ca.send_queue, ca.unsent) == (b_to_a, lost, 0)
    assert (cb.recv_queue, cb.send_queue, cb.unsent) == (a_to_b, b"", 0)
    assert (ca.send_seq, ca.recv_seq) == (cb.recv_seq + len(lost), cb.send_seq)
    assert ca.timestamps and ca.sack and ca.wscale and ca.mss > 0
    assert_json_friendly(ca)
    names = [(s.getsockname(), s.getpeername()) for s in (a, b)]
    close_in_repair(a)
    close_in_repair(b)

    na, nb = make(ca), make(cb)
    sockets += [na, nb]
    assert [(s.getsockname(), s.getpeername()) for s in (na, nb)] == names
    assert tcp_state(na) == tcp_state(nb) == 1
    # The lost bytes arrive by a's retransmission timer, after the queued ones.
    assert recv_exactly(nb, len(a_to_b) + len(lost)) == a_to_b + lost
    assert recv_exactly(na, len(b_to_a)) == b_to_a
    assert_nothing_more(na)
    assert_nothing_more(nb)
    exchange(na, nb, 300_000)


@pytest.mark.parametrize("family,host", FAMILIES)
def test_one_end_made_again_with_its_peer_kept(sockets, family, host):
    """Only b is saved and made again; a is never touched, so the sequence
    numbers, options and windows of the new b must be exactly right."""
    a, b = pair(sockets, family, host)
    a_to_b, b_to_a = os.urandom(4000), os.urandom(6000)
    a.sendall(a_to_b)
    b.sendall(b_to_a)
    wait_inq(b, len(a_to_b))
    wait_inq(a, len(b_to_a))
    enter_repair(b)
    cb = save(b)
    name = (b.getsockname(), b.getpeername())
    close_in_repair(b)

    # a saw nothing of the close: still ESTABLISHED, its data there, no EOF, no reset.
    assert tcp_state(a) == 1
    assert recv_exactly(a, len(b_to_a)) == b_to_a
    assert_nothing_more(a)

    nb = make(cb)
    sockets.append(nb)
    assert (nb.getsockname(), nb.getpeername()) == name
    assert recv_exactly(nb, len(a_to_b)) == a_to_b
    exchange(a, nb, 300_000)
    assert_nothing_more(a)
    assert_nothing_more(nb)


@pytest.mark.parametrize("peer_saved", [False, True], ids=["peer-kept", "peer-saved"])
def test_large_send_queue_survives(sockets, peer_saved):
    """a writes until its buffers are full while b does not read: most of a's
    send queue was never sent (b's window is all but closed)."""
    a, b = pair(sockets, socket.AF_INET, "127.0.0.1")
    data = os.urandom(8 << 20)
    a.setblocking(False)
    sent = 0
    while sent < len(data):
        try:
            sent += a.send(data[sent:sent + 65536])
        except BlockingIOError:
            break
    assert sent >= 1 << 20
    time.sleep(0.1)                 # let loopback settle: b's window is closed by now

    enter_repair(a)
    ca = save(a)
    assert len(ca.send_queue) + len(ca.recv_queue) > 0
    assert ca.send_queue == data[sent - len(ca.send_queue):sent]
    assert ca.unsent > 0
    close_in_repair(a)
    if peer_saved:
        enter_repair(b)
        cb = save(b)
        assert cb.recv_queue + ca.send_queue == data[:sent]
        close_in_repair(b)
        na, b = make(ca), make(cb)
        sockets += [na, b]
    else:
        na = make(ca)
        sockets.append(na)

    assert recv_exactly(b, sent, timeout=30) == data[:sent]
    assert_nothing_more(b)
    exchange(na, b, 100_000)


def test_socket_options_come_back(sockets):
    a, b = pair(sockets, socket.AF_INET, "127.0.0.1")
    tcp, sol = socket.IPPROTO_TCP, socket.SOL_SOCKET
    settings = [(tcp, socket.TCP_NODELAY, 1), (sol, socket.SO_KEEPALIVE, 1),
                (tcp, socket.TCP_KEEPIDLE, 30), (tcp, socket.TCP_KEEPINTVL, 7),
                (tcp, socket.TCP_KEEPCNT, 4), (tcp, socket.TCP_USER_TIMEOUT, 9000),
                (sol, socket.SO_RCVBUF, 300_000)]
    for level, opt, value in settings:
        b.setsockopt(level, opt, value)
    before = [b.getsockopt(level, opt) for level, opt, _ in settings]
    sndbuf = b.getsockopt(sol, socket.SO_SNDBUF)
    enter_repair(b)
    cb = save(b)
    assert cb.buf_lock == 2     # the program fixed rcvbuf; sndbuf is the kernel's to tune
    close_in_repair(b)
    nb = make(cb)
    sockets.append(nb)
    assert [nb.getsockopt(level, opt) for level, opt, _ in settings] == before
    assert nb.getsockopt(sol, socket.SO_SNDBUF) == sndbuf
    assert nb.getsockopt(sol, SO_BUF_LOCK) == 2
    assert nb.getsockopt(tcp, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode() == cb.congestion
    exchange(a, nb, 100_000)


def test_save_needs_repair_mode(sockets):
    a, b = pair(sockets, socket.AF_INET, "127.0.0.1")
    with pytest.raises(RepairError, match=r"127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+: not in TCP "
                       r"repair mode \(call enter_repair first\)"):
        save(a)
    exchange(a, b, 1000)


def test_save_then_leave_changes_nothing(sockets):
    a, b = pair(sockets, socket.AF_INET, "127.0.0.1")
    a.sendall(b"queued")
    wait_inq(b, 6)
    enter_repair(b)
    cb = save(b)
    again = save(b)
    # Reading twice gives the same, but for the clock (TCP_TIMESTAMP, in ms) between them.
    assert 0 <= again.tsval - cb.tsval < 1000
    assert msgspec.structs.replace(again, tsval=cb.tsval) == cb
    leave_repair(b)
    assert recv_exactly(b, 6) == b"queued"
    exchange(a, b, 100_000)


def test_failed_make_leaves_nothing_open(sockets):
    """make() while the original still holds the 4-tuple fails on connect(),
    names the connection, closes its socket quietly and disturbs nobody."""
    a, b = pair(sockets, socket.AF_INET, "127.0.0.1")
    enter_repair(b)
    cb = save(b)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(RepairError, match=rf"tcp 127\.0\.0\.1:{cb.local_port} -> "
                       rf"127\.0\.0\.1:{cb.peer_port}: cannot recreate .*: connect: "):
        make(cb)
    assert len(os.listdir("/proc/self/fd")) == fds
    leave_repair(b)
    exchange(a, b, 100_000)
