"""Fuzz the image reader: mutate a real image and check that only ImageError comes out.

    .venv/bin/python tools/fuzz_images.py [--cases 100000] [--seed 0] [--dir /dev/shm]
    .venv/bin/python tools/fuzz_images.py --seed 0 --case 1234     # replay one case

A case is a function of --seed, --kinds and its number alone, so a replay needs the
seed and kinds of the run that found it.

A small but realistic image (every record type; raw, zstd, zero and FILE_DATA
chunks) is written once with ImageWriter, then every case mutates it in one
way, writes the result to a file and reads it as gdbckpt would: Image.open(),
then verify_chunks() and read_chunk() of every chunk of the table. Kinds:

  truncate  cut the file at any length: open() must refuse it
  flip      flip one bit anywhere: open() or verify_chunks() must refuse it
  length    overwrite a length field (record length; trailer nrecords,
            meta_offset, meta_length, file_size; chunk offset, stored, size)
            with an arbitrary integer, every checksum recomputed to match
  fields    overwrite one to three fields of any kind (header, trailer, record
            type and flags, every chunk entry field), checksums recomputed
  records   reorder, duplicate and drop metadata records, then re-pack the
            metadata, trailer and whole-image checksum
  json      replace a record's payload, or one value inside its JSON, with
            arbitrary JSON (checksums recomputed)
  chunks    replace the stored bytes of a compressed chunk with other bytes
            (random, another zstd frame, a frame that claims any content
            size), its table entry and every checksum recomputed

Anything but ImageError is a bug in the reader ("other"). So are a flip or a
truncation that goes unnoticed, a case that takes more than a second, and
(when traced, --trace) a case whose Python allocations peak above the size of
the file plus ALLOC_SLACK (the interpreter's own overhead). The summary counts
outcomes per kind; the exit status is 1 when anything went wrong, and the
first case of each distinct failure is printed with its traceback.

tests/test_fuzz.py imports the helpers of this file for its hypothesis
properties, so both drive the reader the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import struct
import sys
import tempfile
import time
import traceback
import tracemalloc

import msgspec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import zstandard  # noqa: E402

from gdbckpt import fds, info, regs  # noqa: E402,F401  (imported here, not while traced)
from gdbckpt import plan as planmod  # noqa: E402
from gdbckpt import vdso as vdsomod  # noqa: E402
from gdbckpt.engine.xstate import live_xcr0  # noqa: E402
from gdbckpt.errors import CkptError, ImageError  # noqa: E402
from gdbckpt.image import format as fmt  # noqa: E402
from gdbckpt.image.model import (  # noqa: E402
    FdInfo,
    FileRef,
    ItimerState,
    Member,
    MmBounds,
    ProcessInfo,
    Rlimit,
    Rseq,
    SigAction,
    SigAltStack,
    SyscallState,
    ThreadState,
    VdsoInfo,
    Vma,
    XState,
)
from gdbckpt.image.reader import Image  # noqa: E402
from gdbckpt.image.writer import ImageWriter  # noqa: E402
from gdbckpt.maps import parse_maps  # noqa: E402
from gdbckpt.regs import blank  # noqa: E402

PAGE = fmt.IMAGE_PAGE_SIZE
CREATED_NS = 1_700_000_000_123_456_789      # fixed, so that the image is the same every run
TIME_LIMIT = 1.0                            # seconds a case may take
ALLOC_SLACK = 256 << 10     # Python allocations a read may make beyond the file's size:
                            # the unmutated image's peak is ~40 KiB above it
KINDS = ("truncate", "flip", "length", "fields", "records", "json", "chunks")

# --- the image -----------------------------------------------------------------

EXE, LIB = "/usr/bin/prog", "/usr/lib/x86_64-linux-gnu/libfoo.so.1"
TEXT, DATA, HEAP, LIBT = 0x55_5555_4000, 0x55_5555_6000, 0x55_5555_8000, 0x7F00_0000_0000
STACK, VDSO = 0x7FFF_FFFD_E000, 0x7FFF_F7FC_1000


def build_image(path: str) -> bytes:
    """Write a small image with every record type and every kind of chunk; its bytes."""
    rnd = random.Random(20240601)
    noise = lambda n: rnd.randbytes(n)                             # does not compress
    text = lambda n: (b"gdbckpt fuzz " * (n // 13 + 1))[:n]        # compresses well
    w = ImageWriter(path, compressor=zstandard.ZstdCompressor(level=1))
    with w:
        w.created_ns = CREATED_NS
        # A deleted file that fd 3 still holds open: FILE_DATA chunks, raw and zstd.
        first = w.add_chunk(0, noise(3000), fmt.ChunkFlags.FILE_DATA)
        # Compressed, as earlier versions wrote them: readers still meet such images.
        w.put_chunk(3000, w.prepare_chunk(text(9000)), fmt.ChunkFlags.FILE_DATA)
        w.add_chunk(TEXT, noise(2 * PAGE), fmt.ChunkFlags.NONE)               # raw
        w.add_chunk(DATA, text(PAGE), fmt.ChunkFlags.DIRTY)                   # raw (1 page)
        w.add_zero_chunk(DATA + PAGE, PAGE, fmt.ChunkFlags.DIRTY)             # zero
        w.add_chunk(HEAP, noise(PAGE), fmt.ChunkFlags.DIRTY)                  # raw
        w.add_chunk(HEAP + 2 * PAGE, text(4 * PAGE), fmt.ChunkFlags.DIRTY)    # zstd
        w.add_chunk(LIBT, text(3 * PAGE), fmt.ChunkFlags.NONE)                # zstd
        w.add_chunk(STACK + PAGE, noise(PAGE) + bytes(PAGE), fmt.ChunkFlags.DIRTY)
        w.add_chunk(VDSO, noise(2 * PAGE), fmt.ChunkFlags.DIRTY)
        process = ProcessInfo(
            pid=4242, exe=EXE, exe_file=0, cwd="/home/user", comm="prog",
            cmdline=[EXE, "--steps", "60", "a b"],
            kernel={"release": "6.1.0-18-amd64", "version": "#1 SMP Debian",
                    "machine": "x86_64", "hostname": "host"},
            saved_at=1_700_000_000.25, tool_version="0.2.0",
            mm=MmBounds(start_code=TEXT, end_code=TEXT + 2 * PAGE, start_data=DATA,
                        end_data=DATA + 2 * PAGE, start_brk=HEAP, brk=HEAP + 8 * PAGE,
                        start_stack=STACK + 0x1F00, arg_start=STACK + 0x1F10,
                        arg_end=STACK + 0x1F40, env_start=STACK + 0x1F40,
                        env_end=STACK + 0x1FF0),
            auxv=[[3, TEXT + 64], [6, PAGE], [9, TEXT + 0x100], [25, STACK + 0x1E00],
                  [33, VDSO]],
            umask=0o022, uid=1000, gid=1000,
            sigactions=[SigAction(sig=2, handler=TEXT + 0x200, flags=0x04000000,
                                  restorer=LIBT + 0x40, mask=0)],
            sigpending=0, stopped_by="breakpoint", rlimits=[Rlimit(7, 1024, 4096)],
            itimers=[ItimerState(which=0, interval_us=0, value_us=500_000)],
            not_restored=["timer"], tid_offset=720)
        thread = ThreadState(
            tid=4242, regs=blank(rip=TEXT + 0x123, rsp=STACK + 0x1D00, eflags=0x246),
            xstate=XState(xcr0=0x7, in_use=0x7, legacy=bytes(range(232)) * 2,
                          components={"2": bytes(256)}),
            sigmask=1 << 9, name="prog",
            syscall=SyscallState(nr=230, errno=516, action="restart"),
            rseq=Rseq(addr=HEAP + 0x1000, size=32, sig=0x53053053),
            sigaltstack=SigAltStack(sp=0, flags=2, size=0), tid_address=HEAP + 0x2000,
            robust_list=[HEAP + 0x2010, 24], pending=[bytes(128)], cpus=[0, 1])
        vmas = [
            Vma(start=TEXT, end=TEXT + 2 * PAGE, prot=5, shared=False, kind="file",
                path=EXE, file=0, vmflags=["rd", "ex", "mr", "mw", "me"]),
            Vma(start=DATA, end=DATA + 2 * PAGE, prot=3, shared=False, kind="file",
                path=EXE, offset=2 * PAGE, file=0, vmflags=["rd", "wr"]),
            Vma(start=HEAP, end=HEAP + 8 * PAGE, prot=3, shared=False, kind="anon",
                path="[heap]", vmflags=["rd", "wr", "mr", "mw", "me", "ac"]),
            Vma(start=LIBT, end=LIBT + 4 * PAGE, prot=5, shared=False, kind="file",
                path=LIB, file=1),
            Vma(start=STACK, end=STACK + 3 * PAGE, prot=3, shared=False, kind="anon",
                path="[stack]", vmflags=["rd", "wr", "gd"]),
            Vma(start=VDSO - 4 * PAGE, end=VDSO, prot=1, shared=False, kind="vvar",
                path="[vvar]"),
            Vma(start=VDSO, end=VDSO + 2 * PAGE, prot=5, shared=False, kind="vdso",
                path="[vdso]"),
        ]
        vmas.sort(key=lambda v: v.start)
        files = [FileRef(path=EXE, size=0x5000, mtime_ns=1, ino=2, dev=3, build_id="ab" * 20),
                 FileRef(path=LIB, size=0x9000, mtime_ns=4, ino=5, dev=3, hash="cd" * 16)]
        fds = [FdInfo(fd=0, kind="tty", target="/dev/pts/0", flags=2),
               FdInfo(fd=1, kind="tty", target="/dev/pts/0", flags=2, same_as=0),
               FdInfo(fd=3, kind="file", target="/tmp/scratch (deleted)", flags=0o2,
                      pos=12000, size=12000, mtime_ns=9, ino=10, dev=3, data=[first, 2])]
        w.add_record(fmt.RecordType.PROCESS, process)
        w.add_record(fmt.RecordType.THREAD, thread)
        w.add_record(fmt.RecordType.VMAS, {"vmas": vmas})
        w.add_record(fmt.RecordType.FILES, {"files": files})
        w.add_record(fmt.RecordType.VDSO, VdsoInfo(vdso=[VDSO, VDSO + 2 * PAGE],
                                                   vvar=[VDSO - 4 * PAGE, VDSO],
                                                   hash="0123456789abcdef"))
        w.add_record(fmt.RecordType.FDS, {"fds": fds})
        w.add_record(fmt.RecordType.NOTES, {"notes": ["fd 4 (socket) cannot be restored"]})
        # A tree: a child with a page of its own and a descriptor it shares, and a zombie.
        first = len(w.chunks)
        w.add_chunk(HEAP, noise(PAGE), fmt.ChunkFlags.DIRTY)
        w.add_record(fmt.RecordType.MEMBER, Member(pid=4243, ppid=4242, pgid=4243, sid=4242,
                                                   comm="child", chunks=[first, 1]))
        w.add_record(fmt.RecordType.PROCESS, msgspec.structs.replace(process, pid=4243, ppid=4242))
        w.add_record(fmt.RecordType.THREAD, msgspec.structs.replace(thread, tid=4243))
        w.add_record(fmt.RecordType.VMAS, {"vmas": [vmas[2]]})
        w.add_record(fmt.RecordType.FDS, {"fds": [FdInfo(fd=1, kind="tty", target="/dev/pts/0",
                                                         flags=2, shared_from=[4242, 1])]})
        w.add_record(fmt.RecordType.MEMBER, Member(pid=4244, ppid=4242, pgid=4242, sid=4242,
                                                   comm="done", exit_status=0x0100))
        w.commit()
    with open(path, "rb") as f:
        return f.read()


# --- where everything lies -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Field:
    """An integer field of the image: where it is and how wide."""
    name: str
    offset: int
    size: int           # bytes: 4 or 8

    @property
    def bits(self) -> int:
        return 8 * self.size

    def get(self, data: bytes) -> int:
        return int.from_bytes(data[self.offset:self.offset + self.size], "little")


@dataclasses.dataclass(frozen=True)
class Rec:
    pos: int            # of its header in the file
    rtype: int
    rflags: int
    payload: bytes

    @property
    def blob(self) -> bytes:
        return record_blob(self.rtype, self.rflags, self.payload)


def _struct_fields(st: struct.Struct, names: tuple[str, ...], base: int, prefix: str):
    """Fields of the integer members of st (a '<' format of s, I and Q) at base."""
    out, off = [], base
    codes = re.findall(r"(\d*)([sIQ])", st.format.lstrip("<"))
    for name, (count, code) in zip(names, codes, strict=True):
        width = int(count or 1) if code == "s" else struct.calcsize("<" + code)
        if code != "s":
            out.append(Field(f"{prefix}.{name}", off, width))
        off += width
    return out


HEADER_NAMES = ("magic", "version", "header_size", "machine", "page_size", "csum_algo",
                "flags", "created_ns")
TRAILER_NAMES = ("magic", "version", "nrecords", "meta_offset", "meta_length", "file_size",
                 "image_csum", "reserved")
RECORD_NAMES = ("type", "flags", "length", "csum")
CHUNK_NAMES = ("vaddr", "size", "offset", "stored", "flags", "codec", "csum")


@dataclasses.dataclass
class Layout:
    size: int
    meta_offset: int
    meta_length: int
    version: int
    records: list[Rec]
    fields: dict[str, Field]
    chunks: list[tuple]     # CHUNK_ENTRY tuples: vaddr, size, offset, stored, flags, codec, csum

    @classmethod
    def parse(cls, data: bytes) -> Layout:
        """The layout of a valid image (the unmutated one)."""
        size = len(data)
        t = size - fmt.TRAILER_SIZE
        _, version, _, meta_off, meta_len, _, _, _ = fmt.TRAILER.unpack_from(data, t)
        fields = _struct_fields(fmt.HEADER, HEADER_NAMES, 0, "header")
        fields += _struct_fields(fmt.TRAILER, TRAILER_NAMES, t, "trailer")
        records, chunks, pos = [], [], meta_off
        while pos < meta_off + meta_len:
            rtype, rflags, length, _ = fmt.RECORD_HEADER.unpack_from(data, pos)
            start = pos + fmt.RECORD_HEADER.size
            i = len(records)
            records.append(Rec(pos, rtype, rflags, data[start:start + length]))
            fields += _struct_fields(fmt.RECORD_HEADER, RECORD_NAMES, pos, f"record[{i}]")
            if rtype == fmt.RecordType.CHUNKS:
                chunks = list(fmt.CHUNK_ENTRY.iter_unpack(data[start:start + length]))
                for n in range(len(chunks)):
                    fields += _struct_fields(fmt.CHUNK_ENTRY, CHUNK_NAMES,
                                             start + n * fmt.CHUNK_ENTRY.size, f"chunk[{n}]")
            pos = start + length
        return cls(size, meta_off, meta_len, version, records,
                   {f.name: f for f in fields}, chunks)

    @property
    def length_fields(self) -> list[Field]:
        """The fields that say how long or where something is."""
        keep = re.compile(r"record\[\d+\]\.length|trailer\.(nrecords|meta_offset|meta_length|"
                          r"file_size)|chunk\[\d+\]\.(offset|stored|size)")
        return [f for f in self.fields.values() if keep.fullmatch(f.name)]

    @property
    def packed_chunks(self) -> list[int]:
        """Chunks whose stored bytes are compressed: those a rewrite may resize."""
        return [n for n, c in enumerate(self.chunks) if c[5] == fmt.Codec.ZSTD]

    @property
    def json_records(self) -> list[int]:
        return [i for i, r in enumerate(self.records) if r.rtype != fmt.RecordType.CHUNKS]

    def json_paths(self) -> list[tuple[int, tuple]]:
        """(record, path) of every value inside every JSON payload, the payload itself too."""
        out = []
        for i in self.json_records:
            out += [(i, p) for p in _paths(json.loads(self.records[i].payload))]
        return out

    def interesting(self, field: Field) -> list[int]:
        """Values a corrupt field is likely to be caught out by."""
        top = (1 << field.bits) - 1
        vals = {0, 1, 2, 3, 7, 8, 47, 48, 49, 63, 64, 65, top, top - 1, 1 << (field.bits - 1)}
        for b in range(field.bits):
            vals |= {1 << b, (1 << b) - 1, (1 << b) + 1}
        for v in (self.size, self.meta_offset, self.meta_length, fmt.HEADER_SIZE,
                  fmt.TRAILER_SIZE, len(self.records), 1 << 63, 1 << 62):
            vals |= {v - PAGE, v - 64, v - 1, v, v + 1, v + 64, v + PAGE}
        return sorted(v for v in vals if 0 <= v <= top)


def _paths(obj, here=()):
    yield here
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, here + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, here + (i,))


# --- mutations (all pure: bytes in, bytes out) -----------------------------------

DELETE = object()      # a json_path value: remove the key or list item


def record_blob(rtype: int, rflags: int, payload: bytes) -> bytes:
    head = fmt.RECORD_HEADER.pack(rtype, rflags, len(payload), fmt.checksum(payload))
    return head + payload


def truncate(data: bytes, n: int) -> bytes:
    return data[:n]


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def reseal(data: bytes, *, records: bool = True) -> bytes:
    """data with every checksum recomputed, as far as the trailer lets one find them.

    The header checksum; with records, the checksum of each record the metadata
    region (as the trailer places it) holds; the whole-image checksum; the
    trailer checksum. So a corruption reaches the checks behind the checksums."""
    buf = bytearray(data)
    if len(buf) >= fmt.HEADER_SIZE:
        buf[fmt.HEADER_CSUM_AT:fmt.HEADER_SIZE] = _u64(fmt.checksum(buf[:fmt.HEADER_CSUM_AT]))
    if len(buf) < fmt.HEADER_SIZE + fmt.TRAILER_SIZE:
        return bytes(buf)
    t = len(buf) - fmt.TRAILER_SIZE
    _, _, _, meta_off, meta_len, _, _, _ = fmt.TRAILER.unpack_from(buf, t)
    meta_end = meta_off + meta_len
    if fmt.HEADER_SIZE <= meta_off and meta_end <= t:
        pos = meta_off
        while records and pos + fmt.RECORD_HEADER.size <= meta_end:
            _, _, length, _ = fmt.RECORD_HEADER.unpack_from(buf, pos)
            start = pos + fmt.RECORD_HEADER.size
            if length > meta_end - start:
                break
            buf[pos + 16:pos + 24] = _u64(fmt.checksum(buf[start:start + length]))
            pos = start + length
        image = fmt.checksum(bytes(buf[:fmt.HEADER_SIZE]) + bytes(buf[meta_off:meta_end]))
        buf[t + 40:t + 48] = _u64(image)
    buf[t + fmt.TRAILER.size:] = _u64(fmt.checksum(buf[t:t + fmt.TRAILER.size]))
    return bytes(buf)


def _u64(v: int) -> bytes:
    return v.to_bytes(8, "little")


def set_fields(data: bytes, changes) -> bytes:
    """data with each (Field, value) written (value cut to the field's width), resealed."""
    buf = bytearray(data)
    trailer_moved = False
    for field, value in changes:
        value &= (1 << field.bits) - 1
        buf[field.offset:field.offset + field.size] = value.to_bytes(field.size, "little")
        trailer_moved |= field.name in ("trailer.meta_offset", "trailer.meta_length")
    # Records are resealed where the trailer places them; when a change moved the
    # metadata, resealing "records" there would rewrite bytes that are not records.
    return reseal(bytes(buf), records=not trailer_moved)


def repack(data: bytes, layout: Layout, blobs: list[bytes]) -> bytes:
    """data's header and chunk area with these records as metadata, the trailer to match."""
    meta = b"".join(blobs)
    size = layout.meta_offset + len(meta) + fmt.TRAILER_SIZE
    trailer = fmt.TRAILER.pack(fmt.TRAILER_MAGIC, layout.version, len(blobs),
                               layout.meta_offset, len(meta), size, 0, 0)
    return reseal(data[:layout.meta_offset] + meta + trailer + bytes(8))


def reorder(data: bytes, layout: Layout, order: list[int]) -> bytes:
    """The records in this order (an index may repeat or be left out), re-packed."""
    return repack(data, layout, [layout.records[i].blob for i in order])


def replace_payload(data: bytes, layout: Layout, index: int, payload: bytes) -> bytes:
    blobs = [r.blob for r in layout.records]
    r = layout.records[index]
    blobs[index] = record_blob(r.rtype, r.rflags, payload)
    return repack(data, layout, blobs)


def replace_json(data: bytes, layout: Layout, index: int, path: tuple, value) -> bytes:
    """Record index's JSON with the value at path replaced (DELETE: removed), re-packed."""
    obj = json.loads(layout.records[index].payload)
    if not path:
        obj = value
    else:
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        if value is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return replace_payload(data, layout, index, json.dumps(obj).encode())


def span(stored: int) -> int:
    return stored + (-stored % PAGE)


def rewrite_chunk(data: bytes, layout: Layout, n: int, payload: bytes) -> bytes:
    """Chunk n holding payload instead (1 to its span's bytes, zero-padded), its entry's
    stored and checksum to match, every other checksum recomputed."""
    _, _, off, stored, _, _, _ = layout.chunks[n]
    room = span(stored)
    if not 0 < len(payload) <= room:
        raise ValueError(f"chunk {n} has room for 1 to {room} bytes, not {len(payload)}")
    body = payload.ljust(room, b"\0")
    f = layout.fields
    return set_fields(data[:off] + body + data[off + room:],
                      [(f[f"chunk[{n}].stored"], len(payload)),
                       (f[f"chunk[{n}].csum"], fmt.checksum(body))])


def zstd_frame(content_size: int, rle_size: int = 16, byte: int = 7) -> bytes:
    """A zstd frame that says it holds content_size bytes, and holds one RLE block of
    rle_size copies of byte: 17 bytes that claim anything up to 2**64 - 1."""
    descriptor = 0xE0        # an 8-byte Frame_Content_Size, single segment
    block = 1 | (1 << 1) | (rle_size << 3)    # last block, RLE, its size
    return (b"\x28\xb5\x2f\xfd" + bytes([descriptor]) + content_size.to_bytes(8, "little")
            + block.to_bytes(3, "little") + bytes([byte]))


# --- reading a mutated image as gdbckpt does ------------------------------------

@dataclasses.dataclass
class Outcome:
    status: str                 # "opened", "image_error" or "other"
    stage: str                  # "open", "verify_chunks", "read_chunk[n]" or "done"
    error: BaseException | None = None
    detected: bool = False      # open() or verify_chunks() raised ImageError
    seconds: float = 0.0
    peak: int | None = None     # bytes of Python allocations at the peak (traced runs)
    tb: str = ""


# A restart stub as the planner sees one (its maps, this kernel's vDSO, the vvar/vDSO
# layout of the fuzzed image): a planned dry run needs no process.
STUB_MAPS = parse_maps("""\
100000000000-100000001000 r--p 00000000 fe:00 1   /gdbckpt-stub
100000001000-100000002000 r-xp 00001000 fe:00 1   /gdbckpt-stub
100000003000-100000853000 rw-p 00000000 00:00 0
7fd81bfaa000-7fd81bfae000 r--p 00000000 00:00 0   [vvar]
7fd81bfae000-7fd81bfb0000 r-xp 00000000 00:00 0   [vdso]
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0   [stack]
""")


def plan_for(img: Image) -> None:
    """The plan a restore would run (steps described, as --dry-run prints them): the
    planner too must refuse an absurd image with the project's own errors only."""
    live = planmod.Live(stub_maps=STUB_MAPS, scratch=0x100000003000,
                        vdso=vdsomod.own_vdso(), fd_limit=1024, image_path=img.path,
                        file_problems=planmod.check_files(img),
                        fd_checks=planmod.check_fds(img), same_ids=True,
                        xcr0=live_xcr0(), image_fd=1000, force=True)
    # The saved vDSO claims to be this kernel's, so that the plan goes past it.
    same = msgspec.structs.replace(img, vdso=msgspec.structs.replace(
        img.vdso, hash=vdsomod.digest(live.vdso))) if img.vdso.vdso else img
    for image, fill in ((img, "stub"), (same, "stub"), (same, "procmem")):
        try:
            planmod.build(image, live, "auto", fill=fill).text()
        except CkptError:
            pass


def probe(data: bytes, path: str, *, reraise: bool = False, trace: bool = False) -> Outcome:
    """Write data to path and read it as an image. Anything but ImageError is caught
    into an "other" outcome, or with reraise propagates."""
    with open(path, "wb") as f:
        f.write(data)
    out = Outcome("opened", "done")
    stage = "open"

    def refused(e: ImageError) -> None:
        if out.error is None:
            out.status, out.stage, out.error = "image_error", stage, e
            out.detected = stage in ("open", "verify_chunks")

    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        try:
            img = Image.open(path)
        except ImageError as e:
            refused(e)
            return out
        stage = "verify_chunks"
        try:
            img.verify_chunks()
        except ImageError as e:
            refused(e)
        for n, c in enumerate(img.table):
            stage = f"read_chunk[{n}]"
            try:
                img.read_chunk(c)
            except ImageError as e:
                refused(e)
        if trace:          # the reading is measured; what info imports and reads is not
            out.peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            trace = False
        # What ckpt info shows of an image that opens must not fail either.
        stage = "info"
        info.text(img)
        json.dumps(info.as_json(img))
        stage = "plan"
        plan_for(img)
        return out
    except Exception as e:
        if reraise:
            raise
        out.status, out.stage, out.error, out.tb = "other", stage, e, traceback.format_exc()
        return out
    finally:
        out.seconds = time.perf_counter() - t0
        if trace:
            out.peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()


def problems(kind: str, data: bytes, original: bytes, out: Outcome) -> list[str]:
    """What is wrong with an outcome beyond an exception: missed corruption, time, memory."""
    bad = []
    if kind == "truncate" and len(data) < len(original) and out.stage != "open":
        bad.append(f"a truncation to {len(data)} of {len(original)} bytes opened")
    if kind == "flip" and data != original and not out.detected:
        bad.append("a flipped bit was not detected by open() or verify_chunks()")
    if out.seconds > TIME_LIMIT:
        bad.append(f"took {out.seconds:.2f} s")
    if out.peak is not None and out.peak > len(data) + ALLOC_SLACK:
        bad.append(f"allocated {out.peak} bytes at the peak for a {len(data)}-byte file")
    return bad


# --- random cases (the hypothesis properties draw the same things) ----------------

BIG_NUMBERS = [10 ** 400, -10 ** 400, 2 ** 64, 2 ** 63, 2 ** 63 - 1, -2 ** 63, 2 ** 1024, -1,
               1e308, -0.0, float("inf"), float("-inf"), float("nan")]
WORDS = ["", "anon", "file", "vdso", "restart", "tty", "rip", "\ud800", "é", "0" * 64, "zz"]
SCALARS = BIG_NUMBERS + WORDS + [None, True, False, [], {}, 0, 1, 4096, 0.5, [0, 0], [-1, 1]]


def model_keys() -> list[str]:
    """Every field name of the model (and the list keys of records), for JSON objects."""
    from gdbckpt.image import model
    keys = {"vmas", "files", "fds", "notes"}
    for obj in vars(model).values():
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct):
            keys |= set(obj.__struct_fields__)
    return sorted(keys)


