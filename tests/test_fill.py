"""engine/fill.py: a large fill cut in two halves, one for the stub, one for us; our
half copied with process_vm_writev from a mapping of the image (here into this very
process, whose memory the test then reads back)."""

import ctypes
import mmap
import os

import pytest

from gdbckpt.engine.fill import Copier, halves

P = 4096


def covered(runs):
    """Every page the runs fill: address -> image offset."""
    return {addr + k: off + k for addr, n, off in runs for k in range(0, n, P)}


@pytest.mark.parametrize("runs", [
    [(0x10000, 64 * P, 0x1000)],                                    # one run, cut in it
    [(0x10000, 3 * P, 0x1000), (0x40000, 5 * P, 0x9000), (0x90000, P, 0x20000)],
    [(0x10000, P, 0x1000)],                                         # one page: one half
    [(0x10000, 7 * P, 0x1000), (0x20000, 7 * P, 0x8000)],          # cut at a run's end
])
def test_the_halves_fill_every_page_once_and_about_evenly(runs):
    first, second = halves(runs)
    a, b = covered(first), covered(second)
    assert not a.keys() & b.keys()
    assert a | b == covered(runs)
    total = sum(n for _, n, _ in runs)
    assert abs(sum(n for _, n, _ in first) - sum(n for _, n, _ in second)) <= total % (2 * P) + P
    assert all(n > 0 and n % P == 0 for _, n, _ in first + second)


def test_the_copier_writes_its_runs_from_the_image_into_the_process(tmp_path):
    data = os.urandom(16 * P)
    image = tmp_path / "img"
    image.write_bytes(data)
    dest = mmap.mmap(-1, 8 * P)
    at = ctypes.addressof(ctypes.c_char.from_buffer(dest))
    runs = [(at, 3 * P, 2 * P), (at + 4 * P, 4 * P, 9 * P)]
    fd = os.open(image, os.O_RDONLY)
    try:
        c = Copier(fd, len(data), os.getpid(), runs)
        c.start()
        c.join()
    finally:
        os.close(fd)
    assert c.error is None and c.left == []
    assert dest[:3 * P] == data[2 * P:5 * P]
    assert dest[3 * P:4 * P] == bytes(P)
    assert dest[4 * P:] == data[9 * P:13 * P]


def test_what_the_copier_cannot_write_is_left_to_the_stub(tmp_path):
    """A read-only page in the way (the stub's pread would meet it too, and fail the
    restore there): the runs from it on are handed back, the ones before written."""
    data = os.urandom(8 * P)
    image = tmp_path / "img"
    image.write_bytes(data)
    dest = mmap.mmap(-1, 8 * P)
    at = ctypes.addressof(ctypes.c_char.from_buffer(dest))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(at + 5 * P), P, mmap.PROT_READ) == 0
    fd = os.open(image, os.O_RDONLY)
    try:
        c = Copier(fd, len(data), os.getpid(), [(at, 4 * P, 0), (at + 4 * P, 4 * P, 4 * P)])
        c.start()
        c.join()
    finally:
        os.close(fd)
        libc.mprotect(ctypes.c_void_p(at + 5 * P), P, mmap.PROT_READ | mmap.PROT_WRITE)
    assert c.error is None
    assert c.left == [(at + 5 * P, 3 * P, 5 * P)]
    assert dest[:5 * P] == data[:5 * P]
