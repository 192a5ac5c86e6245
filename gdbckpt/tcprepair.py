"""Save and recreate an ESTABLISHED TCP connection with the kernel's TCP_REPAIR.

The sequence follows CRIU (soccr/soccr.c, criu/sk-tcp.c). save() reads a
socket's sequence numbers, queues, negotiated options and windows while it
is in repair mode (where its program can neither read nor write it); make() builds
a fresh socket in repair mode, sets the sequence numbers, binds and
"connects" it without a handshake, refills both queues and windows, and
leaves repair mode. Closing a socket while it is in repair mode sends
nothing (no FIN, no RST) and leaves no TIME_WAIT, which is how the caller
can kill the original process without its peers noticing.

Sequence numbers (from CRIU's comment):

    send queue:  snd_una ... snd_nxt ... write_seq    send_seq = write_seq
    recv queue:  copied_seq ... rcv_nxt               recv_seq = rcv_nxt

TCP_QUEUE_SEQ set before connect() is the seq of the *first* byte of each
queue; every byte sent into the queue afterwards advances it, so we set
send_seq - len(send_queue) and recv_seq - len(recv_queue).

Caveats, as for CRIU:
- Between closing the original and make(), nothing may reach the 4-tuple:
  the kernel would answer with a RST. Repair mode does not stop the
  retransmit and probe timers either, so when both ends of a connection are
  restored (a process talking to itself), make them one right after the
  other, well within the retransmission timeout (200 ms at least).
- Out-of-order data the kernel held is not saved; the peer sends it again.
- The original's SO_REUSEADDR cannot be read in repair mode (repair forces
  reuse), so the new socket leaves repair with it off.
"""

import errno
import fcntl
import functools
import socket
import struct

from .image.model import TcpConn, host_port

# linux/tcp.h; Python's socket module lacks these.
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29
TCP_REPAIR_ON = 1
TCP_REPAIR_OFF = 0
TCP_REPAIR_OFF_NO_WP = -1       # since 4.19: leave repair without sending a window probe
TCP_NO_QUEUE = 0
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2
TCPOPT_MAXSEG = 2               # codes for TCP_REPAIR_OPTIONS (struct tcp_repair_opt)
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_TIMESTAMP = 8
TCPI_OPT_TIMESTAMPS = 1         # bits of tcp_info.tcpi_options
TCPI_OPT_SACK = 2
TCPI_OPT_WSCALE = 4
TCP_ESTABLISHED = 1
# linux/sockios.h, asm-generic/sockios.h
SIOCINQ = 0x541B                # bytes in the receive queue not yet read
SIOCOUTQ = 0x5411               # bytes in the send queue (unacked + unsent)
SIOCOUTQNSD = 0x894B            # bytes in the send queue never sent
MAX_USER_MSS = 32767            # MAX_TCP_WINDOW: the largest TCP_MAXSEG accepted
SO_SNDBUFFORCE = 32             # SO_SNDBUF/SO_RCVBUF past wmem_max/rmem_max (CAP_NET_ADMIN)
SO_RCVBUFFORCE = 33
SO_BUF_LOCK = 72                # since 5.14: which buffer sizes the program fixed (1 snd, 2 rcv)

_U32 = struct.Struct("I")
_WINDOW = struct.Struct("5I")   # struct tcp_repair_window
_TCP_INFO_LEN = 8               # tcpi_state .. the wscale byte is all we read
_SLACK = 256 * 1024             # buffer room beyond the queued bytes while refilling


class RepairError(OSError):
    """A TCP_REPAIR step failed; the one-line message names the connection."""


def _describe(sock: socket.socket) -> str:
    """'tcp LOCAL -> PEER' for messages, whatever state the socket is in."""
    def end(get) -> str:
        try:
            a = get()
            return host_port(a[0], a[1])
        except OSError:
            return "?"
    return f"tcp {end(sock.getsockname)} -> {end(sock.getpeername)}"


def _fail(name: str, what: str, e: OSError) -> RepairError:
    err = RepairError(f"{name}: {what}: {e.strerror or e}")
    err.errno = e.errno
    return err


def _ioctl_int(sock: socket.socket, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]


def _set_u32(sock: socket.socket, opt: int, value: int) -> None:
    # Sequence numbers and timestamps are u32: pass bytes, as an int >= 2**31 overflows a C int.
    sock.setsockopt(socket.IPPROTO_TCP, opt, _U32.pack(value & 0xFFFFFFFF))