def random_int(rnd: random.Random, layout: Layout, field: Field, original: int) -> int:
    top = (1 << field.bits) - 1
    r = rnd.random()
    if r < 0.3:
        return rnd.choice(layout.interesting(field))
    if r < 0.5:
        return min(max(original + rnd.choice([-1, 1]) * rnd.choice(
            [1, 2, 8, 48, 64, PAGE, rnd.randrange(1, 2 * PAGE)]), 0), top)
    if r < 0.7:
        return min(rnd.randrange(0, 2 * layout.size), top)
    return rnd.randrange(0, top + 1)


def random_json(rnd: random.Random, keys: list[str], depth: int = 0):
    r = rnd.random()
    if depth < 3 and r < 0.25:
        return [random_json(rnd, keys, depth + 1) for _ in range(rnd.randrange(4))]
    if depth < 3 and r < 0.45:
        return {rnd.choice(keys) if rnd.random() < 0.8 else rnd.choice(WORDS):
                random_json(rnd, keys, depth + 1) for _ in range(rnd.randrange(5))}
    return rnd.choice([
        None, True, False, rnd.choice(BIG_NUMBERS), rnd.randrange(-2 ** 70, 2 ** 70),
        rnd.randrange(-5000, 1 << 16), rnd.uniform(-1e20, 1e20), rnd.choice(WORDS),
        "".join(chr(rnd.randrange(1, 0x3000)) for _ in range(rnd.randrange(8)))])


