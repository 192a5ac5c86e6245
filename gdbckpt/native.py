"""Where the native parts live (the restart stub, the C helpers) and the helpers' bindings."""

from __future__ import annotations

import ctypes
import functools
import os

from .linux import PAGE_SIZE

# Installed with pip, the package carries them (setup.py builds them there); a checkout
# has them in native/ (`make native`).
PACKAGED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native")
NATIVE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "native")


def native_path(name: str) -> str:
    if "GDBCKPT_NATIVE" in os.environ:
        return os.path.join(os.environ["GDBCKPT_NATIVE"], name)
    packaged = os.path.join(PACKAGED_DIR, name)
    return packaged if os.path.exists(packaged) else os.path.join(NATIVE_DIR, name)


def stub_path() -> str:
    return native_path("gdbckpt-stub")


_lib = None


def _helpers():
    global _lib
    if _lib is None:
        path = native_path("libckpthelp.so")
        try:
            lib = ctypes.CDLL(path)
            lib.ckpt_nonzero_pages.restype = ctypes.c_size_t
            lib.ckpt_nonzero_pages.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
            lib.ckpt_owner_slots.restype = ctypes.c_size_t
            lib.ckpt_owner_slots.argtypes = [
                ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t),
                ctypes.c_int32, ctypes.c_int32, ctypes.c_char_p,
                ctypes.POINTER(ctypes.c_size_t), ctypes.c_size_t]
            _lib = lib
        except OSError:
            _lib = False    # not built: fall back to Python, slower but the same result
    return _lib


def buffer_address(buf) -> int:
    """The address of a writable buffer (an mmap), for C helpers."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


_ZERO_PAGE = bytes(PAGE_SIZE)


def nonzero_pages(buf, addr: int, npages: int) -> bytes:
    """A bytes of npages 0/1 values: 1 where the page holds a non-zero byte.

    buf is the buffer (an mmap) and addr its address from buffer_address().
    """
    lib = _helpers()
    if lib:
        out = ctypes.create_string_buffer(npages)
        lib.ckpt_nonzero_pages(addr, npages, out)
        return out.raw
    view = memoryview(buf)
    return bytes(view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] != _ZERO_PAGE for i in range(npages))


OWNER_SLOTS_BATCH = 4096


def owner_slots(data: bytes, ids: set[int]) -> list[int] | None:
    """Offsets of data's 8-aligned slots that may be a mutex held by one of ids (see
    ckpt_owner_slots in native/helpers.c), or None without the C helper."""
    lib = _helpers()
    if not lib or not ids or min(ids) < 0 or max(ids) >= 1 << 31:
        return None
    lo, hi, want = _id_bitmap(frozenset(ids))
    out = (ctypes.c_size_t * OWNER_SLOTS_BATCH)()
    at, found = ctypes.c_size_t(0), []
    while at.value < len(data):
        n = lib.ckpt_owner_slots(data, len(data), ctypes.byref(at), lo, hi, want,
                                 out, OWNER_SLOTS_BATCH)
        found += out[:n]
    return found


@functools.lru_cache(maxsize=4)
def _id_bitmap(ids: frozenset[int]) -> tuple[int, int, bytes]:
    """(lowest, highest, bit i - lowest set for each id): made once for a whole scan."""
    lo, hi = min(ids), max(ids)
    want = bytearray((hi - lo) // 8 + 1)
    for i in ids:
        want[(i - lo) >> 3] |= 1 << ((i - lo) & 7)
    return lo, hi, bytes(want)


def have_helpers() -> bool:
    return bool(_helpers())


def stub_built() -> bool:
    return os.access(stub_path(), os.X_OK)


def native_hint() -> str:
    return f"run './dev setup' in {os.path.dirname(NATIVE_DIR)} to build it"
