"""The vDSO: this process's own, and how a saved one compares with it.

Every process on a kernel gets the same vDSO bytes, so the tool's own
process (GDB or gdbckpt-batch) tells what a restore here would find.
"""

from __future__ import annotations

import ctypes

from .image import format as fmt
from .image.model import VdsoInfo
from .maps import Kind, parse_maps


def own_vdso() -> bytes | None:
    """The bytes of this process's vDSO."""
    with open("/proc/self/maps") as f:
        maps = parse_maps(f.read())
    m = next((m for m in maps if m.kind == Kind.VDSO), None)
    if m is None:
        return None
    return ctypes.string_at(m.start, m.size)


def own_layout() -> dict[str, int]:
    """Sizes of this process's vvar, vvar_vclock and vdso mappings."""
    with open("/proc/self/maps") as f:
        maps = parse_maps(f.read())
    return {m.kind.value: m.size for m in maps
            if m.kind in (Kind.VDSO, Kind.VVAR, Kind.VVAR_VCLOCK)}


def restore_mode(saved: VdsoInfo) -> tuple[str, str]:
    """How a restore on this host would treat the saved vDSO, and why."""
    if saved.vdso is None:
        return "none", "the saved process had no vDSO"
    live = own_vdso()
    if live is None:
        return "patch", "this kernel gives processes no vDSO"
    layout = own_layout()
    saved_layout = {k: r[1] - r[0] for k, r in (("vdso", saved.vdso), ("vvar", saved.vvar),
                                                ("vvar_vclock", saved.vvar_vclock)) if r}
    if f"{fmt.checksum(live):016x}" != saved.hash:
        return "patch", "the saved vDSO differs from this kernel's"
    if layout != saved_layout:
        return "patch", "the vvar/vDSO layout differs from this kernel's"
    return "move", "same vDSO as this kernel's: the live one is moved into place"
