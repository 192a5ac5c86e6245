"""inotify and fanotify descriptors: their watches, found again by path.

The kernel shows each watch in fdinfo with a file handle of the watched inode.
A save turns the handle into a path (open_by_handle_at, which needs
CAP_DAC_READ_SEARCH); a restore makes a new instance and adds the watches by
path. inotify watch descriptors are numbers the program keeps, so a restore
makes each watch get its saved number (the kernel hands them out in turn:
placeholder watches are added and removed until the next number is the one
wanted, then their IN_IGNORED events are read away). Events waiting to be read
at the save are lost; the save says so.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re

from .image.model import AnonState, Watch
from .libc import checked, errno, libc, unread_bytes

IN_NONBLOCK = 0o4000
IN_EXCL_UNLINK = 0x04000000
FAN_MARK_ADD = 0x1
FAN_MARK_MOUNT = 0x10
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_FILESYSTEM = 0x100
FAN_NONBLOCK = 0x2
AT_FDCWD = -100
MAX_WD_STEPS = 65536        # placeholder watches a restore may add to reach a saved wd

INOTIFY = re.compile(r"inotify wd:([0-9a-f]+) ino:[0-9a-f]+ sdev:([0-9a-f]+) mask:([0-9a-f]+)"
                     r" ignored_mask:[0-9a-f]+ fhandle-bytes:([0-9a-f]+) "
                     r"fhandle-type:([0-9a-f]+) f_handle:([0-9a-f]+)")
FAN_INIT = re.compile(r"fanotify flags:([0-9a-f]+) event-flags:([0-9a-f]+)")
FAN_INODE = re.compile(r"fanotify ino:[0-9a-f]+ sdev:([0-9a-f]+) mflags:([0-9a-f]+) "
                       r"mask:([0-9a-f]+) ignored_mask:([0-9a-f]+) fhandle-bytes:([0-9a-f]+) "
                       r"fhandle-type:([0-9a-f]+) f_handle:([0-9a-f]+)")
FAN_MOUNT = re.compile(r"fanotify mnt_id:([0-9a-f]+) mflags:([0-9a-f]+) mask:([0-9a-f]+) "
                       r"ignored_mask:([0-9a-f]+)")
FAN_FS = re.compile(r"fanotify sdev:([0-9a-f]+) mflags:([0-9a-f]+) mask:([0-9a-f]+) "
                    r"ignored_mask:([0-9a-f]+)")


# -- saving -------------------------------------------------------------------------

def save(pid: int, kind: str, fdinfo: str, ours: int) -> tuple[AnonState | None, list[str]]:
    """An inotify or fanotify instance's watches, with paths; ours is our copy of it."""
    lost = []
    try:
        waiting = unread_bytes(ours)
    except OSError:
        waiting = 0
    if waiting:
        lost.append(f"{waiting} bytes of events not yet read are lost")
    mounts = _mounts(pid)
    try:
        if kind == "inotify":
            state = AnonState("inotify")
            for m in INOTIFY.finditer(fdinfo):
                path = _path_of(mounts, int(m[2], 16), int(m[5], 16), m[6])
                state.watches.append(Watch(path=path, mask=int(m[3], 16), wd=int(m[1], 16)))
            return state, lost
        init = FAN_INIT.search(fdinfo)
        state = AnonState("fanotify", fan_flags=int(init[1], 16), fan_event_flags=int(init[2], 16))
        for m in FAN_INODE.finditer(fdinfo):
            path = _path_of(mounts, int(m[1], 16), int(m[6], 16), m[7])
            state.watches.append(Watch(path, int(m[3], 16), ignored=int(m[4], 16),
                                       flags=int(m[2], 16)))
        for m in FAN_MOUNT.finditer(fdinfo):
            state.watches.append(Watch(mounts.by_id[int(m[1], 16)], int(m[3], 16),
                                       ignored=int(m[4], 16),
                                       flags=int(m[2], 16) | FAN_MARK_MOUNT))
        for m in FAN_FS.finditer(fdinfo):
            state.watches.append(Watch(mounts.by_dev[int(m[1], 16)], int(m[3], 16),
                                       ignored=int(m[4], 16),
                                       flags=int(m[2], 16) | FAN_MARK_FILESYSTEM))
        return state, lost
    except (OSError, KeyError, TypeError) as e:
        return None, [f"its watches cannot be found again by path ({e})"]


