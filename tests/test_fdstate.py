"""Saving and making again the state of pipes, sockets and eventfd, timerfd, signalfd
and epoll descriptors (pipes.py, sockets.py, anonfds.py, fds.read_states and
fds.make_objects), on real kernel objects made here or in a small child process.

The oracle is each object's own behaviour: what a pipe or socket reads after a save
(nothing may have been taken) and what the object made again reads, refuses or
reports (timerfd_gettime, fcntl, fdinfo).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gdbckpt import anonfds, fds, pipes, sockets
from gdbckpt.image.model import AnonState, EpollTarget, FdInfo, PipeState, SockState

F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLET = 0x1, 0x4, 0x8, 0x10, 1 << 31
EPOLL_CTL_ADD = 1
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
TFD_TIMER_ABSTIME = 1
EFD_SEMAPHORE = 1
NS = 1_000_000_000
IN_FLIGHT = "descriptor(s) in flight (SCM_RIGHTS) that are not files on disk"
UNIX_TYPES = [pytest.param(socket.SOCK_STREAM, id="stream"),
              pytest.param(socket.SOCK_DGRAM, id="dgram"),
              pytest.param(socket.SOCK_SEQPACKET, id="seqpacket")]

_libc = ctypes.CDLL(None, use_errno=True)
_names = itertools.count()


# -- helpers ----------------------------------------------------------------------------

class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class Itimerspec(ctypes.Structure):
    _fields_ = [("interval", Timespec), ("value", Timespec)]


def _ok(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def ts_ns(t: Timespec) -> int:
    return t.sec * NS + t.nsec


def timerfd(clock: int, flags: int, value_ns: int, interval_ns: int, settime: int = 0
            ) -> int:
    fd = _ok(_libc.timerfd_create(clock, flags), "timerfd_create")
    spec = Itimerspec(Timespec(*divmod(interval_ns, NS)), Timespec(*divmod(value_ns, NS)))
    _ok(_libc.timerfd_settime(fd, settime, ctypes.byref(spec), None), "timerfd_settime")
    return fd


def timerfd_gettime(fd: int) -> tuple[int, int]:
    """(time to the next expiry, interval) in ns, as the kernel tells the timer's owner."""
    spec = Itimerspec()
    _ok(_libc.timerfd_gettime(fd, ctypes.byref(spec)), "timerfd_gettime")
    return ts_ns(spec.value), ts_ns(spec.interval)


def sigbit(sig: int) -> int:
    return 1 << (sig - 1)


def signalfd(mask: int, flags: int = 0) -> int:
    m = ctypes.c_uint64(mask)
    return _ok(_libc.signalfd(-1, ctypes.byref(m), flags), "signalfd")


def epoll_add(ep: int, fd: int, events: int, data: int) -> None:
    ev = ctypes.create_string_buffer(struct.pack("<IQ", events, data), 12)
    _ok(_libc.epoll_ctl(ep, EPOLL_CTL_ADD, fd, ev), "epoll_ctl")


def epoll_wait(ep: int) -> list[tuple[int, int]]:
    buf = ctypes.create_string_buffer(12 * 8)
    n = _ok(_libc.epoll_wait(ep, buf, 8, 0), "epoll_wait")
    return [struct.unpack_from("<IQ", buf.raw, 12 * i) for i in range(n)]


def fdinfo(fd: int, pid: int | str = "self") -> str:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        return f.read()


def link(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def nonblocking(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)


def ino(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def abstract_name() -> bytes:
    return f"\0gdbckpt-fdstate-{os.getpid()}-{next(_names)}".encode()


def read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 1 << 16):
        out += chunk
    return out


def read_all_nonblock(fd: int) -> bytes:
    out = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 1 << 16):
            out += chunk
    return out


def recv_all(s: socket.socket, n: int) -> list[bytes]:
    """n messages (one recv each), waiting at most a second for each."""
    s.settimeout(1.0)
    return [s.recv(1 << 16) for _ in range(n)]


def save_sock(s: socket.socket) -> tuple[SockState, list[str]]:
    return sockets.save(s.fileno(), repair=False)


def adopt(fd: int) -> socket.socket:
    return socket.socket(fileno=fd)


@pytest.fixture
def keep() -> Iterator[Callable]:
    """Close the fds and sockets a test registers, at its end; keep.close(fd) closes a
    registered fd at once (so that its number, reused meanwhile, is not closed again)."""
    held: list = []

    def add(*things):
        held.extend(things)
        return things[0] if len(things) == 1 else things

    def close(fd: int) -> None:
        held.remove(fd)
        os.close(fd)

    add.close = close
    yield add
    for t in held:
        with contextlib.suppress(OSError):
            if isinstance(t, int):
                if t >= 0:
                    os.close(t)
            else:
                t.close()


@contextlib.contextmanager
def deadline(seconds: float):
    """TimeoutError out of a loop that runs longer than seconds."""
    def alarm(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- pipes ------------------------------------------------------------------------------

@pytest.mark.parametrize("end", ["reader", "writer"])
def test_pipe_save_reports_size_and_data_and_leaves_them(keep, end):
    r, w = keep(*os.pipe())
    fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 17)
    size = fcntl.fcntl(w, F_GETPIPE_SZ)
    data = os.urandom(70_000)
    os.write(w, data)
    ours = r if end == "reader" else w
    st = pipes.save(ours, link(ours))
    assert st == PipeState(ino=os.fstat(r).st_ino, size=size, data=data, alone=False)
    assert st.ino == fds.ino_of(link(w))
    os.set_blocking(r, False)
    assert read_all_nonblock(r) == data       # nothing was taken by the save


def test_empty_pipe_saves_no_data(keep):
    r, w = keep(*os.pipe())
    st = pipes.save(r, link(r))
    assert (st.data, st.alone, st.size) == (b"", False, fcntl.fcntl(r, F_GETPIPE_SZ))


def test_pipe_reader_is_alone_once_the_writer_is_closed(keep):
    r, w = keep(*os.pipe())
    os.write(w, b"last words")
    keep.close(w)
    st = pipes.save(r, link(r))
    assert st.alone and st.data == b"last words"
    assert read_all(r) == b"last words"


