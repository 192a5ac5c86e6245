"""The image file without GDB: ImageWriter writes it, Image reads and checks it.

Corrupt images are made by writing a valid one and patching its bytes.
"""

import os
import stat

import msgspec
import pytest
import zstandard

from gdbckpt.errors import ImageError, SaveError
from gdbckpt.image import format as fmt
from gdbckpt.image.model import (
    FdInfo,
    FileRef,
    Member,
    MmBounds,
    ProcessInfo,
    Rseq,
    SyscallState,
    ThreadState,
    VdsoInfo,
    Vma,
)
from gdbckpt.image.reader import Image
from gdbckpt.image.writer import ImageWriter
from gdbckpt.regs import blank

PAGE = 4096
HEAP = 0x5000_0000
RANDOM = os.urandom(2 * PAGE)                    # does not compress
PATTERN = b"gdbckpt!" * (4 * PAGE // 8)          # compresses well

PROCESS = ProcessInfo(
    pid=1234, exe="/usr/bin/prog", cwd="/tmp", comm="prog", cmdline=["prog", "a b"],
    kernel={"release": "6.1.0"}, saved_at=1.5, tool_version="0.1.0",
    mm=MmBounds(*range(0x1000, 0x1000 + 11 * 0x1000, 0x1000)),
    auxv=[[6, 4096], [25, 0x7FFF0000]], exe_file=0, umask=0o077)
THREAD = ThreadState(
    tid=1234, regs=blank(rip=0x401000), sigmask=5,
    name="prog", syscall=SyscallState(nr=35, errno=514, action="restart"),
    rseq=Rseq(addr=0x7000, size=32, sig=0x53053053), robust_list=[0x7100, 24])
VMAS = [
    Vma(start=0x400000, end=0x401000, prot=5, shared=False, kind="file",
        path="/usr/bin/prog", file=0),
    Vma(start=HEAP, end=HEAP + 0x10000, prot=3, shared=False, kind="anon", path="[heap]",
        vmflags=["rd", "wr"]),
]
FILES = [FileRef(path="/usr/bin/prog", size=4096, mtime_ns=7, ino=8, dev=9, build_id="ab12")]
VDSO = VdsoInfo(vdso=[0x7000_0000, 0x7000_2000], hash="0123456789abcdef")
FDS = [FdInfo(fd=0, kind="tty", target="/dev/pts/0")]


CHILD = msgspec.structs.replace(THREAD, tid=1235)
CHILD_VMAS = [Vma(start=HEAP, end=HEAP + 0x1000, prot=3, shared=False, kind="anon", path="")]


def add_members(w):
    """A child with a page of its own, and a zombie child."""
    first = len(w.chunks)
    w.add_chunk(HEAP, RANDOM[:PAGE], fmt.ChunkFlags.DIRTY)
    w.add_record(fmt.RecordType.MEMBER, Member(pid=1235, ppid=1234, pgid=1235, sid=1,
                                               chunks=[first, 1]))
    w.add_record(fmt.RecordType.PROCESS, msgspec.structs.replace(PROCESS, pid=1235))
    w.add_record(fmt.RecordType.THREAD, CHILD)
    w.add_record(fmt.RecordType.VMAS, {"vmas": CHILD_VMAS})
    w.add_record(fmt.RecordType.MEMBER, Member(pid=1236, ppid=1234, pgid=1234, sid=1,
                                               exit_status=3 << 8))


def write_image(path, *, compress=False, extra=(), records=None):
    """A valid image: a raw chunk, a compressible chunk, a zero chunk, every record."""
    comp = zstandard.ZstdCompressor() if compress else None
    with ImageWriter(str(path), compressor=comp) as w:
        w.add_chunk(HEAP, RANDOM, fmt.ChunkFlags.DIRTY)
        w.add_chunk(HEAP + 0x4000, PATTERN, fmt.ChunkFlags.DIRTY)
        w.add_zero_chunk(HEAP + 0x8000, PAGE, fmt.ChunkFlags.DIRTY)
        if records is None:
            w.add_record(fmt.RecordType.PROCESS, PROCESS)
            w.add_record(fmt.RecordType.THREAD, THREAD)
            w.add_record(fmt.RecordType.VMAS, {"vmas": VMAS})
            w.add_record(fmt.RecordType.FILES, {"files": FILES})
            w.add_record(fmt.RecordType.VDSO, VDSO)
            w.add_record(fmt.RecordType.FDS, {"fds": FDS})
            w.add_record(fmt.RecordType.NOTES, {"notes": ["a note"]})
            add_members(w)
        else:
            records(w)
        for rtype, payload, flags in extra:
            w.add_record(rtype, payload, flags)
        return w.commit()


def trailer_of(data):
    return fmt.TRAILER.unpack_from(data, len(data) - fmt.TRAILER_SIZE)


def record_spans(data):
    """{record type: (payload offset, length)} of the image's metadata."""
    _, _, _, meta_off, meta_len, _, _, _ = trailer_of(data)
    out, pos = {}, meta_off
    while pos < meta_off + meta_len:
        rtype, _, length, _ = fmt.RECORD_HEADER.unpack_from(data, pos)
        pos += fmt.RECORD_HEADER.size
        out.setdefault(rtype, (pos, length))
        pos += length
    return out


def flip(data, offset, bit=0):
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def reheader(data, **fields):
    """data with header fields replaced and the header checksum recomputed."""
    names = ("magic", "version", "header_size", "machine", "page_size", "csum_algo", "flags",
             "created_ns")
    values = dict(zip(names, fmt.HEADER.unpack_from(data), strict=True)) | fields
    head = fmt.HEADER.pack(*values.values()).ljust(fmt.HEADER_CSUM_AT, b"\0")
    return head + fmt.checksum(head).to_bytes(8, "little") + data[fmt.HEADER_SIZE:]


def refused(path, data, *words):
    """Image.open refuses data with an ImageError naming every word."""
    path.write_bytes(data)
    with pytest.raises(ImageError) as e:
        Image.open(str(path))
    for w in words:
        assert w in str(e.value), str(e.value)
    return str(e.value)


@pytest.fixture
def image(tmp_path):
    path = write_image(tmp_path / "a.img")
    with open(path, "rb") as f:
        return path, f.read()


# --- round trip ----------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path, compress):
    img = Image.open(write_image(tmp_path / "a.img", compress=compress))
    assert (img.process, img.threads, img.vmas, img.files, img.vdso, img.fds, img.notes) == (
        PROCESS, [THREAD], VMAS, FILES, VDSO, FDS, ["a note"])
    assert img.version == fmt.FORMAT_VERSION
    assert img.compressed == compress
    raw, packed, zero = img.chunks
    assert [c.vaddr for c in img.chunks] == [HEAP, HEAP + 0x4000, HEAP + 0x8000]
    assert raw.codec == fmt.Codec.NONE and raw.stored == len(RANDOM)
    assert packed.codec == (fmt.Codec.ZSTD if compress else fmt.Codec.NONE)
    assert (packed.stored < len(PATTERN)) == compress
    assert zero.flags == fmt.ChunkFlags.DIRTY | fmt.ChunkFlags.ZERO and zero.stored == 0
    assert img.read_chunk(raw) == RANDOM
    assert img.read_chunk(packed) == PATTERN
    assert img.read_chunk(zero) == bytes(PAGE)
    assert img.verify_chunks() == raw.span + packed.span + PAGE   # the child's page too
    assert img.chunks_in(HEAP + 0x5000, HEAP + 0x9000) == [packed, zero]
    assert img.file_size == os.path.getsize(img.path)


def test_every_chunk_starts_on_a_page(tmp_path):
    img = Image.open(write_image(tmp_path / "a.img", compress=True))
    assert all(c.offset % PAGE == 0 for c in img.chunks)
    assert img.meta_offset % PAGE == 0


def test_image_is_mode_0600_whatever_the_umask(tmp_path):
    target = tmp_path / "a.img"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    old = os.umask(0)
    try:
        write_image(target)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_failed_save_leaves_no_temporary_and_keeps_the_old_image(tmp_path, image):
    path, before = image
    with pytest.raises(RuntimeError), ImageWriter(path) as w:
        w.add_chunk(HEAP, RANDOM, fmt.ChunkFlags.DIRTY)
        raise RuntimeError("the save failed")
    assert os.listdir(tmp_path) == ["a.img"]
    with open(path, "rb") as f:
        assert f.read() == before
    Image.open(path)


def test_save_without_commit_is_dropped(tmp_path):
    with ImageWriter(str(tmp_path / "a.img")) as w:
        w.add_chunk(HEAP, RANDOM, fmt.ChunkFlags.DIRTY)
    assert os.listdir(tmp_path) == []


def test_writer_refuses_a_directory(tmp_path):
    with pytest.raises(SaveError, match="directory"):
        ImageWriter(str(tmp_path))


# --- what is not an image ----------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="cannot open .*No such file"):
        Image.open(str(tmp_path / "nothing.img"))


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="not a regular file"):
        Image.open(str(tmp_path))


