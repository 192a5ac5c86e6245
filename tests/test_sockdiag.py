"""sockdiag against real sockets made here; the oracle is each socket's own facts."""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from gdbckpt import sockdiag
from gdbckpt.sockdiag import InetSock, UnixSock

TCP_ESTABLISHED, TCP_FIN_WAIT2, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_LISTEN = 1, 5, 7, 8, 10
RCV_SHUTDOWN, SEND_SHUTDOWN = 1, 2

_names = itertools.count()


def ino(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def abstract_name() -> bytes:
    return f"\0gdbckpt-sockdiag-{os.getpid()}-{next(_names)}".encode()


@pytest.fixture
def socks() -> Iterator[Callable[..., socket.socket]]:
    """Make sockets (socket.socket's arguments) that are closed when the test ends."""
    made: list[socket.socket] = []

    def make(*args: int) -> socket.socket:
        s = socket.socket(*args)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def unix_of(*ss: socket.socket) -> list[UnixSock]:
    found = sockdiag.unix_sockets({ino(s) for s in ss})
    return [found[ino(s)] for s in ss]


def inet_of(*ss: socket.socket) -> list[InetSock]:
    found = sockdiag.inet_sockets({ino(s) for s in ss})
    return [found[ino(s)] for s in ss]


def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Loopback TCP usually settles before connect() returns; allow for when it does not."""
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "the kernel never reported the expected state"
        time.sleep(0.01)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")


# ---- AF_UNIX ----------------------------------------------------------------

@pytest.mark.parametrize("stype", [socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
def test_socketpair_peers_and_read_queue(stype: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, stype)
    with a, b:
        a.send(b"x" * 37)
        da, db = unix_of(a, b)
        assert (da.ino, db.ino) == (ino(a), ino(b))
        assert da.peer == ino(b) and db.peer == ino(a)
        assert da.type == db.type == stype
        assert da.state == db.state == TCP_ESTABLISHED
        assert da.name is None and db.name is None
        assert db.rqueue == 37 and da.rqueue == 0
        assert da.pending == db.pending == ()
        assert da.shutdown == db.shutdown == 0
        b.recv(100)
        assert unix_of(b)[0].rqueue == 0


@pytest.mark.parametrize("stype", [socket.SOCK_STREAM, socket.SOCK_SEQPACKET])
def test_stream_read_queue_sums_all_messages(stype: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, stype)
    with a, b:
        a.send(b"x" * 10)
        a.send(b"y" * 20)
        assert unix_of(b)[0].rqueue == 30


def test_dgram_read_queue_is_first_datagram_only() -> None:
    # unix_inq_len() reports only the head datagram for SOCK_DGRAM, as FIONREAD does.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(b"x" * 10)
        a.send(b"y" * 20)
        assert unix_of(b)[0].rqueue == 10


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_listener_with_pending_connection(kind: str, socks, tmp_path) -> None:
    addr: str | bytes = str(tmp_path / "l.sock") if kind == "path" else abstract_name()
    lst = socks(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(addr)
    lst.listen(5)
    cli = socks(socket.AF_UNIX, socket.SOCK_STREAM)
    cli.connect(addr)

    dl, dc = unix_of(lst, cli)
    assert dl.state == TCP_LISTEN and dl.type == socket.SOCK_STREAM
    assert dl.name == os.fsencode(lst.getsockname())
    assert dl.name == (addr.encode() if isinstance(addr, str) else addr)
    assert dl.pending == (ino(cli),)        # the connecting socket, not the one to be accepted
    assert dl.rqueue == 1 and dl.wqueue == 5
    assert dl.peer == 0
    # Until accept() the client's peer is a socket with no file yet.
    assert dc.state == TCP_ESTABLISHED and dc.peer == 0 and dc.name is None

    srv, _ = lst.accept()
    with srv:
        dl, dc, ds = unix_of(lst, cli, srv)
        assert dl.pending == () and dl.rqueue == 0 and dl.wqueue == 5
        assert dc.peer == ino(srv) and ds.peer == ino(cli)
        assert ds.name == dl.name           # the accepted socket carries the listener's name


def test_listener_lists_every_pending_connection(socks) -> None:
    addr = abstract_name()
    lst = socks(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(addr)
    lst.listen(3)
    clients = [socks(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    for c in clients:
        c.connect(addr)
    (dl,) = unix_of(lst)
    assert dl.pending == tuple(ino(c) for c in clients)
    assert (dl.rqueue, dl.wqueue) == (3, 3)


def test_shutdown_write_shows_on_both_ends() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.shutdown(socket.SHUT_WR)
        da, db = unix_of(a, b)
        assert da.shutdown == SEND_SHUTDOWN
        assert db.shutdown == RCV_SHUTDOWN  # the kernel marks the peer's receive side too


def test_bound_unconnected_dgram(socks) -> None:
    addr = abstract_name()
    s = socks(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(addr)
    (d,) = unix_of(s)
    assert d.name == addr and d.peer == 0 and d.state == TCP_CLOSE


def test_unix_inode_filter(socks) -> None:
    s = socks(socket.AF_UNIX, socket.SOCK_STREAM)
    assert sockdiag.unix_sockets(set()) == {}
    assert ino(s) in sockdiag.unix_sockets()
    assert list(sockdiag.unix_sockets({ino(s)})) == [ino(s)]
    # A regular file's inode is no socket.
    assert sockdiag.unix_sockets({os.stat(__file__).st_ino}) == {}


# ---- TCP / UDP --------------------------------------------------------------

@pytest.mark.parametrize("family,host", [
    (socket.AF_INET, "127.0.0.1"),
    pytest.param(socket.AF_INET6, "::1", marks=needs_ipv6),
])
def test_tcp_listener_backlog_and_pending(family: int, host: str, socks) -> None:
    lst = socks(family, socket.SOCK_STREAM)
    lst.bind((host, 0))
    lst.listen(4)
    (d,) = inet_of(lst)
    assert (d.family, d.protocol, d.state) == (family, socket.IPPROTO_TCP, TCP_LISTEN)
    assert (d.src, d.sport) == lst.getsockname()[:2]
    assert (d.rqueue, d.wqueue) == (0, 4)

    cli = socks(family, socket.SOCK_STREAM)
    cli.connect(lst.getsockname())
    eventually(lambda: inet_of(lst)[0].rqueue == 1)
    assert inet_of(lst)[0].wqueue == 4


@needs_ipv6
@pytest.mark.parametrize("flag", [0, 1])
def test_v6only_reported_for_listening_and_closed_sockets(flag: int, socks) -> None:
    lst = socks(socket.AF_INET6, socket.SOCK_STREAM)
    lst.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, flag)
    lst.bind(("::", 0))
    lst.listen(1)
    udp = socks(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, flag)
    udp.bind(("::", 0))
    dl, du = inet_of(lst, udp)
    assert dl.v6only is bool(flag) and du.v6only is bool(flag)
    assert du.state == TCP_CLOSE


@needs_ipv6
def test_v6only_absent_for_ipv4_and_established(socks) -> None:
    # The kernel sends INET_DIAG_SKV6ONLY only for AF_INET6 in LISTEN or CLOSE.
    v4 = socks(socket.AF_INET, socket.SOCK_STREAM)
    v4.bind(("127.0.0.1", 0))
    v4.listen(1)
    lst = socks(socket.AF_INET6, socket.SOCK_STREAM)
    lst.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    lst.bind(("::1", 0))
    lst.listen(1)
    cli = socks(socket.AF_INET6, socket.SOCK_STREAM)
    cli.connect(lst.getsockname())
    d4, dc = inet_of(v4, cli)
    assert d4.v6only is None
    assert dc.state == TCP_ESTABLISHED and dc.v6only is None


def test_bound_udp(socks) -> None:
    s = socks(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    (d,) = inet_of(s)
    assert (d.family, d.protocol, d.state) == (socket.AF_INET, socket.IPPROTO_UDP, TCP_CLOSE)
    assert (d.src, d.sport) == s.getsockname()
    assert (d.dst, d.dport) == ("0.0.0.0", 0)
    assert d.v6only is None

    s.connect(("127.0.0.1", 9))
    (d,) = inet_of(s)
    assert d.state == TCP_ESTABLISHED and (d.dst, d.dport) == ("127.0.0.1", 9)


@pytest.mark.parametrize("family,host", [
    (socket.AF_INET, "127.0.0.1"),
    pytest.param(socket.AF_INET6, "::1", marks=needs_ipv6),
])
def test_tcp_established_pair(family: int, host: str, socks) -> None:
    lst = socks(family, socket.SOCK_STREAM)
    lst.bind((host, 0))
    lst.listen(1)
    cli = socks(family, socket.SOCK_STREAM)
    cli.connect(lst.getsockname())
    srv, _ = lst.accept()
    with srv:
        cli.sendall(b"z" * 123)
        eventually(lambda: inet_of(srv)[0].rqueue == 123)
        dc, ds = inet_of(cli, srv)
        for d, s in ((dc, cli), (ds, srv)):
            assert (d.family, d.protocol, d.state) == (family, socket.IPPROTO_TCP, TCP_ESTABLISHED)
            assert (d.src, d.sport) == s.getsockname()[:2]
            assert (d.dst, d.dport) == s.getpeername()[:2]
            assert d.shutdown == 0
        assert dc.rqueue == 0

        # The FIN moves both ends on: srv to FIN_WAIT2, cli (which got it) to CLOSE_WAIT.
        srv.shutdown(socket.SHUT_WR)
        eventually(lambda: [d.state for d in inet_of(srv, cli)] == [TCP_FIN_WAIT2, TCP_CLOSE_WAIT])
        ds, dc = inet_of(srv, cli)
        assert ds.shutdown == SEND_SHUTDOWN and dc.shutdown == RCV_SHUTDOWN


def test_unbound_tcp_socket_is_not_reported(socks) -> None:
    # Neither bound nor connected, a TCP socket is in no hash table the dump walks.
    s = socks(socket.AF_INET, socket.SOCK_STREAM)
    assert sockdiag.inet_sockets({ino(s)}) == {}


def test_inet_inode_filter(socks) -> None:
    s = socks(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    assert sockdiag.inet_sockets(set()) == {}
    assert ino(s) in sockdiag.inet_sockets()
    assert list(sockdiag.inet_sockets({ino(s)})) == [ino(s)]


# ---- defensive parsing ------------------------------------------------------

def test_attribute_longer_than_its_message_is_an_error() -> None:
    msg = struct.pack("=BBBBI8s", socket.AF_UNIX, 1, 1, 0, 42, b"")
    good = msg + struct.pack("=HHI", 8, sockdiag.UNIX_DIAG_PEER, 7)
    assert sockdiag._parse_unix(good).peer == 7
    with pytest.raises(OSError, match="does not fit"):
        sockdiag._parse_unix(msg + struct.pack("=HHI", 12, sockdiag.UNIX_DIAG_PEER, 7))
    with pytest.raises(OSError, match="too short"):
        sockdiag._parse_unix(msg + struct.pack("=HHH", 6, sockdiag.UNIX_DIAG_PEER, 7))
    with pytest.raises(OSError, match="truncated"):
        sockdiag._parse_unix(msg[:10])
    with pytest.raises(OSError, match="truncated"):
        sockdiag._parse_inet(b"\0" * 71, socket.IPPROTO_TCP)


def test_kernel_refusal_is_oserror() -> None:
    # A family sock_diag does not know: the kernel answers NLMSG_ERROR -EINVAL.
    with pytest.raises(OSError, match="refused") as info:
        sockdiag._dump(sockdiag._INET_REQ.pack(250, 0, 0, 0, sockdiag.ALL_STATES))
    assert info.value.errno == 22
