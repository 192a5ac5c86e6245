"""Read and check an image. Nothing is trusted before its checksum and bounds are checked.

Image.open() reads header, trailer and metadata (a few KiB to MiB) and checks
all of it; chunk data is read on demand, and verify_chunks() checks every
chunk's checksum without restoring.
"""

from __future__ import annotations

import bisect
import os
import stat
import weakref

import msgspec

from ..engine.ptrace import USER_REGS
from ..errors import ImageError
from ..linux import EM_X86_64, PAGE_SIZE
from ..maps import Kind
from . import format as fmt
from .model import FdInfo, FileRef, Member, ProcessInfo, ThreadState, VdsoInfo, Vma, decode

KINDS = {k.value for k in Kind}


VERIFY_PIECE = 1 << 20


class Chunk(msgspec.Struct, frozen=True):
    vaddr: int
    size: int
    offset: int
    stored: int
    flags: int              # fmt.ChunkFlags
    codec: int              # fmt.Codec
    csum: int

    @property
    def end(self) -> int:
        return self.vaddr + self.size

    @property
    def span(self) -> int:
        """Bytes the chunk occupies in the image, padding included."""
        return self.stored + (-self.stored % fmt.IMAGE_PAGE_SIZE)


class Image(msgspec.Struct, weakref=True, eq=False):   # weakref: the fd's finalizer
    path: str
    version: int
    created_ns: int
    flags: int              # fmt.ImageFlags
    file_size: int
    meta_offset: int
    process: ProcessInfo
    threads: list[ThreadState]
    vmas: list[Vma]
    files: list[FileRef]
    chunks: list[Chunk]       # memory, in address order within each mapping
    table: list[Chunk]        # every chunk, as the CHUNKS record lists them
    vdso: VdsoInfo
    fds: list[FdInfo]
    notes: list[str]
    # The other processes of a saved tree, in the order a restore makes them: each
    # with its own image (sharing this one's file), or None for a zombie.
    members: list[tuple[Member, Image | None]] = msgspec.field(default_factory=list)
    _starts: list[int] | None = None
    # The one open file everything is read from (and a restore's stub inherits): what was
    # checked is what is restored, whatever happens to the path meanwhile.
    fd: int = -1

    @classmethod
    def open(cls, path: str) -> Image:
        return _Loader(path).load()

    @property
    def living(self) -> list[Image]:
        """This image, and that of every other living process of its tree."""
        return [self] + [m for _, m in self.members if m is not None]

    def free_fd_below(self, limit: int) -> int:
        """The highest descriptor number below limit that no process of the image uses."""
        taken = {f.fd for one in self.living for f in one.fds}
        number = limit - 1
        while number in taken:
            number -= 1
        return number

    @property
    def compressed(self) -> bool:
        return bool(self.flags & fmt.ImageFlags.COMPRESSED)

    def fd_chunks(self, f: FdInfo) -> list[Chunk]:
        """The FILE_DATA chunks holding the bytes of a saved descriptor's file."""
        return [] if f.data is None else self.table[f.data[0]:f.data[0] + f.data[1]]

    def chunks_in(self, start: int, end: int) -> list[Chunk]:
        """The memory chunks that overlap [start, end), in address order.

        Chunks never overlap one another, so a binary search finds the first.
        """
        if self._starts is None:
            self.chunks.sort(key=lambda c: c.vaddr)
            self._starts = [c.vaddr for c in self.chunks]
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        out = []
        for c in self.chunks[i:]:
            if c.vaddr >= end:
                break
            if c.end > start:
                out.append(c)
        return out

    def read_chunk(self, chunk: Chunk, fd: int | None = None) -> bytes:
        """The chunk's memory bytes, checked and decompressed."""
        if chunk.flags & fmt.ChunkFlags.ZERO:
            return bytes(chunk.size)
        try:
            raw = os.pread(self.fd if fd is None else fd, chunk.span, chunk.offset)
        except OSError as e:
            raise ImageError(f"'{self.path}' cannot be read: {e.strerror}") from None
        if len(raw) != chunk.span or fmt.checksum(raw) != chunk.csum:
            raise ImageError(f"'{self.path}': chunk at {chunk.vaddr:#x} (image offset "
                             f"{chunk.offset:#x}) is corrupt: checksum mismatch")
        data = raw[:chunk.stored]
        if chunk.codec == fmt.Codec.ZSTD:
            data = _decompress(data, chunk, self.path)
        return data

    def verify_chunks(self, progress=None, fd: int | None = None) -> int:
        """Check every chunk's checksum (reading fd, a duplicate of the image's, if given);
        returns the bytes checked."""
        total = 0
        for c in self.table:
            if c.flags & fmt.ChunkFlags.ZERO:
                continue
            self._check_span(self.fd if fd is None else fd, c)
            total += c.span
            if progress:
                progress(total)
        return total

    def _check_span(self, fd: int, c: Chunk) -> None:
        h = fmt.Hasher()
        off, left = c.offset, c.span
        while left:
            try:
                # 1 MiB pieces: malloc then reuses the same heap memory (bigger ones are
                # fresh mmaps, page-faulted each time): 512 MiB in 50 ms rather than 60-80.
                piece = os.pread(fd, min(left, VERIFY_PIECE), off)
            except OSError as e:
                raise ImageError(f"'{self.path}' cannot be read: {e.strerror}") from None
            if not piece:
                raise ImageError(f"'{self.path}' is truncated inside the chunk at {c.vaddr:#x}")
            h.update(piece)
            off += len(piece)
            left -= len(piece)
        if h.intdigest() != c.csum:
            raise ImageError(f"'{self.path}': chunk at {c.vaddr:#x} (image offset "
                             f"{c.offset:#x}) is corrupt: checksum mismatch")


