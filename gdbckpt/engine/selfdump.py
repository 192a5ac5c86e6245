"""The snapshot writes its own memory into the image: one copy instead of two.

Reading a copy-on-write snapshot's memory goes through /proc/PID/mem (page
by page, 1.5-3.5 GB/s here; process_vm_readv would pin, and so copy, every
page the fork shares), into our buffers, and writing the image copies it
again into the page cache. Here the snapshot itself is handed the image's
descriptor (SCM_RIGHTS over a socketpair it makes, whose other end we take
with pidfd_getfd) and made to run pwritev over its own pages: the kernel
copies them straight into the page cache, as DMTCP's forked checkpoint
writes its own image. While it writes a batch, we find the zero pages of the
batch before and checksum its chunks, from a mapping of the image; the zero
pages are then punched out of the file (holes). A pwritev cut short (a page
it cannot read: a guard page, past a file's end) leaves the rest of that
4 MiB piece to the reading dumper (memory.py), which can read PROT_NONE
memory and counts what nobody can read; the batch's later pieces are
written again.

Only a snapshot: were the process itself to write, the whole write would be
an injected call, and a tracer dying in it (gdbckpt-batch killed) would
leave the process to meet the call's trap untraced, and die of SIGTRAP.
And only where nothing is lost by it (used_for): no compression (the pages
are stored as they are), no file-size limit (a write past it would fail),
a memory cgroup without limits or our own (the page cache it writes is
charged there). The snapshot's descriptor table is first made its own and
empty, so it holds none of the process's files; and a snapshot of another
owner's process is made undumpable, so that no process of that owner can
take the image's descriptor out of it (pidfd_getfd) and write the image:
which holds only in our own user namespace (used_for).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import time

from .. import native
from ..errors import CkptError, SaveError
from ..fds import Grabber
from ..image import format as fmt
from ..image.writer import ImageWriter
from ..libc import Iovec, checked, libc
from ..linux import PAGE_SHIFT, PAGE_SIZE, Prot, Sys, is_syscall_error
from ..maps import Kind
from ..memory import READ_PIECE, MemoryDumper, Region
from ..procfs import RLIM_INFINITY
from .process import Process

BATCH_BYTES = 16 << 20       # one pwritev (the scan of the one before runs meanwhile)
BATCH_IOVS = 512
SCRATCH = 16 << 10           # the iovecs, the socketpair's fds, recvmsg's msghdr
IOVEC = struct.Struct("<QQ")
MSGHDR = struct.Struct("<QI4xQQQQi4x")   # name, namelen, iov, iovlen, control, controllen, flags
CMSG_FD = struct.Struct("<QiiI")        # cmsg_len, level, type, one fd
AF_UNIX, SOCK_DGRAM, SOCK_CLOEXEC = 1, 2, 0o2000000
SOL_SOCKET, SCM_RIGHTS, MSG_CMSG_CLOEXEC = 1, 1, 0x40000000
CLOSE_RANGE_UNSHARE = 2
PR_SET_DUMPABLE = 4
PROT_RW, MAP_PRIVATE_ANON = 3, 0x22
FALLOC_PUNCH_HOLE = 0x01 | 0x02          # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
MADV_POPULATE_READ = 22


def used_for(pid: int, uids: list[int], file_size_limit: int) -> bool:
    """Whether the snapshot of process pid (its uids as /proc/PID/status gives them, its
    RLIMIT_FSIZE, as the save read them) may write the image itself (module docstring)."""
    if another_owner(uids) and not _same_user_namespace(pid):
        # Undumpable keeps out only those without CAP_SYS_PTRACE in the namespace its
        # memory belongs to: in a namespace of its owner's (a rootless container), the
        # owner has it, and could take our descriptor out of the snapshot.
        return False
    return file_size_limit == RLIM_INFINITY and _memory_unlimited(pid)


def another_owner(uids: list[int]) -> bool:
    """Not all of the process's uids are our own: its snapshot is made undumpable."""
    return set(uids) != {os.geteuid()}


