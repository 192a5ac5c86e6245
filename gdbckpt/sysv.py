"""SysV shared memory segments for a restore: reuse the saved one if it still exists, else
create one like it (with the same id where this host lets us choose it).

Segments are system-wide, so GDB's own process makes them; the restored
process only attaches them (shmat, a stub op).
"""

from __future__ import annotations

import ctypes

import msgspec

from .image.model import Vma
from .libc import libc
from .procfs import read_sysv_shm

IPC_PRIVATE = 0
IPC_CREAT, IPC_EXCL, IPC_RMID = 0o1000, 0o2000, 0
NEXT_ID = "/proc/sys/kernel/shm_next_id"


class Segment(msgspec.Struct):
    saved_id: int
    id: int            # the segment to attach here
    created: bool      # made for this restore: fill it from the image
    note: str = ""


def segments_needed(vmas: list[Vma]) -> dict[int, Vma]:
    """One mapping per saved segment id."""
    out: dict[int, Vma] = {}
    for v in vmas:
        if v.shm is not None:
            out.setdefault(v.shm.id, v)
    return out


def prepare(vmas: list[Vma], create: bool = True) -> dict[int, Segment]:
    """Saved segment id -> the segment a restore attaches, made if needed."""
    existing = read_sysv_shm()
    keys = {key for key, _, _ in existing.values()}
    out: dict[int, Segment] = {}
    try:
        _prepare_each(vmas, existing, keys, out, create)
    except BaseException:
        remove(out)        # the ones made before the failure
        raise
    return out


def _prepare_each(vmas, existing, keys, out: dict[int, Segment], create: bool) -> None:
    for sid, v in segments_needed(vmas).items():
        shm = v.shm
        now = existing.get(sid)
        if now is not None and now[0] == shm.key and now[1] == shm.size:
            out[sid] = Segment(sid, sid, False, f"SysV segment {sid} still exists: attached "
                                                "as it is now")
            continue
        if not create:
            out[sid] = Segment(sid, sid, True, f"SysV segment {sid} would be created")
            continue
        key = shm.key if shm.key and shm.key not in keys else IPC_PRIVATE
        new = _create(key, shm.size, shm.perms & 0o777, sid)
        note = "" if new == sid else (f"SysV segment {sid} is now {new}: a program that kept "
                                      "the old id will not find it")
        out[sid] = Segment(sid, new, True, note)


def _create(key: int, size: int, perms: int, want_id: int) -> int:
    shmid = -1
    if _choose_next_id(want_id):
        try:
            shmid = libc().shmget(key, size, IPC_CREAT | IPC_EXCL | perms)
        finally:
            _choose_next_id(-1)
    if shmid < 0:      # not permitted to choose, or that id is taken
        shmid = libc().shmget(key, size, IPC_CREAT | IPC_EXCL | perms)
    if shmid < 0:
        from .errors import RestoreError
        raise RestoreError(f"cannot create a SysV segment of {size} bytes: "
                           f"{_strerror(ctypes.get_errno())}")
    return shmid


def _choose_next_id(value: int) -> bool:
    """Ask for the next segment's id (CAP_SYS_ADMIN in the IPC namespace); False if refused."""
    try:
        with open(NEXT_ID, "w") as f:
            f.write(str(value))
        return True
    except OSError:
        return False


def remove(segments: dict[int, Segment]) -> None:
    """Undo prepare() after a failed restore: drop the segments it made."""
    for seg in segments.values():
        if seg.created:
            libc().shmctl(seg.id, IPC_RMID, None)


def _strerror(errno: int) -> str:
    import os
    return os.strerror(errno)
