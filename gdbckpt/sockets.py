"""Sockets: what a save can learn of one, and how a restore makes it again.

A save takes a copy of the process's socket (pidfd_getfd) and asks it and the
kernel (sock_diag) for its family, addresses, peer, options and unread data,
without taking any. A restore makes the socket in gdbckpt's own process and
the stub takes a copy:
  - unix socket pairs inside the process: a new pair with the queued messages;
  - listening and bound sockets: bound again to the same name or address;
  - established TCP: repaired with TCP_REPAIR (tcprepair.py) where permitted;
  - what cannot come back (a peer in another process, a connection without
    repair) becomes a socket that was reset: reads see ECONNRESET or end of
    file, writes EPIPE, as if the peer had gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
import struct

import msgspec

from . import sockdiag, tcprepair
from .image.model import InFlight, SockState
from .libc import unread_bytes

SOL_SOCKET, SOL_TCP, SOL_IPV6 = socket.SOL_SOCKET, socket.IPPROTO_TCP, socket.IPPROTO_IPV6
SO_PEEK_OFF = 42
TCP_LISTEN, TCP_ESTABLISHED = 10, 1
RCV_SHUTDOWN, SEND_SHUTDOWN = 1, 2
PEEK_MAX = 1 << 18          # more than the largest unix datagram
QUEUE_MAX = 64 << 20        # unread data a save keeps per socket
MESSAGES_MAX = 1 << 16      # and messages (zero-length ones included)
ANC_ROOM = 4096             # ancillary data: descriptors in flight, credentials

# Options worth keeping, by name: (level, option, size); size 0 is an int.
OPTIONS = {
    "SO_REUSEADDR": (SOL_SOCKET, socket.SO_REUSEADDR, 0),
    "SO_REUSEPORT": (SOL_SOCKET, socket.SO_REUSEPORT, 0),
    "SO_KEEPALIVE": (SOL_SOCKET, socket.SO_KEEPALIVE, 0),
    "SO_BROADCAST": (SOL_SOCKET, socket.SO_BROADCAST, 0),
    "SO_OOBINLINE": (SOL_SOCKET, socket.SO_OOBINLINE, 0),
    "SO_PASSCRED": (SOL_SOCKET, socket.SO_PASSCRED, 0),
    "SO_PRIORITY": (SOL_SOCKET, socket.SO_PRIORITY, 0),
    "SO_RCVLOWAT": (SOL_SOCKET, socket.SO_RCVLOWAT, 0),
    "SO_LINGER": (SOL_SOCKET, socket.SO_LINGER, 8),
    "SO_RCVTIMEO": (SOL_SOCKET, socket.SO_RCVTIMEO, 16),
    "SO_SNDTIMEO": (SOL_SOCKET, socket.SO_SNDTIMEO, 16),
    "TCP_NODELAY": (SOL_TCP, socket.TCP_NODELAY, 0),
    "TCP_CORK": (SOL_TCP, socket.TCP_CORK, 0),
    "TCP_KEEPIDLE": (SOL_TCP, socket.TCP_KEEPIDLE, 0),
    "TCP_KEEPINTVL": (SOL_TCP, socket.TCP_KEEPINTVL, 0),
    "TCP_KEEPCNT": (SOL_TCP, socket.TCP_KEEPCNT, 0),
    "TCP_USER_TIMEOUT": (SOL_TCP, socket.TCP_USER_TIMEOUT, 0),
    "TCP_DEFER_ACCEPT": (SOL_TCP, socket.TCP_DEFER_ACCEPT, 0),
    "IPV6_V6ONLY": (SOL_IPV6, socket.IPV6_V6ONLY, 0),
}
# Buffer sizes (doubled by the kernel) are kept only where the program set them
# (SO_BUF_LOCK shows which), so that TCP's autotuning stays on for the rest.
BUFFERS = {"SO_RCVBUF": (SOL_SOCKET, socket.SO_RCVBUF, 0),
           "SO_SNDBUF": (SOL_SOCKET, socket.SO_SNDBUF, 0)}
SO_BUF_LOCK = 72
BUF_LOCKS = {"SO_SNDBUF": 1, "SO_RCVBUF": 2}
FAMILIES = {socket.AF_UNIX: "unix", socket.AF_INET: "tcp4", socket.AF_INET6: "tcp6"}


def _applies(name: str, family: int, type_: int) -> bool:
    if name.startswith("TCP_"):
        return family != socket.AF_UNIX and type_ == socket.SOCK_STREAM
    if name.startswith("IPV6_"):
        return family == socket.AF_INET6
    return True


def _get(s: socket.socket, level: int, opt: int, size: int) -> int | None:
    try:
        if not size:
            return s.getsockopt(level, opt)
        return int.from_bytes(s.getsockopt(level, opt, size), "little")
    except OSError:
        return None


def _set(s: socket.socket, level: int, opt: int, size: int, value: int) -> None:
    s.setsockopt(level, opt, value.to_bytes(size, "little") if size else value)


def _options(s: socket.socket) -> dict[str, int]:
    """The options that differ from a fresh socket of the same kind."""
    out = {}
    locks = _get(s, SOL_SOCKET, SO_BUF_LOCK, 0) or 0
    with socket.socket(s.family, s.type, s.proto) as fresh:
        for name, (level, opt, size) in {**OPTIONS, **BUFFERS}.items():
            if not _applies(name, s.family, s.type):
                continue
            if name in BUF_LOCKS and not locks & BUF_LOCKS[name]:
                continue
            value = _get(s, level, opt, size)
            if value is not None and value != _get(fresh, level, opt, size):
                out[name] = value
    return out


def label(st: SockState) -> str:
    """How a user names the socket: 'tcp 127.0.0.1:80 -> 10.0.0.2:5000 (established)'."""
    kind = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram",
            socket.SOCK_SEQPACKET: "seqpacket"}.get(st.type, f"type {st.type}")
    if st.family == socket.AF_UNIX:
        name = _unix_text(st.name) or _unix_text(st.peer_name)
        return f"unix {kind}{' ' + name if name else ''} ({st.state})"
    proto = "udp" if st.type == socket.SOCK_DGRAM else "tcp"
    proto += "6" if st.family == socket.AF_INET6 else ""
    here = _addr_text(st.family, st.local, st.local_port)
    there = f" -> {_addr_text(st.family, st.peer, st.peer_port)}" if st.peer else ""
    return f"{proto} {here}{there} ({st.state})"


def _unix_text(name: bytes) -> str:
    if not name:
        return ""
    if name[:1] == b"\0":
        return "@" + name[1:].decode(errors="replace")
    return name.decode(errors="replace")


def _addr_text(family: int, addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if family == socket.AF_INET6 else f"{addr}:{port}"


# -- saving -------------------------------------------------------------------------

def save(fd: int, repair: bool) -> tuple[SockState, list[str]]:
    """A socket's state from our copy fd of it (left open for the caller to close),
    and what a restore will not give back. repair: established TCP is saved with
    TCP_REPAIR (the process must be stopped)."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        st = SockState(family=s.family, type=s.type, protocol=s.proto,
                       ino=os.fstat(fd).st_ino)
        st.options = _options(s)
        if s.family == socket.AF_UNIX:
            return st, _save_unix(s, st)
        if s.family in (socket.AF_INET, socket.AF_INET6):
            return st, _save_inet(s, st, repair)
        return st, [f"sockets of family {s.family} are not restored"]
    finally:
        s.close()


