"""Ask the kernel about sockets by inode through NETLINK_SOCK_DIAG.

This is what `ss` and CRIU use: a /proc/PID/fd link only says "socket:[INO]",
while sock_diag tells a socket's type, state, name, peer, queues and the
connections waiting in a listener's accept queue. Plain Python over the
`socket` module; only sockets of the caller's network namespace are seen.
Layouts are those of <linux/sock_diag.h>, <linux/unix_diag.h> and
<linux/inet_diag.h>.
"""

from __future__ import annotations

import errno
import itertools
import socket
import struct

import msgspec

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300          # NLM_F_ROOT | NLM_F_MATCH
NLA_TYPE_MASK = 0x3FFF      # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

# unix_diag: what to ask for (udiag_show) and the attributes that come back.
UDIAG_SHOW_NAME = 0x01
UDIAG_SHOW_PEER = 0x04
UDIAG_SHOW_ICONS = 0x08
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_NAME = 0
UNIX_DIAG_PEER = 2
UNIX_DIAG_ICONS = 3
UNIX_DIAG_RQLEN = 4
UNIX_DIAG_SHUTDOWN = 6      # always sent, no show bit needed

# inet_diag attributes. idiag_ext is a u8 of (1 << (attr - 1)) bits, so only
# attributes 1..8 can be asked for; SKV6ONLY (11) is sent unasked, and only
# for AF_INET6 sockets in TCP_LISTEN or TCP_CLOSE.
INET_DIAG_SHUTDOWN = 8
INET_DIAG_SKV6ONLY = 11

ALL_STATES = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")           # len, type, flags, seq, pid
_NLATTR = struct.Struct("=HH")                # len, type
_UNIX_REQ = struct.Struct("=BBHIII8s")        # family, protocol, pad, states, ino, show, cookie
_UNIX_MSG = struct.Struct("=BBBBI8s")         # family, type, state, pad, ino, cookie
_INET_REQ = struct.Struct("=BBBBI48x")        # family, protocol, ext, pad, states, sockid (zero)
_INET_MSG_HEAD = struct.Struct("=BBBB")       # family, state, timer, retrans
_INET_SOCKID = struct.Struct(">HH16s16s")     # sport, dport (network order), src, dst
_INET_MSG_TAIL = struct.Struct("=I8sIIIII")   # if, cookie, expires, rqueue, wqueue, uid, inode
_INET_MSG_SIZE = _INET_MSG_HEAD.size + _INET_SOCKID.size + _INET_MSG_TAIL.size  # 72

_seq = itertools.count(1)


class UnixSock(msgspec.Struct, frozen=True):
    ino: int
    type: int                   # SOCK_STREAM / SOCK_DGRAM / SOCK_SEQPACKET
    state: int                  # TCP_ESTABLISHED(1) / TCP_LISTEN(10) / TCP_CLOSE(7)
    name: bytes | None          # a path, or b"\0..." for an abstract name; None if unbound
    peer: int                   # peer socket's inode, 0 if none
    rqueue: int                 # listener: accept queue length; else bytes queued to read
    wqueue: int                 # listener: backlog (max); else write memory in use
    pending: tuple[int, ...]    # listener: inodes of the connecting sockets queued
    shutdown: int               # RCV_SHUTDOWN=1 | SEND_SHUTDOWN=2


class InetSock(msgspec.Struct, frozen=True):
    ino: int
    family: int                 # AF_INET / AF_INET6
    protocol: int               # IPPROTO_TCP / IPPROTO_UDP
    state: int                  # TCP states; UDP reports TCP_CLOSE(7) or TCP_ESTABLISHED(1)
    src: str
    sport: int
    dst: str
    dport: int
    rqueue: int                 # listener: connections waiting to be accepted
    wqueue: int                 # listener: the backlog given to listen()
    shutdown: int
    v6only: bool | None         # None when the kernel does not say (see INET_DIAG_SKV6ONLY)


def _bad(what: str) -> OSError:
    return OSError(errno.EPROTO, f"sock_diag: {what}")


def _dump(body: bytes) -> list[bytes]:
    """Send one SOCK_DIAG_BY_FAMILY dump request; return each answer's payload."""
    try:
        sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           NETLINK_SOCK_DIAG)
    except OSError as e:
        raise OSError(e.errno, f"sock_diag: netlink unavailable: {e.strerror}") from None
    seq = next(_seq)
    out: list[bytes] = []
    with sk:
        hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                             NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        sk.sendto(hdr + body, (0, 0))
        while True:
            # A dump skb never exceeds 32 KiB, so 64 KiB always holds one whole.
            data, _, flags, _ = sk.recvmsg(65536)
            if flags & socket.MSG_TRUNC:
                raise _bad("netlink datagram truncated")
            off = 0
            while off < len(data):
                if len(data) - off < _NLMSGHDR.size:
                    raise _bad("truncated netlink header")
                length, mtype, _, mseq, _ = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size or length > len(data) - off:
                    raise _bad(f"netlink message length {length} does not fit")
                payload = data[off + _NLMSGHDR.size:off + length]
                off += (length + 3) & ~3
                if mseq != seq:
                    continue            # not an answer to this request
                if mtype in (NLMSG_DONE, NLMSG_ERROR):
                    # Both carry an int: 0, or -errno when the request or dump failed.
                    err = struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if err < 0:
                        raise OSError(-err, f"sock_diag: kernel refused the dump: "
                                            f"{errno.errorcode.get(-err, -err)}")
                    if mtype == NLMSG_DONE:
                        return out
                    continue
                if mtype == SOCK_DIAG_BY_FAMILY:
                    out.append(payload)


