"""Open file descriptors: what a process has open, and what a restore can give it back.

Plain Python over /proc/PID/fd and fdinfo (GDB's process may read them: it
is the tracer). Regular files and directories are reopened by path at their
offset, deleted files are recreated from the bytes the image holds,
character devices are reopened, terminals go to the restoring session's
terminal. Pipes (pipes.py), sockets (sockets.py) and eventfd, timerfd,
signalfd and epoll descriptors (anonfds.py) are saved with their state, read
through a copy of the descriptor (pidfd_getfd) while the process is stopped.
What cannot be recreated gets /dev/null with the same access mode instead,
and the save says so.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat

from .creds import as_fs_user
from .errors import SaveError
from .image.kinds import FdKind, LockKind
from .image.model import FdInfo, FileLock
from .libc import errno, libc
from .linux import Sys

KCMP_FILE = 0
TTY_MAJORS = {4, 5, 136, 137, 138, 139, 140, 141, 142, 143}   # ttys, console, pts


# Kinds a restore recreates; the rest become /dev/null.
RESTORABLE = {FdKind.FILE, FdKind.DIR, FdKind.DELETED, FdKind.CHARDEV, FdKind.TTY,
              FdKind.PIPE, FdKind.SOCKET, FdKind.ANON, FdKind.MEMFD}
F_GET_SEALS, F_ADD_SEALS, F_SEAL_SEAL = 1034, 1033, 1
MFD_CLOEXEC, MFD_ALLOW_SEALING = 1, 2
ACCMODE = 3
O_RDWR = 2
O_CLOEXEC = 0o2000000
O_NONBLOCK = 0o4000
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


LOCK_LINE = re.compile(r"^lock:\s+\d+: (FLOCK|POSIX|OFDLCK|LEASE)\s+(?:ADVISORY|ACTIVE)\s+"
                       r"(WRITE|READ)\s+\S+\s+\S+\s+(\d+) (\d+|EOF)$", re.M)
LOCK_KINDS = {"FLOCK": LockKind.FLOCK, "POSIX": LockKind.POSIX, "OFDLCK": LockKind.OFD,
              "LEASE": LockKind.LEASE}


def parse_locks(text: str) -> list[FileLock]:
    """The locks held through one descriptor, from its fdinfo (leases being broken,
    and lock requests still waiting, are not held: they are left out)."""
    return [FileLock(LOCK_KINDS[m[1]], m[2] == "WRITE", int(m[3]),
                     -1 if m[4] == "EOF" else int(m[4]))
            for m in LOCK_LINE.finditer(text)]


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
                text = f.read()
            pos, flags = parse_fdinfo(text)
        except OSError:
            continue          # closed meanwhile
        try:
            st = os.stat(f"{base}/{fd}")
        except OSError:
            st = None
        kind = classify(target, st)
        info = FdInfo(fd=fd, kind=kind, target=target, flags=flags, pos=pos,
                      locks=parse_locks(text))
        if kind in (FdKind.FILE, FdKind.DELETED) and st is not None:
            info.size, info.mtime_ns = st.st_size, st.st_mtime_ns
            info.ino, info.dev = st.st_ino, st.st_dev
        info.same_as = _shared_with(pid, info, out, st)
        out.append(info)
    return out


def _shared_with(pid: int, info: FdInfo, earlier: list[FdInfo], st) -> int:
    """The first earlier fd with the same open file description (dup'd), or -1."""
    for other in earlier:
        if other.target == info.target and other.same_as < 0 and \
                same_file(pid, other.fd, pid, info.fd):
            return other.fd
    return -1


def same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """Whether fd1 of pid1 and fd2 of pid2 are one open file description (kcmp)."""
    return libc().syscall(Sys.kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) == 0


def ino_of(target: str) -> int:
    """The inode of a 'pipe:[N]' or 'socket:[N]' link."""
    return int(target[target.index("[") + 1:target.rindex("]")])


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
    if f.sock is not None:
        from .sockets import label
        return f"fd {f.fd} ({label(f.sock)})"
    return f"fd {f.fd} ({f.kind} {f.target})"


def restorable(f: FdInfo) -> bool:
    """Whether a restore gives this descriptor back (not /dev/null in its place)."""
    if f.kind == FdKind.ANON:
        return f.anon is not None
    if f.kind == FdKind.SOCKET:
        return f.sock is not None
    if f.kind == FdKind.PIPE:
        return f.pipe is not None
    return f.kind in RESTORABLE


class Grabber:
    """Copies of a stopped process's descriptors in our own process (pidfd_getfd:
    the same open files, so their state can be read as the process would)."""

    def __init__(self, pid: int):
        self.pidfd = libc().syscall(Sys.pidfd_open, pid, 0)
        if self.pidfd < 0:
            raise SaveError(f"pidfd_open({pid}): {os.strerror(errno())}")

    def take(self, fd: int) -> int:
        ours = libc().syscall(Sys.pidfd_getfd, self.pidfd, fd, 0)
        if ours < 0:
            raise OSError(errno(), f"pidfd_getfd of fd {fd}: {os.strerror(errno())}")
        return ours

    def close(self) -> None:
        os.close(self.pidfd)


def read_states(pid: int, fds: list[FdInfo], repair: bool | None = None,
                tree=None) -> list[str]:
    """Fill in the state of every pipe, socket and anon-inode descriptor of the
    stopped process pid; returns what a restore will not give back, one line each.
    repair: save established TCP with TCP_REPAIR (None: if this process may).
    tree (engine.tree.TreeEnds): the ends held by the other processes saved with it.
    The modules for pipes and sockets load only for a process that has them."""
    lost: list[str] = []
    grab = Grabber(pid)
    try:
        for f in fds:
            if f.same_as >= 0 or f.kind not in (FdKind.PIPE, FdKind.SOCKET, FdKind.ANON,
                                                 FdKind.MEMFD):
                continue
            try:
                if f.kind == FdKind.MEMFD:
                    lost += _save_memfd(f, grab, fds)
                elif f.kind == FdKind.PIPE:
                    from . import pipes
                    ours = grab.take(f.fd)
                    try:
                        f.pipe = pipes.save(ours, f.target)
                    finally:
                        os.close(ours)
                elif f.kind == FdKind.ANON:
                    lost += [f"{describe(f)}: {why}" for why in _save_anon(pid, f, grab)]
                else:
                    from . import sockets, tcprepair
                    if repair is None:
                        repair = tcprepair.can_repair()
                    ours = grab.take(f.fd)
                    try:
                        f.sock, whys = sockets.save(ours, repair)
                    finally:
                        os.close(ours)
                    lost += [f"{describe(f)}: {why}" for why in whys]
            except OSError as e:
                lost.append(f"{describe(f)}: cannot be saved: {e.strerror or e}")
        lost += _outside_peers(fds, tree)
    finally:
        grab.close()
    return lost


def _save_memfd(f: FdInfo, grab: Grabber, fds: list[FdInfo]) -> list[str]:
    """Its seals (its bytes are saved as a deleted file's are)."""
    ours = grab.take(f.fd)
    try:
        f.seals = fcntl.fcntl(ours, F_GET_SEALS)
        f.ino = os.fstat(ours).st_ino
    finally:
        os.close(ours)
    return []


def _save_anon(pid: int, f: FdInfo, grab: Grabber) -> list[str]:
    from . import anonfds, watches
    with open(f"/proc/{pid}/fdinfo/{f.fd}") as info:
        text = info.read()
    kind = anonfds.kind_of(f.target)
    if kind in ("inotify", "fanotify"):
        ours = grab.take(f.fd)
        try:
            f.anon, whys = watches.save(pid, kind, text, ours)
        finally:
            os.close(ours)
        return whys
    f.anon, why = anonfds.save(pid, f.fd, f.target, text)
    return [why] if why else []


def _outside_peers(fds: list[FdInfo], tree=None) -> list[str]:
    """Pipes and unix sockets whose other end is in a process that is not saved."""
    ends: dict[int, set[int]] = {}
    for f in fds:
        if f.pipe is not None:
            ends.setdefault(f.pipe.ino, set()).add(f.flags & ACCMODE)
    inos = {f.sock.ino for f in fds if f.sock is not None}
    if tree is not None:
        for ino, modes in tree.pipes.items():
            ends.setdefault(ino, set()).update(modes)
        inos |= tree.sockets
    out = []
    for f in fds:
        if f.pipe is not None and len(ends[f.pipe.ino]) < 2 and f.fd > 2 and not f.pipe.alone:
            if f.flags & ACCMODE == os.O_RDONLY:
                out.append(f"{describe(f)}: its writer is another process: it will read "
                           "what was in it, then end of file")
            else:
                out.append(f"{describe(f)}: its reader is another process: writes will "
                           "fail with EPIPE")
        s = f.sock
        if s is not None and s.peer_ino and s.peer_ino not in inos and s.type != 2:
            out.append(f"{describe(f)}: its peer is another process: after a restore it "
                       "reads what was queued, then end of file")
    return out


CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_SYS_ADMIN = 10, 12, 21


def make_objects(kind: str, infos: tuple, creds=None, self_pid: int = 0,
                 data=None) -> tuple[list[int], list[str]]:
    """Our fds of the objects a plan.MakeFds step makes, one per info (-1 where its
    info is None), and warnings. creds: the saved credentials when the restorer acts
    for another user: nothing is made that they could not have made themselves.
    self_pid: the restored process's pid. data(info): the bytes the image holds for
    a descriptor (a memfd's). Each kind's module loads only when it is needed."""
    if kind == "pipe":
        from . import pipes
        reader, writer = infos
        state = (reader or writer).pipe
        ends = pipes.make(state, reader.flags if reader else None,
                          writer.flags if writer else None)
        return _keep(ends, infos), []
    if kind == "memfd":
        return [_make_memfd(infos[0], data(infos[0]))], []
    if kind == "anon":
        from . import anonfds
        state = infos[0].anon
        if state.type == "fanotify" and creds is not None and \
                not creds.effective >> CAP_SYS_ADMIN & 1:
            raise OSError(1, f"{describe(infos[0])}: the saved user could not use fanotify")
        try:
            with as_fs_user(creds):     # an inotify watch needs the user's read access
                return [anonfds.make(state, infos[0].flags, self_pid)], []
        except ProcessLookupError as e:     # a pidfd's process has ended
            null = os.open("/dev/null", null_flags(infos[0]) & ACCMODE)
            return [null], [f"{describe(infos[0])}: {e.strerror}: /dev/null in its place"]
    from . import sockets, tcprepair
    if kind == "socketpair":
        with as_fs_user(creds):         # files in flight are opened as the user
            ours = list(sockets.make_pair(infos[0].sock, infos[1].sock))
        return _status_flags(ours, infos), []
    repair = tcprepair.can_repair() and (creds is None or creds.effective >> CAP_NET_ADMIN & 1)
    ours, warnings = [], []
    try:
        for info in infos:          # one socket, or both ends of a TCP connection
            if creds is not None:
                _check_port(info.sock, creds)
            with as_fs_user(creds):     # a path socket's file belongs to the user
                fd, warning = sockets.make(info.sock, can_repair=bool(repair))
            ours.append(fd)
            warnings += [warning] if warning else []
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    return _status_flags(ours, infos), warnings


def _status_flags(ours: list[int], infos: tuple) -> list[int]:
    """O_NONBLOCK as saved (an event loop's sockets have it: a blocking accept or
    read would hang the loop)."""
    for fd, info in zip(ours, infos, strict=True):
        fcntl.fcntl(fd, fcntl.F_SETFL, info.flags & O_NONBLOCK)
    return ours


def _make_memfd(f: FdInfo, content: bytes) -> int:
    """A memfd with the saved name, bytes, offset and seals."""
    name = f.target.removeprefix("/memfd:").removesuffix(" (deleted)")
    sealing = f.seals is not None and not f.seals & F_SEAL_SEAL
    fd = os.memfd_create(name, MFD_CLOEXEC | (MFD_ALLOW_SEALING if sealing else 0))
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, f.pos, os.SEEK_SET)
        if sealing and f.seals:
            fcntl.fcntl(fd, F_ADD_SEALS, f.seals)
        fcntl.fcntl(fd, fcntl.F_SETFL, f.flags & O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _keep(ours: tuple[int, ...], infos: tuple) -> list[int]:
    out = []
    for fd, info in zip(ours, infos, strict=True):
        if info is None:
            os.close(fd)
            fd = -1
        out.append(fd)
    return out


def _check_port(st, creds) -> None:
    """A port below ip_unprivileged_port_start only for a user who could bind it."""
    if st.family == 1 or not st.local_port or creds.effective >> CAP_NET_BIND_SERVICE & 1:
        return
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            first = int(f.read())
    except (OSError, ValueError):
        first = 1024
    if st.local_port < first:
        raise OSError(1, f"port {st.local_port} is privileged, and the saved user could "
                         "not bind it")


def quiet_connections(pid: int) -> None:
    """Put the established TCP connections of the stopped process pid in repair mode,
    just before it is killed for good: they then close without a FIN or an RST, and
    leave no TIME_WAIT behind, so the restored process can have them again at once
    (CRIU does the same). Best effort: without TCP_REPAIR they close as usual."""
    from . import sockets, tcprepair
    if not tcprepair.can_repair():
        return
    grab = Grabber(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
                ours = grab.take(int(name))
            except OSError:
                continue
            try:
                sockets.quiet(ours)
            except OSError:
                pass            # not an established TCP connection
            finally:
                os.close(ours)
    finally:
        grab.close()