def _save_unix(s: socket.socket, st: SockState) -> list[str]:
    diag = sockdiag.unix_sockets({st.ino}).get(st.ino)
    if diag is None:
        return ["the kernel does not describe it (sock_diag)"]
    st.name, st.shutdown, st.peer_ino = diag.name or b"", diag.shutdown, diag.peer
    lost = []
    if diag.state == TCP_LISTEN:
        st.state, st.backlog = "listening", diag.wqueue
        if diag.pending:
            lost.append(f"{len(diag.pending)} connection(s) not yet accepted are lost")
        return lost
    if diag.peer or diag.state == TCP_ESTABLISHED:     # connected, its peer maybe gone
        peer = sockdiag.unix_sockets({diag.peer}).get(diag.peer) if diag.peer else None
        st.state, st.peer_name = "connected", (peer.name or b"") if peer else b""
    else:
        st.state = "bound" if st.name else "unbound"
    st.queue, senders, st.inflight, others = _peek_queue(s)
    if others:
        lost.append(f"{others} descriptor(s) in flight (SCM_RIGHTS) that are not files on "
                    "disk, or ride a stream, are lost")
    if s.type == socket.SOCK_DGRAM and st.name and any(senders):
        # Only a datagram from an unnamed socket can be sent again as it was.
        named = sum(1 for frm in senders if frm)
        kept = [i for i, frm in enumerate(senders) if not frm]
        st.queue = [st.queue[i] for i in kept]
        st.inflight = [msgspec.structs.replace(f, message=kept.index(f.message))
                       for f in st.inflight if f.message in kept]
        lost.append(f"{named} unread datagram(s) from named sockets are lost")
    return lost