def test_pipe_writer_is_alone_once_the_reader_is_closed(keep):
    r, w = keep(*os.pipe())
    keep.close(r)
    st = pipes.save(w, link(w))
    assert st.alone and st.data == b""
    with pytest.raises(BrokenPipeError):       # the save did not leave a reader behind
        os.write(w, b"x")


@pytest.mark.parametrize("read_nb,write_nb", [(True, False), (False, True)])
def test_pipe_make_gives_data_size_and_flags(keep, read_nb, write_nb):
    data = os.urandom(100_000)
    st = PipeState(ino=1, size=1 << 18, data=data)
    rf = os.O_RDONLY | (os.O_NONBLOCK if read_nb else 0)
    wf = os.O_WRONLY | (os.O_NONBLOCK if write_nb else 0)
    r, w = keep(*pipes.make(st, rf, wf))
    assert fcntl.fcntl(r, F_GETPIPE_SZ) == 1 << 18
    assert (nonblocking(r), nonblocking(w)) == (read_nb, write_nb)
    assert fcntl.fcntl(r, fcntl.F_GETFL) & 3 == os.O_RDONLY
    assert fcntl.fcntl(w, fcntl.F_GETFL) & 3 == os.O_WRONLY
    keep.close(w)
    assert read_all(r) == data


def test_pipe_make_keeps_the_default_size(keep):
    r, w = keep(*os.pipe())
    default = fcntl.fcntl(r, F_GETPIPE_SZ)
    r2, w2 = keep(*pipes.make(PipeState(ino=1, size=default, data=b"abc"), 0, 1))
    assert fcntl.fcntl(r2, F_GETPIPE_SZ) == default
    assert os.read(r2, 10) == b"abc"


def _pipe_info(fd: int, flags: int, st: PipeState) -> FdInfo:
    return FdInfo(fd=fd, kind="pipe", target=f"pipe:[{st.ino}]", flags=flags, pipe=st)


def test_make_objects_pipe_write_end_alone_has_no_reader(keep):
    st = PipeState(ino=5, size=65536, data=b"")
    ours, warnings = fds.make_objects("pipe", (None, _pipe_info(4, os.O_WRONLY, st)))
    keep(*ours)
    assert ours[0] == -1 and ours[1] >= 0 and warnings == []
    assert not nonblocking(ours[1])
    with pytest.raises(BrokenPipeError):
        os.write(ours[1], b"anyone?")


def test_make_objects_pipe_read_end_alone_reads_data_then_eof(keep):
    st = PipeState(ino=5, size=65536, data=b"leftover", alone=True)
    ours, _ = fds.make_objects("pipe", (_pipe_info(3, os.O_RDONLY | os.O_NONBLOCK, st), None))
    keep(*ours)
    assert ours[1] == -1 and nonblocking(ours[0])
    assert os.read(ours[0], 100) == b"leftover"
    assert os.read(ours[0], 100) == b""          # no writer: end of file, not EAGAIN


def test_make_objects_pipe_both_ends_flags(keep):
    st = PipeState(ino=5, size=65536, data=b"both")
    ours, _ = fds.make_objects("pipe", (_pipe_info(3, os.O_RDONLY, st),
                                        _pipe_info(4, os.O_WRONLY | os.O_NONBLOCK, st)))
    r, w = keep(*ours)
    assert (nonblocking(r), nonblocking(w)) == (False, True)
    os.write(w, b"+more")
    assert os.read(r, 100) == b"both+more"


# -- eventfd ----------------------------------------------------------------------------

def test_eventfd_semaphore_round_trip(keep):
    ev = keep(os.eventfd(5, EFD_SEMAPHORE | os.EFD_NONBLOCK))
    st, why = anonfds.save(os.getpid(), ev, link(ev), fdinfo(ev))
    assert why == "" and st == AnonState("eventfd", count=5, semaphore=True)
    assert os.eventfd_read(ev) == 1              # the original still counts 5 (then 4)
    made = keep(anonfds.make(st, os.O_RDWR | os.O_NONBLOCK))
    assert nonblocking(made)
    assert [os.eventfd_read(made) for _ in range(5)] == [1] * 5
    with pytest.raises(BlockingIOError):
        os.eventfd_read(made)


def test_eventfd_counter_round_trip(keep):
    ev = keep(os.eventfd(7))
    os.eventfd_write(ev, 1000)
    st, why = anonfds.save(os.getpid(), ev, link(ev), fdinfo(ev))
    assert why == "" and (st.count, st.semaphore) == (1007, False)
    made = keep(anonfds.make(st, os.O_RDWR))
    assert not nonblocking(made)
    assert os.eventfd_read(made) == 1007
    os.set_blocking(made, False)
    with pytest.raises(BlockingIOError):
        os.eventfd_read(made)


def test_eventfd_counter_above_32_bits_round_trip(keep):
    ev = keep(os.eventfd(7))
    os.eventfd_write(ev, 0x1_0000_0000)
    st, why = anonfds.save(os.getpid(), ev, link(ev), fdinfo(ev))
    assert why == "" and st.count == 0x1_0000_0007
    made = keep(anonfds.make(st, os.O_RDWR))
    assert os.eventfd_read(made) == 0x1_0000_0007


def test_eventfd_zero_blocks_reads(keep):
    ev = keep(os.eventfd(0, os.EFD_NONBLOCK))
    st, _ = anonfds.save(os.getpid(), ev, link(ev), fdinfo(ev))
    made = keep(anonfds.make(st, os.O_NONBLOCK))
    with pytest.raises(BlockingIOError):
        os.eventfd_read(made)


# -- timerfd ----------------------------------------------------------------------------

def test_timerfd_absolute_realtime_keeps_its_deadline(keep):
    deadline_ns = time.clock_gettime_ns(time.CLOCK_REALTIME) + 100 * NS
    tfd = keep(timerfd(CLOCK_REALTIME, os.O_NONBLOCK, deadline_ns, 3 * NS, TFD_TIMER_ABSTIME))
    st, why = anonfds.save(os.getpid(), tfd, link(tfd), fdinfo(tfd))
    assert why == ""
    assert (st.type, st.clock, st.abstime, st.ticks, st.interval_ns) == \
        ("timerfd", CLOCK_REALTIME, True, 0, 3 * NS)
    assert abs(st.saved_ns + st.value_ns - deadline_ns) < NS // 2
    made = keep(anonfds.make(st, os.O_RDWR | os.O_NONBLOCK))
    assert nonblocking(made)
    value, interval = timerfd_gettime(made)
    assert interval == 3 * NS
    left = deadline_ns - time.clock_gettime_ns(time.CLOCK_REALTIME)
    assert abs(value - left) < NS // 2
    assert "settime flags: 01" in fdinfo(made)   # still absolute: follows clock changes
    with pytest.raises(BlockingIOError):
        os.read(made, 8)


