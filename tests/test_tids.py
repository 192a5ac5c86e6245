"""Which held mutexes a restore with new thread ids patches (tids.looks_like_held_mutex):
real glibc mutexes of every kind, locked here, against data that only looks like one."""

import ctypes
import struct
import subprocess
import threading

import pytest

from gdbckpt import tids

LIBC = ctypes.CDLL(None, use_errno=True)
NORMAL, RECURSIVE, ERRORCHECK, ADAPTIVE = 0, 1, 2, 3


def held(kind: int, robust: bool = False, times: int = 1, pi: bool = False) -> bytes:
    """The 40 bytes of a glibc mutex of that kind while this thread holds it."""
    attr = ctypes.create_string_buffer(8)
    assert LIBC.pthread_mutexattr_init(attr) == 0
    assert LIBC.pthread_mutexattr_settype(attr, kind) == 0
    if robust:
        assert LIBC.pthread_mutexattr_setrobust(attr, 1) == 0
    if pi:
        assert LIBC.pthread_mutexattr_setprotocol(attr, 1) == 0     # PTHREAD_PRIO_INHERIT
    m = ctypes.create_string_buffer(tids.MUTEX.size)
    assert LIBC.pthread_mutex_init(m, attr) == 0
    for _ in range(times):
        assert LIBC.pthread_mutex_lock(m) == 0
    raw = m.raw
    for _ in range(times):
        assert LIBC.pthread_mutex_unlock(m) == 0
    return raw


@pytest.mark.parametrize("kind, robust, pi, times, lock_has_tid", [
    (RECURSIVE, False, False, 1, False), (RECURSIVE, False, False, 3, False),
    (ERRORCHECK, False, False, 1, False), (NORMAL, True, False, 1, True),
    (RECURSIVE, True, False, 2, True), (ERRORCHECK, True, False, 1, True),
    (NORMAL, False, True, 1, True), (RECURSIVE, True, True, 2, True)])
def test_mutexes_whose_owner_glibc_reads_are_found(kind, robust, pi, times, lock_has_tid):
    raw = held(kind, robust, times, pi)
    assert tids.looks_like_held_mutex(raw, threading.get_native_id()) == (True, lock_has_tid)
    assert not tids.looks_like_held_mutex(raw, threading.get_native_id() + 1)[0]


def test_a_priority_protect_mutex_is_found_past_its_ceiling():
    """A held priority-protect error-checking mutex as glibc 2.36 leaves it (read from a
    real one: the first PP lock of a thread fails with EINVAL here, so it is written out):
    the ceiling above the lock state in the lock word (1 << 19 | 1), count 1, kind 66."""
    me = threading.get_native_id()
    raw = tids.MUTEX.pack(1 << 19 | 1, 1, me, 1, ERRORCHECK | tids.KIND_PP, 0, 0, 0, 0)
    assert tids.looks_like_held_mutex(raw, me) == (True, False)
    waiters = tids.MUTEX.pack(3 << 19 | 2, 1, me, 2, RECURSIVE | tids.KIND_PP, 0, 0, 0, 0)
    assert tids.looks_like_held_mutex(waiters, me) == (True, False)
    free = tids.MUTEX.pack(1 << 19, 0, me, 0, ERRORCHECK | tids.KIND_PP, 0, 0, 0, 0)
    assert tids.looks_like_held_mutex(free, me) == (False, False)


@pytest.mark.parametrize("kind", [NORMAL, ADAPTIVE])
def test_mutexes_whose_owner_only_unlock_clears_are_left(kind):
    raw = held(kind)
    assert struct.unpack_from("<i", raw, tids.MUTEX_OWNER_AT)[0] == threading.get_native_id()
    assert tids.looks_like_held_mutex(raw, threading.get_native_id()) == (False, False)


def test_a_java_int_array_header_is_no_mutex():
    """HotSpot's int[] header with compressed class pointers: mark word 1 (unlocked),
    the class pointer, the length, then zeros. Where the class pointer equals a thread
    id (0x6c38 in OpenJDK 17 here) it looked like a held normal mutex, and patching the
    headers of G1's region fillers made the restored JVM crash in concurrent marking."""
    tid = 0x6c38
    header = struct.pack("<QIi", 1, tid, 28) + bytes(24)
    raw = header[:tids.MUTEX.size]
    assert tids.MUTEX.unpack(raw)[2] == tid          # the owner field holds the "tid"
    assert tids.looks_like_held_mutex(raw, tid) == (False, False)
    memory = bytes(64) + header * 100
    assert tids.scan(memory, 0x1000, {tid}) == []


@pytest.fixture(params=["C helper", "Python"])
def helper(request, monkeypatch):
    from gdbckpt import native
    subprocess.run(["make", "-s", "-C", native.NATIVE_DIR], check=True)
    monkeypatch.setattr(native, "_lib", None if request.param == "C helper" else False)
    return request.param


def test_the_scan_finds_each_held_mutex_among_lookalikes(helper):
    """Real mutexes of several threads at known places, among JVM headers and noise, in
    one buffer: the C helper's single pass and the Python scan per thread find the same."""
    import random
    me = threading.get_native_id()
    rnd = random.Random(7)
    memory = bytearray(rnd.randbytes(3 << 20))
    want = []
    for kind, robust in [(RECURSIVE, False), (ERRORCHECK, False), (NORMAL, True),
                         (RECURSIVE, True)] * 50:
        at = rnd.randrange(0, len(memory) - 64) & ~7
        if any(abs(at - w) < 48 for w, _ in want):
            continue
        raw = held(kind, robust, 2 if kind == RECURSIVE else 1)
        memory[at:at + len(raw)] = raw
        want.append((at, bool(robust)))
    for _ in range(2000):       # int[] headers whose class pointer is our tid
        at = rnd.randrange(0, len(memory) - 64) & ~7
        if not any(abs(at - w) < 48 for w, _ in want):
            memory[at:at + 16] = struct.pack("<QIi", 1, me, 28)
    got = tids.scan(bytes(memory), 0x10000, {me, me + 1, me + 1000})
    assert [(r.addr - 0x10000, r.lock_has_tid) for r in got] == sorted(want)
    assert all(r.old_tid == me for r in got)