def _peek_queue(s: socket.socket) -> tuple[list[bytes], list, list[InFlight], int]:
    """Every unread message, in order, left unread: peeks that move on with
    SO_PEEK_OFF, which is put back after. (messages, their senders, the files in
    flight that can be opened again, how many others.) A stream or seqpacket socket
    says how many bytes wait (SIOCINQ): the peeks stop there, as an empty peek may be
    end of file."""
    old = s.getsockopt(SOL_SOCKET, SO_PEEK_OFF)
    waiting = unread_bytes(s.fileno()) if s.type != socket.SOCK_DGRAM else None
    out: list[bytes] = []
    senders: list = []
    inflight: list[InFlight] = []
    others = 0
    total = 0
    s.setsockopt(SOL_SOCKET, SO_PEEK_OFF, 0)
    try:
        while total < QUEUE_MAX and len(out) < MESSAGES_MAX:
            if waiting is not None and total >= waiting:
                break
            try:
                data, anc, _, sender = s.recvmsg(PEEK_MAX, ANC_ROOM,
                                                 socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, ConnectionResetError):
                break
            carried, lost = _carried(anc, len(out))
            inflight += carried
            others += lost
            out.append(data)
            senders.append(sender)
            total += len(data)
    finally:
        s.setsockopt(SOL_SOCKET, SO_PEEK_OFF, old)
    if s.type == socket.SOCK_STREAM and out:
        # A stream keeps no boundaries to put files back at: they are counted lost.
        out, others, inflight = [b"".join(out)], others + len(inflight), []
    return out, senders, inflight, others


def _carried(anc, message: int) -> tuple[list[InFlight], int]:
    """The files a peeked message carries: the peek put copies of them in our process,
    described here (a regular file or directory on disk can be opened again) and
    closed. Credentials, also seen, are nothing to keep."""
    found, others = [], 0
    for level, kind, data in anc:
        if level != SOL_SOCKET or kind != socket.SCM_RIGHTS:
            continue
        for i in range(0, len(data) - len(data) % 4, 4):
            fd = int.from_bytes(data[i:i + 4], "little")
            try:
                what = _reopenable(fd, message)
            finally:
                os.close(fd)
            if what is None:
                others += 1
            else:
                found.append(what)
    return found, others


def _reopenable(fd: int, message: int) -> InFlight | None:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
        st = os.fstat(fd)
        with open(f"/proc/self/fdinfo/{fd}") as f:
            info = f.read()
    except OSError:
        return None
    if not target.startswith("/") or target.endswith(" (deleted)") or st.st_nlink == 0 \
            or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return None
    from .fds import parse_fdinfo
    pos, flags = parse_fdinfo(info)
    return InFlight(message=message, path=target, flags=flags, pos=pos)


def _save_inet(s: socket.socket, st: SockState, repair: bool) -> list[str]:
    diag = sockdiag.inet_sockets({st.ino}).get(st.ino)
    try:
        st.local, st.local_port = s.getsockname()[:2]
    except OSError:
        pass
    if diag is not None:
        st.shutdown = diag.shutdown
    tcp = s.type == socket.SOCK_STREAM
    if tcp and diag is not None and diag.state == TCP_LISTEN:
        st.state, st.backlog = "listening", diag.wqueue
        return ([f"{diag.rqueue} connection(s) not yet accepted are lost"]
                if diag.rqueue else [])
    try:
        st.peer, st.peer_port = s.getpeername()[:2]
    except OSError:
        st.peer, st.peer_port = "", 0
    if not tcp:
        st.state = "connected" if st.peer else "bound" if st.local_port else "unbound"
        return _save_datagrams(s, st)
    if diag is None or diag.state != TCP_ESTABLISHED:
        st.state = "unbound" if not st.peer and not st.local_port else \
            "bound" if not st.peer else "other"
        return ["a TCP connection that is not established (opening or closing) comes "
                "back reset"] if st.state == "other" else []
    st.state = "connected"
    if not repair:
        return ["an established TCP connection comes back reset: saving it needs "
                "TCP_REPAIR (CAP_NET_ADMIN)"]
    try:
        tcprepair.enter_repair(s)
        try:
            st.tcp = tcprepair.save(s)
        finally:
            tcprepair.leave_repair(s)
    except OSError as e:
        return [f"an established TCP connection comes back reset: {e}"]
    return []