def test_empty_file(tmp_path):
    refused(tmp_path / "e.img", b"", "not a gdbckpt image")


@pytest.mark.parametrize("size", [5, 100_000])
def test_not_an_image(tmp_path, size):
    refused(tmp_path / "x.img", os.urandom(size), "not a gdbckpt image")


def test_elf_file_is_not_an_image(tmp_path):
    with open("/bin/true", "rb") as f:
        refused(tmp_path / "x.img", f.read(), "not a gdbckpt image")


def test_truncated_everywhere(tmp_path, image):
    _, data = image
    meta_off = trailer_of(data)[3]
    cuts = {*range(0, 64), *range(64, meta_off, 97), *range(meta_off - 64, len(data))}
    path = tmp_path / "t.img"
    for n in sorted(cuts):
        path.write_bytes(data[:n])
        with pytest.raises(ImageError):
            Image.open(str(path))


def test_truncated_message(tmp_path, image):
    _, data = image
    refused(tmp_path / "t.img", data[:fmt.HEADER_SIZE], "truncated")
    refused(tmp_path / "t.img", data[:-1], "truncated or unfinished")


def test_appended_bytes(tmp_path, image):
    _, data = image
    refused(tmp_path / "t.img", data + b"\0" * 64, "no trailer")
    refused(tmp_path / "t.img", data + data[-fmt.TRAILER_SIZE:], "wrong size")