def _same_user_namespace(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return False


def _memory_unlimited(pid: int) -> bool:
    """The process's memory cgroup is ours, or neither it nor any above it has a limit."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            theirs = f.read()
        with open("/proc/self/cgroup") as f:
            if f.read() == theirs:
                return True
    except OSError:
        return False
    line = next((x for x in theirs.splitlines() if x.startswith("0::")), None)
    if line is None:
        return False            # cgroup v1: not looked into
    path = line[3:].strip()
    while path not in ("", "/"):
        for name in ("memory.max", "memory.high"):
            try:
                with open(f"/sys/fs/cgroup{path}/{name}") as f:
                    if f.read().strip() != "max":
                        return False
            except FileNotFoundError:
                pass
            except OSError:
                return False
        path = os.path.dirname(path)
    return True


class SelfDump:
    """Regions written by the process itself; what it cannot write, by the reader.

    Batches are pipelined: while the process writes one, the one before is scanned."""

    def __init__(self, proc: Process, reader: MemoryDumper, w: ImageWriter, scratch: int,
                 fd: int):
        self.proc, self.reader, self.w = proc, reader, w
        self.scratch, self.fd = scratch, fd
        self.stats = reader.stats
        self.scan_fd = os.open(w.tmp, os.O_RDONLY | os.O_CLOEXEC)
        self.pending: list[tuple[Region, int, int]] = []    # (region, first page, pages)
        self.pending_bytes = 0
        self.unscanned: tuple[list, int] | None = None      # written whole: (batch, at)
        self.holes: list[tuple[int, int]] = []              # to punch: (start, end)
        self.refused = False            # a write failed outright: the reader does it all
        self.write_seconds = 0.0
        self.scan_seconds = 0.0
        self.meanwhile = None           # run once, while the next batch is written

    @classmethod
    def start(cls, snapshot: Process, reader: MemoryDumper, w: ImageWriter,
              undumpable: bool) -> SelfDump | None:
        """Hand the stopped snapshot the image's descriptor (undumpable first, if asked:
        another_owner); None where that cannot be done (the reader then reads
        everything). It is killed at the end, and what it was lent with it."""
        try:
            # Its own memory for the calls' arguments: none of what is saved.
            scratch = snapshot.syscall_ok(Sys.mmap, 0, SCRATCH, PROT_RW, MAP_PRIVATE_ANON,
                                          -1, 0, what="mmap")
            # A table of its own, empty: the process's files get no reference from it
            # (CLOSE_RANGE_UNSHARE copies none of the fds it closes).
            snapshot.syscall_ok(Sys.close_range, 0, 0xFFFFFFFF, CLOSE_RANGE_UNSHARE,
                                what="close_range")
            if undumpable:
                snapshot.syscall_ok(Sys.prctl, PR_SET_DUMPABLE, 0, what="prctl")
            fd = _hand_over(snapshot, scratch, w.fd)
        except (CkptError, OSError):
            snapshot.close()
            return None
        # The chunks it writes go where the reader's writer thread would append.
        reader.drain()
        w.trim = True
        return cls(snapshot, reader, w, scratch, fd)

    def dump(self, region: Region) -> None:
        self.stats.mapped += region.count * PAGE_SIZE
        if self.refused or not region.mapping.prot & Prot.READ or \
                region.mapping.kind == Kind.VDSO:
            # Unreadable to it; or where its injected calls' trap is written (the vDSO
            # is read while the process is stopped: this only keeps it so).
            self._submit()
            self._scan_written()
            self.reader.dump(region, counted=True)
            self.reader.drain()
            return
        done = 0
        while done < region.count:
            # A piece of at most READ_PIECE: each run of non-zero pages in it becomes a
            # chunk, of the size the reader makes.
            n = min(region.count - done, READ_PIECE >> PAGE_SHIFT,
                    (BATCH_BYTES - self.pending_bytes) >> PAGE_SHIFT)
            self.pending.append((region, done, n))
            self.pending_bytes += n * PAGE_SIZE
            done += n
            if self.pending_bytes >= BATCH_BYTES or len(self.pending) >= BATCH_IOVS:
                self._submit()

    def flush(self) -> None:
        """Write what is pending now; meanwhile() is run then, if it has not been."""
        self._submit()
        self._run_meanwhile()

    def close(self, written=None) -> None:
        """Write what is pending, call written() (the snapshot is no longer needed: it may
        be killed), then scan the last batch. written None: the save has failed, and
        only what was opened is closed."""
        try:
            if written is not None:
                self._submit()
                written()
                self._scan_written()
                self._punch()
        finally:
            os.close(self.scan_fd)
            self.proc.close()

    def _submit(self) -> None:
        """The pending batch written by the process at the end of the chunk area, while the
        batch before is scanned. A write cut short: the region it stopped in is read by
        the reader from there, and the rest of the batch written again."""
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        while batch:
            at, want = self.w.offset, sum(n for _, _, n in batch) * PAGE_SIZE
            iovs = b"".join(IOVEC.pack(r.mapping.start + (r.first + first) * PAGE_SIZE,
                                       n * PAGE_SIZE) for r, first, n in batch)
            self.proc.write(self.scratch, iovs)
            t = time.perf_counter()
            with self.proc.running(Sys.pwritev, self.fd, self.scratch, len(batch), at,
                                   0) as call:
                self._scan_written()
                self._run_meanwhile()
            self.write_seconds += time.perf_counter() - t
            # Not meanwhile: a hole punched takes the file's lock, which the write holds.
            self._punch()
            if is_syscall_error(call.result) and call.result != -errno.EFAULT:
                # Refused, not cut short (an LSM, say): the reader does the rest.
                self.refused = True
                for r, first, n in batch:
                    self.reader.dump(Region(r.mapping, r.first + first, n,
                                            r.dirty[first:first + n]), counted=True)
                self.reader.drain()
                return
            written = max(call.result, 0)
            pages = written >> PAGE_SHIFT
            self.w.advance(pages * PAGE_SIZE)
            self.stats.read += pages * PAGE_SIZE
            if written == want:
                self.unscanned = (batch, at)
                return
            self._scan(batch, at, pages)
            batch = self._read_rest(batch, pages)

    def _run_meanwhile(self) -> None:
        work, self.meanwhile = self.meanwhile, None
        if work is not None:
            work()

    def _scan_written(self) -> None:
        if self.unscanned is not None:
            batch, at = self.unscanned
            self.unscanned = None
            self._scan(batch, at, sum(n for _, _, n in batch))

    def _read_rest(self, batch: list, pages: int) -> list:
        """The region a write stopped in, read from there; returns the batch's others."""
        for i, (r, first, n) in enumerate(batch):
            if pages >= n:
                pages -= n
                continue
            self.reader.dump(Region(r.mapping, r.first + first + pages, n - pages,
                                    r.dirty[first + pages:first + n]), counted=True)
            self.reader.drain()
            return batch[i + 1:]
        return []

    def _scan(self, batch: list, at: int, pages: int) -> None:
        """Chunks for the first pages of the batch, written at at: zero pages found,
        checksums taken, from a mapping of the image."""
        if not pages:
            return
        t = time.perf_counter()
        self._patch(batch, at, pages)
        window = mmap.mmap(self.scan_fd, pages * PAGE_SIZE, mmap.MAP_PRIVATE,
                           mmap.PROT_READ | mmap.PROT_WRITE, offset=at)
        try:
            _populate(window)
            self._chunks(batch, window, at, pages)
        finally:
            window.close()
        self.scan_seconds += time.perf_counter() - t

    def _patch(self, batch, at: int, pages: int) -> None:
        """Breakpoints GDB keeps inserted: their original bytes over what was written."""
        if not self.reader.patches:
            return
        off = at
        for r, first, n in batch:
            n = min(n, pages)
            start = r.mapping.start + (r.first + first) * PAGE_SIZE
            for addr, original in self.reader.patches:
                if start <= addr and addr + len(original) <= start + n * PAGE_SIZE:
                    os.pwrite(self.w.fd, original, off + addr - start)
            off += n * PAGE_SIZE
            pages -= n
            if not pages:
                return

    def _chunks(self, batch, window: mmap.mmap, at: int, pages: int) -> None:
        base = native.buffer_address(window)
        view = memoryview(window)
        off = 0
        try:
            for r, first, n in batch:
                n = min(n, pages - (off >> PAGE_SHIFT))
                if n <= 0:
                    return
                self._chunks_of(r, first, n, view[off:off + n * PAGE_SIZE], base + off, at + off)
                off += n * PAGE_SIZE
        finally:
            view.release()

    def _chunks_of(self, r: Region, first: int, n: int, view: memoryview, addr: int,
                   file_at: int) -> None:
        start = r.mapping.start + (r.first + first) * PAGE_SIZE
        chunks = self.reader.chunks(_Window(view, addr), start, n,
                                    r.dirty[first:first + n], r.mapping)
        kept = []
        for vaddr, data, flags in chunks:
            if data is None:
                self.w.add_zero_chunk(vaddr, flags[1], flags[0])
                continue
            off = file_at + vaddr - start
            self.w.add_written_chunk(vaddr, len(data), off, fmt.checksum(data), flags)
            kept.append((off, off + len(data)))
            data.release()
        ends = [file_at] + [e for _, e in kept]
        starts = [s for s, _ in kept] + [file_at + n * PAGE_SIZE]
        self.holes += [(lo, hi) for lo, hi in zip(ends, starts, strict=True) if hi > lo]

    def _punch(self) -> None:
        """Free the zero pages written between the chunks kept: the image holds none of
        them (where the filesystem cannot punch holes, they stay, unreferenced)."""
        for lo, hi in self.holes:
            libc().fallocate(self.w.fd, FALLOC_PUNCH_HOLE, ctypes.c_long(lo),
                             ctypes.c_long(hi - lo))
        self.holes = []