def _save_datagrams(s: socket.socket, st: SockState) -> list[str]:
    """Unread datagrams that the socket sent itself can be sent again by the restored
    one; from anyone else they cannot (their sender cannot be forged)."""
    queue, senders, _, _ = _peek_queue(s)
    own = [m for m, frm in zip(queue, senders, strict=True) if _is_self(st, frm)]
    if len(own) == len(queue):
        st.queue = own
        return []
    return [f"{len(queue) - len(own)} unread datagram(s) from other sockets are lost"]


def _is_self(st: SockState, sender) -> bool:
    if not isinstance(sender, tuple) or sender[1] != st.local_port:
        return False
    return sender[0] == st.local or st.local in ("0.0.0.0", "::")


def quiet(fd: int) -> None:
    """Put an established TCP socket (our copy fd of it) in repair mode, so that its
    process can be killed without closing the connection: a socket in repair mode
    closes silently, and its address is free for the restored one at once."""
    with socket.socket(fileno=os.dup(fd)) as s:
        if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM:
            s.getpeername()         # OSError unless connected
            tcprepair.enter_repair(s)


# -- making them again ---------------------------------------------------------------

def make_pair(a: SockState, b: SockState) -> tuple[int, int]:
    """A unix socket pair with each end's unread messages, options and shutdowns."""
    x, y = socket.socketpair(socket.AF_UNIX, a.type)
    try:
        for mine, other, st in ((x, y, a), (y, x, b)):
            _apply_options(mine, st)
            _send_queue(other, st)
        for mine, st in ((x, a), (y, b)):
            _shutdown(mine, st.shutdown)
        return x.detach(), y.detach()
    finally:
        x.close()
        y.close()


def make(st: SockState, *, can_repair: bool) -> tuple[int, str]:
    """(our fd of a socket as saved, a warning or ""): st is one socket whose peer, if
    any, is not part of the restore. A listening or bound socket that cannot have its
    address fails the restore (OSError)."""
    if st.tcp is not None:
        if not can_repair:
            return reset_socket(st), f"{label(st)}: comes back reset (no TCP_REPAIR here)"
        try:
            s = tcprepair.make(st.tcp)
        except OSError as e:
            return reset_socket(st), f"{label(st)}: {e}: it comes back reset"
        _apply_options(s, st)
        return s.detach(), ""
    if st.family == socket.AF_UNIX and st.state != "listening" and st.queue and \
            (st.type != socket.SOCK_DGRAM or not st.name):
        return _orphan(st), ""
    if st.state in ("connected", "other") and st.type != socket.SOCK_DGRAM:
        return reset_socket(st), ""      # the save said so
    s = socket.socket(st.family, st.type, st.protocol)
    try:
        _apply_options(s, st)
        if st.family == socket.AF_UNIX:
            _make_unix(s, st)
        else:
            _make_inet(s, st)
        _shutdown(s, st.shutdown)
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"{label(st)}: {e.strerror or e}") from None
    return s.detach(), ""


def _make_inet(s: socket.socket, st: SockState) -> None:
    if st.local_port:
        s.bind((st.local, st.local_port))
    if st.state == "listening":
        s.listen(st.backlog or socket.SOMAXCONN)
    elif st.state == "connected":
        s.connect((st.peer, st.peer_port))      # a datagram socket's default peer
    if st.queue and s.type == socket.SOCK_DGRAM:
        here = s.getsockname()
        if here[0] in ("0.0.0.0", "::"):
            here = ("::1" if st.family == socket.AF_INET6 else "127.0.0.1", *here[1:])
        for msg in st.queue:        # datagrams it had sent itself, in order
            s.sendto(msg, here)