def _open(path: str) -> int:
    try:
        # Never blocking: a FIFO given as an image is refused, not waited on.
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise ImageError(f"cannot open '{path}': {e.strerror}") from None


def _decompress(data: bytes, chunk: Chunk, path: str) -> bytes:
    """At most chunk.size bytes out, whatever size the frame itself claims; memory grows
    with what the frame really holds, not with the size the chunk claims."""
    import io

    import zstandard
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            while len(out) <= chunk.size:
                piece = reader.read(min(1 << 16, chunk.size + 1 - len(out)))
                if not piece:
                    break
                out += piece
    except zstandard.ZstdError as e:
        raise ImageError(f"'{path}': chunk at {chunk.vaddr:#x} does not decompress: {e}") from None
    if len(out) != chunk.size:
        raise ImageError(f"'{path}': chunk at {chunk.vaddr:#x} decompresses to {len(out)} "
                         f"bytes, not {chunk.size}")
    return bytes(out)


class _Loader:
    def __init__(self, path: str):
        self.path = path
        self.where = f"'{path}'"

    def fail(self, what: str) -> ImageError:
        return ImageError(f"{self.where} {what}")

    def load(self) -> Image:
        fd = _open(self.path)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self.fail("is not a regular file")
            size = st.st_size
            if size < fmt.HEADER_SIZE + fmt.TRAILER_SIZE:
                head = os.pread(fd, 8, 0)
                if head == fmt.MAGIC:
                    raise self.fail(f"is truncated ({size} bytes): the save did not finish")
                raise self.fail("is not a gdbckpt image (too small)")
            header = os.pread(fd, fmt.HEADER_SIZE, 0)
            version, flags, created = self._check_header(header)
            self.version = version
            trailer = os.pread(fd, fmt.TRAILER_SIZE, size - fmt.TRAILER_SIZE)
            nrec, meta_off, meta_len, image_csum = self._check_trailer(trailer, size)
            meta = os.pread(fd, meta_len, meta_off)
            if len(meta) != meta_len:
                raise self.fail("is truncated in its metadata")
            if fmt.checksum(header + meta) != image_csum:
                # Name the record that is wrong when there is one.
                self._records(meta, nrec)
                raise self.fail("is corrupt: whole-image checksum mismatch (header or metadata)")
            records = self._records(meta, nrec)
            img = self._tree(records, size, meta_off)
        except OSError as e:
            os.close(fd)
            raise self.fail(f"cannot be read: {e.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        for one in img.living:
            one.version, one.flags, one.created_ns = version, flags, created
            one.fd = fd
        weakref.finalize(img, os.close, fd)
        return img

    def _check_header(self, header: bytes) -> tuple[int, int, int]:
        magic, version, hsize, machine, page, algo, flags, created = fmt.HEADER.unpack_from(header)
        if magic != fmt.MAGIC:
            raise self.fail("is not a gdbckpt image (no GDBCKPT magic at the start)")
        if version > fmt.FORMAT_VERSION:
            raise self.fail(f"has format version {version}, newer than this gdbckpt's "
                            f"version {fmt.FORMAT_VERSION}: upgrade gdbckpt to read it")
        if version < 1:
            raise self.fail(f"has an invalid format version {version}")
        stored = int.from_bytes(header[fmt.HEADER_CSUM_AT:], "little")
        if fmt.checksum(header[:fmt.HEADER_CSUM_AT]) != stored:
            raise self.fail("is corrupt: header checksum mismatch")
        if hsize != fmt.HEADER_SIZE or page != fmt.IMAGE_PAGE_SIZE:
            raise self.fail(f"has an unsupported layout (header {hsize}, page size {page})")
        if machine != EM_X86_64:
            raise self.fail(f"is for another architecture (ELF machine {machine}); "
                            "only x86-64 images can be restored here")
        if version < fmt.OLDEST_VERSION:
            raise self.fail(f"was made by {fmt.MADE_BY[version]} (image format {version}, "
                            "registers stored under GDB's names); this gdbckpt reads format "
                            f"{fmt.FORMAT_VERSION}: restore it with {fmt.MADE_BY[version]}, "
                            "or save the program again")
        if algo not in fmt.CSUM_ALGOS:
            raise self.fail(f"uses an unknown checksum algorithm {algo}")
        if flags & ~int(fmt.ImageFlags.COMPRESSED):
            raise self.fail(f"has unknown header flags {flags:#x}")
        return version, flags, created

    def _check_trailer(self, trailer: bytes, size: int) -> tuple[int, int, int, int]:
        magic, version, nrec, meta_off, meta_len, fsize, image_csum, _ = \
            fmt.TRAILER.unpack_from(trailer)
        if magic != fmt.TRAILER_MAGIC:
            raise self.fail("is truncated or unfinished: no trailer at its end")
        stored = int.from_bytes(trailer[fmt.TRAILER.size:], "little")
        if fmt.checksum(trailer[:fmt.TRAILER.size]) != stored:
            raise self.fail("is corrupt: trailer checksum mismatch")
        if version != self.version:
            raise self.fail(f"is corrupt: its trailer says format version {version}, its "
                            f"header {self.version}")
        if fsize != size:
            raise self.fail(f"has the wrong size: {size} bytes, its trailer says {fsize}")
        if (meta_off < fmt.HEADER_SIZE or meta_off % fmt.IMAGE_PAGE_SIZE
                or meta_off + meta_len + fmt.TRAILER_SIZE != size):
            raise self.fail("is corrupt: its trailer places the metadata outside the file")
        return nrec, meta_off, meta_len, image_csum

    def _records(self, meta: bytes, nrec: int) -> list[tuple[int, int, bytes]]:
        out, pos = [], 0
        while pos < len(meta):
            if len(meta) - pos < fmt.RECORD_HEADER.size:
                raise self.fail(f"is corrupt: metadata ends inside record {len(out)}")
            rtype, rflags, length, csum = fmt.RECORD_HEADER.unpack_from(meta, pos)
            pos += fmt.RECORD_HEADER.size
            name = _record_name(rtype)
            if length > len(meta) - pos:
                raise self.fail(f"is corrupt: record {len(out)} ({name}) is longer than the "
                                "metadata that holds it")
            payload = meta[pos:pos + length]
            pos += length
            if fmt.checksum(payload) != csum:
                raise self.fail(f"is corrupt: record {len(out)} ({name}) checksum mismatch")
            out.append((rtype, rflags, payload))
        if len(out) != nrec:
            raise self.fail(f"is corrupt: {len(out)} metadata records, the trailer says {nrec}")
        return out

    def _tree(self, records, size: int, meta_off: int) -> Image:
        """The root's image, with one per MEMBER group after it; the CHUNKS record, the
        last, serves them all, each member owning a range of it."""
        if not records or records[-1][0] != fmt.RecordType.CHUNKS:
            raise self.fail("is corrupt: its CHUNKS record is not the last one")
        table = self._chunks((len(records) - 1, records[-1][2]), meta_off)
        groups: list[tuple[int, list]] = [(-1, [])]
        for i, rec in enumerate(records[:-1]):
            if rec[0] == fmt.RecordType.MEMBER:
                groups.append((i, []))
            else:
                groups[-1][1].append((i, rec))
        members = [(decode(Member, records[i][2], f"{self.where} record {i} (MEMBER)"), recs)
                   for i, recs in groups[1:]]
        if len(members) > MAX_MEMBERS:
            raise self.fail(f"is corrupt: a tree of {len(members) + 1} processes, more than "
                            f"a restore makes ({MAX_MEMBERS + 1})")
        for m, _ in members:
            self._check_member(m)
        owned = self._member_ranges([m for m, _ in members], table)
        earlier: set[int] = set()
        root = self._build(groups[0][1], table, set(range(len(table))) - owned, size, meta_off)
        self._check_shared(root, earlier)
        for member, recs in members:
            first, count = member.chunks
            known = any(r[0] in fmt.RECORD_NAMES
                        or not r[1] & fmt.RecordFlags.OPTIONAL for _, r in recs)
            image = self._build(recs, table, set(range(first, first + count)), size, meta_off,
                                f" (process {member.pid})") if known else None
            if (image is None) != (member.exit_status is not None) or (image is None and count):
                raise self.fail(f"is corrupt: process {member.pid} of its tree is "
                                f"{'a zombie with' if image else 'alive without'} records")
            if image is not None:
                if image.process.pid != member.pid or image.threads[0].tid != member.pid:
                    raise self.fail(f"is corrupt: the records of process {member.pid} of its "
                                    f"tree are process {image.process.pid}'s")
                self._check_shared(image, earlier)
            root.members.append((member, image))
        return root

    def _check_member(self, m: Member) -> None:
        """Ids a kernel could give, and a status a process can end with."""
        if not all(0 < x <= PID_MAX for x in (m.pid, m.ppid)) or \
                not all(0 <= x <= PID_MAX for x in (m.pgid, m.sid)):
            raise self.fail(f"is corrupt: process {m.pid} of its tree has ids out of range")
        if m.exit_status is not None and not _wait_status(m.exit_status):
            raise self.fail(f"is corrupt: zombie {m.pid} has status {m.exit_status:#x}, which "
                            "no process ends with")

    def _check_shared(self, img: Image, earlier: set[int]) -> None:
        """A descriptor shared with another process names one restored before it."""
        for f in img.fds:
            if f.shared_from is not None and (len(f.shared_from) != 2 or f.shared_from[0]
                                              not in earlier
                                              or not 0 <= f.shared_from[1] < 1 << 31):
                raise self.fail(f"is corrupt: process {img.process.pid}'s fd {f.fd} shares "
                                "the descriptor of no process restored before it")
        earlier.add(img.process.pid)

    def _member_ranges(self, members: list[Member], table: list[Chunk]) -> set[int]:
        owned: set[int] = set()
        for m in members:
            if len(m.chunks) != 2 or m.chunks[0] < 0 or m.chunks[1] < 0 \
                    or sum(m.chunks) > len(table):
                raise self.fail(f"is corrupt: process {m.pid} of its tree names chunks it "
                                "does not have")
            mine = set(range(m.chunks[0], sum(m.chunks)))
            if mine & owned:
                raise self.fail(f"is corrupt: process {m.pid} of its tree shares chunks")
            owned |= mine
        return owned

    def _build(self, records, table: list[Chunk], own: set[int], size: int,
               meta_off: int, who: str = "") -> Image:
        where = self.where
        self.where = f"{where}{who}"
        try:
            return self._build_one(records, table, own, size, meta_off)
        finally:
            self.where = where

    def _build_one(self, records, table, own, size, meta_off) -> Image:
        found: dict[int, list] = {t: [] for t in fmt.RECORD_NAMES}
        for i, (rtype, rflags, payload) in records:
            if rtype not in fmt.RECORD_NAMES:
                if rflags & fmt.RecordFlags.OPTIONAL:
                    continue
                raise self.fail(f"has record {i} of unknown type {rtype}: it was written by a "
                                "newer gdbckpt; upgrade to restore it")
            found[rtype].append((i, payload))
        if found[fmt.RecordType.CHUNKS]:
            raise self.fail("is corrupt: its CHUNKS record is not the last one")
        for need in (fmt.RecordType.PROCESS, fmt.RecordType.VMAS, fmt.RecordType.THREAD):
            if not found[need]:
                raise self.fail(f"is corrupt: it has no {fmt.RECORD_NAMES[need]} record")
        for rtype, recs in found.items():
            if rtype != fmt.RecordType.THREAD and len(recs) > 1:
                raise self.fail(f"is corrupt: it has {len(recs)} {fmt.RECORD_NAMES[rtype]} "
                                "records, not one")

        def one(rtype, cls):
            (i, payload), *_ = found[rtype]
            return decode(cls, payload, f"{self.where} record {i} ({fmt.RECORD_NAMES[rtype]})")

        def listed(rtype, key, cls):
            if not found[rtype]:
                return []
            i, payload = found[rtype][0]
            where = f"{self.where} record {i} ({fmt.RECORD_NAMES[rtype]})"
            holder = decode(_ListOf.make(key, cls), payload, where)
            return getattr(holder, key)

        process = one(fmt.RecordType.PROCESS, ProcessInfo)
        threads = [decode(ThreadState, p, f"{self.where} record {i} (THREAD)")
                   for i, p in found[fmt.RecordType.THREAD]]
        vmas = listed(fmt.RecordType.VMAS, "vmas", Vma)
        files = listed(fmt.RecordType.FILES, "files", FileRef)
        fds = listed(fmt.RecordType.FDS, "fds", FdInfo)
        notes = listed(fmt.RecordType.NOTES, "notes", str)
        vdso = one(fmt.RecordType.VDSO, VdsoInfo) if found[fmt.RecordType.VDSO] else VdsoInfo()
        chunks = [c for i, c in enumerate(table)
                  if i in own and not c.flags & fmt.ChunkFlags.FILE_DATA]
        self._check_vmas(vmas, files, chunks)
        self._check_process(process)
        self._check_threads(threads)
        self._check_vdso(vdso)
        self._check_fd_data(fds, table)
        return Image(path=self.path, version=0, created_ns=0, flags=fmt.ImageFlags.NONE,
                     file_size=size, meta_offset=meta_off, process=process, threads=threads,
                     vmas=vmas, files=files, chunks=chunks, table=table, vdso=vdso, fds=fds,
                     notes=notes)

    def _chunks(self, rec, meta_off: int) -> list[Chunk]:
        i, table = rec
        if len(table) % fmt.CHUNK_ENTRY.size:
            raise self.fail(f"is corrupt: record {i} (CHUNKS) has a partial entry")
        chunks, expect = [], fmt.HEADER_SIZE
        for n, entry in enumerate(fmt.CHUNK_ENTRY.iter_unpack(table)):
            vaddr, csize, off, stored, flags, codec, csum = entry
            where = f"chunk {n} at {vaddr:#x}"
            if csize > fmt.MAX_CHUNK_SIZE:
                raise self.fail(f"is corrupt: {where} claims {csize} bytes, more than a chunk "
                                f"holds ({fmt.MAX_CHUNK_SIZE})")
            if flags & fmt.ChunkFlags.FILE_DATA and flags & fmt.ChunkFlags.ZERO:
                raise self.fail(f"is corrupt: {where} is both file data and zero pages")
            pages = not flags & fmt.ChunkFlags.FILE_DATA
            if (pages and (vaddr % PAGE_SIZE or csize % PAGE_SIZE)) or csize == 0 \
                    or vaddr + csize > 1 << 64:
                raise self.fail(f"is corrupt: {where} is not whole pages")
            if flags & ~int(fmt.ChunkFlags.DIRTY | fmt.ChunkFlags.ZERO | fmt.ChunkFlags.FILE_DATA):
                raise self.fail(f"is corrupt: {where} has unknown flags {flags:#x}")
            if codec not in fmt.CODEC_NAMES:
                raise self.fail(f"is corrupt: {where} has unknown codec {codec}")
            c = Chunk(vaddr, csize, off, stored, flags, codec, csum)
            if c.flags & fmt.ChunkFlags.ZERO:
                if off or stored:
                    raise self.fail(f"is corrupt: zero {where} claims stored bytes")
            else:
                # In table order, each after the one before; a gap between them is a hole
                # (zero pages the process wrote itself, punched out: engine/selfdump.py).
                if off < expect or off % fmt.IMAGE_PAGE_SIZE:
                    raise self.fail(f"is corrupt: {where} is at image offset {off:#x}, "
                                    f"not a page boundary at or after {expect:#x}")
                if stored == 0 or (codec == fmt.Codec.NONE and stored != csize):
                    raise self.fail(f"is corrupt: {where} stores {stored} bytes for {csize}")
                expect = off + c.span
                if expect > meta_off:
                    raise self.fail(f"is corrupt: {where} runs into the metadata")
            chunks.append(c)
        return chunks

    def _check_process(self, p: ProcessInfo) -> None:
        if not 0 <= p.pdeathsig < NSIG:
            raise self.fail(f"is corrupt: a parent-death signal numbered {p.pdeathsig}")
        for i, pair in enumerate(p.auxv):
            if len(pair) != 2 or not all(0 <= x < 1 << 64 for x in pair):
                raise self.fail(f"is corrupt: auxv entry {i} is not a (type, value) pair")
        bounded = [("resource limit", r.resource, RLIMIT_COUNT) for r in p.rlimits] + \
                  [("interval timer", t.which, ITIMER_COUNT) for t in p.itimers] + \
                  [("signal action", a.sig, NSIG) for a in p.sigactions]
        for what, value, limit in bounded:
            if not 0 <= value < limit:
                raise self.fail(f"is corrupt: a {what} numbered {value}")

    def _check_threads(self, threads: list[ThreadState]) -> None:
        for t in threads:
            missing = [r for r in USER_REGS if r not in t.regs or not 0 <= t.regs[r] < 1 << 64]
            if missing:
                raise self.fail(f"is corrupt: thread {t.tid} lacks register "
                                f"{', '.join(missing[:3])}")
            x = t.xstate
            if x is not None and (len(x.legacy) != 464 or any(
                    not k.isdigit() or not 2 <= int(k) < 64 or not x.in_use >> int(k) & 1
                    or len(v) > 1 << 16 for k, v in x.components.items())):
                raise self.fail(f"is corrupt: thread {t.tid}'s extended registers are not "
                                "laid out as XSAVE components")

    def _check_vdso(self, vdso: VdsoInfo) -> None:
        for name in ("vdso", "vvar", "vvar_vclock", "proxy", "mark"):
            r = getattr(vdso, name)
            if r is not None and (len(r) != 2 or not 0 <= r[0] < r[1] < 1 << 64
                                  or r[0] % PAGE_SIZE or r[1] % PAGE_SIZE):
                raise self.fail(f"is corrupt: its VDSO record's {name} is not a page range")

    def _check_fd_data(self, fds: list[FdInfo], table: list[Chunk]) -> None:
        for f in fds:
            if f.data is None:
                continue
            if len(f.data) != 2 or f.data[0] < 0 or f.data[1] < 0 \
                    or f.data[0] + f.data[1] > len(table) \
                    or any(not c.flags & fmt.ChunkFlags.FILE_DATA
                           for c in table[f.data[0]:f.data[0] + f.data[1]]):
                raise self.fail(f"is corrupt: fd {f.fd} names file data it does not have")

    def _check_vmas(self, vmas: list[Vma], files: list[FileRef], chunks: list[Chunk]) -> None:
        prev_end = 0
        for n, v in enumerate(vmas):
            if v.start % PAGE_SIZE or v.end % PAGE_SIZE or v.start >= v.end or v.start < prev_end:
                raise self.fail(f"is corrupt: mapping {n} ({v.start:#x}-{v.end:#x}) is not a "
                                "page range in address order")
            if not 0 <= v.offset < 1 << 47:
                raise self.fail(f"is corrupt: mapping {n} has offset {v.offset:#x}")
            if not -1 <= v.file < len(files):
                raise self.fail(f"is corrupt: mapping {n} names file {v.file} of {len(files)}")
            if v.kind not in KINDS:
                raise self.fail(f"has mapping {n} of unknown kind '{v.kind}': it was written by "
                                "a newer gdbckpt; upgrade to restore it")
            prev_end = v.end
        starts = [v.start for v in vmas]
        for c in chunks:
            k = bisect.bisect_right(starts, c.vaddr) - 1
            if k < 0 or c.end > vmas[k].end:
                raise self.fail(f"is corrupt: chunk at {c.vaddr:#x} lies outside every mapping")


RLIMIT_COUNT, ITIMER_COUNT, NSIG = 16, 3, 65
PID_MAX = 1 << 22           # the kernel's largest pid_max
MAX_MEMBERS = 32767
# Signals whose default action does not end a process: no zombie died of one.
NOT_FATAL = {17, 18, 19, 20, 21, 22, 23, 28}


def _wait_status(status: int) -> bool:
    """Whether wait() could give status for a process that ended."""
    sig = status & 0x7f
    if sig == 0:
        return 0 <= status <= 0xff00 and not status & 0xff
    return 0 < sig < NSIG and sig not in NOT_FATAL and status & ~0xff == 0


def _record_name(rtype: int) -> str:
    return fmt.RECORD_NAMES.get(rtype) or f"type {rtype}"


class _ListOf:
    """A record payload that is {"<key>": [cls, ...]}."""
    _cache: dict = {}

    @classmethod
    def make(cls, key: str, item):
        if (key, item) not in cls._cache:
            cls._cache[(key, item)] = msgspec.defstruct(f"_{key}", [(key, list[item])])
        return cls._cache[(key, item)]