# --- corruption -------------------------------------------------------------------

def test_flipped_bit_in_header_padding(tmp_path, image):
    _, data = image
    for offset in (40, 1000, fmt.HEADER_CSUM_AT - 1, fmt.HEADER_CSUM_AT):
        refused(tmp_path / "c.img", flip(data, offset, 3), "header checksum mismatch")


def test_flipped_bit_in_any_header_field(tmp_path, image):
    _, data = image
    for offset in range(fmt.HEADER.size):
        for bit in (0, 7):
            with pytest.raises(ImageError):
                (tmp_path / "c.img").write_bytes(flip(data, offset, bit))
                Image.open(str(tmp_path / "c.img"))


def test_flipped_bit_in_trailer(tmp_path, image):
    _, data = image
    start = len(data) - fmt.TRAILER_SIZE
    for offset in range(start, len(data)):
        for bit in (0, 5):
            msg = refused(tmp_path / "c.img", flip(data, offset, bit))
            if offset >= start + 8:
                assert "trailer checksum mismatch" in msg


@pytest.mark.parametrize("rtype", list(fmt.RECORD_NAMES))
def test_flipped_bit_in_a_record(tmp_path, image, rtype):
    _, data = image
    pos, length = record_spans(data)[rtype]
    msg = refused(tmp_path / "c.img", flip(data, pos + length // 2, 2),
                  f"({fmt.RECORD_NAMES[rtype]})")
    assert "checksum mismatch" in msg


def test_record_length_beyond_the_metadata(tmp_path, image):
    _, data = image
    pos, _ = record_spans(data)[fmt.RecordType.VMAS]
    refused(tmp_path / "c.img", flip(data, pos - 9, 6), "(VMAS)", "longer than the metadata")


@pytest.mark.parametrize("compress", [False, True])
def test_flipped_bit_in_chunk_data(tmp_path, compress):
    path = write_image(tmp_path / "a.img", compress=compress)
    img = Image.open(path)
    bad = img.chunks[1]
    with open(path, "r+b") as f:
        f.seek(bad.offset + 10)
        byte = f.read(1)
        f.seek(bad.offset + 10)
        f.write(bytes([byte[0] ^ 0x10]))
    img = Image.open(path)      # the metadata is intact
    with pytest.raises(ImageError, match=f"chunk at {bad.vaddr:#x} .*corrupt"):
        img.verify_chunks()
    with pytest.raises(ImageError, match=f"chunk at {bad.vaddr:#x} .*corrupt"):
        img.read_chunk(img.chunks[1])
    assert img.read_chunk(img.chunks[0]) == RANDOM


def test_flipped_bit_in_chunk_padding(tmp_path):
    path = write_image(tmp_path / "a.img", compress=True)
    img = Image.open(path)
    packed = img.chunks[1]
    assert packed.stored < packed.span
    with open(path, "r+b") as f:
        f.seek(packed.offset + packed.span - 1)
        f.write(b"\1")
    with pytest.raises(ImageError, match=f"chunk at {packed.vaddr:#x}"):
        Image.open(path).verify_chunks()


# --- foreign images ------------------------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    ({"version": 99}, ("version 99", f"version {fmt.FORMAT_VERSION}", "upgrade")),
    # Format 1 kept registers under GDB's names: refused, naming the version that made it.
    ({"version": 1}, ("was made by gdbckpt 0.1", "image format 1", "save the program again")),
    ({"version": 0}, ("invalid format version 0",)),
    ({"machine": 183}, ("ELF machine 183",)),
    ({"flags": 0x80}, ("unknown header flags 0x80",)),
    ({"csum_algo": 7}, ("checksum algorithm 7",)),
    # A valid header checksum is not enough: the trailer's image checksum covers the header.
    ({"created_ns": 1}, ("whole-image checksum",)),
])
def test_foreign_or_patched_header(tmp_path, image, change, expected):
    _, data = image
    refused(tmp_path / "h.img", reheader(data, **change), *expected)