class _Window:
    """A part of the image's mapping, as MemoryDumper.chunks takes a read buffer."""

    def __init__(self, view: memoryview, addr: int):
        self.mem = self.view = view
        self.addr = addr


def _populate(window: mmap.mmap) -> None:
    """Map the page cache's pages at once rather than fault by fault (a kernel without
    MADV_POPULATE_READ faults them in as the scan goes)."""
    try:
        window.madvise(MADV_POPULATE_READ)
    except OSError:
        pass


def _hand_over(proc: Process, scratch: int, fd: int) -> int:
    """Our fd, as a descriptor of proc's (close-on-exec): its number there."""
    proc.syscall_ok(Sys.socketpair, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, scratch,
                    what="socketpair")
    theirs, other = struct.unpack("<ii", proc.read(scratch, 8))
    try:
        grab = Grabber(proc.pid)
        try:
            ours = grab.take(other)
        finally:
            grab.close()
        _quietly(proc, Sys.close, other)
        try:
            _send_fd(ours, fd)
        finally:
            os.close(ours)
        byte, cmsg, iov, msg = scratch + 64, scratch + 128, scratch + 256, scratch + 512
        proc.write(iov, IOVEC.pack(byte, 1))
        proc.write(msg, MSGHDR.pack(0, 0, iov, 1, cmsg, CMSG_FD.size + 4, 0))
        proc.syscall_ok(Sys.recvmsg, theirs, msg, MSG_CMSG_CLOEXEC, what="recvmsg")
        length, level, kind, got = CMSG_FD.unpack(proc.read(cmsg, CMSG_FD.size))
        if (level, kind) != (SOL_SOCKET, SCM_RIGHTS) or length < 20:
            raise SaveError("recvmsg: no descriptor came")
        return got
    finally:
        _quietly(proc, Sys.close, theirs)


def _send_fd(sock: int, fd: int) -> None:
    """sendmsg of one byte carrying fd (SCM_RIGHTS): through libc, the socket module
    costing a save ~2 ms to import."""
    byte = ctypes.create_string_buffer(1)
    iov = Iovec(ctypes.addressof(byte), 1)
    cmsg = ctypes.create_string_buffer(CMSG_FD.pack(CMSG_FD.size, SOL_SOCKET, SCM_RIGHTS, fd),
                                       CMSG_FD.size + 4)
    msg = ctypes.create_string_buffer(MSGHDR.pack(0, 0, ctypes.addressof(iov), 1,
                                                  ctypes.addressof(cmsg), len(cmsg), 0))
    checked(libc().sendmsg(sock, msg, 0), "sendmsg")


def _quietly(proc: Process, nr: int, *args: int) -> None:
    try:
        proc.syscall(nr, *args)
    except CkptError:
        pass
