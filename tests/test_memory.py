"""memory.regions() on this process's own mappings: which pages a save would read."""

import ctypes
import mmap
import os

from gdbckpt.linux import PAGE_SIZE
from gdbckpt.maps import Kind, read_mappings
from gdbckpt.memory import regions

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