def _get_u32(sock: socket.socket, opt: int) -> int:
    return _U32.unpack(sock.getsockopt(socket.IPPROTO_TCP, opt, 4))[0]


def enter_repair(sock: socket.socket) -> None:
    """Put sock in repair mode (needs CAP_NET_ADMIN in its network namespace)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    except OSError as e:
        raise _fail(_describe(sock),
                    "cannot enter TCP_REPAIR (needs CAP_NET_ADMIN, not a listener)", e) from e


def leave_repair(sock: socket.socket) -> None:
    """Leave repair mode quietly; kernels before 4.19 only know 0, which sends a window probe."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise _fail(_describe(sock), "cannot leave TCP_REPAIR", e) from e
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF)


@functools.cache
def can_repair() -> bool:
    """Whether this process may use TCP_REPAIR, tried once on a throwaway socket."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
        return True
    except OSError:
        return False


def _peek_queue(sock: socket.socket, queue: int, length: int) -> tuple[int, bytes | None]:
    """(TCP_QUEUE_SEQ, bytes) of one queue; None when it did not hold `length` bytes."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
    seq = _get_u32(sock, TCP_QUEUE_SEQ)
    if length == 0:
        return seq, b""
    # One byte more than expected, as CRIU does, to see the queue did not grow meanwhile.
    data = sock.recv(length + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    return seq, data if len(data) == length else None


def _read_queues(sock: socket.socket) -> tuple[int, bytes, int, bytes, int]:
    """Both queues, consistent with each other and with their lengths.

    Repair mode does not stop receiving: segments and ACKs may arrive while
    we read (unless the caller firewalled the connection), so look again
    until the lengths and sequence numbers agree.
    """
    for _ in range(20):
        unsent = _ioctl_int(sock, SIOCOUTQNSD)
        recv_seq, recv_queue = _peek_queue(sock, TCP_RECV_QUEUE, _ioctl_int(sock, SIOCINQ))
        send_seq, send_queue = _peek_queue(sock, TCP_SEND_QUEUE, _ioctl_int(sock, SIOCOUTQ))
        if (recv_queue is not None and send_queue is not None
                and _get_u32(sock, TCP_QUEUE_SEQ) == send_seq
                and _ioctl_int(sock, SIOCOUTQ) == len(send_queue)
                and _ioctl_int(sock, SIOCOUTQNSD) == unsent <= len(send_queue)):
            sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
            if _get_u32(sock, TCP_QUEUE_SEQ) == recv_seq:
                return send_seq, send_queue, unsent, recv_seq, recv_queue
    raise OSError(errno.EAGAIN, "the queues kept changing while being read")


def save(sock: socket.socket) -> TcpConn:
    """Read everything make() needs from sock, which must already be in repair mode.

    Only reads: the connection is left as it was (with no repair queue selected).
    """
    name = _describe(sock)
    tcp = socket.IPPROTO_TCP
    try:
        if not sock.getsockopt(tcp, TCP_REPAIR):
            raise RepairError(f"{name}: not in TCP repair mode (call enter_repair first)")
        state, options, wscales = struct.unpack_from(
            "B4xBB", sock.getsockopt(tcp, socket.TCP_INFO, _TCP_INFO_LEN))
        if state != TCP_ESTABLISHED:
            raise RepairError(f"{name}: not ESTABLISHED (TCP state {state}); cannot save it")
        local, peer = sock.getsockname(), sock.getpeername()
        try:
            send_seq, send_queue, unsent, recv_seq, recv_queue = _read_queues(sock)
        finally:
            # Back to no queue: with the send queue selected, a transmit the
            # kernel starts (an ACK opening the window) would be marked sent unsent.
            sock.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
        timestamps = bool(options & TCPI_OPT_TIMESTAMPS)
        wscale = bool(options & TCPI_OPT_WSCALE)
        sol = socket.SOL_SOCKET
        return TcpConn(
            family=int(sock.family), local=local[0], local_port=local[1],
            peer=peer[0], peer_port=peer[1],
            send_seq=send_seq, recv_seq=recv_seq,
            send_queue=send_queue, unsent=unsent, recv_queue=recv_queue,
            mss=sock.getsockopt(tcp, socket.TCP_MAXSEG),    # mss_clamp, in repair mode
            wscale=wscale,
            snd_wscale=wscales & 0xF if wscale else 0,       # bitfields: snd low, rcv high
            rcv_wscale=wscales >> 4 if wscale else 0,
            timestamps=timestamps, sack=bool(options & TCPI_OPT_SACK),
            tsval=_get_u32(sock, TCP_TIMESTAMP) if timestamps else 0,
            window=list(_WINDOW.unpack(sock.getsockopt(tcp, TCP_REPAIR_WINDOW, _WINDOW.size))),
            nodelay=bool(sock.getsockopt(tcp, socket.TCP_NODELAY)),
            cork=bool(sock.getsockopt(tcp, socket.TCP_CORK)),
            keepalive=bool(sock.getsockopt(sol, socket.SO_KEEPALIVE)),
            keepidle=sock.getsockopt(tcp, socket.TCP_KEEPIDLE),
            keepintvl=sock.getsockopt(tcp, socket.TCP_KEEPINTVL),
            keepcnt=sock.getsockopt(tcp, socket.TCP_KEEPCNT),
            user_timeout=sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT),
            congestion=sock.getsockopt(tcp, socket.TCP_CONGESTION, 16)
            .split(b"\0", 1)[0].decode(),
            sndbuf=sock.getsockopt(sol, socket.SO_SNDBUF),
            rcvbuf=sock.getsockopt(sol, socket.SO_RCVBUF),
            buf_lock=_buf_lock(sock),
        )
    except RepairError:
        raise
    except OSError as e:
        raise _fail(name, "cannot save the connection", e) from e