def test_timerfd_relative_monotonic_round_trip(keep):
    tfd = keep(timerfd(CLOCK_MONOTONIC, 0, 50 * NS, NS // 4))
    st, _ = anonfds.save(os.getpid(), tfd, link(tfd), fdinfo(tfd))
    assert (st.clock, st.abstime, st.interval_ns) == (CLOCK_MONOTONIC, False, NS // 4)
    assert 49 * NS < st.value_ns <= 50 * NS
    made = keep(anonfds.make(st, 0))
    assert not nonblocking(made)
    value, interval = timerfd_gettime(made)
    assert interval == NS // 4 and 49 * NS < value <= 50 * NS
    assert "settime flags: 00" in fdinfo(made)


def test_timerfd_expirations_not_yet_read_come_back(keep):
    tfd = keep(timerfd(CLOCK_MONOTONIC, os.O_NONBLOCK, 1_000_000, 3600 * NS))
    time.sleep(0.02)
    st, _ = anonfds.save(os.getpid(), tfd, link(tfd), fdinfo(tfd))
    # Not rearmed until it is read: fdinfo shows no time left, and one tick.
    assert (st.ticks, st.value_ns, st.interval_ns) == (1, 0, 3600 * NS)
    assert struct.unpack("<Q", os.read(tfd, 8)) == (1,)    # the save took nothing
    made = keep(anonfds.make(st, os.O_NONBLOCK))
    assert struct.unpack("<Q", os.read(made, 8)) == (1,)
    value, interval = timerfd_gettime(made)
    assert interval == 3600 * NS and 3598 * NS < value <= 3600 * NS


def test_timerfd_expired_one_shot_keeps_its_tick(keep):
    tfd = keep(timerfd(CLOCK_MONOTONIC, os.O_NONBLOCK, 1_000_000, 0))
    time.sleep(0.02)
    st, _ = anonfds.save(os.getpid(), tfd, link(tfd), fdinfo(tfd))
    assert (st.ticks, st.value_ns, st.interval_ns) == (1, 0, 0)
    made = keep(anonfds.make(st, os.O_NONBLOCK))
    assert timerfd_gettime(made) == (0, 0)
    assert struct.unpack("<Q", os.read(made, 8)) == (1,)
    with pytest.raises(BlockingIOError):
        os.read(made, 8)


def test_timerfd_disarmed_stays_disarmed(keep):
    tfd = keep(_ok(_libc.timerfd_create(CLOCK_MONOTONIC, 0), "timerfd_create"))
    st, _ = anonfds.save(os.getpid(), tfd, link(tfd), fdinfo(tfd))
    made = keep(anonfds.make(st, os.O_NONBLOCK))
    assert timerfd_gettime(made) == (0, 0)


# -- signalfd ---------------------------------------------------------------------------

def test_signalfd_mask_round_trip_reads_a_blocked_signal(keep):
    mask = sigbit(signal.SIGUSR1) | sigbit(signal.SIGWINCH) | sigbit(signal.SIGRTMIN + 2)
    sfd = keep(signalfd(mask))
    st, why = anonfds.save(os.getpid(), sfd, link(sfd), fdinfo(sfd))
    assert why == "" and st == AnonState("signalfd", sigmask=mask)
    made = keep(anonfds.make(st, os.O_NONBLOCK))
    assert nonblocking(made)
    assert f"sigmask:\t{mask:016x}" in fdinfo(made)
    # SIGWINCH: ignored by default, so nothing happens should it ever get through.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})
    try:
        with pytest.raises(BlockingIOError):
            os.read(made, 128)
        signal.pthread_kill(threading.get_ident(), signal.SIGWINCH)
        info = os.read(made, 128)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert len(info) == 128 and struct.unpack_from("<I", info)[0] == signal.SIGWINCH


# -- epoll ------------------------------------------------------------------------------

def test_epoll_registrations_are_saved(keep):
    ep = keep(_ok(_libc.epoll_create1(0), "epoll_create1"))
    r, w = keep(*os.pipe())
    ev = keep(os.eventfd(0))
    epoll_add(ep, r, EPOLLIN, 0x1122334455667788)
    epoll_add(ep, ev, EPOLLOUT | EPOLLET, 7)
    st, why = anonfds.save(os.getpid(), ep, link(ep), fdinfo(ep))
    assert why == "" and st.type == "epoll"
    # The kernel adds EPOLLERR and EPOLLHUP to every registration.
    assert sorted((t.fd, t.events, t.data) for t in st.targets) == sorted([
        (r, EPOLLIN | EPOLLERR | EPOLLHUP, 0x1122334455667788),
        (ev, EPOLLOUT | EPOLLET | EPOLLERR | EPOLLHUP, 7)])


def test_epoll_registration_of_a_replaced_fd_is_lost(keep):
    ep = keep(_ok(_libc.epoll_create1(0), "epoll_create1"))
    r, w = keep(*os.pipe())
    ev = keep(os.eventfd(0))
    epoll_add(ep, r, EPOLLIN, 1)
    epoll_add(ep, ev, EPOLLIN, 2)
    keep(os.dup(r))                 # the pipe lives on, and so does its registration
    other = keep(os.eventfd(0))
    os.dup2(other, r)               # ... but fd r now names another file
    assert f"tfd: {r:>8}" in fdinfo(ep)
    st, why = anonfds.save(os.getpid(), ep, link(ep), fdinfo(ep))
    assert [(t.fd, t.data) for t in st.targets] == [(ev, 2)]
    assert why == f"the registrations of closed fds {r} are lost"


def test_epoll_live_registration_beside_a_stale_one_of_the_same_number(keep):
    ep = keep(_ok(_libc.epoll_create1(0), "epoll_create1"))
    r, w = keep(*os.pipe())
    epoll_add(ep, r, EPOLLIN, 0xAAAA)
    keep(os.dup(r))                 # a copy keeps the pipe and its registration alive
    ev = keep(os.eventfd(0))
    os.dup2(ev, r)                  # fd r is now an eventfd ...
    epoll_add(ep, r, EPOLLOUT, 0xBBBB)    # ... registered under the same number
    assert fdinfo(ep).count(f"tfd: {r:>8}") == 2
    st, why = anonfds.save(os.getpid(), ep, link(ep), fdinfo(ep))
    assert [(t.fd, t.data) for t in st.targets] == [(r, 0xBBBB)]
    assert why == f"the registrations of closed fds {r} are lost"


@pytest.mark.parametrize("flags", [0, os.O_NONBLOCK])
def test_epoll_make_gives_an_empty_epoll(keep, flags):
    st = AnonState("epoll", targets=[EpollTarget(3, EPOLLIN, 9)])
    ep = keep(anonfds.make(st, os.O_RDWR | flags))
    assert link(ep) == "anon_inode:[eventpoll]"
    assert nonblocking(ep) == bool(flags)
    assert "tfd:" not in fdinfo(ep)     # registrations are the stub's (plan.EpollCtl)
    ev = keep(os.eventfd(1))
    epoll_add(ep, ev, EPOLLIN, 42)
    assert epoll_wait(ep) == [(EPOLLIN, 42)]


def test_unknown_anon_kind_is_not_restored():
    st, why = anonfds.save(os.getpid(), 0, "anon_inode:[userfaultfd]", "")
    assert st is None and "not restored" in why
    assert anonfds.kind_of("anon_inode:[eventfd]") == "eventfd"
    assert anonfds.kind_of("anon_inode:[userfaultfd]") is None


def test_unreadable_fdinfo_is_reported():
    st, why = anonfds.save(os.getpid(), 0, "anon_inode:[eventfd]", "pos:\t0\n")
    assert st is None and "fdinfo could not be read" in why


@pytest.mark.parametrize("kind", ["eventfd", "timerfd", "signalfd"])
def test_make_objects_anon_nonblock_as_saved(keep, kind):
    state = {"eventfd": AnonState("eventfd", count=2),
             "timerfd": AnonState("timerfd", clock=CLOCK_MONOTONIC, value_ns=60 * NS),
             "signalfd": AnonState("signalfd", sigmask=sigbit(signal.SIGUSR2))}[kind]
    for flags in (os.O_RDWR, os.O_RDWR | os.O_NONBLOCK):
        info = FdInfo(fd=5, kind="anon", target=f"anon_inode:[{kind}]", flags=flags,
                      anon=state)
        ours, warnings = fds.make_objects("anon", (info,))
        keep(*ours)
        assert warnings == [] and len(ours) == 1
        assert link(ours[0]) == f"anon_inode:[{kind}]"
        assert nonblocking(ours[0]) == bool(flags & os.O_NONBLOCK)


# -- unix sockets -----------------------------------------------------------------------

MESSAGES = [b"first", b"", b"second message", b"x" * 5000]


def _send(s: socket.socket, type_: int, msgs: list[bytes]) -> list[bytes]:
    """Sends msgs; returns what the reader's queue then holds, message by message."""
    if type_ != socket.SOCK_DGRAM:
        msgs = [m for m in msgs if m]     # an empty write sends nothing on a stream
    for m in msgs:
        s.send(m)
    return [b"".join(msgs)] if type_ == socket.SOCK_STREAM else msgs


@pytest.mark.parametrize("type_", UNIX_TYPES)
def test_socketpair_save_keeps_queue_and_boundaries(keep, type_):
    a, b = keep(*socket.socketpair(socket.AF_UNIX, type_))
    want_b = _send(a, type_, MESSAGES)
    want_a = _send(b, type_, [b"reply"])
    sb, lost_b = save_sock(b)
    sa, lost_a = save_sock(a)
    assert lost_a == lost_b == []
    assert sb.queue == want_b and sa.queue == want_a
    assert (sa.family, sa.type, sa.state, sb.state) == \
        (socket.AF_UNIX, type_, "connected", "connected")
    assert (sa.ino, sa.peer_ino, sb.ino, sb.peer_ino) == (ino(a), ino(b), ino(b), ino(a))
    assert sa.name == sb.name == b"" and sa.shutdown == sb.shutdown == 0
    # Nothing was taken, and peeking left no offset behind.
    assert b.getsockopt(socket.SOL_SOCKET, sockets.SO_PEEK_OFF) == -1
    if type_ == socket.SOCK_STREAM:
        assert b.recv(len(want_b[0]), socket.MSG_WAITALL) == want_b[0]
    else:
        assert recv_all(b, len(want_b)) == want_b
    assert a.recv(100) == b"reply"


@pytest.mark.parametrize("type_", UNIX_TYPES)
def test_socketpair_make_pair_gives_the_queues_back(keep, type_):
    a, b = keep(*socket.socketpair(socket.AF_UNIX, type_))
    want_b = _send(a, type_, MESSAGES)
    want_a = _send(b, type_, [b"reply", b"again"])
    (sa, _), (sb, _) = save_sock(a), save_sock(b)
    x, y = keep(*map(adopt, sockets.make_pair(sa, sb)))
    assert (x.type, y.type) == (type_, type_)
    if type_ == socket.SOCK_STREAM:
        assert y.recv(len(want_b[0]), socket.MSG_WAITALL) == want_b[0]
        assert x.recv(len(want_a[0]), socket.MSG_WAITALL) == want_a[0]
    else:
        assert recv_all(y, len(want_b)) == want_b
        assert recv_all(x, len(want_a)) == want_a
    for s in (x, y):
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(100)
        s.setblocking(True)
    x.send(b"still a pair")
    assert y.recv(100) == b"still a pair"


def test_socketpair_shutdown_round_trip(keep):
    a, b = keep(*socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    a.send(b"bye")
    a.shutdown(socket.SHUT_WR)
    (sa, _), (sb, lost) = save_sock(a), save_sock(b)
    assert (sa.shutdown, sb.shutdown) == (sockets.SEND_SHUTDOWN, sockets.RCV_SHUTDOWN)
    assert sb.queue == [b"bye"] and lost == []
    x, y = keep(*map(adopt, sockets.make_pair(sa, sb)))
    y.settimeout(1)
    assert y.recv(100) == b"bye"
    assert y.recv(100) == b""                   # then end of file
    with pytest.raises(BrokenPipeError):
        x.send(b"no more")
    y.send(b"the other way still works")
    assert x.recv(100) == b"the other way still works"


@pytest.mark.parametrize("nonblock", [(True, False), (False, True)])
def test_make_objects_socketpair_flags(keep, nonblock):
    a, b = keep(*socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    a.send(b"to b")
    (sa, _), (sb, _) = save_sock(a), save_sock(b)
    infos = tuple(FdInfo(fd=3 + i, kind="socket", target=f"socket:[{st.ino}]",
                         flags=os.O_RDWR | (os.O_NONBLOCK if nb else 0), sock=st)
                  for i, (st, nb) in enumerate(zip((sa, sb), nonblock, strict=True)))
    ours, warnings = fds.make_objects("socketpair", infos)
    keep(*ours)
    assert warnings == [] and [nonblocking(fd) for fd in ours] == list(nonblock)
    assert adopt(os.dup(ours[1])).recv(100) == b"to b"


def test_unix_path_listener_binds_again_over_its_stale_file(keep, tmp_path):
    path = str(tmp_path / "listen.sock")
    lsn = keep(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    lsn.bind(path)
    lsn.listen(5)
    st, lost = save_sock(lsn)
    assert lost == [] and (st.state, st.name, st.backlog) == ("listening", path.encode(), 5)
    assert sockets.label(st) == f"unix stream {path} (listening)"
    # While the listener lives, its address is taken: making it again must fail.
    with pytest.raises(OSError) as e:
        sockets.make(st, can_repair=False)
    assert "listening" in str(e.value)
    lsn.close()
    assert os.path.exists(path)                 # the stale file outlives the socket
    fd, warning = sockets.make(st, can_repair=False)
    made = keep(adopt(fd))
    assert warning == "" and made.getsockname() == path
    again, _ = save_sock(made)
    assert (again.state, again.backlog) == ("listening", 5)
    client = keep(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    client.connect(path)
    conn = keep(made.accept()[0])
    client.send(b"hello")
    assert conn.recv(10) == b"hello"


def test_unix_path_bind_leaves_a_non_socket_file_alone(keep, tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    st = SockState(socket.AF_UNIX, socket.SOCK_STREAM, state="listening",
                   name=str(path).encode(), backlog=1)
    with pytest.raises(OSError):
        sockets.make(st, can_repair=False)
    assert path.read_text() == "keep me"


def test_unix_abstract_listener_round_trip(keep):
    name = abstract_name()
    lsn = keep(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    lsn.bind(name)
    lsn.listen(2)
    st, lost = save_sock(lsn)
    assert lost == [] and (st.state, st.name, st.backlog) == ("listening", name, 2)
    assert sockets.label(st) == f"unix seqpacket @{name[1:].decode()} (listening)"
    lsn.close()
    fd, _ = sockets.make(st, can_repair=False)
    made = keep(adopt(fd))
    assert made.getsockname() == name
    client = keep(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    client.connect(name)
    conn = keep(made.accept()[0])
    client.send(b"m")
    assert conn.recv(10) == b"m"


def test_unix_listener_with_pending_connections_reports_them(keep):
    name = abstract_name()
    lsn = keep(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    lsn.bind(name)
    lsn.listen(4)
    for _ in range(2):
        keep(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)).connect(name)
    st, lost = save_sock(lsn)
    assert st.state == "listening"
    assert lost == ["2 connection(s) not yet accepted are lost"]


def test_unix_bound_dgram_made_again_receives(keep):
    name = abstract_name()
    srv = keep(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    srv.bind(name)
    st, lost = save_sock(srv)
    assert (st.state, st.name, lost) == ("bound", name, [])
    srv.close()
    made = keep(adopt(sockets.make(st, can_repair=False)[0]))
    keep(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)).sendto(b"log line", name)
    made.settimeout(1)
    assert made.recv(100) == b"log line"


@pytest.mark.parametrize("case", ["stream peer closed", "dgram peer closed",
                                  "bound dgram server"])
def test_unread_messages_of_a_lone_unix_socket_are_kept_or_reported(keep, case):
    if case == "bound dgram server":
        s = keep(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        s.bind(abstract_name())
        c = keep(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        for m in (b"one", b"two"):
            c.sendto(m, s.getsockname())
    else:
        type_ = socket.SOCK_STREAM if case.startswith("stream") else socket.SOCK_DGRAM
        c, s = keep(*socket.socketpair(socket.AF_UNIX, type_))
        c.send(b"one")
        c.send(b"two")
        c.close()
    st, lost = save_sock(s)
    assert st.queue in ([b"onetwo"], [b"one", b"two"])     # the save did see them
    s.close()
    made = keep(adopt(sockets.make(st, can_repair=False)[0]))
    if lost:
        return                                  # reported: a loss the user was told of
    made.setblocking(False)
    got: list = []
    try:
        while m := made.recv(100):
            got.append(m)
    except BlockingIOError:
        pass
    except OSError as e:
        got.append(errno.errorcode[e.errno])
    assert got == st.queue


# -- SCM_RIGHTS ---------------------------------------------------------------------------

@pytest.mark.parametrize("type_", UNIX_TYPES)
def test_descriptors_in_flight_are_reported_and_left_in_place(keep, type_):
    a, b = keep(*socket.socketpair(socket.AF_UNIX, type_))
    r, w = keep(*os.pipe())
    a.send(b"before")
    socket.send_fds(a, [b"carrier"], [w])
    a.send(b"after")
    keep.close(w)                   # the only writer of the pipe is now in flight
    st, lost = save_sock(b)
    assert any(IN_FLIGHT in line for line in lost), lost
    if type_ == socket.SOCK_STREAM:
        assert st.queue == [b"beforecarrierafter"]
    else:
        assert st.queue == [b"before", b"carrier", b"after"]
    # The message and its descriptor are still there, in order.
    b.settimeout(1)
    got, fds_got = b"", []
    while len(got) < len(b"beforecarrierafter"):
        data, received, _, _ = socket.recv_fds(b, 100, 4)
        got += data
        fds_got += received
        if type_ != socket.SOCK_STREAM:
            got += b"|"
    assert got.replace(b"|", b"") == b"beforecarrierafter"
    assert len(fds_got) == 1
    keep(*fds_got)
    assert fds.ino_of(link(fds_got[0])) == os.fstat(r).st_ino
    os.write(fds_got[0], b"through the passed fd")
    assert os.read(r, 100) == b"through the passed fd"


def test_no_descriptors_in_flight_no_warning(keep):
    a, b = keep(*socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
    a.send(b"plain")
    assert save_sock(b)[1] == []


def test_credentials_are_not_descriptors_in_flight(keep):
    a, b = keep(*socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
    b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    a.send(b"with credentials")
    st, lost = save_sock(b)
    assert st.queue == [b"with credentials"]
    assert lost == []


@pytest.mark.parametrize("how", ["peer closed", "peer shut down writing"])
def test_seqpacket_at_end_of_file_saves(keep, how):
    a, b = keep(*socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    a.send(b"x")
    a.send(b"yz")
    if how == "peer closed":
        a.close()
    else:
        a.shutdown(socket.SHUT_WR)
    with deadline(0.5):
        st, _ = save_sock(b)
    assert st.queue == [b"x", b"yz"]


# -- inet sockets -----------------------------------------------------------------------

def test_tcp_listener_round_trip(keep):
    lsn = keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(7)
    port = lsn.getsockname()[1]
    st, lost = save_sock(lsn)
    assert lost == []
    assert (st.family, st.type, st.state, st.local, st.local_port, st.backlog) == \
        (socket.AF_INET, socket.SOCK_STREAM, "listening", "127.0.0.1", port, 7)
    assert st.options == {"SO_REUSEADDR": 1}
    assert sockets.label(st) == f"tcp 127.0.0.1:{port} (listening)"
    lsn.close()
    made = keep(adopt(sockets.make(st, can_repair=False)[0]))
    assert made.getsockname() == ("127.0.0.1", port)
    assert made.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert save_sock(made)[0].backlog == 7
    client = keep(socket.create_connection(("127.0.0.1", port), timeout=1))
    conn = keep(made.accept()[0])
    client.send(b"ping")
    assert conn.recv(10) == b"ping"


def test_tcp_options_that_differ_from_a_fresh_socket(keep):
    s = keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 50000)   # not the default
    st, lost = save_sock(s)
    assert lost == [] and st.state == "unbound"
    assert st.options["TCP_NODELAY"] == 1 and st.options["SO_KEEPALIVE"] == 1
    assert st.options["TCP_KEEPIDLE"] == 77
    assert st.options["SO_RCVBUF"] == s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    made = keep(adopt(sockets.make(st, can_repair=False)[0]))
    for level, opt in ((socket.IPPROTO_TCP, socket.TCP_NODELAY),
                       (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                       (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                       (socket.SOL_SOCKET, socket.SO_RCVBUF)):
        assert made.getsockopt(level, opt) == s.getsockopt(level, opt)


def test_udp_own_datagrams_are_saved_and_sent_again(keep):
    s = keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.bind(("127.0.0.1", 0))
    here = s.getsockname()
    for m in (b"one", b"two", b"three"):
        s.sendto(m, here)
    st, lost = save_sock(s)
    assert lost == []
    assert (st.state, st.local, st.local_port) == ("bound", "127.0.0.1", here[1])
    assert st.queue == [b"one", b"two", b"three"]
    assert sockets.label(st) == f"udp 127.0.0.1:{here[1]} (bound)"
    assert recv_all(s, 3) == [b"one", b"two", b"three"]     # left unread by the save
    s.close()
    made = keep(adopt(sockets.make(st, can_repair=False)[0]))
    assert made.getsockname() == here
    made.settimeout(1)
    assert [made.recvfrom(100) for _ in range(3)] == \
        [(b"one", here), (b"two", here), (b"three", here)]


def test_udp_datagrams_from_others_are_reported_lost(keep):
    s = keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.bind(("127.0.0.1", 0))
    keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).sendto(b"foreign",
                                                                  s.getsockname())
    s.sendto(b"own", s.getsockname())
    st, lost = save_sock(s)
    assert lost == ["1 unread datagram(s) from other sockets are lost"]
    assert st.queue == []
    assert recv_all(s, 2) == [b"foreign", b"own"]


def test_udp_connected_default_peer_comes_back(keep):
    peer = keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    peer.bind(("127.0.0.1", 0))
    s = keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.connect(peer.getsockname())
    st, lost = save_sock(s)
    assert lost == [] and st.state == "connected"
    assert (st.peer, st.peer_port) == peer.getsockname()
    s.close()
    made = keep(adopt(sockets.make(st, can_repair=False)[0]))
    made.send(b"to the default peer")
    peer.settimeout(1)
    assert peer.recv(100) == b"to the default peer"


def test_tcp_established_without_repair_comes_back_reset(keep):
    lsn = keep(socket.socket())
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(1)
    c = keep(socket.create_connection(lsn.getsockname(), timeout=1))
    keep(lsn.accept()[0])
    st, lost = save_sock(c)
    assert st.state == "connected" and st.tcp is None
    assert len(lost) == 1 and "comes back reset" in lost[0]
    made = keep(adopt(sockets.make(st, can_repair=False)[0]))
    made.settimeout(1)
    with pytest.raises(ConnectionResetError):
        made.recv(10)


@pytest.mark.parametrize("nonblock", [False, True])
def test_make_objects_socket_flags(keep, nonblock):
    lsn = keep(socket.socket())
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(3)
    st, _ = save_sock(lsn)
    lsn.close()
    info = FdInfo(fd=6, kind="socket", target=f"socket:[{st.ino}]",
                  flags=os.O_RDWR | (os.O_NONBLOCK if nonblock else 0), sock=st)
    ours, warnings = fds.make_objects("socket", (info,))
    keep(*ours)
    assert warnings == [] and nonblocking(ours[0]) == nonblock
    made = adopt(os.dup(ours[0]))
    keep(made)
    if nonblock:
        with pytest.raises(BlockingIOError):
            made.accept()


# -- reset sockets and labels -----------------------------------------------------------

@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_reset_tcp_socket_reads_connection_reset(keep, family):
    st = SockState(family, socket.SOCK_STREAM, state="connected")
    s = keep(adopt(sockets.reset_socket(st)))
    assert (s.family, s.type) == (family, socket.SOCK_STREAM)
    s.settimeout(1)
    with pytest.raises(ConnectionResetError):
        s.recv(10)


@pytest.mark.parametrize("type_", [socket.SOCK_STREAM, socket.SOCK_SEQPACKET])
def test_reset_unix_socket_reads_eof_and_refuses_writes(keep, type_):
    st = SockState(socket.AF_UNIX, type_, state="connected")
    s = keep(adopt(sockets.reset_socket(st)))
    assert (s.family, s.type) == (socket.AF_UNIX, type_)
    s.settimeout(1)
    assert s.recv(10) == b""
    with pytest.raises(BrokenPipeError):
        s.send(b"x")


def test_make_of_a_connected_unix_stream_is_reset(keep):
    st = SockState(socket.AF_UNIX, socket.SOCK_STREAM, state="connected", peer_ino=12345)
    fd, warning = sockets.make(st, can_repair=False)
    s = keep(adopt(fd))
    assert warning == ""        # the save already said so (fds._outside_peers)
    s.settimeout(1)
    assert s.recv(10) == b""


@pytest.mark.parametrize("st,text", [
    (SockState(socket.AF_UNIX, socket.SOCK_STREAM, state="listening", name=b"/run/x.sock"),
     "unix stream /run/x.sock (listening)"),
    (SockState(socket.AF_UNIX, socket.SOCK_SEQPACKET, state="connected", name=b"\0srv"),
     "unix seqpacket @srv (connected)"),
    (SockState(socket.AF_UNIX, socket.SOCK_DGRAM, state="connected", peer_name=b"/dev/log"),
     "unix dgram /dev/log (connected)"),
    (SockState(socket.AF_UNIX, socket.SOCK_DGRAM), "unix dgram (unbound)"),
    (SockState(socket.AF_UNIX, socket.SOCK_RAW), f"unix type {socket.SOCK_RAW} (unbound)"),
    (SockState(socket.AF_INET, socket.SOCK_STREAM, state="connected", local="127.0.0.1",
               local_port=80, peer="10.0.0.2", peer_port=5000),
     "tcp 127.0.0.1:80 -> 10.0.0.2:5000 (connected)"),
    (SockState(socket.AF_INET, socket.SOCK_DGRAM, state="bound", local="0.0.0.0",
               local_port=53), "udp 0.0.0.0:53 (bound)"),
    (SockState(socket.AF_INET6, socket.SOCK_STREAM, state="listening", local="::1",
               local_port=8080), "tcp6 [::1]:8080 (listening)"),
    (SockState(socket.AF_INET6, socket.SOCK_DGRAM, state="connected", local="::",
               local_port=5353, peer="fe80::1", peer_port=53),
     "udp6 [::]:5353 -> [fe80::1]:53 (connected)"),
])
def test_label(st, text):
    assert sockets.label(st) == text


def test_restorable_follows_the_saved_state():
    assert not fds.restorable(FdInfo(fd=3, kind="pipe", target="pipe:[1]"))
    assert fds.restorable(FdInfo(fd=3, kind="pipe", target="pipe:[1]",
                                 pipe=PipeState(ino=1, size=4096)))
    assert not fds.restorable(FdInfo(fd=3, kind="anon", target="anon_inode:[eventfd]"))
    assert fds.restorable(FdInfo(fd=3, kind="anon", target="anon_inode:[eventfd]",
                                 anon=AnonState("eventfd")))
    assert not fds.restorable(FdInfo(fd=3, kind="socket", target="socket:[1]"))
    assert fds.restorable(FdInfo(fd=3, kind="socket", target="socket:[1]",
                                 sock=SockState(socket.AF_UNIX, socket.SOCK_STREAM)))
    assert not fds.restorable(FdInfo(fd=3, kind="other", target="/x"))


# -- a child process: read_fds, read_states, then make_objects --------------------------

CHILD_SIGMASK = sigbit(signal.SIGUSR1) | sigbit(signal.SIGTERM)
CHILD = r"""
import ctypes, json, os, signal, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def ok(ret):
    assert ret >= 0, os.strerror(ctypes.get_errno())
    return ret
pipe_r = int(sys.argv[1])
ev = os.eventfd(3, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
mask = ctypes.c_uint64((1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGTERM - 1)))
sfd = ok(libc.signalfd(-1, ctypes.byref(mask), 0))
tfd = ok(libc.timerfd_create(1, os.O_NONBLOCK))
ok(libc.timerfd_settime(tfd, 0, struct.pack("<4q", 2, 0, 100, 0), None))
ep = ok(libc.epoll_create1(0))
ok(libc.epoll_ctl(ep, 1, ev, struct.pack("<IQ", 1, 0xdead)))
ok(libc.epoll_ctl(ep, 1, pipe_r, struct.pack("<IQ", 1, 0xbeef)))
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
a.setblocking(False)
a.send(b"m1"); a.send(b"m2"); b.send(b"back")
lsn = socket.socket()
lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsn.bind(("127.0.0.1", 0))
lsn.listen(3)
lsn.setblocking(False)
print(json.dumps(dict(ev=ev, sfd=sfd, tfd=tfd, ep=ep, a=a.fileno(), b=b.fileno(),
                      lsn=lsn.fileno(), port=lsn.getsockname()[1])), flush=True)
time.sleep(60)
"""


@pytest.fixture
def child(keep):
    """A child holding a pipe's read end (whose writer is ours) and one object of each
    kind, stopped; yields (pid, its fd numbers, our read end, our write end)."""
    r, w = keep(*os.pipe())
    os.write(w, b"in the pipe")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(r)], pass_fds=[r],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 5)
        line = proc.stdout.readline() if ready else b""
        if not line:
            proc.kill()
            pytest.fail(f"child did not start: {proc.communicate()[1].decode()}")
        numbers = json.loads(line)
        numbers["r"] = r
        os.kill(proc.pid, signal.SIGSTOP)
        for _ in range(500):
            with open(f"/proc/{proc.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "T":
                    break
            time.sleep(0.002)
        yield proc, numbers, r, w
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_child_read_states_then_make_objects(keep, child):
    proc, n, r, w = child
    infos = fds.read_fds(proc.pid)
    lost = fds.read_states(proc.pid, infos, repair=False)
    by_fd = {f.fd: f for f in infos}
    # Only the pipe, whose writer is this process, is reported.
    assert len(lost) == 1 and lost[0].startswith(f"fd {r} (pipe pipe:[")
    assert "its writer is another process" in lost[0]
    assert all(fds.restorable(by_fd[n[k]]) for k in ("r", "ev", "sfd", "tfd", "ep", "a",
                                                      "b", "lsn"))

    pipe = by_fd[r]
    assert pipe.kind == "pipe" and pipe.flags & 3 == os.O_RDONLY
    assert pipe.pipe.data == b"in the pipe" and not pipe.pipe.alone
    assert pipe.pipe.ino == os.fstat(r).st_ino

    assert by_fd[n["ev"]].anon == AnonState("eventfd", count=3, semaphore=True)
    assert by_fd[n["sfd"]].anon == AnonState(
        "signalfd", sigmask=CHILD_SIGMASK)
    timer = by_fd[n["tfd"]].anon
    assert (timer.type, timer.clock, timer.interval_ns, timer.abstime) == \
        ("timerfd", CLOCK_MONOTONIC, 2 * NS, False)
    assert 95 * NS < timer.value_ns <= 100 * NS
    targets = sorted((t.fd, t.events, t.data) for t in by_fd[n["ep"]].anon.targets)
    assert targets == sorted([(n["ev"], EPOLLIN | EPOLLERR | EPOLLHUP, 0xdead),
                              (r, EPOLLIN | EPOLLERR | EPOLLHUP, 0xbeef)])

    sa, sb = by_fd[n["a"]].sock, by_fd[n["b"]].sock
    assert (sa.state, sa.queue, sb.state, sb.queue) == \
        ("connected", [b"back"], "connected", [b"m1", b"m2"])
    assert (sa.peer_ino, sb.peer_ino) == (sb.ino, sa.ino)
    sl = by_fd[n["lsn"]].sock
    assert (sl.state, sl.backlog, sl.local_port) == ("listening", 3, n["port"])
    assert sl.options == {"SO_REUSEADDR": 1}

    # Nothing was taken from the child's objects: look through copies of them.
    grab = fds.Grabber(proc.pid)
    try:
        b_copy = keep(adopt(grab.take(n["b"])))
        ev_copy = keep(grab.take(n["ev"]))
    finally:
        grab.close()
    assert recv_all(b_copy, 2) == [b"m1", b"m2"]
    assert os.eventfd_read(ev_copy) == 1
    proc.kill()
    proc.wait()
    os.set_blocking(r, False)
    assert os.read(r, 100) == b"in the pipe"

    # Made again here, with the flags the child had.
    (pr, pw), _ = fds.make_objects("pipe", (pipe, None))
    keep(pr)
    assert pw == -1 and not nonblocking(pr)
    assert read_all(pr) == b"in the pipe"          # then end of file: no writer
    made = {}
    for k in ("ev", "sfd", "tfd", "ep"):
        (made[k],), _ = fds.make_objects("anon", (by_fd[n[k]],))
        keep(made[k])
    assert (nonblocking(made["ev"]), nonblocking(made["sfd"]),
            nonblocking(made["tfd"]), nonblocking(made["ep"])) == (True, False, True, False)
    assert [os.eventfd_read(made["ev"]) for _ in range(3)] == [1, 1, 1]
    with pytest.raises(BlockingIOError):
        os.eventfd_read(made["ev"])
    value, interval = timerfd_gettime(made["tfd"])
    assert interval == 2 * NS and 94 * NS < value <= 100 * NS
    assert f"sigmask:\t{CHILD_SIGMASK:016x}" in fdinfo(made["sfd"])

    (x, y), _ = fds.make_objects("socketpair", (by_fd[n["a"]], by_fd[n["b"]]))
    x, y = keep(adopt(x), adopt(y))
    assert (nonblocking(x.fileno()), nonblocking(y.fileno())) == (True, False)
    assert recv_all(y, 2) == [b"m1", b"m2"] and recv_all(x, 1) == [b"back"]

    (lfd,), _ = fds.make_objects("socket", (by_fd[n["lsn"]],))
    lsn = keep(adopt(lfd))
    assert nonblocking(lfd) and lsn.getsockname() == ("127.0.0.1", n["port"])
    keep(socket.create_connection(("127.0.0.1", n["port"]), timeout=1))
    select.select([lsn], [], [], 1)
    keep(lsn.accept()[0])


@pytest.mark.parametrize("type_", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
def test_a_file_in_flight_comes_back_with_its_message(keep, tmp_path, type_):
    """A regular file carried by an unread message is opened again and sent with it:
    the receiver gets a descriptor of the same file, at the same offset."""
    path = tmp_path / "carried"
    path.write_bytes(b"0123456789")
    a, b = keep(*socket.socketpair(socket.AF_UNIX, type_))
    f = os.open(path, os.O_RDONLY)
    os.lseek(f, 4, os.SEEK_SET)
    a.send(b"first")
    socket.send_fds(a, [b"with a file"], [f])
    os.close(f)
    st, lost = save_sock(b)
    assert not lost and [x.message for x in st.inflight] == [1], (lost, st.inflight)
    b_state = st
    a_state, _ = save_sock(a)
    x, y = (adopt(fd) for fd in sockets.make_pair(a_state, b_state))
    keep(x, y)
    assert y.recv(100) == b"first"
    msg, fds, _, _ = socket.recv_fds(y, 100, 4)
    assert msg == b"with a file" and len(fds) == 1
    try:
        assert os.readlink(f"/proc/self/fd/{fds[0]}") == str(path)
        assert os.read(fds[0], 10) == b"456789"
    finally:
        os.close(fds[0])
