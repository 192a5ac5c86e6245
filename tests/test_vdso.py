"""vDSO patching, on this kernel's real vDSO and on a synthetic one with moved symbols."""

import io
import struct

import pytest
from elftools.elf.elffile import ELFFile

from gdbckpt import vdso
from gdbckpt.errors import RestoreError
from gdbckpt.image.model import VdsoInfo

REAL = vdso.own_vdso()
EXPORTED = {"clock_gettime", "gettimeofday", "time", "clock_getres", "getcpu"}


def edit_dynsym(data: bytes, fn) -> bytes:
    """A copy of a vDSO whose dynamic symbols fn(name, value, size) -> (value, size) rewrote."""
    out = bytearray(data)
    elf = ELFFile(io.BytesIO(data))
    dynsym = elf.get_section_by_name(".dynsym")
    base, ent = dynsym["sh_offset"], dynsym["sh_entsize"]
    for i, sym in enumerate(dynsym.iter_symbols()):
        if sym["st_info"]["type"] == "STT_FUNC":
            value, size = fn(sym.name, sym["st_value"], sym["st_size"])
            struct.pack_into("<QQ", out, base + i * ent + 8, value, size)
    return bytes(out)


def rename(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and old in data
    return data.replace(old, new)


def test_real_vdso_exports_the_clock_functions_with_versions():
    syms = vdso.symbols(REAL)
    names = {s.base_name for s in syms}
    assert EXPORTED <= names
    assert all(s.version == "LINUX_2.6" for s in syms)
    assert all(s.size >= vdso.JUMP_SIZE for s in syms)
    assert vdso.build_id(REAL) is None or len(vdso.build_id(REAL)) == 40


def test_same_vdso_patches_jump_to_the_same_offsets():
    patches = vdso.patch_plan(REAL, 0x7000_0000, REAL, 0x1000_0000_0000)
    assert {n.removeprefix("__vdso_") for p in patches for n in p.names} >= EXPORTED
    for p in patches:
        offset = p.addr - 0x7000_0000
        assert p.code == vdso.JUMP_PREFIX + struct.pack("<Q", 0x1000_0000_0000 + offset)
        assert len(p.code) == vdso.JUMP_SIZE
    # Aliases (clock_gettime and __vdso_clock_gettime) share one patch.
    assert len({p.addr for p in patches}) == len(patches)


def test_shifted_live_vdso_is_called_at_its_own_offsets():
    live = edit_dynsym(REAL, lambda name, value, size: (value + 0x40, size))
    patches = vdso.patch_plan(REAL, 0x7000_0000, live, 0x5000_0000)
    by_name = {vdso.Symbol(n, None, 0, 0).base_name: p for p in patches for n in p.names}
    for s in vdso.symbols(REAL):
        code = by_name[s.base_name].code
        target = struct.unpack("<Q", code[len(vdso.JUMP_PREFIX):])[0]
        assert target == 0x5000_0000 + s.offset + 0x40


def test_function_missing_from_live_vdso_becomes_a_system_call():
    live = rename(REAL, b"getcpu\0", b"getcpX\0")
    patches = vdso.patch_plan(REAL, 0x7000_0000, live, 0x5000_0000)
    getcpu = next(p for p in patches if "getcpu" in p.names)
    assert getcpu.code == b"\xb8" + struct.pack("<I", 309) + b"\x49\x89\xca\x0f\x05\xc3"
    assert getcpu.how == "system call 309"


def test_saved_function_too_short_for_a_jump_is_refused():
    saved = edit_dynsym(REAL, lambda name, value, size: (value, 8 if "time" in name else size))
    with pytest.raises(RestoreError, match=r"time is 8 bytes, a jump needs 14"):
        vdso.patch_plan(saved, 0x7000_0000, REAL, 0x5000_0000)


def test_mark_round_trip_and_garbage():
    page = vdso.mark((0x7000, 0x9000), (0x1_0000_0000, 0x1_0000_2000)).ljust(4096, b"\0")
    assert vdso.read_mark(page) == ((0x7000, 0x9000), (0x1_0000_0000, 0x1_0000_2000))
    assert vdso.read_mark(bytes(4096)) is None
    assert vdso.read_mark(b"GDBCKPT") is None


def test_compare_decides_move_or_patch():
    layout = vdso.own_layout()
    info = VdsoInfo(vdso=[0x7000, 0x7000 + layout["vdso"]], vvar=[0x1000, 0x1000 + layout["vvar"]],
                    vvar_vclock=[0x5000, 0x5000 + layout["vvar_vclock"]], hash=vdso.digest(REAL))
    assert vdso.compare(info, REAL, layout)[0] == "move"
    other = rename(REAL, b"getcpu\0", b"getcpX\0")
    mode, why = vdso.compare(info, other, layout)
    assert mode == "patch" and "differs" in why
    assert vdso.compare(VdsoInfo(), REAL, layout)[0] == "none"
    assert vdso.compare(info, REAL, {**layout, "vvar": 0x8000})[0] == "patch"
