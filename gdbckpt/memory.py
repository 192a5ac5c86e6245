"""Copy a stopped process's memory into an image.

Reads memory in large pieces into page-aligned buffers (process_vm_readv, or
/proc/PID/mem where that fails: GDB's process is the tracer, so it may do
both), skips pages that are not present (pagemap) and pages that are all
zero, and hands runs of pages to the image writer. No Python loop runs per
page: pagemap flags and zero pages are handled as byte strings and by a C
helper.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import queue
import re
import threading
import time

import msgspec

from . import native
from .errors import SaveError
from .image.format import ChunkFlags
from .image.writer import Prepared
from .libc import Iovec, libc
from .linux import PAGE_SHIFT, PAGE_SIZE, page_up
from .maps import Kind, Mapping
from .procfs import DIRTY_TABLE, PRESENT_TABLE, read_pagemap, runs

READ_PIECE = 4 << 20     # one pread; 1-8 MiB pieces read fastest here


class DumpStats(msgspec.Struct):
    mapped: int = 0      # bytes of mappings considered
    read: int = 0        # bytes read from the process
    stored: int = 0      # bytes of non-zero pages handed to the writer
    zero: int = 0        # bytes skipped as all-zero
    unreadable: int = 0  # bytes that could not be read (past a file's end, or gone)


class Region(msgspec.Struct):
    """Pages of one mapping to read, and which of them differ from the backing file."""
    mapping: Mapping
    first: int           # page index within the mapping
    count: int
    dirty: bytes         # one 0/1 byte per page


def regions(pid: int, m: Mapping, file_size: int | None) -> list[Region]:
    """What to read of one mapping."""
    npages = m.size >> PAGE_SHIFT
    if m.kind == Kind.VDSO:
        return [Region(m, 0, npages, b"\1" * npages)]
    if m.kind == Kind.SHMEM:
        # Shared memory holds pages this process never touched (written by
        # another process, or through a descriptor): ask the object itself.
        return [Region(m, s, n, b"\1" * n) for s, n in shmem_runs(pid, m)]
    if m.kind == Kind.ANON and m.resident == 0:
        return []       # nothing present or swapped: no need to walk a large reservation
    if m.kind == Kind.ANON and m.resident == m.size:
        # Every page present or swapped (smaps): no pagemap to read (~10 ms per GiB).
        return [Region(m, 0, npages, b"\1" * npages)]
    flags = read_pagemap(pid, m.start, m.end)
    if m.kind == Kind.ANON:
        present = flags.translate(PRESENT_TABLE)
        return [Region(m, s, n, b"\1" * n) for s, n in runs(present)]
    # File-backed: keep every page the file has, so the image stands on its
    # own; note which pages are private copies (the only ones a restore over
    # the unchanged file must write).
    dirty = flags.translate(DIRTY_TABLE)
    if m.shared:
        dirty = bytes(npages)
    if file_size is None:
        file_size = mapped_file_size(pid, m)
    if file_size is None:
        # A deleted file whose size cannot be learnt: every page; the reader
        # skips those past the end of the file.
        return [Region(m, 0, npages, dirty)]
    in_file = max(0, min(npages, (page_up(file_size) - m.offset) >> PAGE_SHIFT))
    return [Region(m, 0, in_file, dirty[:in_file])] if in_file else []


def _map_file(pid: int, m: Mapping) -> str:
    return f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"


def mapped_file_size(pid: int, m: Mapping) -> int | None:
    """The size of the file behind a mapping, even a deleted one (needs CAP_SYS_ADMIN or
    CAP_CHECKPOINT_RESTORE to follow map_files); None if it cannot be learnt."""
    try:
        return os.stat(_map_file(pid, m)).st_size
    except OSError:
        return None


def shmem_runs(pid: int, m: Mapping) -> list[tuple[int, int]]:
    """(first page, count) of the pages of a shared memory mapping that hold data.

    SEEK_DATA/SEEK_HOLE on the object through map_files where permitted;
    otherwise every page (reading a hole then allocates it, as a read through
    the mapping would).
    """
    npages = m.size >> PAGE_SHIFT
    try:
        fd = os.open(_map_file(pid, m), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return [(0, npages)]
    out = []
    try:
        pos, end = m.offset, m.offset + m.size
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:        # ENXIO: no data after pos
                break
            if data >= end:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            first = (data - m.offset) >> PAGE_SHIFT
            last = (page_up(hole) - m.offset) >> PAGE_SHIFT
            out.append((first, min(last, npages) - first))
            pos = hole
    finally:
        os.close(fd)
    return out


MADV_POPULATE_WRITE = 23
SPARE_BUFFERS = 4           # kept for the next dumper: 16 MiB at the most


class _Buffer:
    """A page-aligned read buffer (an mmap), with its address for the C helpers.

    Its pages are populated as reads first reach them (ready()), in one call each
    time: the fault each fresh page takes on its first write costs these VMs more
    than its copy (a 10 MiB save in GDB read 10 MiB in 10 ms, mostly faults)."""

    def __init__(self):
        self.mem = mmap.mmap(-1, READ_PIECE)
        self.addr = native.buffer_address(self.mem)
        self.view = memoryview(self.mem)
        self.populated = 0

    def ready(self, size: int) -> None:
        """Its first size bytes present (a kernel without MADV_POPULATE_WRITE faults)."""
        if size > self.populated:
            try:
                self.mem.madvise(MADV_POPULATE_WRITE, self.populated, size - self.populated)
            except OSError:
                pass
            self.populated = size


# Buffers of dumpers that have closed, for the next: GDB saves again and again in one
# process (and gdbckpt-batch --every), and a buffer used before has its pages.
_spare: list[_Buffer] = []


def _buffer() -> _Buffer:
    try:
        return _spare.pop()
    except IndexError:
        return _Buffer()




class MemoryDumper:
    """Reads memory and finds zero pages in this thread; another checksums and writes the
    image (compressing first, when asked), so that the two overlap (two buffers take
    turns). The work is split so that the halves take about as long: for 512 MiB
    here, reading 0.081 s and zero pages 0.006; checksums and writing 0.079 (with the
    checksums on the reading side, that side took 0.111 s and the save 0.132).

    Reads use process_vm_readv (6 GB/s here against 3.5 for /proc/PID/mem);
    /proc/PID/mem, which may read what the process may not (PROT_NONE), takes
    over where it fails."""

    def __init__(self, pid: int, writer, patches: dict[int, bytes] | None = None):
        """patches: address -> original bytes to put back over what the read finds there
        (breakpoints GDB keeps inserted while the process is stopped)."""
        self.pid = pid
        self.writer = writer
        self.patches = sorted((patches or {}).items())
        self.stats = DumpStats()
        self.vm_readv = True
        self.read_seconds = 0.0
        self.scan_seconds = 0.0
        self.write_seconds = 0.0
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SaveError(f"cannot open /proc/{pid}/mem: {e.strerror}") from None
        self.free: queue.Queue[_Buffer] = queue.Queue()
        for _ in range(2):
            self.free.put(_buffer())
        self.work: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write_loop, name="gdbckpt-writer",
                                       daemon=True)
        self.thread.start()

    def switch(self, pid: int) -> None:
        """Read from another process from now on (a snapshot of the first), through
        /proc/PID/mem only: process_vm_readv pins pages, and pinning a page a fork
        shares makes the kernel copy it (GUP unsharing): slower, and memory for
        nothing."""
        self.vm_readv = False
        try:
            fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SaveError(f"cannot open /proc/{pid}/mem: {e.strerror}") from None
        os.close(self.fd)
        self.pid, self.fd = pid, fd

    def close(self) -> None:
        """Wait for the writes queued so far; raises what the writer thread failed with.

        The wait outlasts a Ctrl-C (raised again after it): the image file may
        only be closed and removed once no thread writes to it.
        """
        self.work.put(None)
        interrupted = None
        while self.thread.is_alive():
            try:
                self.thread.join()
            except KeyboardInterrupt as e:
                interrupted = e
        os.close(self.fd)
        # No thread writes from them any more (one still in a read that failed is lost).
        while not self.free.empty() and len(_spare) < SPARE_BUFFERS:
            _spare.append(self.free.get_nowait())
        if interrupted is not None:
            raise interrupted
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        """Wait until the writer thread has written all that was handed to it (both buffers
        back), so that someone else may append to the image."""
        bufs = [self.free.get() for _ in range(2)]
        for buf in bufs:
            self.free.put(buf)
        if self.error is not None:
            raise self.error

    def dump(self, region: Region, counted: bool = False) -> None:
        """counted: the region's size is in stats.mapped already."""
        if not counted:
            self.stats.mapped += region.count * PAGE_SIZE
        base = region.mapping.start + region.first * PAGE_SIZE
        done = 0
        while done < region.count:
            n = min(region.count - done, READ_PIECE >> PAGE_SHIFT)
            addr = base + done * PAGE_SIZE
            buf = self.free.get()
            if self.error is not None:
                self.free.put(buf)
                raise self.error
            t = time.perf_counter()
            buf.ready(n * PAGE_SIZE)
            got = self._read(buf, addr, n)
            self.read_seconds += time.perf_counter() - t
            self._unpatch(buf, addr, got)
            t = time.perf_counter()
            self.work.put((buf, self.chunks(buf, addr, got, region.dirty[done:done + got],
                                            region.mapping)))
            self.scan_seconds += time.perf_counter() - t
            if got < n:
                if not has_memory(self.pid):
                    # Not pages past a file's end: the whole process is gone (a snapshot
                    # killed by someone else, say). The image would lack the rest.
                    raise SaveError(f"process {self.pid} ended while its memory was read")
                # Unreadable pages (beyond the end of a file): skip them one by one.
                self.stats.unreadable += PAGE_SIZE
                got += 1
            done += got

    def _unpatch(self, buf: _Buffer, addr: int, npages: int) -> None:
        end = addr + npages * PAGE_SIZE
        for at, original in self.patches:
            if addr <= at and at + len(original) <= end:
                buf.view[at - addr:at - addr + len(original)] = original

    def _write_loop(self) -> None:
        while (item := self.work.get()) is not None:
            buf, chunks = item
            try:
                if self.error is None:
                    t = time.perf_counter()
                    for vaddr, data, flags in chunks:
                        if data is None:
                            self.writer.add_zero_chunk(vaddr, flags[1], flags[0])
                        elif isinstance(data, Prepared):
                            self.writer.put_chunk(vaddr, data, flags)
                        else:
                            self.writer.add_chunk(vaddr, data, flags)
                    self.write_seconds += time.perf_counter() - t
            except BaseException as e:      # handed to the reading thread
                self.error = e
            finally:
                self.free.put(buf)

    def _read(self, buf: _Buffer, addr: int, npages: int) -> int:
        """Read npages at addr into buf; returns the pages read whole."""
        want = npages * PAGE_SIZE
        local, remote = Iovec(buf.addr, want), Iovec(addr, want)
        got = max(0, libc().process_vm_readv(self.pid, ctypes.byref(local), 1,
                                             ctypes.byref(remote), 1, 0)) if self.vm_readv else 0
        got -= got % PAGE_SIZE
        if got == want:
            self.stats.read += got
            return npages
        while got < want:
            try:
                n = os.preadv(self.fd, [buf.view[got:want]], addr + got)
            except OSError as e:
                if got == 0 and npages > 1:
                    return self._read_pagewise(buf, addr, npages)
                if got:
                    break
                if e.errno in (5, 14):   # EIO, EFAULT: the page cannot be read
                    return 0
                raise SaveError(f"reading memory at {addr + got:#x} failed: {e.strerror}") from None
            if n == 0:
                break
            got += n
        self.stats.read += got
        return got // PAGE_SIZE

    def _read_pagewise(self, buf: _Buffer, addr: int, npages: int) -> int:
        """Page by page, up to the first that cannot be read; returns how many were."""
        for i in range(npages):
            try:
                n = os.preadv(self.fd, [buf.view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]],
                              addr + i * PAGE_SIZE)
            except OSError:
                n = 0
            if n != PAGE_SIZE:
                return i
            self.stats.read += PAGE_SIZE
        return npages

    def chunks(self, buf: _Buffer, addr: int, npages: int, dirty: bytes,
                m: Mapping) -> list[tuple]:
        """What to write of npages read at addr: (vaddr, bytes, flags), or
        (vaddr, None, (flags, size)) for zero pages that must be written as such."""
        if npages == 0:
            return []
        out: list[tuple] = []
        nonzero = native.nonzero_pages(buf.mem, buf.addr, npages)
        file_backed = m.kind not in (Kind.ANON, Kind.SHMEM, Kind.VDSO)
        # Group pages by (non-zero, dirty): each run becomes one chunk.
        kinds = _combine(nonzero, dirty) if file_backed else nonzero
        for start, count, kind in _groups(kinds):
            size = count * PAGE_SIZE
            at = addr + start * PAGE_SIZE
            is_dirty = ChunkFlags.DIRTY if (kind & 2 or not file_backed) else ChunkFlags.NONE
            if kind & 1:
                data = buf.view[start * PAGE_SIZE:start * PAGE_SIZE + size]
                out.append((at, data, is_dirty))
                self.stats.stored += size
            else:
                self.stats.zero += size
                if is_dirty and file_backed:
                    # A private page zeroed over a file: a restore over the file must zero it.
                    out.append((at, None, (ChunkFlags.DIRTY, size)))
        return out


def has_memory(pid: int) -> bool:
    """Whether pid still has its memory: a process loses it only as it ends (its statm
    is then all zeros, as a zombie's)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[0]) > 0
    except (OSError, IndexError, ValueError):
        return False


def _combine(nonzero: bytes, dirty: bytes) -> bytes:
    """Per page: 1 = non-zero, 2 = dirty, 3 = both (bytes of 0/1 in, no carries)."""
    n = len(nonzero)
    return (int.from_bytes(nonzero, "little") | int.from_bytes(dirty, "little") << 1).to_bytes(
        n, "little")


_RUN = re.compile(rb"(.)\1*", re.S)


def _groups(kinds: bytes):
    """(start, count, value) for each run of equal bytes in kinds."""
    for m in _RUN.finditer(kinds):
        yield m.start(), m.end() - m.start(), kinds[m.start()]