def test_trailer_version_must_match(tmp_path, image):
    _, data = image
    fields = list(trailer_of(data))
    fields[1] = 99
    trailer = fmt.TRAILER.pack(*fields)
    data = data[:-fmt.TRAILER_SIZE] + trailer + fmt.checksum(trailer).to_bytes(8, "little")
    refused(tmp_path / "t.img", data, "version")


def test_unknown_record_is_refused(tmp_path):
    path = write_image(tmp_path / "a.img", extra=[(99, b"{}", fmt.RecordFlags.NONE)])
    with pytest.raises(ImageError, match="unknown type 99.*newer gdbckpt"):
        Image.open(path)


def test_unknown_optional_record_is_skipped(tmp_path):
    path = write_image(tmp_path / "a.img", extra=[(99, b"\xff binary", fmt.RecordFlags.OPTIONAL)])
    img = Image.open(path)
    assert img.process == PROCESS and img.vmas == VMAS


def test_missing_record(tmp_path):
    def no_thread(w):
        w.add_record(fmt.RecordType.PROCESS, PROCESS)
        w.add_record(fmt.RecordType.VMAS, {"vmas": VMAS})
    with pytest.raises(ImageError, match="no THREAD record"):
        Image.open(write_image(tmp_path / "a.img", records=no_thread))


def test_record_with_a_wrong_field_type(tmp_path):
    def bad_vmas(w):
        w.add_record(fmt.RecordType.PROCESS, PROCESS)
        w.add_record(fmt.RecordType.THREAD, THREAD)
        w.add_record(fmt.RecordType.VMAS, b'{"vmas": [{"start": "x"}]}')
    with pytest.raises(ImageError, match=r"\(VMAS\)\.vmas\[0\]\.start: expected `int`, got `str`"):
        Image.open(write_image(tmp_path / "a.img", records=bad_vmas))


def test_chunk_outside_every_mapping(tmp_path):
    def tiny_heap(w):
        w.add_record(fmt.RecordType.PROCESS, PROCESS)
        w.add_record(fmt.RecordType.THREAD, THREAD)
        w.add_record(fmt.RecordType.VMAS, {"vmas": [Vma(start=HEAP, end=HEAP + 0x1000, prot=3,
                                                        shared=False, kind="anon", path="")]})
    with pytest.raises(ImageError, match=f"chunk at {HEAP:#x} lies outside"):
        Image.open(write_image(tmp_path / "a.img", records=tiny_heap))


