"""The vDSO: compare a saved one with this kernel's, and patch a saved one to call the live one.

Every process on a kernel gets the same vDSO bytes, so the tool's own
process (GDB or gdbckpt-batch) tells what a restore here would find.

When the saved vDSO is not this kernel's (another host, a kernel upgrade),
glibc in the restored process still calls the saved vDSO's functions at the
saved addresses (it cached them at start-up). The restore puts the saved
bytes back there and overwrites the start of every exported function with
an absolute jump to the live function of the same name and version (CRIU
calls this a vDSO proxy). A function the live vDSO lacks becomes a stub that
makes the system call instead. A page at the saved [vvar] address carries a
mark naming the proxy and the live vDSO, so that a later save knows them.
"""

from __future__ import annotations

import ctypes
import functools
import io
import struct

import msgspec

from .errors import RestoreError
from .image import format as fmt
from .image.model import VdsoInfo
from .maps import Kind, Mapping, parse_maps

JUMP_PREFIX = b"\xff\x25\x00\x00\x00\x00"   # jmp *0(%rip), then the 8-byte target
JUMP_SIZE = len(JUMP_PREFIX) + 8
# System calls that stand in for a vDSO function the live vDSO lacks.
FALLBACK_SYSCALL = {"clock_gettime": 228, "gettimeofday": 96, "time": 201,
                    "clock_getres": 229, "getcpu": 309, "getrandom": 318}
ENOSYS = 38
MARK_MAGIC = b"GDBCKPT-VDSOPRX\0"
# magic, proxy start, proxy end, live vdso start, live vdso end, format version
MARK = struct.Struct("<16sQQQQQ")
MARK_VERSION = 1


class Symbol(msgspec.Struct, frozen=True):
    name: str
    version: str | None
    offset: int
    size: int

    @property
    def base_name(self) -> str:
        return self.name.removeprefix("__vdso_")


def _elf(data: bytes):
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        return ELFFile(io.BytesIO(data))
    except (ELFError, ValueError) as e:
        raise RestoreError(f"the vDSO is not a readable ELF image: {e}") from None


def symbols(data: bytes) -> list[Symbol]:
    """The functions a vDSO exports, each with its symbol version."""
    elf = _elf(data)
    dynsym = elf.get_section_by_name(".dynsym")
    if dynsym is None:
        raise RestoreError("the vDSO has no dynamic symbol table")
    versym = elf.get_section_by_name(".gnu.version")
    verdef = elf.get_section_by_name(".gnu.version_d")
    names = {}
    if verdef is not None:
        for v, aux in verdef.iter_versions():
            names[v["vd_ndx"]] = next(iter(aux)).name
    out = []
    for i, sym in enumerate(dynsym.iter_symbols()):
        if sym["st_info"]["type"] != "STT_FUNC" or sym["st_shndx"] == "SHN_UNDEF":
            continue
        version = None
        if versym is not None:
            ndx = versym.get_symbol(i)["ndx"]
            if isinstance(ndx, int):
                version = names.get(ndx & 0x7FFF)
        out.append(Symbol(sym.name, version, sym["st_value"] - _load_base(elf), sym["st_size"]))
    return out


def _load_base(elf) -> int:
    """The vaddr of the first PT_LOAD: symbol values are relative to it."""
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD":
            return seg["p_vaddr"] - seg["p_offset"]
    return 0


def build_id(data: bytes) -> str | None:
    from .fileid import elf_build_id
    return elf_build_id(lambda off, n: data[off:off + n])


def _jump(target: int) -> bytes:
    return JUMP_PREFIX + struct.pack("<Q", target)


def _syscall_stub(nr: int) -> bytes:
    # mov $nr,%eax; mov %rcx,%r10; syscall; ret
    return b"\xb8" + struct.pack("<I", nr) + b"\x49\x89\xca\x0f\x05\xc3"


def _enosys_stub() -> bytes:
    # mov $-ENOSYS,%rax; ret
    return b"\x48\xc7\xc0" + struct.pack("<i", -ENOSYS) + b"\xc3"


class Patch(msgspec.Struct):
    addr: int
    code: bytes
    names: list[str]
    how: str      # "jump to 0x..." or "system call N" or "-ENOSYS"


