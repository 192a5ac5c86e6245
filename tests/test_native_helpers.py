"""The C helper (native/libckpthelp.so) and its pure-Python fallback give the same answers."""

import mmap
import subprocess

import pytest

from gdbckpt import native
from gdbckpt.linux import PAGE_SIZE

# (page, offset of the one non-zero byte) for every non-zero page; the rest stay zero.
MARKS = [(1, 0), (2, PAGE_SIZE - 1), (4, 40), (5, 31), (6, 32), (7, PAGE_SIZE - 8),
         (9, PAGE_SIZE // 2)]
NPAGES = 11


@pytest.fixture(scope="module", autouse=True)
def helpers_built():
    subprocess.run(["make", "-s", "-C", native.NATIVE_DIR], check=True)


@pytest.fixture
def buf():
    b = mmap.mmap(-1, NPAGES * PAGE_SIZE)
    for page, off in MARKS:
        b[page * PAGE_SIZE + off] = 0x80
    yield b


def expected(npages):
    marked = {p for p, _ in MARKS}
    return bytes(int(i in marked) for i in range(npages))


def both(buf, npages, monkeypatch):
    addr = native.buffer_address(buf)
    with monkeypatch.context() as m:
        m.setattr(native, "_lib", None)
        assert native.have_helpers(), "native/libckpthelp.so did not load"
        c = native.nonzero_pages(buf, addr, npages)
        m.setattr(native, "_lib", False)      # as when the library is not built
        assert not native.have_helpers()
        py = native.nonzero_pages(buf, addr, npages)
    return c, py


@pytest.mark.parametrize("npages", [0, 1, 3, NPAGES])
def test_same_answer(buf, npages, monkeypatch):
    c, py = both(buf, npages, monkeypatch)
    assert c == py == expected(npages)


def test_all_ones_and_all_zero(monkeypatch):
    ones = mmap.mmap(-1, 3 * PAGE_SIZE)
    ones.write(b"\xff" * 3 * PAGE_SIZE)
    assert both(ones, 3, monkeypatch) == (b"\1\1\1", b"\1\1\1")
    zero = mmap.mmap(-1, 3 * PAGE_SIZE)
    assert both(zero, 3, monkeypatch) == (b"\0\0\0", b"\0\0\0")


def test_last_byte_of_every_page(monkeypatch):
    b = mmap.mmap(-1, 4 * PAGE_SIZE)
    for page in (0, 3):
        b[(page + 1) * PAGE_SIZE - 1] = 1
    assert both(b, 4, monkeypatch) == (b"\1\0\0\1", b"\1\0\0\1")
