"""plan.build() on a small synthetic image and a stub layout taken from a real stub's maps."""

import os

import msgspec
import pytest

from gdbckpt import plan, vdso
from gdbckpt.errors import CkptError, RestoreError
from gdbckpt.image import format as fmt
from gdbckpt.image.model import FileRef, MmBounds, ProcessInfo, ThreadState, VdsoInfo, Vma
from gdbckpt.image.reader import Image
from gdbckpt.image.writer import ImageWriter
from gdbckpt.linux import OpenFlag, page_up
from gdbckpt.maps import parse_maps
from gdbckpt.regs import blank
from gdbckpt.stubabi import STUB_BASE

PAGE = 0x1000
PROG = "/usr/bin/prog"
# This host's vDSO stands for the saved one and the stub's: the same kernel, unless a test
# says otherwise. Zero bytes pad it to whole pages, as a chunk holds it.
OWN_VDSO = vdso.own_vdso()
if OWN_VDSO is None:
    pytest.skip("this kernel gives processes no vDSO", allow_module_level=True)
VDSO_SIZE = page_up(len(OWN_VDSO))
VDSO_BYTES = OWN_VDSO.ljust(VDSO_SIZE, b"\0")
VDSO_HASH = vdso.digest(VDSO_BYTES)
TEXT, DATA, HEAP = 0x555555554000, 0x555555556000, 0x555555559000
VVAR, VCLOCK, VDSO = 0x7FFFF7FC1000, 0x7FFFF7FC5000, 0x7FFFF7FC7000
STACK = 0x7FFFFFFDE000
DIRTY, CLEAN, ZERO = fmt.ChunkFlags.DIRTY, fmt.ChunkFlags.NONE, fmt.ChunkFlags.ZERO

# /proc/PID/maps of a freshly started native/gdbckpt-stub (the vDSO's size is this host's).
LIVE_VDSO = 0x7FD81BFAE000
STUB_MAPS = parse_maps(f"""\
100000000000-100000001000 r--p 00000000 fe:00 5309171   /work/main/native/gdbckpt-stub
100000001000-100000002000 r-xp 00001000 fe:00 5309171   /work/main/native/gdbckpt-stub
100000002000-100000003000 r--p 00002000 fe:00 5309171   /work/main/native/gdbckpt-stub
100000003000-100000853000 rw-p 00000000 00:00 0
7fd81bfa8000-7fd81bfac000 r--p 00000000 00:00 0         [vvar]
7fd81bfac000-7fd81bfae000 r--p 00000000 00:00 0         [vvar_vclock]
{LIVE_VDSO:x}-{LIVE_VDSO + VDSO_SIZE:x} r-xp 00000000 00:00 0         [vdso]
7ffe8bbd2000-7ffe8bbf3000 rw-p 00000000 00:00 0         [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
""")
LIVE_SPECIALS = {m.path: m for m in STUB_MAPS if m.path in ("[vvar]", "[vvar_vclock]", "[vdso]")}


def vma(start, end, perms, path="", kind="anon", **kw):
    prot = (perms[0] == "r") | (perms[1] == "w") << 1 | (perms[2] == "x") << 2
    return Vma(start=start, end=end, prot=prot, shared=perms[3] == "s", kind=kind, path=path,
               **kw)


VMAS = [
    vma(TEXT, DATA, "r-xp", PROG, "file", file=0),
    vma(DATA, HEAP, "rw-p", PROG, "file", offset=0x2000, file=0),
    vma(HEAP, HEAP + 4 * PAGE, "rw-p", "[heap]"),
    vma(VVAR, VCLOCK, "r--p", "[vvar]", "vvar"),
    vma(VCLOCK, VDSO, "r--p", "[vvar_vclock]", "vvar_vclock"),
    vma(VDSO, VDSO + VDSO_SIZE, "r-xp", "[vdso]", "vdso"),
    vma(STACK, 0x7FFFFFFFF000, "rw-p", "[stack]", vmflags=["rd", "wr", "gd"]),
    vma(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, "--xp", "[vsyscall]", "vsyscall"),
]
# (address, bytes or a size for a zero chunk, flags), in image order.
CHUNKS = [
    (TEXT, b"\xc3" * 2 * PAGE, CLEAN),
    (DATA, b"d" * PAGE, CLEAN),
    (DATA + PAGE, b"D" * PAGE, DIRTY),
    (DATA + 2 * PAGE, PAGE, DIRTY),
    (HEAP, b"h" * PAGE, DIRTY),             # the heap's first two chunks: one read
    (HEAP + PAGE, b"H" * PAGE, DIRTY),
    (HEAP + 3 * PAGE, b"j" * PAGE, DIRTY),
    (VDSO, VDSO_BYTES, DIRTY),
    (0x7FFFFFFFE000, b"s" * PAGE, DIRTY),
]