def patch_plan(saved: bytes, saved_base: int, live: bytes, live_base: int) -> list[Patch]:
    """Patches that make the saved vDSO at saved_base call the live one at live_base."""
    live_syms = symbols(live)
    by_name = {(s.name, s.version): s for s in live_syms}
    by_bare = {s.name: s for s in live_syms}
    by_base = {s.base_name: s for s in live_syms}
    patches: dict[int, Patch] = {}
    for s in symbols(saved):
        addr = saved_base + s.offset
        if addr in patches:
            patches[addr].names.append(s.name)
            continue
        if s.size < JUMP_SIZE:
            raise RestoreError(f"cannot patch the saved vDSO: {s.name} is {s.size} bytes, a jump "
                               f"needs {JUMP_SIZE}; restore on the kernel the image was saved on")
        target = by_name.get((s.name, s.version)) or by_bare.get(s.name) or \
            by_base.get(s.base_name)
        if target is not None:
            p = Patch(addr, _jump(live_base + target.offset), [s.name],
                      f"jump to {live_base + target.offset:#x}")
        elif s.base_name in FALLBACK_SYSCALL:
            nr = FALLBACK_SYSCALL[s.base_name]
            p = Patch(addr, _syscall_stub(nr), [s.name], f"system call {nr}")
        else:
            p = Patch(addr, _enosys_stub(), [s.name], "-ENOSYS (no such call here)")
        patches[addr] = p
    return sorted(patches.values(), key=lambda p: p.addr)


def mark(proxy: tuple[int, int], live_vdso: tuple[int, int]) -> bytes:
    return MARK.pack(MARK_MAGIC, proxy[0], proxy[1], live_vdso[0], live_vdso[1], MARK_VERSION)


def read_mark(data: bytes) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(proxy range, live vDSO range at the time of the restore) from a mark page, or None."""
    if len(data) < MARK.size or not data.startswith(MARK_MAGIC):
        return None
    _, ps, pe, ls, le, _ = MARK.unpack_from(data)
    return (ps, pe), (ls, le)


# --- this host's vDSO -------------------------------------------------------

@functools.cache
def _own_specials() -> tuple[Mapping, ...]:
    """This process's vDSO and vvar mappings: placed at its start, they never move."""
    with open("/proc/self/maps") as f:
        # Only their lines parsed: ours are over a hundred (~1 ms of a restore's start).
        lines = "".join(line for line in f if "[v" in line)
    return tuple(m for m in parse_maps(lines)
                 if m.kind in (Kind.VDSO, Kind.VVAR, Kind.VVAR_VCLOCK))


def own_vdso() -> bytes | None:
    """The bytes of this process's vDSO."""
    m = next((m for m in _own_specials() if m.kind == Kind.VDSO), None)
    if m is None:
        return None
    return ctypes.string_at(m.start, m.size)


def own_layout() -> dict[str, int]:
    """Sizes of this process's vvar, vvar_vclock and vdso mappings."""
    return {m.kind.value: m.size for m in _own_specials()}


def digest(data: bytes) -> str:
    return f"{fmt.checksum(data):016x}"


def compare(saved: VdsoInfo, live: bytes | None, live_layout: dict[str, int]) -> tuple[str, str]:
    """How a restore treats the saved vDSO given the live one: ("move"|"patch"|"none", why)."""
    if saved.vdso is None:
        return "none", "the saved process had no vDSO"
    if live is None:
        return "patch", "this kernel gives processes no vDSO"
    saved_layout = {k: r[1] - r[0] for k, r in (("vdso", saved.vdso), ("vvar", saved.vvar),
                                                ("vvar_vclock", saved.vvar_vclock)) if r}
    if digest(live) != saved.hash:
        return "patch", "the saved vDSO differs from this kernel's"
    if live_layout != saved_layout:
        return "patch", "the vvar/vDSO layout differs from this kernel's"
    return "move", "same vDSO as this kernel's: the live one is moved into place"


def restore_mode(saved: VdsoInfo) -> tuple[str, str]:
    """How a restore on this host would treat the saved vDSO, and why."""
    return compare(saved, own_vdso(), own_layout())