def _attrs(payload: bytes, off: int) -> dict[int, bytes]:
    """Netlink attributes from offset `off` on, by type (the last of a type wins)."""
    out: dict[int, bytes] = {}
    while len(payload) - off >= _NLATTR.size:
        length, atype = _NLATTR.unpack_from(payload, off)
        if length < _NLATTR.size or length > len(payload) - off:
            raise _bad(f"attribute {atype} length {length} does not fit its message")
        out[atype & NLA_TYPE_MASK] = payload[off + _NLATTR.size:off + length]
        off += (length + 3) & ~3
    return out


def _attr_int(attrs: dict[int, bytes], atype: int, fmt: str) -> int | None:
    raw = attrs.get(atype)
    if raw is None:
        return None
    if len(raw) < struct.calcsize(fmt):
        raise _bad(f"attribute {atype} is {len(raw)} bytes, too short")
    return struct.unpack_from(fmt, raw)[0]


def _parse_unix(payload: bytes) -> UnixSock:
    if len(payload) < _UNIX_MSG.size:
        raise _bad("truncated unix_diag_msg")
    _, stype, state, _, ino, _ = _UNIX_MSG.unpack_from(payload)
    attrs = _attrs(payload, _UNIX_MSG.size)
    name = attrs.get(UNIX_DIAG_NAME)
    if name and name[0] != 0:
        # A path name comes with its terminating NUL; an abstract name is exact bytes.
        name = name.split(b"\0", 1)[0]
    rqueue = wqueue = 0
    if (rq := attrs.get(UNIX_DIAG_RQLEN)) is not None:
        if len(rq) < 8:
            raise _bad("UNIX_DIAG_RQLEN too short")
        rqueue, wqueue = struct.unpack_from("=II", rq)
    icons = attrs.get(UNIX_DIAG_ICONS, b"")
    if len(icons) % 4:
        raise _bad("UNIX_DIAG_ICONS not a u32 array")
    return UnixSock(
        ino=ino, type=stype, state=state, name=name,
        peer=_attr_int(attrs, UNIX_DIAG_PEER, "=I") or 0,
        rqueue=rqueue, wqueue=wqueue,
        pending=struct.unpack(f"={len(icons) // 4}I", icons),
        shutdown=_attr_int(attrs, UNIX_DIAG_SHUTDOWN, "=B") or 0,
    )


def _parse_inet(payload: bytes, protocol: int) -> InetSock:
    if len(payload) < _INET_MSG_SIZE:
        raise _bad("truncated inet_diag_msg")
    family, state, _, _ = _INET_MSG_HEAD.unpack_from(payload)
    sport, dport, src, dst = _INET_SOCKID.unpack_from(payload, _INET_MSG_HEAD.size)
    _, _, _, rqueue, wqueue, _, ino = _INET_MSG_TAIL.unpack_from(
        payload, _INET_MSG_HEAD.size + _INET_SOCKID.size)
    attrs = _attrs(payload, _INET_MSG_SIZE)
    alen = 4 if family == socket.AF_INET else 16
    v6only = _attr_int(attrs, INET_DIAG_SKV6ONLY, "=B")
    return InetSock(
        ino=ino, family=family, protocol=protocol, state=state,
        src=socket.inet_ntop(family, src[:alen]), sport=sport,
        dst=socket.inet_ntop(family, dst[:alen]), dport=dport,
        rqueue=rqueue, wqueue=wqueue,
        shutdown=_attr_int(attrs, INET_DIAG_SHUTDOWN, "=B") or 0,
        v6only=None if v6only is None else bool(v6only),
    )


def unix_sockets(inodes: set[int] | None = None) -> dict[int, UnixSock]:
    """AF_UNIX sockets by inode: all of them, or those of `inodes` that exist."""
    if inodes is not None and not inodes:
        return {}
    show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN
    req = _UNIX_REQ.pack(socket.AF_UNIX, 0, 0, ALL_STATES, 0, show, b"")
    out: dict[int, UnixSock] = {}
    for payload in _dump(req):
        s = _parse_unix(payload)
        # A socket with no file behind it would show inode 0: nothing to look up.
        if s.ino and (inodes is None or s.ino in inodes):
            out[s.ino] = s
    return out


def inet_sockets(inodes: set[int] | None = None) -> dict[int, InetSock]:
    """TCP and UDP sockets, IPv4 and IPv6, by inode: all, or those of `inodes`."""
    if inodes is not None and not inodes:
        return {}
    out: dict[int, InetSock] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for protocol in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            ext = 1 << (INET_DIAG_SHUTDOWN - 1)
            req = _INET_REQ.pack(family, protocol, ext, 0, ALL_STATES)
            for payload in _dump(req):
                s = _parse_inet(payload, protocol)
                # TIME_WAIT and SYN_RECV entries have no socket file: inode 0.
                if s.ino and (inodes is None or s.ino in inodes):
                    out[s.ino] = s
    return out