def write_image(path, vmas=VMAS, chunks=CHUNKS, vdso_hash=VDSO_HASH):
    with ImageWriter(str(path)) as w:
        for addr, data, flags in chunks:
            if isinstance(data, int):
                w.add_zero_chunk(addr, data, flags)
            else:
                w.add_chunk(addr, data, flags)
        w.add_record(fmt.RecordType.PROCESS, ProcessInfo(
            pid=77, exe=PROG, cwd="/tmp", comm="prog", cmdline=[PROG], kernel={},
            saved_at=0.0, tool_version="0.1.0", mm=MmBounds(*[TEXT] * 11),
            auxv=[[6, 4096], [33, VDSO]], exe_file=0))
        w.add_record(fmt.RecordType.THREAD, ThreadState(tid=77, regs=blank(rip=TEXT + 0x10),
                                                        sigmask=1))
        w.add_record(fmt.RecordType.VMAS, {"vmas": vmas})
        w.add_record(fmt.RecordType.FILES, {"files": [
            FileRef(path=PROG, size=0x3000, mtime_ns=1, ino=2, dev=3, build_id="ab")]})
        w.add_record(fmt.RecordType.VDSO, VdsoInfo(
            vdso=[VDSO, VDSO + VDSO_SIZE], vvar=[VVAR, VCLOCK], vvar_vclock=[VCLOCK, VDSO],
            hash=vdso_hash))
        return w.commit()


@pytest.fixture
def img(tmp_path):
    return Image.open(write_image(tmp_path / "prog.img"))


def live(img, **kw):
    return msgspec.structs.replace(
        plan.Live(stub_maps=STUB_MAPS, scratch=0x100000003000, vdso=VDSO_BYTES, fd_limit=1024,
                  image_path=img.path, file_problems={0: None}), **kw)


def steps_of(p, cls):
    return [s for s in p.steps if type(s) is cls]


def fills(p):
    """{address: (length, image offset)} of every read of every Fill step."""
    return {a: (n, off) for s in steps_of(p, plan.Fill) for a, n, off in s.runs}


def offset_of(img, addr):
    return next(c.offset for c in img.chunks if c.vaddr == addr)


# --- checks --------------------------------------------------------------------

def test_collision_with_the_stub_is_refused(tmp_path):
    vmas = [vma(STUB_BASE + PAGE, STUB_BASE + 2 * PAGE, "rw-p"), *VMAS[3:]]
    img = Image.open(write_image(tmp_path / "c.img", vmas, CHUNKS[-2:]))
    with pytest.raises(RestoreError, match="where the restart stub lives.*STUB_BASE"):
        plan.build(img, live(img))


def test_collision_with_the_stub_bss_is_refused(tmp_path):
    vmas = [vma(0x100000800000, 0x100000900000, "rw-p"), *VMAS[3:]]
    img = Image.open(write_image(tmp_path / "c.img", vmas, CHUNKS[-2:]))
    with pytest.raises(RestoreError, match="restart stub"):
        plan.build(img, live(img))


def test_vdso_hash_is_of_the_live_bytes(img):
    assert img.vdso.hash == f"{fmt.checksum(VDSO_BYTES):016x}"
    assert plan.build(img, live(img)).vdso_mode == "move"


def test_move_refused_when_the_vdso_differs(img):
    other = VDSO_BYTES[:-1] + b"\1"
    with pytest.raises(RestoreError, match="saved vDSO differs from this kernel.s"):
        plan.build(img, live(img, vdso=other), vdso_mode="move")


def test_move_refused_when_the_layout_differs(img):
    stub = [m for m in STUB_MAPS if m.path != "[vvar_vclock]"]
    with pytest.raises(RestoreError, match="layout differs"):
        plan.build(img, live(img, stub_maps=stub), vdso_mode="move")


