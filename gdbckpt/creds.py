"""Credentials: who the saved process ran as, and taking that on again at a restore.

A restore must never give the process more than the saved one had, nor more
than the restorer has. Root restoring a user's image gets a process running
as that user; anyone else may restore only an image of their own
credentials. Plain Python: the engine makes the system calls (in every
thread: on Linux credentials belong to each thread).
"""

from __future__ import annotations

import contextlib
import functools
import struct

from .errors import RestoreError
from .image.model import Credentials
from .libc import libc
from .linux import Prctl, Sys


@functools.cache
def cap_last() -> int:
    """The highest capability this kernel knows (40, CAP_CHECKPOINT_RESTORE, on 5.9+)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN, CAP_SYS_TIME, CAP_CHECKPOINT_RESTORE = 6, 7, 21, 25, 40
CAP_V3 = 0x20080522
KEEP_CAPS, KEEP_CAPS_LOCKED = 0x10, 0x20        # securebits
CAP_HEADER = struct.Struct("<Ii")
CAP_DATA = struct.Struct("<III")         # effective, permitted, inheritable (32 caps each)


def from_status(status: dict[str, str]) -> Credentials:
    """Credentials from /proc/PID/status fields."""
    def caps(name: str) -> int:
        return int(status.get(name, "0"), 16)
    return Credentials(
        uids=[int(x) for x in status["Uid"].split()], gids=[int(x) for x in status["Gid"].split()],
        groups=sorted(int(x) for x in status.get("Groups", "").split()),
        inheritable=caps("CapInh"), permitted=caps("CapPrm"), effective=caps("CapEff"),
        bounding=caps("CapBnd"), ambient=caps("CapAmb"))


def own() -> Credentials:
    with open("/proc/self/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return from_status(status)


def have(*caps: int) -> bool:
    """Whether this process has every one of caps in its effective set."""
    effective = own().effective
    return all(effective >> cap & 1 for cap in caps)


def describe(c: Credentials) -> str:
    caps = f", capabilities {c.effective:#x}" if c.effective else ""
    return (f"uid {'/'.join(map(str, c.uids[:3]))} ({_user(c.uids[0])}), gid "
            f"{'/'.join(map(str, c.gids[:3]))}, groups {c.groups or 'none'}{caps}")


def _user(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no such user here"


def check(saved: Credentials | None, mine: Credentials) -> bool:
    """Whether the restore must take the saved credentials on (root restoring another's
    image); refuses a restorer who cannot."""
    if saved is None:
        return False
    if _same(saved, mine):
        return False
    if mine.uids[1] == 0 and mine.effective >> CAP_SETUID & 1 and mine.effective >> CAP_SETGID & 1:
        return True      # root, with CAP_SETUID and CAP_SETGID: the process becomes the user
    if saved.uids[:3] != mine.uids[:3] or saved.gids[:3] != mine.gids[:3]:
        raise RestoreError(f"the saved process ran as {describe(saved)}; only root or that "
                           "user can restore it")
    return False         # the same user: the process runs with the restorer's credentials


def _same(a: Credentials, b: Credentials) -> bool:
    return (a.uids, a.gids, a.groups, a.permitted, a.effective, a.inheritable, a.bounding,
            a.ambient, a.securebits) == (b.uids, b.gids, b.groups, b.permitted, b.effective,
                                         b.inheritable, b.bounding, b.ambient, b.securebits)


def calls(c: Credentials) -> list[tuple[int, object, bytes | None]]:
    """The system calls, in order, that make a root thread take on c: (nr, args, None),
    or (nr, a function of the address where data lies giving the args, data)."""
    out: list[tuple[int, object, bytes | None]] = []
    groups = struct.pack(f"<{len(c.groups)}I", *c.groups) if c.groups else b"\0" * 4
    out.append((Sys.setgroups, lambda at: (len(c.groups), at), groups))
    out += _bounding_drops(c)
    # Capabilities kept across setresuid: KEEP_CAPS for the moment, unless the saved
    # securebits lock it (they then keep them, or the saved process had none either).
    keep = bool(c.permitted) and c.uids[1] != 0 and not c.securebits & KEEP_CAPS_LOCKED
    if c.securebits or keep:
        out.append((Sys.prctl, (PR_SET_SECUREBITS, c.securebits | (KEEP_CAPS if keep else 0)),
                    None))
    r, e, s, fs = (c.gids + [c.gids[0]] * 4)[:4]
    out.append((Sys.setresgid, (r, e, s), None))
    out.append((Sys.setfsgid, (fs,), None))
    r, e, s, fs = (c.uids + [c.uids[0]] * 4)[:4]
    out.append((Sys.setresuid, (r, e, s), None))
    out.append((Sys.setfsuid, (fs,), None))
    out += [_capset(c)] + _ambient_raises(c)
    if keep and not c.securebits & KEEP_CAPS:
        out.append((Sys.prctl, (Prctl.SET_KEEPCAPS, 0), None))
    return out


def keep_only_calls(c: Credentials) -> list[tuple[int, object, bytes | None]]:
    """The system calls that leave a thread with only c's capabilities, its ids
    unchanged: for a restore in a user namespace of its own, where the stub had every
    capability (of that namespace only) to choose pids and mount /proc."""
    return _bounding_drops(c) + [_capset(c)] + _ambient_raises(c)


def _bounding_drops(c: Credentials) -> list[tuple[int, object, None]]:
    return [(Sys.prctl, (PR_CAPBSET_DROP, cap), None)
            for cap in range(cap_last() + 1) if not c.bounding >> cap & 1]


def _capset(c: Credentials) -> tuple[int, object, bytes]:
    data = b"".join(CAP_DATA.pack(c.effective >> k & 0xFFFFFFFF, c.permitted >> k & 0xFFFFFFFF,
                                  c.inheritable >> k & 0xFFFFFFFF) for k in (0, 32))
    return (Sys.capset, lambda at: (at, at + CAP_HEADER.size), CAP_HEADER.pack(CAP_V3, 0) + data)


def _ambient_raises(c: Credentials) -> list[tuple[int, object, None]]:
    return [(Sys.prctl, (PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap), None)
            for cap in range(cap_last() + 1) if c.ambient >> cap & 1]


@contextlib.contextmanager
def as_fs_user(saved: Credentials | None):
    """File access and new files as the saved user (their fs uid and gid), for this
    thread only, while root makes things on the image's behalf; None: as ourselves."""
    if saved is None:
        yield
        return
    call = libc().syscall
    old_gid = call(Sys.setfsgid, saved.gids[3])
    old_uid = call(Sys.setfsuid, saved.uids[3])
    try:
        yield
    finally:
        call(Sys.setfsuid, old_uid)
        call(Sys.setfsgid, old_gid)
