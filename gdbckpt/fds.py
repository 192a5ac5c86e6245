"""Open file descriptors: what a process has open, and what a restore can give it back.

Plain Python over /proc/PID/fd and fdinfo (GDB's process may read them: it
is the tracer). Regular files and directories are reopened by path at their
offset, deleted files are recreated from the bytes the image holds,
character devices are reopened, terminals go to the restoring session's
terminal; pipes, sockets and other kernel objects cannot be recreated here
and get /dev/null with the same access mode instead.
"""

from __future__ import annotations

import enum
import os
import stat

from .errors import SaveError
from .image.model import FdInfo
from .libc import libc

KCMP_FILE = 0
SYS_KCMP = 312
TTY_MAJORS = {4, 5, 136, 137, 138, 139, 140, 141, 142, 143}   # ttys, console, pts


class FdKind(enum.StrEnum):
    FILE = "file"          # a regular file that is still on disk
    DIR = "dir"
    DELETED = "deleted"    # a regular file no longer on disk: its bytes are saved
    CHARDEV = "chardev"    # /dev/null, /dev/urandom, ...
    TTY = "tty"
    PIPE = "pipe"
    SOCKET = "socket"
    MEMFD = "memfd"
    ANON = "anon"          # eventfd, epoll, inotify, signalfd, timerfd, ...
    OTHER = "other"


# Kinds a restore recreates; the rest become /dev/null.
RESTORABLE = {FdKind.FILE, FdKind.DIR, FdKind.DELETED, FdKind.CHARDEV, FdKind.TTY}
ACCMODE = 3
O_RDWR = 2
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
# Flags that only matter when a file is created, never when one is reopened.
CREATION_FLAGS = 0o100 | 0o200 | 0o1000 | 0o20000000   # CREAT, EXCL, TRUNC, TMPFILE bits


def parse_fdinfo(text: str) -> tuple[int, int]:
    """(pos, flags) from /proc/PID/fdinfo/N."""
    pos = flags = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "pos":
            pos = int(value)
        elif key == "flags":
            flags = int(value, 8)
    return pos, flags


def classify(target: str, st: os.stat_result | None) -> FdKind:
    if target.startswith("pipe:"):
        return FdKind.PIPE
    if target.startswith("socket:"):
        return FdKind.SOCKET
    if target.startswith("/memfd:"):
        return FdKind.MEMFD
    if target.startswith("anon_inode:") or st is None:
        return FdKind.ANON if target.startswith("anon_inode:") else FdKind.OTHER
    if stat.S_ISREG(st.st_mode):
        return FdKind.DELETED if target.endswith(" (deleted)") or st.st_nlink == 0 \
            else FdKind.FILE
    if stat.S_ISDIR(st.st_mode):
        return FdKind.DIR
    if stat.S_ISCHR(st.st_mode):
        return FdKind.TTY if os.major(st.st_rdev) in TTY_MAJORS else FdKind.CHARDEV
    return FdKind.OTHER


def read_fds(pid: int) -> list[FdInfo]:
    """Every open descriptor of pid, lowest first."""
    base = f"/proc/{pid}/fd"
    try:
        numbers = sorted(int(n) for n in os.listdir(base))
    except OSError as e:
        raise SaveError(f"cannot list {base}: {e.strerror}") from None
    out: list[FdInfo] = []
    for fd in numbers:
        try:
            target = os.readlink(f"{base}/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                pos, flags = parse_fdinfo(f.read())
        except OSError:
            continue          # closed meanwhile
        try:
            st = os.stat(f"{base}/{fd}")
        except OSError:
            st = None
        kind = classify(target, st)
        info = FdInfo(fd=fd, kind=kind.value, target=target, flags=flags, pos=pos)
        if kind in (FdKind.FILE, FdKind.DELETED) and st is not None:
            info.size, info.mtime_ns = st.st_size, st.st_mtime_ns
            info.ino, info.dev = st.st_ino, st.st_dev
        info.same_as = _shared_with(pid, info, out, st)
        out.append(info)
    return out


def _shared_with(pid: int, info: FdInfo, earlier: list[FdInfo], st) -> int:
    """The first earlier fd with the same open file description (dup'd), or -1."""
    for other in earlier:
        if other.target == info.target and other.same_as < 0 and _kcmp(pid, other.fd, info.fd):
            return other.fd
    return -1


def _kcmp(pid: int, fd1: int, fd2: int) -> bool:
    return libc().syscall(SYS_KCMP, pid, pid, KCMP_FILE, fd1, fd2) == 0


def reopen_flags(f: FdInfo) -> int:
    """Flags to open a saved descriptor's file again, close-on-exec included."""
    return f.flags & ~CREATION_FLAGS


def null_flags(f: FdInfo) -> int:
    """/dev/null in place of an fd: the same access mode and close-on-exec."""
    mode = f.flags & ACCMODE
    if f.flags & O_PATH:
        mode = 0
    return mode | (f.flags & O_CLOEXEC)


def check_file(f: FdInfo) -> tuple[str, str]:
    """How a saved regular file or directory looks now.

    ("ok" | "changed" | "shorter" | "gone", what is wrong): "changed" restores
    with a warning, "shorter" and "gone" only with --force.
    """
    try:
        st = os.stat(f.target)
    except OSError as e:
        return "gone", f"fd {f.fd}: {f.target}: {e.strerror}"
    want = stat.S_ISDIR if f.kind == FdKind.DIR.value else stat.S_ISREG
    if not want(st.st_mode):
        # Never opened as it is now: a FIFO would block the restore, a device do anything.
        return "gone", f"fd {f.fd}: {f.target} is no longer a {f.kind}"
    if f.kind == FdKind.DIR.value:
        return "ok", ""
    if f.pos > st.st_size and f.size is not None and f.pos <= f.size:
        return "shorter", (f"fd {f.fd}: {f.target} is now {st.st_size} bytes, shorter than "
                           f"the saved offset {f.pos}")
    if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
        grew = "grew" if f.size is not None and st.st_size > f.size else "changed"
        return "changed", f"fd {f.fd}: {f.target} {grew} since the save"
    return "ok", ""


def device_problem(path: str) -> str | None:
    """Why a saved device path must not be opened (an image is untrusted): it must be a
    character device under /dev, named without '..', as a save records one."""
    if not path.startswith("/dev/") or ".." in path.split("/"):
        return f"{path} is not a device path"
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not stat.S_ISCHR(st.st_mode):
        return f"{path} is not a character device"
    return None


def describe(f: FdInfo) -> str:
    return f"fd {f.fd} ({f.kind} {f.target})"