def test_another_kernels_vdso_is_patched(tmp_path):
    # The image says its vDSO was another one: its bytes go back, patched to call the live one.
    img = Image.open(write_image(tmp_path / "k.img", vdso_hash="0123456789abcdef"))
    p = plan.build(img, live(img))
    assert p.vdso_mode == "patch"
    moves = steps_of(p, plan.MoveMapping)
    assert len(moves) == 3          # parked, and left there for the proxy to call
    proxy = next(s for s in steps_of(p, plan.Map) if s.vma.start == VDSO)
    assert "patched" in proxy.note
    assert fills(p)[VDSO] == (VDSO_SIZE, offset_of(img, VDSO))
    (patch,) = steps_of(p, plan.PatchVdso)
    live_at = next(m.dst for m in moves if m.name == "[vdso]")
    assert patch.patches and all(
        live_at <= int.from_bytes(q.code[6:], "little") < live_at + VDSO_SIZE
        for q in patch.patches if q.how.startswith("jump"))
    mark = next(s for s in steps_of(p, plan.Map) if s.vma.start == VVAR)
    assert mark.vma.end == VVAR + PAGE


def test_patch_refused_without_a_live_vdso(tmp_path):
    img = Image.open(write_image(tmp_path / "k.img", vdso_hash="0123456789abcdef"))
    with pytest.raises(RestoreError, match="no vDSO"):
        plan.build(img, live(img, vdso=None))


def test_patch_refused_without_the_saved_vdso_bytes(tmp_path):
    chunks = [c for c in CHUNKS if c[0] != VDSO]
    img = Image.open(write_image(tmp_path / "k.img", chunks=chunks, vdso_hash="0" * 16))
    with pytest.raises(RestoreError, match="does not hold the whole saved vDSO"):
        plan.build(img, live(img))


# --- the address space -------------------------------------------------------------

def test_specials_are_parked_then_moved_to_the_saved_addresses(img):
    p = plan.build(img, live(img))
    assert p.vdso_mode == "move"
    moves = steps_of(p, plan.MoveMapping)
    park, place = moves[:3], moves[3:]
    assert [(m.name, m.src, m.size) for m in park] == [
        (s.path, s.start, s.size) for s in LIVE_SPECIALS.values()]
    parked = {m.name: m.dst for m in park}
    # Parked together, in the same order, out of the way of the stub and of the image.
    shift = parked["[vvar]"] - LIVE_SPECIALS["[vvar]"].start
    assert all(parked[n] == s.start + shift for n, s in LIVE_SPECIALS.items())
    lo, hi = parked["[vvar]"], parked["[vdso]"] + VDSO_SIZE
    assert lo % (1 << 30) == 0 and lo >= max(m.end for m in STUB_MAPS if m.start < 1 << 46)
    assert not any(v.start < hi and lo < v.end for v in img.vmas)
    assert [(m.name, m.src, m.dst) for m in place] == [
        ("[vvar]", parked["[vvar]"], VVAR), ("[vvar_vclock]", parked["[vvar_vclock]"], VCLOCK),
        ("[vdso]", parked["[vdso]"], VDSO)]
    # Parked before anything is mapped, moved once everything is.
    index = p.steps.index
    maps = steps_of(p, plan.Map)
    assert all(index(m) < index(maps[0]) for m in park)
    assert all(index(m) > index(maps[-1]) for m in place)


def test_stub_stack_is_dropped_and_the_stub_unmapped_last(img):
    p = plan.build(img, live(img))
    (unmap,) = steps_of(p, plan.Unmap)
    assert (unmap.start, unmap.size) == (0x7FFE8BBD2000, 0x21000)
    assert p.steps.index(unmap) < p.steps.index(steps_of(p, plan.Map)[0])
    assert isinstance(p.steps[-1], plan.DropStub)
    # The stub's four mappings touch: one munmap.
    assert p.steps[-1].ranges == [(STUB_MAPS[0].start, STUB_MAPS[3].end)]


def test_every_mapping_but_the_specials_is_mapped(img):
    p = plan.build(img, live(img))
    maps = steps_of(p, plan.Map)
    assert [m.vma.start for m in maps] == [TEXT, DATA, HEAP, STACK]
    assert [m.growsdown for m in maps] == [False, False, False, True]
    # TEXT is the unchanged file with nothing to write: mapped r-x at once; the rw-
    # mappings stay as mapped.
    assert [m.final for m in maps] == [True, False, False, False]
    assert steps_of(p, plan.Protect) == []