@pytest.mark.parametrize("record, key", [("VMAS", "vmas"), ("FDS", "fds")])
def test_an_unknown_kind_is_refused_naming_the_field(tmp_path, record, key):
    from gdbckpt.image.model import to_json
    items = VMAS if key == "vmas" else FDS
    bad = [to_json(msgspec.structs.replace(items[0]))]
    bad[0]["kind"] = "teleporter"

    def records(w):
        for rtype, obj in ((fmt.RecordType.PROCESS, PROCESS), (fmt.RecordType.THREAD, THREAD),
                           (fmt.RecordType.VMAS, {"vmas": VMAS}),
                           (fmt.RecordType.FDS, {"fds": FDS})):
            w.add_record(rtype, {key: bad} if fmt.RECORD_NAMES[rtype] == record else obj)
    path = write_image(tmp_path / "k.img", records=records)
    with pytest.raises(ImageError, match=rf"{key}\[0\]\.kind: unknown kind 'teleporter'.*"
                                         "newer gdbckpt"):
        Image.open(path)


def test_a_tree_reads_as_the_root_with_its_members(image):
    path, _ = image
    img = Image.open(path)
    assert img.process.pid == 1234 and [c.vaddr for c in img.chunks] == \
        [HEAP, HEAP + 0x4000, HEAP + 0x8000]
    (child, child_img), (zombie, none) = img.members
    assert (child.pid, child.pgid, zombie.exit_status, none) == (1235, 1235, 3 << 8, None)
    assert child_img.process.pid == 1235 and child_img.threads[0].tid == 1235
    assert [c.vaddr for c in child_img.chunks] == [HEAP]
    assert child_img.read_chunk(child_img.chunks[0]) == RANDOM[:PAGE]
    assert child_img.fds == [] and child_img.fd == img.fd


def test_a_member_claiming_the_roots_chunks_is_refused(tmp_path):
    def records(w):
        w.add_record(fmt.RecordType.PROCESS, PROCESS)
        w.add_record(fmt.RecordType.THREAD, THREAD)
        w.add_record(fmt.RecordType.VMAS, {"vmas": VMAS})
        w.add_record(fmt.RecordType.MEMBER, Member(pid=5, ppid=1234, pgid=5, sid=5,
                                                   exit_status=0, chunks=[0, 9]))
    with pytest.raises(ImageError, match="process 5 of its tree names chunks"):
        Image.open(write_image(tmp_path / "m.img", records=records))


def tree_image(tmp_path, member, member_records=(), root_fds=()):
    def records(w):
        w.add_record(fmt.RecordType.PROCESS, PROCESS)
        w.add_record(fmt.RecordType.THREAD, THREAD)
        w.add_record(fmt.RecordType.VMAS, {"vmas": VMAS})
        w.add_record(fmt.RecordType.FILES, {"files": FILES})
        w.add_record(fmt.RecordType.FDS, {"fds": list(root_fds)})
        w.add_record(fmt.RecordType.MEMBER, member)
        for rtype, obj in member_records:
            w.add_record(rtype, obj)
    return write_image(tmp_path / "t.img", records=records)


@pytest.mark.parametrize("status", [17, 19, 0x7f, 0x10000, 3 << 8 | 9])
def test_a_zombie_status_no_process_ends_with_is_refused(tmp_path, status):
    path = tree_image(tmp_path, Member(pid=5, ppid=1234, pgid=5, sid=5, exit_status=status))
    with pytest.raises(ImageError, match="which no process ends with"):
        Image.open(path)


def test_a_members_records_must_be_its_own(tmp_path):
    other = [(fmt.RecordType.PROCESS, msgspec.structs.replace(PROCESS, pid=6)),
             (fmt.RecordType.THREAD, msgspec.structs.replace(THREAD, tid=6)),
             (fmt.RecordType.VMAS, {"vmas": []})]
    path = tree_image(tmp_path, Member(pid=5, ppid=1234, pgid=5, sid=5), other)
    with pytest.raises(ImageError, match="records of process 5 of its tree are process 6's"):
        Image.open(path)


def test_a_shared_descriptor_must_name_a_process_restored_before(tmp_path):
    later = [FdInfo(fd=1, kind="tty", target="/dev/pts/0", shared_from=[5, 1])]
    path = tree_image(tmp_path, Member(pid=5, ppid=1234, pgid=5, sid=5, exit_status=0),
                      root_fds=later)
    with pytest.raises(ImageError, match="fd 1 shares the descriptor of no process"):
        Image.open(path)


