"""Thread ids in a restored process's memory: where glibc keeps them, and how to fix them.

A restored process gets a new pid and new thread ids unless the kernel lets
us choose them (clone3 set_tid). glibc keeps each thread's id in its thread
descriptor (struct pthread: fs_base + the tid offset that libc's
_thread_db_pthread_tid gives) and in the owner field of mutexes a thread
holds. A new thread made with CLONE_PARENT_SETTID gets its descriptor's tid
written by the kernel; the main thread's, and every held mutex's, are
patched. Mutexes are found by a guarded scan of writable memory.
"""

from __future__ import annotations

import struct

import msgspec

from . import native
from .image import format as fmt
from .image.reader import Image
from .linux import Prot
from .maps import Kind

# struct __pthread_mutex_s on x86-64 glibc: lock, count, owner, nusers, kind, spins,
# elision, list.prev, list.next (40 bytes, 8-aligned).
MUTEX = struct.Struct("<iIiIihhQQ")
MUTEX_OWNER_AT = 8
KIND_ROBUST, KIND_PI, KIND_PP = 16, 32, 64
KIND_TYPE, KIND_RECURSIVE, KIND_ERRORCHECK = 3, 1, 2
PP_STATE_MASK = (1 << 19) - 1      # a priority-protect lock word: ceiling << 19 | state
KIND_BITS = 3 | 16 | 32 | 64 | 128 | 256 | 512
FUTEX_TID_MASK = 0x3FFFFFFF
# Kinds of mapping a mutex can live in.
SCANNED = {Kind.ANON.value, Kind.FILE.value, Kind.SHMEM.value, Kind.DELETED.value}


class MutexRef(msgspec.Struct, frozen=True):
    """A held mutex at addr whose owner (and, for robust/PI ones, lock word) is old_tid."""
    addr: int
    old_tid: int
    lock_has_tid: bool


def looks_like_held_mutex(raw: bytes, old_tid: int) -> tuple[bool, bool]:
    """(is a held mutex owned by old_tid, its lock word holds the tid too).

    Only the kinds whose owner glibc reads are taken: recursive and error-checking (their
    lock and unlock compare it with the caller), robust and PI (the lock word holds the
    tid). A normal or adaptive mutex's owner is only ever cleared by its unlock, so it
    needs no patch, and its pattern (a small lock word, the tid, a small count, zeros)
    is common in other data: in a JVM's heap every int[] whose compressed class pointer
    equals the tid has it, and rewriting those headers crashed G1's marking.
    """
    lock, count, owner, nusers, kind, _spins, _elision, prev, nxt = MUTEX.unpack(raw)
    if owner != old_tid or lock == 0 or kind & ~KIND_BITS or kind < 0:
        return False, False
    if not 1 <= nusers < 1 << 16:
        return False, False
    robust = bool(kind & KIND_ROBUST)
    kind_type = kind & KIND_TYPE
    if not kind & (KIND_ROBUST | KIND_PI):
        state = lock & PP_STATE_MASK if kind & KIND_PP else lock
        if kind_type not in (KIND_RECURSIVE, KIND_ERRORCHECK) or state not in (1, 2):
            return False, False         # lll lock word: 1 held, 2 held with waiters
        if not kind & KIND_PP and (kind_type == KIND_RECURSIVE) != (count > 0):
            return False, False         # only a recursive one counts (robust, PP: all do)
    if not robust and (prev or nxt):
        return False, False
    lock_has_tid = bool(kind & (KIND_ROBUST | KIND_PI)) and lock & FUTEX_TID_MASK == old_tid
    if kind & (KIND_ROBUST | KIND_PI) and not lock_has_tid:
        return False, False
    return True, lock_has_tid


def find_held_mutexes(img: Image, old_tids: set[int]) -> list[MutexRef]:
    """Held mutexes owned by any of old_tids in the image's writable memory."""
    found: list[MutexRef] = []
    for v in img.vmas:
        if v.kind not in SCANNED or not v.prot & Prot.WRITE:
            continue
        for c in img.chunks_in(v.start, v.end):
            if c.flags & fmt.ChunkFlags.ZERO:
                continue
            found += scan(img.read_chunk(c), c.vaddr, old_tids)
    return found


def scan(data: bytes, base: int, old_tids: set[int]) -> list[MutexRef]:
    """Held mutexes owned by any of old_tids in data (memory at base), in address order."""
    slots = native.owner_slots(data, old_tids)
    if slots is None:       # no C helper: a scan per thread id
        return sorted((ref for tid in old_tids for ref in _scan(data, base, tid)),
                      key=lambda r: r.addr)
    found = []
    for start in slots:
        raw = data[start:start + MUTEX.size]
        owner = MUTEX.unpack(raw)[2]
        ok, lock_tid = looks_like_held_mutex(raw, owner)
        if ok:
            found.append(MutexRef(base + start, owner, lock_tid))
    return found


def _scan(data: bytes, base: int, tid: int) -> list[MutexRef]:
    needle = struct.pack("<i", tid)
    out = []
    pos = data.find(needle, MUTEX_OWNER_AT)
    while pos >= 0:
        start = pos - MUTEX_OWNER_AT
        if start % 8 == 0 and start + MUTEX.size <= len(data):
            ok, lock_tid = looks_like_held_mutex(data[start:start + MUTEX.size], tid)
            if ok:
                out.append(MutexRef(base + start, tid, lock_tid))
        pos = data.find(needle, pos + 1)
    return out


def patched_mutex(raw: bytes, ref: MutexRef, new_tid: int) -> bytes | None:
    """The mutex bytes with new_tid as owner, or None if they no longer match ref."""
    ok, lock_tid = looks_like_held_mutex(raw, ref.old_tid)
    if not ok:
        return None
    fields = list(MUTEX.unpack(raw))
    fields[2] = new_tid
    if lock_tid:
        fields[0] = (fields[0] & ~FUTEX_TID_MASK) | new_tid
    return MUTEX.pack(*fields)