def test_contiguous_chunks_are_one_read(img):
    p = plan.build(img, live(img))
    f = fills(p)
    assert f[HEAP] == (2 * PAGE, offset_of(img, HEAP))
    assert f[HEAP + 3 * PAGE] == (PAGE, offset_of(img, HEAP + 3 * PAGE))
    assert HEAP + PAGE not in f
    heap_fill = next(s for s in steps_of(p, plan.Fill) if s.runs[0][0] == HEAP)
    assert len(heap_fill.runs) == 2
    (image_open,) = [s for s in steps_of(p, plan.OpenFile) if s.why == "the image"]
    assert heap_fill.image_fd == image_open.fd and image_open.path == img.path


def test_chunks_contiguous_in_memory_but_not_in_the_image_are_two_reads(tmp_path):
    chunks = [CHUNKS[4], CHUNKS[6], CHUNKS[5], *CHUNKS[7:]]
    img = Image.open(write_image(tmp_path / "o.img", VMAS[2:], chunks))
    f = fills(plan.build(img, live(img, file_problems={})))
    assert f[HEAP] == (PAGE, offset_of(img, HEAP))
    assert f[HEAP + PAGE] == (PAGE, offset_of(img, HEAP + PAGE))


def test_unchanged_file_only_dirty_chunks_are_written(img):
    p = plan.build(img, live(img, file_problems={0: None}))
    (prog,) = [s for s in steps_of(p, plan.OpenFile) if s.path == PROG]
    assert prog.flags == OpenFlag.RDONLY
    text, data = steps_of(p, plan.Map)[:2]
    assert text.fd == data.fd == prog.fd and not text.shared
    f = fills(p)
    assert TEXT not in f and DATA not in f
    assert f[DATA + PAGE] == (PAGE, offset_of(img, DATA + PAGE))
    (zero,) = steps_of(p, plan.WriteChunks)
    assert [(c.vaddr, c.flags) for c in zero.chunks] == [(DATA + 2 * PAGE, DIRTY | ZERO)]
    assert not any("prog" in w for w in p.warnings)


def test_changed_file_every_chunk_is_written(img):
    p = plan.build(img, live(img, file_problems={0: f"{PROG} changed (size)"}))
    assert not any(s.path == PROG for s in steps_of(p, plan.OpenFile))
    text, data = steps_of(p, plan.Map)[:2]
    assert text.fd == data.fd == -1
    f = fills(p)
    assert f[TEXT] == (2 * PAGE, offset_of(img, TEXT))
    assert f[DATA] == (2 * PAGE, offset_of(img, DATA))      # clean and dirty: one read
    assert steps_of(p, plan.WriteChunks) == []              # anonymous memory is zero already
    assert any(w.startswith(f"{PROG} changed (size)") and "private copies" in w
               for w in p.warnings)


def test_exe_link(img):
    p = plan.build(img, live(img))
    assert any("exe link" in w for w in p.warnings)
    p = plan.build(img, live(img, can_set_exe=True))
    assert isinstance(p.steps[-1], plan.SetExe) and p.steps[-1].path == PROG
    (exe,) = [s for s in steps_of(p, plan.OpenFile) if s.why == "the exe link"]
    assert p.steps[-1].fd == exe.fd


def test_text_lists_every_step(img):
    p = plan.build(img, live(img, file_problems={0: "changed"}))
    lines = p.text().splitlines()
    assert len(lines) == len(p.steps) + len(p.warnings)
    for i, s in enumerate(p.steps):
        assert lines[i] == f"{i:3d}  {s.describe()}"
    assert lines[len(p.steps):] == [f"warning: {w}" for w in p.warnings]


def test_every_step_makes_its_ops(img):
    p = plan.build(img, live(img, can_set_exe=True))
    scratch = plan.Scratch(0x100000003000)
    for s in p.steps:
        ops = plan.encode(s, scratch)
        assert s.python or ops, s.describe()
        assert all(isinstance(a, int) for op in ops for a in op.args), s.describe()