class Fuzzer:
    def __init__(self, original: bytes):
        self.original = original
        self.layout = Layout.parse(original)
        self.paths = self.layout.json_paths()
        self.keys = model_keys()
        lo = self.layout
        # Offsets where a cut or a flip is most telling: the edges of every part.
        edges = {0, 8, fmt.HEADER_SIZE, lo.meta_offset, lo.meta_offset + lo.meta_length,
                 lo.size - fmt.TRAILER_SIZE, lo.size}
        edges |= {r.pos for r in lo.records}
        self.edges = sorted(e for e in edges)
        self.structured = [(0, 64), (fmt.HEADER_CSUM_AT, fmt.HEADER_SIZE),
                           (lo.meta_offset, lo.size)]

    def case(self, kind: str, rnd: random.Random) -> tuple[str, bytes]:
        """A mutation of the image: (what was done, the bytes)."""
        lo, data = self.layout, self.original
        if kind == "truncate":
            if rnd.random() < 0.5:
                n = rnd.randrange(lo.size)
            else:
                n = min(max(rnd.choice(self.edges) + rnd.randrange(-9, 9), 0), lo.size - 1)
            return f"truncate to {n}", truncate(data, n)
        if kind == "flip":
            if rnd.random() < 0.5:
                bit = rnd.randrange(8 * lo.size)
            else:
                a, b = rnd.choice(self.structured)
                bit = rnd.randrange(8 * a, 8 * b)
            return f"flip bit {bit} (byte {bit // 8})", flip(data, bit)
        if kind in ("length", "fields"):
            pool = lo.length_fields if kind == "length" else list(lo.fields.values())
            changes = []
            for _ in range(1 if kind == "length" else rnd.choice([1, 1, 2, 3])):
                f = rnd.choice(pool)
                changes.append((f, random_int(rnd, lo, f, f.get(data))))
            what = ", ".join(f"{f.name}={v}" for f, v in changes)
            return f"set {what}", set_fields(data, changes)
        if kind == "records":
            n = len(lo.records)
            r = rnd.random()
            if r < 0.25:
                order = rnd.sample(range(n), n)
            elif r < 0.5:
                order = sorted(rnd.sample(range(n), rnd.randrange(n)))
            else:
                order = [rnd.randrange(n) for _ in range(rnd.randrange(2 * n + 1))]
            return f"records {order}", reorder(data, lo, order)
        if kind == "json":
            r = rnd.random()
            if r < 0.3:
                i = rnd.choice(lo.json_records)
                value = random_json(rnd, self.keys)
                return (f"record[{i}] payload = {value!r:.200}",
                        replace_payload(data, lo, i, json.dumps(value).encode()))
            if r < 0.35:
                i = rnd.randrange(len(lo.records))
                payload = rnd.randbytes(rnd.randrange(64))
                return f"record[{i}] payload = {payload!r}", replace_payload(data, lo, i, payload)
            i, path = rnd.choice(self.paths)
            r = rnd.random()
            value = (DELETE if path and r < 0.15 else rnd.choice(SCALARS) if r < 0.6
                     else random_json(rnd, self.keys))
            shown = "DELETE" if value is DELETE else f"{value!r:.200}"
            return f"record[{i}]{list(path)} = {shown}", replace_json(data, lo, i, path, value)
        if kind == "chunks":
            n = rnd.choice(lo.packed_chunks)
            size, room = lo.chunks[n][1], span(lo.chunks[n][3])
            r = rnd.random()
            if r < 0.5:
                claim = rnd.choice([0, 1, size - 1, size, size + 1, 2 * size, lo.size, 1 << 20,
                                    1 << 33, 1 << 40, 1 << 62, 1 << 63, (1 << 64) - 1,
                                    rnd.randrange(1 << 64), rnd.randrange(4 * size)])
                rle = rnd.choice([1, 16, PAGE, size, 128 << 10])
                what, payload = f"a frame claiming {claim} bytes, RLE {rle}", zstd_frame(claim, rle)
            elif r < 0.8:
                n_raw = rnd.choice([1, size - PAGE, size - 1, size, size + 1, 2 * size,
                                    rnd.randrange(1, 4 * size)])
                raw = (rnd.randbytes(8) * (n_raw // 8 + 1))[:max(n_raw, 1)]
                what, payload = f"zstd of {len(raw)} bytes", zstandard.compress(raw, 1)[:room]
            else:
                payload = rnd.randbytes(rnd.randrange(1, room + 1))
                what = f"{len(payload)} random bytes"
            return f"chunk[{n}] holds {what}", rewrite_chunk(data, lo, n, payload)
        raise ValueError(kind)


# --- the long run ----------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", type=int, help="replay only this case and show its outcome")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset")
    ap.add_argument("--trace", choices=("none", "sizes", "all"), default="sizes",
                    help="trace Python allocations (5x slower) in the cases of these kinds "
                         "(sizes: length, fields, chunks)")
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where to write the mutated images")
    ap.add_argument("--show", type=int, default=5, help="failures to print in full")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k}; kinds: {', '.join(KINDS)}")

    with tempfile.TemporaryDirectory(prefix="gdbckpt-fuzz-", dir=args.dir) as tmp:
        original = build_image(os.path.join(tmp, "original.img"))
        target = os.path.join(tmp, "case.img")
        fuzzer = Fuzzer(original)
        sane = probe(original, target)
        if sane.status != "opened":
            print(f"the unmutated image does not read back: {sane.error!r}\n{sane.tb}")
            return 2
        traced = {"none": (), "sizes": ("length", "fields", "chunks"), "all": KINDS}[args.trace]
        print(f"image: {len(original)} bytes, {len(fuzzer.layout.records)} records, "
              f"{len(fuzzer.layout.fields)} fields; seed {args.seed}; "
              f"allocations traced for: {', '.join(traced) or 'none'}")

        def run(i: int):
            kind = kinds[i % len(kinds)]
            rnd = random.Random(f"{args.seed}/{i}")
            what, data = fuzzer.case(kind, rnd)
            out = probe(data, target, trace=kind in traced)
            return kind, what, data, out, problems(kind, data, original, out)

        if args.case is not None:
            kind, what, data, out, bad = run(args.case)
            print(f"case {args.case} ({kind}): {what}\n  {out.status} at {out.stage}: "
                  f"{out.error!r}\n  {out.seconds * 1e3:.1f} ms, peak {out.peak}")
            for b in bad:
                print(f"  PROBLEM: {b}")
            print(out.tb, end="")
            return 1 if out.status == "other" or bad else 0

        cols = ("opened", "error@open", "error@verify", "error@read", "other", "problems")
        counts = {k: dict.fromkeys(cols, 0) for k in kinds}
        slowest = dict.fromkeys(kinds, 0.0)
        failures = []
        t0 = time.perf_counter()
        for i in range(args.cases):
            kind, what, data, out, bad = run(i)
            c = counts[kind]
            if out.status == "opened":
                c["opened"] += 1
            elif out.status == "other":
                c["other"] += 1
            else:
                stage = out.stage.split("[")[0].replace("_chunks", "").replace("_chunk", "")
                c[f"error@{stage}"] += 1
            if bad:
                c["problems"] += 1
            slowest[kind] = max(slowest[kind], out.seconds)
            if out.status == "other" or bad:
                failures.append((i, kind, what, out, bad))
            if (i + 1) % 10_000 == 0:
                el = time.perf_counter() - t0
                nbad = sum(c["other"] + c["problems"] for c in counts.values())
                print(f"{i + 1:>9} cases  {el:7.1f} s  {(i + 1) / el:6.0f}/s  failures {nbad}",
                      flush=True)
        elapsed = time.perf_counter() - t0

    print(f"\n{args.cases} cases in {elapsed:.1f} s (seed {args.seed})\n")
    print(f"{'kind':<9}{'cases':>8}" + "".join(f"{c:>14}" for c in cols) + f"{'slowest':>10}")
    total = dict.fromkeys(cols, 0)
    for k in kinds:
        n = sum(counts[k][c] for c in cols[:5])
        print(f"{k:<9}{n:>8}" + "".join(f"{counts[k][c]:>14}" for c in cols)
              + f"{slowest[k] * 1e3:>8.1f}ms")
        for c in cols:
            total[c] += counts[k][c]
    print(f"{'total':<9}{args.cases:>8}" + "".join(f"{total[c]:>14}" for c in cols))
    if not failures:
        print("\nno exception other than ImageError, no undetected corruption")
        return 0
    groups: dict[tuple, list] = {}
    for failure in failures:
        _, kind, _, out, bad = failure
        exc = type(out.error).__name__ if out.status == "other" else "ImageError/none"
        key = (kind, exc, out.stage.split("[")[0], tuple(b.split(" ")[0] for b in bad))
        groups.setdefault(key, []).append(failure)
    replay = f"--seed {args.seed}" + ("" if kinds == list(KINDS) else f" --kinds {args.kinds}")
    print(f"\n{len(failures)} failing cases, {len(groups)} distinct (kind, exception, stage, "
          f"problem); replay one with {replay} --case N:")
    for key, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(members):>7}  {key}")
    for members in list(groups.values())[:args.show]:
        i, kind, what, out, bad = members[0]
        print(f"\n--- case {i} ({kind}): {what}")
        print(f"    {out.status} at {out.stage}: {out.error!r}")
        for b in bad:
            print(f"    PROBLEM: {b}")
        if out.tb:
            print("    " + out.tb.rstrip().replace("\n", "\n    "))
    return 1


if __name__ == "__main__":
    sys.exit(main())
