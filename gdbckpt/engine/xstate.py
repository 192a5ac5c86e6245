"""The XSAVE area (NT_X86_XSTATE) split into its state components, and put back.

An image keeps each thread's extended state per component, by feature
number, with the mask of those in use (XSTATE_BV): the area's layout is the
CPU's (CPUID leaf 0xd), so an image moves between CPUs whose layouts differ,
Intel and AMD. A component in use that the live CPU lacks is refused by name.
"""

from __future__ import annotations

import ctypes
import functools
import struct

from ..errors import RestoreError
from ..image.model import XState

LEGACY_SIZE = 512            # the FXSAVE area: x87 (component 0) and SSE (component 1)
SW_RESERVED = 464            # bytes 464-511: the kernel puts XCR0 in the first 8
HEADER = struct.Struct("<QQ48x")    # at 512: XSTATE_BV, XCOMP_BV, reserved
HEADER_AT = 512
LEGACY_BITS = 0b11
# Component numbers the kernel gives a permission for (arch_prctl ARCH_REQ_XCOMP_PERM).
XTILECFG, XTILEDATA = 17, 18
DYNAMIC = 1 << XTILEDATA

FEATURES = {
    0: "x87", 1: "SSE", 2: "AVX", 3: "MPX bound registers", 4: "MPX bound config",
    5: "AVX-512 opmask (k0-k7)", 6: "AVX-512 (upper halves of zmm0-15)",
    7: "AVX-512 (zmm16-31)", 9: "PKRU (protection keys)", 17: "AMX tile configuration",
    18: "AMX tile data", 19: "APX (r16-r31)",
}


def feature_name(bit: int) -> str:
    return FEATURES.get(bit, f"XSAVE component {bit}")


@functools.cache
def _helpers():
    from ..native import native_path
    lib = ctypes.CDLL(native_path("libckpthelp.so"))
    lib.ckpt_xcr0.restype = ctypes.c_uint64
    return lib


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    out = (ctypes.c_uint32 * 4)()
    try:
        _helpers().ckpt_cpuid(leaf, subleaf, out)
    except OSError as e:
        raise RestoreError(f"the C helpers are not built ({e}): run 'make setup'") from None
    return tuple(out)


def live_xcr0() -> int:
    """The components this CPU and kernel enable for processes."""
    try:
        return _helpers().ckpt_xcr0()
    except OSError as e:
        raise RestoreError(f"the C helpers are not built ({e}): run 'make setup'") from None


@functools.cache
def live_layout() -> dict[int, tuple[int, int]]:
    """Component -> (offset, size) in this CPU's standard-format XSAVE area."""
    out = {}
    xcr0 = live_xcr0()
    for bit in range(2, 64):
        if xcr0 >> bit & 1:
            size, offset, flags, _ = cpuid(0xD, bit)
            if size and not flags & 1:        # flags bit 0: a supervisor component
                out[bit] = (offset, size)
    return out


def split(raw: bytes, layout: dict[int, tuple[int, int]]) -> XState:
    """A thread's XSAVE area as an image keeps it: only the components in use."""
    xcr0 = struct.unpack_from("<Q", raw, SW_RESERVED)[0]
    in_use = HEADER.unpack_from(raw, HEADER_AT)[0]
    components = {}
    for bit in range(2, 64):
        if in_use >> bit & 1:
            if bit not in layout:
                raise RestoreError(f"the kernel reports {feature_name(bit)} in use, which "
                                   "CPUID does not describe")
            offset, size = layout[bit]
            components[str(bit)] = bytes(raw[offset:offset + size])
    return XState(xcr0=xcr0, in_use=in_use, legacy=bytes(raw[:SW_RESERVED]),
                  components=components)


def missing(state: XState, xcr0: int) -> list[str]:
    """The components in use in state that a CPU enabling xcr0 lacks, by name."""
    lacking = state.in_use & ~xcr0
    return [feature_name(b) for b in range(64) if lacking >> b & 1]


def merge(state: XState, live: bytes, layout: dict[int, tuple[int, int]]) -> bytes:
    """The saved state laid out as this CPU's XSAVE area, of the kernel's size.

    live is the thread's area as GETREGSET gives it now: its size and its
    software bytes are the kernel's, and stay.
    """
    xcr0 = struct.unpack_from("<Q", live, SW_RESERVED)[0]
    lacking = missing(state, xcr0)
    if lacking:
        raise RestoreError(f"the saved registers use {', '.join(lacking)}, which this CPU "
                           "lacks")
    out = bytearray(live)
    out[:SW_RESERVED] = state.legacy[:SW_RESERVED].ljust(SW_RESERVED, b"\0")
    HEADER.pack_into(out, HEADER_AT, state.in_use & xcr0, 0)
    for key, data in state.components.items():
        offset, size = layout[int(key)]
        if len(data) != size:
            raise RestoreError(f"the saved {feature_name(int(key))} state is {len(data)} "
                               f"bytes; this CPU's is {size}")
        out[offset:offset + size] = data
    return bytes(out)
