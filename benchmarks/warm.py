"""The machine's free memory put in a stated state before each measurement.

On these VMs, memory the kernel freed in the last second or two is quick to use
again; memory it has handed back to the host after ~8 s costs ~1.4 s per GiB to
get again. A save writes its file into fresh page cache and a restore fills fresh
memory, so which state the memory is in decides much of their time, and that of
gcore or of a fresh process writing the same memory. Every tool is measured from
the same state: "warm" (a scratch file as large as the process written and
deleted just before) or "cold" (a 10 s pause).
"""

from __future__ import annotations

import mmap
import os
import time

COLD_PAUSE = 10.0  # seconds after which freed memory has gone back to the host
MiB = 1 << 20


class Memory:
    """Puts the machine's free memory into a stated state before each measurement."""

    def __init__(self, mode: str, directory: str, size: int):
        self.mode, self.path, self.size = mode, os.path.join(directory, "warm.tmp"), size
        self.block = mmap.mmap(-1, 4 * MiB)
        self.block.write(os.urandom(4 * MiB))

    def prepare(self) -> None:
        if self.mode == "cold":
            time.sleep(COLD_PAUSE)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for _ in range(max(1, self.size // len(self.block))):
            os.write(fd, self.block)
        os.close(fd)
        os.unlink(self.path)