class _Mounts:
    def __init__(self):
        self.by_id: dict[int, str] = {}
        self.by_dev: dict[int, str] = {}


def _mounts(pid: int) -> _Mounts:
    """Mount points by mount id and by device (the kernel's dev_t: major << 20 | minor)."""
    out = _Mounts()
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            major, minor = (int(x) for x in fields[2].split(":"))
            point = fields[4].encode().decode("unicode_escape")
            out.by_id[int(fields[0])] = point
            out.by_dev.setdefault(major << 20 | minor, point)
    # In a chroot whose root is no mount point, mountinfo lists nothing of it.
    root = os.stat(f"/proc/{pid}/root")
    out.by_dev.setdefault(os.major(root.st_dev) << 20 | os.minor(root.st_dev), "/")
    return out


class _Handle(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int),
                ("data", ctypes.c_ubyte * 128)]


def _path_of(mounts: _Mounts, sdev: int, htype: int, handle_hex: str) -> str:
    raw = bytes.fromhex(handle_hex)
    handle = _Handle(len(raw), htype)
    ctypes.memmove(handle.data, raw, len(raw))
    # Not O_PATH: open_by_handle_at wants a mount fd it can fdget().
    mount = os.open(mounts.by_dev[sdev], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = libc().open_by_handle_at(mount, ctypes.byref(handle), os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(errno(), f"open_by_handle_at: {os.strerror(errno())}")
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    finally:
        os.close(mount)


# -- making them again -----------------------------------------------------------------

def make(state: AnonState, flags: int) -> int:
    """A new instance with the saved watches (inotify: at their saved numbers)."""
    if state.type == "inotify":
        return _make_inotify(state, flags & IN_NONBLOCK)
    fd = checked(libc().fanotify_init(state.fan_flags & ~FAN_NONBLOCK | (
        FAN_NONBLOCK if flags & IN_NONBLOCK else 0), state.fan_event_flags), "fanotify_init")
    try:
        for w in state.watches:
            for mask, extra in ((w.mask, 0), (w.ignored, FAN_MARK_IGNORED_MASK)):
                if mask:
                    checked(libc().fanotify_mark(fd, FAN_MARK_ADD | w.flags | extra,
                                                ctypes.c_uint64(mask), AT_FDCWD,
                                                os.fsencode(w.path)), f"fanotify_mark {w.path}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_inotify(state: AnonState, nonblock: int) -> int:
    fd = checked(libc().inotify_init1(os.O_NONBLOCK), "inotify_init1")
    try:
        placeholders = 0
        for w in sorted(state.watches, key=lambda w: w.wd):
            placeholders += _watch_at(fd, w, state)
        if placeholders:
            _drain(fd)          # the IN_IGNORED events of the placeholders
        if not nonblock:
            fcntl.fcntl(fd, fcntl.F_SETFL, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _watch_at(fd: int, w: Watch, state: AnonState) -> int:
    """Add w so that it gets wd w.wd; returns how many placeholders that took."""
    used = 0
    for _ in range(MAX_WD_STEPS):
        wd = checked(libc().inotify_add_watch(fd, os.fsencode(w.path), w.mask),
                    f"inotify_add_watch {w.path}")
        if wd == w.wd:
            return used
        if wd > w.wd or any(o.wd == wd for o in state.watches):
            raise OSError(f"inotify watch {w.path} came back as {wd}, not {w.wd}")
        libc().inotify_rm_watch(fd, wd)      # the kernel hands out the next number next
        used += 1
    raise OSError(f"inotify watch {w.path}: number {w.wd} is out of reach")


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except BlockingIOError:
            return