def test_only_memory_steps_come_before_the_checksums_are_awaited(img, tmp_path):
    """A headless restore checks the checksums while it runs the first steps
    (engine.restore.Checksums): those may only touch the new process's own memory and
    open files read-only; every mapping and fill is among them, no descriptor is."""
    from gdbckpt.engine.restore import _seen_inside
    # As a restore runs it: handed the image it checked (image_fd), not opening its path.
    p = plan.build(img, live(img, image_fd=1000), stdio={1: str(tmp_path / "out.txt")})
    first = next(i for i, s in enumerate(p.steps) if not _seen_inside(s))
    before, after = p.steps[:first], p.steps[first:]
    assert any(isinstance(s, plan.Fill) for s in before)
    assert not any(isinstance(s, (plan.Map, plan.Fill)) for s in after)
    for s in before:
        assert not isinstance(s, plan.OpenFile) or s.flags & 3 == os.O_RDONLY, s.describe()
    stdout = next(s for s in after if isinstance(s, plan.OpenFile) and s.fd == 1)
    assert not _seen_inside(stdout)


# --- stdio -------------------------------------------------------------------------

def test_stdio_redirection(img, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = plan.build(img, live(img), stdio={0: "/dev/null", 1: "out.txt", 2: "out.txt"})
    stdio = [s for s in p.steps if isinstance(s, plan.OpenFile) and s.fd <= 2]
    out = os.path.join(str(tmp_path), "out.txt")
    assert [(s.fd, s.path, s.cloexec) for s in stdio] == [(0, "/dev/null", False),
                                                          (1, out, False)]
    assert stdio[0].flags == OpenFlag.RDONLY
    assert stdio[1].flags == OpenFlag.WRONLY | OpenFlag.CREAT | OpenFlag.TRUNC
    (dup,) = steps_of(p, plan.DupFd)
    assert (dup.fd, dup.to) == (1, 2)
    (op,) = plan.encode(stdio[1], plan.Scratch(0x100000003000))
    assert not op.args[1] & OpenFlag.CLOEXEC and op.args[3] == 1
    assert p.steps.index(dup) > p.steps.index(stdio[1])


def test_stdio_separate_files(img, tmp_path):
    p = plan.build(img, live(img), stdio={1: str(tmp_path / "o"), 2: str(tmp_path / "e")})
    assert [(s.fd, s.path) for s in steps_of(p, plan.OpenFile) if s.fd <= 2] == [
        (1, str(tmp_path / "o")), (2, str(tmp_path / "e"))]
    assert steps_of(p, plan.DupFd) == []


def _access(p, fd):
    """O_ACCMODE of what fd will be after the plan's stdio steps."""
    mode = {}
    for s in p.steps:
        if isinstance(s, plan.OpenFile):
            mode[s.fd] = s.flags & 3
        elif isinstance(s, plan.DupFd):
            mode[s.to] = mode[s.fd]
    return mode[fd]


def test_stdin_and_stdout_on_the_same_terminal(img):
    tty = "/dev/pts/3"
    p = plan.build(img, live(img), stdio={0: tty, 1: tty, 2: tty})
    assert _access(p, 0) in (OpenFlag.RDONLY, OpenFlag.RDWR)
    assert _access(p, 1) in (OpenFlag.WRONLY, OpenFlag.RDWR)
    assert _access(p, 2) in (OpenFlag.WRONLY, OpenFlag.RDWR)


# --- robustness ----------------------------------------------------------------------

def test_parking_area_avoids_the_live_specials(tmp_path):
    # An image mapping that ends just below the live [vvar] pushes the gap search up to it.
    vvar = LIVE_SPECIALS["[vvar]"].start
    vmas = [vma(0x100040000000, vvar - 0x2000, "rw-p"), *VMAS[3:]]
    img = Image.open(write_image(tmp_path / "p.img", vmas, CHUNKS[-2:]))
    p = plan.build(img, live(img))
    live_ranges = [(m.start, m.end) for m in STUB_MAPS]
    for m in steps_of(p, plan.MoveMapping)[:3]:
        assert not any(m.dst < e and s < m.dst + m.size for s, e in live_ranges), m.describe()


def test_unknown_mapping_kind_is_a_clean_error(tmp_path):
    vmas = [vma(HEAP, HEAP + 4 * PAGE, "rw-p", "[heap]", kind="hugetlb"), *VMAS[3:]]
    path = write_image(tmp_path / "k.img", vmas, CHUNKS[4:])
    with pytest.raises(CkptError):
        img = Image.open(path)
        plan.build(img, live(img, file_problems={}))


def test_stub_ranges_merge_only_where_they_touch():
    # What lies between two of the stub's mappings is the restored process's: kept.
    assert plan._adjacent_merged([(0x5000, 0x6000), (0x1000, 0x2000), (0x2000, 0x3000)]) == \
        [(0x1000, 0x3000), (0x5000, 0x6000)]
