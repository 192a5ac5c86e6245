"""eventfd, timerfd, signalfd and epoll descriptors: read from fdinfo, made again here.

A save reads each one's state from /proc/PID/fdinfo (the kernel shows all of
it there). A restore makes the object in gdbckpt's own process, with its
state, and the stub takes a copy (plan.MakeFds); epoll registrations name the
process's own fd numbers, so they are added by the stub once every fd is in
place (plan.EpollCtl).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import struct
import time

from .image.model import AnonState, EpollTarget
from .libc import checked, libc
from .linux import Sys

TYPES = {"[eventfd]": "eventfd", "[timerfd]": "timerfd", "[signalfd]": "signalfd",
         "[eventpoll]": "epoll", "inotify": "inotify", "[fanotify]": "fanotify",
         "[pidfd]": "pidfd"}
BOOT_ID = "/proc/sys/kernel/random/boot_id"
O_NONBLOCK = 0o4000
TFD_TIMER_ABSTIME = 1
TFD_IOC_SET_TICKS = 0x40085400     # _IOW('T', 0, u64): needs CONFIG_CHECKPOINT_RESTORE
EFD_SEMAPHORE = 1
KCMP_EPOLL_TFD = 7
NS = 1_000_000_000


def kind_of(target: str) -> str | None:
    """The anon-inode type that anonfds restores, from a /proc/PID/fd link, or None."""
    name = target.removeprefix("anon_inode:")
    return TYPES.get(name)


def save(pid: int, fd: int, target: str, fdinfo: str) -> tuple[AnonState | None, str]:
    """(state, "") or (None, why it cannot be restored)."""
    kind = kind_of(target)
    fields = _fields(fdinfo)
    try:
        if kind == "eventfd":
            return AnonState("eventfd", count=int(fields["eventfd-count"], 16),
                             semaphore=fields.get("eventfd-semaphore", "0") == "1"), ""
        if kind == "timerfd":
            return _timerfd(fields), ""
        if kind == "signalfd":
            return AnonState("signalfd", sigmask=int(fields["sigmask"], 16)), ""
        if kind == "epoll":
            return _epoll(pid, fd, fdinfo)
        if kind == "pidfd":
            return _pidfd(pid, int(fields["Pid"]))
    except (KeyError, ValueError) as e:
        return None, f"its fdinfo could not be read ({e})"
    return None, f"{target} descriptors are not restored: a restore puts /dev/null there"


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _pidfd(saver_of: int, target: int) -> tuple[AnonState | None, str]:
    """A pidfd names a process: the saved one itself, or another, which a restore
    finds again only if that very process (same boot, same start time) still runs."""
    if target == saver_of:
        return AnonState("pidfd"), ""
    if target <= 0:
        return None, "a pidfd of a process that has ended"
    start = _start_time(target)
    if start is None:
        return None, f"a pidfd of process {target}, which has ended"
    with open(BOOT_ID) as f:
        boot = f.read().strip()
    return AnonState("pidfd", pid=target, pid_start=start, boot_id=boot), \
        f"a pidfd of process {target}: a restore gives it back only while that process runs"


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pidfd_target(state: AnonState, self_pid: int) -> int | None:
    """The pid a restored pidfd refers to, or None if that process is gone."""
    if not state.pid:
        return self_pid
    with open(BOOT_ID) as f:
        same_boot = f.read().strip() == state.boot_id
    return state.pid if same_boot and _start_time(state.pid) == state.pid_start else None


def _pair_ns(text: str) -> int:
    sec, nsec = (int(x) for x in text.strip("()").split(","))
    return sec * NS + nsec


def _timerfd(fields: dict[str, str]) -> AnonState:
    clock = int(fields["clockid"])
    flags = int(fields["settime flags"], 8)
    return AnonState("timerfd", clock=clock, ticks=int(fields["ticks"]),
                     abstime=bool(flags & TFD_TIMER_ABSTIME),
                     value_ns=_pair_ns(fields["it_value"]),
                     interval_ns=_pair_ns(fields["it_interval"]),
                     saved_ns=time.clock_gettime_ns(clock))


EPOLL_LINE = re.compile(r"tfd:\s*(\d+) events:\s*([0-9a-f]+) data:\s*([0-9a-f]+)")


def _epoll(pid: int, epfd: int, fdinfo: str) -> tuple[AnonState, str]:
    """Registrations whose fd still names the registered file (kcmp); one whose fd was
    closed or reused since cannot be tied to a descriptor of the restored process."""
    state, lost = AnonState("epoll"), []
    seen: dict[int, int] = {}
    for m in EPOLL_LINE.finditer(fdinfo):
        tfd, events, data = int(m[1]), int(m[2], 16), int(m[3], 16)
        # The n-th registration under this number (fdinfo and kcmp go in one order).
        nth = seen[tfd] = seen.get(tfd, -1) + 1
        if _same_target(pid, epfd, tfd, nth):
            state.targets.append(EpollTarget(tfd, events, data))
        else:
            lost.append(str(tfd))
    why = f"the registrations of closed fds {', '.join(lost)} are lost" if lost else ""
    return state, why


def _same_target(pid: int, epfd: int, tfd: int, nth: int) -> bool:
    slot = struct.pack("<III", epfd, tfd, nth)
    return libc().syscall(Sys.kcmp, pid, pid, KCMP_EPOLL_TFD, tfd, ctypes.c_char_p(slot)) == 0


# -- making them again --------------------------------------------------------

class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval", _Timespec), ("value", _Timespec)]


def _ts(ns: int) -> _Timespec:
    return _Timespec(ns // NS, ns % NS)


def make(state: AnonState, flags: int, self_pid: int = 0) -> int:
    """A new descriptor of gdbckpt's own with the saved state; flags are the saved
    file flags (O_NONBLOCK matters; close-on-exec is the stub's business). self_pid:
    the restored process's pid (a pidfd of the saved process refers to it)."""
    nonblock = flags & O_NONBLOCK
    if state.type == "pidfd":
        target = pidfd_target(state, self_pid)
        if target is None:
            raise ProcessLookupError(3, f"process {state.pid} has ended")
        return os.pidfd_open(target, nonblock)
    if state.type == "eventfd":
        # Created empty, then written: the counter is 64 bits, eventfd()'s initval 32.
        fd = os.eventfd(0, (EFD_SEMAPHORE if state.semaphore else 0) | nonblock)
        if state.count:
            os.eventfd_write(fd, state.count)
        return fd
    if state.type == "timerfd":
        return _make_timerfd(state, nonblock)
    if state.type == "signalfd":
        mask = ctypes.c_uint64(state.sigmask)
        return checked(libc().signalfd(-1, ctypes.byref(mask), nonblock), "signalfd")
    if state.type in ("inotify", "fanotify"):
        from . import watches
        return watches.make(state, flags)
    if state.type == "epoll":
        fd = checked(libc().epoll_create1(0), "epoll_create1")
        if nonblock:
            fcntl.fcntl(fd, fcntl.F_SETFL, nonblock)
        return fd
    raise OSError(f"unknown anon descriptor type {state.type!r}")


def _make_timerfd(state: AnonState, nonblock: int) -> int:
    fd = checked(libc().timerfd_create(state.clock, nonblock), "timerfd_create")
    try:
        value, flags = state.value_ns, 0
        if state.abstime and state.value_ns:
            # An absolute timer keeps its deadline, where the clock is the same one
            # (CLOCK_REALTIME): a monotonic clock's values are this boot's, so the
            # time left goes on from now.
            if state.clock in (0, 8):        # CLOCK_REALTIME, CLOCK_REALTIME_ALARM
                value, flags = state.saved_ns + state.value_ns, TFD_TIMER_ABSTIME
        elif not value and state.interval_ns and state.ticks:
            value = state.interval_ns      # expired, not yet read: it rearms on the read
        spec = _Itimerspec(_ts(state.interval_ns), _ts(value))
        if value:
            checked(libc().timerfd_settime(fd, flags, ctypes.byref(spec), None),
                   "timerfd_settime")
        if state.ticks:
            fcntl.ioctl(fd, TFD_IOC_SET_TICKS, struct.pack("<Q", state.ticks))
    except BaseException:
        os.close(fd)
        raise
    return fd
