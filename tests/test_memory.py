"""memory.regions() on this process's own mappings: which pages a save would read."""

import ctypes
import mmap
import os

from gdbckpt.linux import PAGE_SIZE
from gdbckpt.maps import Kind, read_mappings
from gdbckpt.memory import MemoryDumper, Region, regions

NPAGES = 4


def mapping(path):
    return next(m for m in read_mappings(os.getpid()) if m.path == path)


def pages(rs):
    return [(r.first, r.count) for r in rs]


def test_anonymous_memory_only_touched_pages():
    buf = mmap.mmap(-1, NPAGES * PAGE_SIZE, mmap.MAP_PRIVATE)
    buf.madvise(mmap.MADV_NOHUGEPAGE)
    buf[2 * PAGE_SIZE] = 1
    c = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(c)
    del c
    # It may have merged with a neighbour: look at its own pages only.
    m = next(m for m in read_mappings(os.getpid()) if m.start <= addr < m.end)
    assert m.kind == Kind.ANON
    first = (addr - m.start) // PAGE_SIZE
    read = {r.first + i - first for r in regions(os.getpid(), m, None) for i in range(r.count)}
    assert read & set(range(NPAGES)) == {2}     # untouched anonymous memory is zero: not read


def test_file_mapping_every_page_in_the_file(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"\x90" * (NPAGES * PAGE_SIZE - 100))
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, mmap.MAP_PRIVATE, mmap.PROT_READ)
    m = mapping(str(path))
    assert m.kind == Kind.FILE
    rs = regions(os.getpid(), m, os.path.getsize(path))
    assert pages(rs) == [(0, NPAGES)] and rs[0].dirty == bytes(NPAGES)
    buf.close()


def test_deleted_file_untouched_pages_are_saved(tmp_path):
    path = tmp_path / "lib.so"
    path.write_bytes(b"\x90" * NPAGES * PAGE_SIZE)
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, mmap.MAP_PRIVATE, mmap.PROT_READ)
    os.unlink(path)
    m = mapping(f"{path} (deleted)")
    assert m.kind == Kind.DELETED
    rs = regions(os.getpid(), m, None)
    assert buf[NPAGES * PAGE_SIZE - 1] == 0x90     # the memory is there to be read
    assert sum(r.count for r in rs) == NPAGES, pages(rs)


def test_shared_memory_untouched_pages_are_saved():
    fd = os.memfd_create("shm")
    os.write(fd, b"\1" * NPAGES * PAGE_SIZE)
    buf = mmap.mmap(fd, NPAGES * PAGE_SIZE, mmap.MAP_SHARED)
    os.close(fd)
    m = mapping("/memfd:shm (deleted)")
    assert m.kind == Kind.SHMEM
    rs = regions(os.getpid(), m, None)
    assert buf[0] == 1
    assert sum(r.count for r in rs) == NPAGES, pages(rs)


class Collect:
    """An image writer that keeps what it is given."""

    compressor = None

    def __init__(self):
        self.chunks = {}

    def prepare_chunk(self, data):
        from gdbckpt.image.writer import Prepared
        return Prepared(bytes(data), len(data), 0, 0)

    def put_chunk(self, vaddr, prepared, flags):
        self.chunks[vaddr] = prepared.payload

    def add_chunk(self, vaddr, data, flags):
        self.chunks[vaddr] = bytes(data)

    def add_zero_chunk(self, vaddr, size, flags):
        self.chunks[vaddr] = None


def dump(region):
    w = Collect()
    d = MemoryDumper(os.getpid(), w)
    try:
        d.dump(region)
    finally:
        d.close()
    return w.chunks, d.stats