def _make_unix(s: socket.socket, st: SockState) -> None:
    if st.name:
        _bind_unix(s, st.name)
    if st.state == "listening":
        s.listen(st.backlog or socket.SOMAXCONN)
    elif st.state == "connected" and st.peer_name:
        # A datagram peer elsewhere (syslog, say): connecting again loses nothing.
        with contextlib.suppress(OSError):
            s.connect(st.peer_name)
    if st.queue and st.name:
        # Datagrams from unnamed senders (the save kept only those): sent again.
        with socket.socket(socket.AF_UNIX, st.type) as sender:
            _send_queue(sender, st, to=st.name)


def _bind_unix(s: socket.socket, name: bytes) -> None:
    if name[:1] != b"\0":
        _remove_stale(name)
    s.bind(name)


def _remove_stale(path: bytes) -> None:
    """The saved process's socket file outlives it: a socket file nobody listens on is
    removed (a live listener makes the bind fail, as it should)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except OSError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)    # a live listener with a full backlog: EAGAIN
        try:
            probe.connect(path)
            return
        except ConnectionRefusedError:
            pass
        except OSError:
            return
    with contextlib.suppress(OSError):
        os.unlink(path)


def _apply_options(s: socket.socket, st: SockState) -> None:
    table = {**OPTIONS, **BUFFERS}
    for name, value in st.options.items():
        if name not in table:
            continue
        level, opt, size = table[name]
        if name in BUFFERS:
            value //= 2     # the kernel doubles what it is given
        with contextlib.suppress(OSError):
            _set(s, level, opt, size, value)


def _shutdown(s: socket.socket, mask: int) -> None:
    how = {RCV_SHUTDOWN: socket.SHUT_RD, SEND_SHUTDOWN: socket.SHUT_WR,
           RCV_SHUTDOWN | SEND_SHUTDOWN: socket.SHUT_RDWR}.get(mask & 3)
    if how is not None:
        with contextlib.suppress(OSError):
            s.shutdown(how)


def _send_queue(sender: socket.socket, st: SockState, to: bytes | None = None) -> None:
    """st's unread messages, sent again in order, each with the files it carried
    (opened again here, as they were: flags and offset)."""
    if st.type == socket.SOCK_STREAM:
        for msg in st.queue:
            sender.sendall(msg)
        return
    for i, msg in enumerate(st.queue):
        files: list[int] = []
        try:
            for f in st.inflight:       # one at a time: those opened are closed on failure
                if f.message == i:
                    files.append(_reopen(f))
            if files:
                anc = [(SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(files)}i", *files))]
                sender.sendmsg([msg], anc, 0, *([to] if to else []))
            else:
                sender.sendto(msg, to) if to else sender.send(msg)
        finally:
            for fd in files:
                os.close(fd)


def _reopen(f: InFlight) -> int:
    """A file in flight, opened again: never through a symlink, and only a regular
    file or directory (an image is untrusted)."""
    from .fds import CREATION_FLAGS
    fd = os.open(f.path, (f.flags & ~CREATION_FLAGS) | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        os.close(fd)
        raise OSError(f"{f.path} is no longer a file or directory")
    if not f.flags & os.O_NONBLOCK:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETFL, f.flags & ~os.O_NONBLOCK & 0o7777777)
    if f.pos and stat.S_ISREG(st.st_mode):
        os.lseek(fd, f.pos, os.SEEK_SET)
    return fd


def _orphan(st: SockState) -> int:
    """A unix socket whose peer is gone or elsewhere, with its unread messages: it
    reads them, then end of file (writes fail with EPIPE), as the original would
    have once its peer had gone."""
    x, y = socket.socketpair(socket.AF_UNIX, st.type)
    try:
        _apply_options(x, st)
        _send_queue(y, st)
        return x.detach()
    finally:
        x.close()
        y.close()


def reset_socket(st: SockState) -> int:
    """Our fd of a socket of st's kind whose connection was reset: a TCP socket that
    received an RST, or a unix socket whose peer is gone."""
    if st.family == socket.AF_UNIX:
        x, y = socket.socketpair(socket.AF_UNIX, st.type)
        y.close()
        return x.detach()
    host = "::1" if st.family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(st.family, socket.SOCK_STREAM) as lsn:
        lsn.bind((host, 0))
        lsn.listen(1)
        c = socket.socket(st.family, socket.SOCK_STREAM)
        c.connect(lsn.getsockname())
        peer, _ = lsn.accept()
        # Linger 0: close sends an RST, which the kept end then reports.
        peer.setsockopt(SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        select.select([c], [], [], 1.0)
        return c.detach()