def _buf_lock(sock: socket.socket) -> int:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_BUF_LOCK)
    except OSError:         # before 5.14: assume fixed, as CRIU restores them
        return 3


def _set_buf(sock: socket.socket, force: int, plain: int, size: int) -> None:
    # The kernel doubles what we pass (for its bookkeeping), and getsockopt
    # reported the doubled value: halve it. FORCE passes wmem_max/rmem_max.
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, (size + 1) // 2)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, (size + 1) // 2)


def _fill(sock: socket.socket, data: bytes) -> None:
    """send() all of data into the selected queue, never blocking.

    As CRIU does, halve the chunk when the kernel refuses it: the repair path
    of the receive queue allocates one skb the size of the call.
    """
    view = memoryview(data)
    chunk = len(view)
    while view:
        try:
            view = view[sock.send(view[:chunk], socket.MSG_DONTWAIT):]
        except OSError as e:
            if e.errno not in (errno.ENOMEM, errno.EAGAIN, errno.ENOBUFS) or chunk <= 1024:
                raise
            chunk //= 2


def make(conn: TcpConn) -> socket.socket:
    """A new socket, ESTABLISHED as conn was, out of repair mode, ready to hand over.

    Nothing goes on the wire here: data never sent is queued while the send
    window is still zero (as after a repair connect()) and leaves on the
    kernel's probe timer or the peer's next ACK; unacked data on the
    retransmit timer. On any failure the socket is closed in repair mode,
    so the peer sees nothing, and RepairError names the step.
    """
    tcp = socket.IPPROTO_TCP
    sock = socket.socket(conn.family, socket.SOCK_STREAM)
    what = "enter repair mode"
    try:
        sock.setsockopt(tcp, TCP_REPAIR, TCP_REPAIR_ON)
        what = "set the queue sequence numbers"
        for queue, seq, data in ((TCP_RECV_QUEUE, conn.recv_seq, conn.recv_queue),
                                 (TCP_SEND_QUEUE, conn.send_seq, conn.send_queue)):
            sock.setsockopt(tcp, TCP_REPAIR_QUEUE, queue)
            _set_u32(sock, TCP_QUEUE_SEQ, seq - len(data))
        # Buffers before connect(), which sizes the window clamp from them;
        # room enough meanwhile for the queues we refill (send() here must not block).
        what = "set the buffer sizes"
        _set_buf(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF,
                 max(conn.sndbuf, 2 * len(conn.send_queue) + _SLACK))
        _set_buf(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF,
                 max(conn.rcvbuf, 2 * len(conn.recv_queue) + _SLACK))
        # Repair mode forces address reuse, so bind() takes the saved port even
        # next to a listener on it (setting SO_REUSEADDR now would weaken that
        # to plain reuse, which a listener refuses); connect() sends no SYN.
        # connect() sizes segments (mss_cache) from the MSS clamp it sees, and
        # TCP_REPAIR_OPTIONS later does not redo that: without a user MSS set
        # now the new socket would send 536-byte segments for ever. The kernel
        # caps a user MSS at 32767 (only loopback's MTU goes beyond).
        what = "set TCP_MAXSEG"
        sock.setsockopt(tcp, socket.TCP_MAXSEG, min(conn.mss, MAX_USER_MSS))
        what = "bind"
        sock.bind((conn.local, conn.local_port))
        what = "connect"
        sock.connect((conn.peer, conn.peer_port))
        sock.setsockopt(tcp, socket.TCP_MAXSEG, 0)     # the user MSS has done its job
        what = "set TCP_REPAIR_OPTIONS"     # before any data: the kernel refuses them after
        opts = [(TCPOPT_MAXSEG, conn.mss)]
        if conn.sack:
            opts.append((TCPOPT_SACK_PERM, 0))
        if conn.wscale:
            opts.append((TCPOPT_WINDOW, conn.snd_wscale | conn.rcv_wscale << 16))
        if conn.timestamps:
            opts.append((TCPOPT_TIMESTAMP, 0))
        sock.setsockopt(tcp, TCP_REPAIR_OPTIONS, b"".join(struct.pack("II", *o) for o in opts))
        if conn.timestamps:
            what = "set TCP_TIMESTAMP"
            _set_u32(sock, TCP_TIMESTAMP, conn.tsval)
        # Options before the queues: setting TCP_NODELAY later would push the
        # unsent data out at once, possibly to a peer not yet restored.
        what = "set socket options"
        _set_options(sock, conn)
        what = "refill the receive queue"
        sock.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        _fill(sock, conn.recv_queue)
        # Bytes already sent go in as sent (the peer may ACK them; they are
        # retransmitted on timeout); bytes never sent go through a normal send().
        what = "refill the send queue"
        sent = len(conn.send_queue) - conn.unsent
        sock.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        _fill(sock, conn.send_queue[:sent])
        if conn.unsent:
            leave_repair(sock)
            _fill(sock, conn.send_queue[sent:])
            sock.setsockopt(tcp, TCP_REPAIR, TCP_REPAIR_ON)
        # After the receive queue: the kernel checks rcv_wup against rcv_nxt.
        what = "set TCP_REPAIR_WINDOW"
        sock.setsockopt(tcp, TCP_REPAIR_WINDOW, _WINDOW.pack(*conn.window))
        # The sizes as saved; then unlock those the kernel was autotuning, as
        # any setsockopt of a size also stops its autotuning.
        what = "set the buffer sizes"
        _set_buf(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, conn.sndbuf)
        _set_buf(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, conn.rcvbuf)
        if conn.buf_lock != 3:
            sock.setsockopt(socket.SOL_SOCKET, SO_BUF_LOCK, conn.buf_lock)
        what = "leave repair mode"
        leave_repair(sock)
    except BaseException as e:
        try:
            sock.setsockopt(tcp, TCP_REPAIR, TCP_REPAIR_ON)    # close quietly, no RST
        except OSError:
            pass
        sock.close()
        if isinstance(e, OSError) and not isinstance(e, RepairError):
            raise _fail(conn.name, f"cannot recreate the connection: {what}", e) from e
        raise
    return sock


def _set_options(sock: socket.socket, conn: TcpConn) -> None:
    tcp, sol = socket.IPPROTO_TCP, socket.SOL_SOCKET
    if conn.nodelay:
        sock.setsockopt(tcp, socket.TCP_NODELAY, 1)
    if conn.cork:
        sock.setsockopt(tcp, socket.TCP_CORK, 1)
    sock.setsockopt(tcp, socket.TCP_KEEPIDLE, conn.keepidle)
    sock.setsockopt(tcp, socket.TCP_KEEPINTVL, conn.keepintvl)
    sock.setsockopt(tcp, socket.TCP_KEEPCNT, conn.keepcnt)
    sock.setsockopt(sol, socket.SO_KEEPALIVE, int(conn.keepalive))
    sock.setsockopt(tcp, socket.TCP_USER_TIMEOUT, conn.user_timeout)
    current = sock.getsockopt(tcp, socket.TCP_CONGESTION, 16).split(b"\0", 1)[0].decode()
    if conn.congestion and conn.congestion != current:
        sock.setsockopt(tcp, socket.TCP_CONGESTION, conn.congestion.encode())