def test_prot_none_memory_is_read_through_proc_mem():
    """process_vm_readv cannot read PROT_NONE pages; /proc/PID/mem can, and takes over."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    addr = libc.mmap(None, NPAGES * PAGE_SIZE, 3, 0x22, -1, 0)
    ctypes.memset(addr, 0x5A, NPAGES * PAGE_SIZE)
    assert libc.mprotect(ctypes.c_void_p(addr), NPAGES * PAGE_SIZE, 0) == 0
    m = next(m for m in read_mappings(os.getpid()) if m.start <= addr < m.end)
    region = Region(m, (addr - m.start) // PAGE_SIZE, NPAGES, b"\1" * NPAGES)
    chunks, stats = dump(region)
    assert b"".join(chunks[a] for a in sorted(chunks)) == b"\x5a" * NPAGES * PAGE_SIZE
    libc.munmap(ctypes.c_void_p(addr), NPAGES * PAGE_SIZE)


def test_pages_past_the_end_of_a_file_are_skipped(tmp_path):
    """Reading a mapping past its file's end fails (SIGBUS territory): those pages are left
    out, the ones before are kept."""
    path = tmp_path / "short"
    path.write_bytes(b"\x33" * (PAGE_SIZE + 10))          # two pages' worth of file
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, mmap.MAP_PRIVATE, mmap.PROT_READ)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    addr = libc.mmap(None, NPAGES * PAGE_SIZE, 1, 2, fd, 0)    # four pages over two
    os.close(fd)
    m = next(m for m in read_mappings(os.getpid()) if m.start == addr)
    chunks, stats = dump(Region(m, 0, NPAGES, bytes(NPAGES)))
    data = chunks[addr]
    assert len(data) == 2 * PAGE_SIZE and data[:PAGE_SIZE + 10] == b"\x33" * (PAGE_SIZE + 10)
    assert stats.read == 2 * PAGE_SIZE
    libc.munmap(ctypes.c_void_p(addr), NPAGES * PAGE_SIZE)
    buf.close()


def _isolated(npages: int):
    """An anonymous mapping of npages between two PROT_NONE pages (no neighbour merges
    with it), and its address."""
    buf = mmap.mmap(-1, (npages + 2) * PAGE_SIZE, mmap.MAP_PRIVATE)
    buf.madvise(mmap.MADV_NOHUGEPAGE)
    at = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None)
    for page in (at, at + (npages + 1) * PAGE_SIZE):
        assert libc.mprotect(ctypes.c_void_p(page), PAGE_SIZE, 0) == 0     # PROT_NONE
    return buf, at + PAGE_SIZE


def test_an_anonymous_mapping_all_in_memory_is_one_region_as_its_pagemap_says():
    """smaps says every page is present (Rss + Swap = size): one region, without reading
    the pagemap; the pagemap (the oracle) gives the same pages. One page untouched: smaps
    says less, and the pagemap is read."""
    import msgspec
    buf, at = _isolated(NPAGES)
    for i in range(NPAGES):
        buf[(i + 1) * PAGE_SIZE] = 1
    m = next(m for m in read_mappings(os.getpid(), vmflags=True) if m.start == at)
    assert (m.size, m.resident) == (NPAGES * PAGE_SIZE, NPAGES * PAGE_SIZE)
    oracle = regions(os.getpid(), msgspec.structs.replace(m, resident=None), None)
    assert pages(regions(os.getpid(), m, None)) == pages(oracle) == [(0, NPAGES)]
    buf2, at2 = _isolated(NPAGES)
    for i in (0, 1, 3):
        buf2[(i + 1) * PAGE_SIZE] = 1
    m2 = next(m for m in read_mappings(os.getpid(), vmflags=True) if m.start == at2)
    assert m2.resident == 3 * PAGE_SIZE
    assert pages(regions(os.getpid(), m2, None)) == [(0, 2), (3, 1)]


def test_a_dumper_reuses_the_buffers_of_the_one_before_and_reads_only_its_own_data():
    """GDB saves again and again: the read buffers (populated as reads reach them) are
    kept for the next dumper, whose chunks hold its own memory, none of the old."""
    import gdbckpt.memory as memory
    first = mmap.mmap(-1, 4 * NPAGES * PAGE_SIZE)
    first.write(b"\xAA" * len(first))
    second = mmap.mmap(-1, NPAGES * PAGE_SIZE)
    second.write(b"\x55" * len(second))
    memory._spare.clear()
    chunks = []
    for buf, size in ((first, 4 * NPAGES), (second, NPAGES)):
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        m = next(m for m in read_mappings(os.getpid()) if m.start <= addr < m.end)
        got, _ = dump(Region(m, (addr - m.start) // PAGE_SIZE, size, b"\1" * size))
        chunks.append(b"".join(got[a] for a in sorted(got)))
        if buf is first:
            kept = list(memory._spare)
            assert len(kept) == 2 and max(b.populated for b in kept) == 4 * NPAGES * PAGE_SIZE
    assert chunks == [b"\xAA" * 4 * NPAGES * PAGE_SIZE, b"\x55" * NPAGES * PAGE_SIZE]
    assert sorted(map(id, memory._spare)) == sorted(map(id, kept))  # taken again, given back