# --- chunks written by someone else (engine/selfdump.py) ---------------------------

def written_image(path, gap: int, at_delta: int = 0):
    """An image whose second chunk was written into the file by someone else (a
    snapshot), gap bytes after the first: a hole, as the save punches out zero pages."""
    def records(w):
        at = w.offset + gap + at_delta
        os.pwrite(w.fd, PATTERN, at)
        w.add_written_chunk(HEAP + 0x4000, len(PATTERN), at, fmt.checksum(PATTERN),
                            fmt.ChunkFlags.DIRTY)
        w.advance(gap + len(PATTERN))
        w.trim = True
        w.add_record(fmt.RecordType.PROCESS, PROCESS)
        w.add_record(fmt.RecordType.THREAD, THREAD)
        w.add_record(fmt.RecordType.VMAS, {"vmas": VMAS})
        w.add_record(fmt.RecordType.FILES, {"files": FILES})
    with ImageWriter(str(path)) as w:
        w.add_chunk(HEAP, RANDOM, fmt.ChunkFlags.DIRTY)
        records(w)
        w.commit()
    return str(path)


def test_a_hole_between_chunks_is_no_corruption(tmp_path):
    img = Image.open(written_image(tmp_path / "a.img", gap=3 * PAGE))
    first, second = img.chunks
    assert second.offset == first.offset + first.span + 3 * PAGE
    assert img.read_chunk(second) == PATTERN
    assert img.verify_chunks() == first.span + second.span


@pytest.mark.parametrize("delta, words", [
    (-PAGE, "not a page boundary at or after"),      # over the first chunk
    (100, "not a page boundary")])
def test_a_chunk_over_the_one_before_or_off_a_page_is_refused(tmp_path, delta, words):
    with pytest.raises(ImageError, match=words):
        Image.open(written_image(tmp_path / "a.img", gap=0, at_delta=delta))


def test_a_format_2_image_is_read_as_format_3(tmp_path, image):
    """Format 3 only lets chunks have holes between them: an image a format-2 gdbckpt
    wrote (the same bytes, version 2 in header and trailer) reads as before."""
    _, data = image
    data = reheader(data, version=2)
    fields = list(trailer_of(data))
    _, _, _, meta_off, meta_len, _, _, _ = fields
    fields[1] = 2
    fields[6] = fmt.checksum(data[:fmt.HEADER_SIZE] + data[meta_off:meta_off + meta_len])
    trailer = fmt.TRAILER.pack(*fields)
    path = tmp_path / "v2.img"
    tail = trailer + fmt.checksum(trailer).to_bytes(8, "little")
    path.write_bytes(data[:-fmt.TRAILER_SIZE] + tail)
    img = Image.open(str(path))
    assert img.version == 2 and fmt.FORMAT_VERSION == 3
    assert img.verify_chunks() > 0 and img.process == PROCESS


def test_a_ctrl_c_as_the_writer_makes_its_file_leaves_none(tmp_path, monkeypatch):
    """A Ctrl-C comes as a KeyboardInterrupt at the next Python call: here at the first
    one after the temporary file exists, before the caller has a writer to abort."""
    def interrupted(self, offset):
        raise KeyboardInterrupt
    monkeypatch.setattr(ImageWriter, "_seek", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ImageWriter(str(tmp_path / "a.img"))
    assert os.listdir(tmp_path) == []


def test_abort_after_commit_removes_nothing(tmp_path):
    """A failure after the commit (a Ctrl-C as the save returns) must remove nothing: the
    temporary name is then the old image's, kept until the new one is on disk. (Here a
    file put at that name stands for it: the old image itself is removed by a detached
    job as soon as the new one is synced.)"""
    path = tmp_path / "a.img"
    w = ImageWriter(str(path))
    w.add_chunk(HEAP, RANDOM, fmt.ChunkFlags.DIRTY)
    w.add_record(fmt.RecordType.PROCESS, PROCESS)
    w.commit()
    with open(w.tmp, "wb") as f:
        f.write(b"the old image")
    w.abort()
    assert open(w.tmp, "rb").read() == b"the old image"
    assert path.read_bytes()[:8] == fmt.MAGIC
