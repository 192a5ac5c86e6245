"""A large fill shared out: the stub reads half from the image, we copy the other half.

Filling memory from the image is a page allocation and a copy per page, on one
core when the stub does it all (it populates the range, MADV_POPULATE_WRITE,
then preads into it: a fault per page cost more). A fill of many MiB is cut in two: the
stub reads its half while a thread of ours copies the other half into the stub
with process_vm_writev, straight from a mapping of the image (the page cache:
one copy, as the stub's pread). The two halves take the machine's two cores.
Whatever our half could not write (a kernel that refuses, say) is left for the
stub to read after.
"""

from __future__ import annotations

import mmap
import os
import threading

from .. import native
from ..libc import Iovec, libc
from ..linux import PAGE_SIZE

# Bytes of one fill from which a thread of ours shares it; below, not worth one. The
# engine's fill, 20-30 interleaved runs each: 24 MiB 19.4 ms alone, 16.2 shared; 16 MiB
# 13.3 and 11.7; 10 MiB 8.4 either way.
SHARED_FROM = 16 << 20
IOV_MAX = 1024


def halves(runs: list[tuple[int, int, int]]) -> tuple[list, list]:
    """runs (addr, len, image offset) cut into two lists of about the same bytes, at a
    page boundary: the first for the stub, the second for us."""
    half = sum(n for _, n, _ in runs) // 2 // PAGE_SIZE * PAGE_SIZE
    first: list[tuple[int, int, int]] = []
    second: list[tuple[int, int, int]] = []
    for addr, n, off in runs:
        if half >= n:
            first.append((addr, n, off))
        elif half > 0:
            first.append((addr, half, off))
            second.append((addr + half, n - half, off + half))
        else:
            second.append((addr, n, off))
        half = max(0, half - n)
    return first, second


class Copier(threading.Thread):
    """Copies runs of the image (its fd) into process pid; left: the runs it could not."""

    def __init__(self, image_fd: int, size: int, pid: int, runs: list[tuple[int, int, int]]):
        super().__init__(name="gdbckpt-fill", daemon=True)
        self.image_fd, self.size, self.pid, self.runs = image_fd, size, pid, runs
        self.left: list[tuple[int, int, int]] = list(runs)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._copy()
        except BaseException as e:      # handed to the joining thread
            self.error = e

    def _copy(self) -> None:
        try:
            # Private and writable only for buffer_address: never written.
            image = mmap.mmap(self.image_fd, self.size, mmap.MAP_PRIVATE,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            return                      # all left to the stub
        try:
            base = native.buffer_address(image)
            while self.left:
                batch = self.left[:IOV_MAX]
                local = (Iovec * len(batch))(*((base + off, n) for _, n, off in batch))
                remote = (Iovec * len(batch))(*((addr, n) for addr, n, _ in batch))
                done = libc().process_vm_writev(self.pid, local, len(batch), remote,
                                                len(batch), 0)
                if done <= 0:
                    return
                self._advance(done)
        finally:
            image.close()

    def _advance(self, done: int) -> None:
        """Drop what was written from left: whole runs, and the start of one."""
        while done and self.left:
            addr, n, off = self.left[0]
            if done >= n:
                self.left.pop(0)
                done -= n
            else:
                self.left[0] = (addr + done, n - done, off + done)
                done = 0


def worth_sharing(runs: list[tuple[int, int, int]]) -> bool:
    """Large enough, and a second core to do it on."""
    return sum(n for _, n, _ in runs) >= SHARED_FROM and len(os.sched_getaffinity(0)) > 1
