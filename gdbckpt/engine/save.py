"""Save: a stopped process -> an image.

The pipeline: what /proc and ptrace tell (maps, stat, status, auxv, fds,
rseq, pending signals), what only the process can tell (state.py: injected
system calls), the register sets of every thread, then the memory
(memory.py) and the metadata into the image writer. No GDB: the front end
(front.py) answers the few questions only it can.
"""

from __future__ import annotations

import os
import resource
import time

import msgspec

from .. import __version__, fileid
from .. import clocks as clockmod
from .. import creds as credsmod
from .. import fds as fdsmod
from .. import regs as regsmod
from .. import vdso as vdsomod
from ..errors import CkptError, SaveError
from ..image import format as fmt
from ..image.model import (
    FdInfo,
    FileRef,
    Member,
    MmBounds,
    ProcessInfo,
    Rlimit,
    Rseq,
    SysvShm,
    ThreadState,
    VdsoInfo,
    Vma,
)
from ..image.writer import ImageWriter
from ..linux import PAGE_SHIFT, PAGE_SIZE, SIGKILL, SIGSTOP, SIGTRAP, Prot, sysname
from ..maps import STORED_KINDS, Kind, Mapping, read_mappings
from ..memory import READ_PIECE, MemoryDumper, Region, has_memory, regions
from ..procfs import (
    MM_FIELDS,
    Proc,
    comm_of,
    kernel_identity,
    read_sysv_shm,
    rlimits,
    sigset,
)
from . import selfdump
from . import tree as treemod
from . import xstate as xstatemod
from .front import Front
from .process import (
    Process,
    detach_snapshot,
    drop_snapshot,
    end_snapshot,
    hold_snapshot,
    reap_snapshot,
    reap_snapshot_in,
    wait_state,
)
from .state import StateReader, debuggers_own


class SaveResult(msgspec.Struct):
    path: str
    pid: int
    comm: str
    threads: int
    mappings: int
    stored: int
    mapped: int
    image_size: int
    seconds: float
    notes: list[str]
    phases: dict[str, float] = msgspec.field(default_factory=dict)   # seconds each
    lost: list[str] = msgspec.field(default_factory=list)   # what a restore will not
                                                                # give back as it was
    members: list[treemod.TreeProcess] = msgspec.field(default_factory=list)
    snapshot: int = 0       # the snapshot child's pid (a zombie until reaped), or 0


def save(proc: Process, path: str, *, front: Front | None = None, sync: bool = False,
         compress: bool = False, strict: bool = False, resume=None, snapshot: bool = True,
         members: list[treemod.TreeProcess] = (), background=None) -> SaveResult | None:
    """Save proc, whose threads are all stopped under our (or the front end's) ptrace,
    with the descendants given (engine/tree.py: seized, or zombies).

    With resume, the process is stopped only for what must be consistent
    (registers, mappings, descriptors, shared memory): its private memory is
    then read from a copy-on-write snapshot (a child made by an injected
    clone, as Redis's BGSAVE and DMTCP's forked checkpoints do), and
    resume() is called to let the process (and its tree) run on meanwhile.
    Without snapshot, the memory is read first and resume() called as soon as
    it has been (the writing may still go on). The descendants are saved first,
    whole, while everything is stopped.

    With background, the snapshot is let go of (parked, needing no tracer:
    process.detach_snapshot), and what is left, reading it and writing the
    image, is handed over instead of done: background(finish) is called,
    finish() -> SaveResult to be run on another thread, and save returns None.
    A front end whose own tracer stays on the process (GDB) then has it back at
    once. The snapshot, killed at the end, is then the process's zombie until
    reap_snapshot_in (or until the process ends).
    """
    t0 = time.perf_counter()
    front = front or Front()
    try:
        return _save_tree(proc, path, front, sync, compress, strict, resume, snapshot,
                          list(members), t0, background)
    finally:
        front.changed(proc)


def _save_tree(proc: Process, path: str, front: Front, sync: bool, compress: bool,
               strict: bool, resume, snapshot: bool, members: list[treemod.TreeProcess],
               t0: float, background=None) -> SaveResult | None:
    living = [m for m in members if m.proc is not None]
    tables = {p.pid: fdsmod.read_fds(p.pid) for p in [proc] + [m.proc for m in living]}
    ends = None
    if members:
        treemod.shared_descriptions(tables)
        ends = treemod.ends(tables)
    compressor = None
    if compress:
        import zstandard
        compressor = zstandard.ZstdCompressor(level=1)
    # The descriptors (their queued events too) are read before the image file exists: a
    # program watching the image's directory (inotify) would otherwise have an event
    # the save made. So is everything else, but memory and the root's state.
    shm = read_sysv_shm()           # the host's segments: read once for the whole tree
    savers = {m.pid: _Saver(m.proc, front, strict, tables[m.pid], ends, shm).read()
              for m in living}
    # The root's state (registers, signals, timers) is read in run_stopped: while its
    # snapshot writes the first of its memory, where it can (_Saver.begin_self_dump).
    root = _Saver(proc, front, strict, tables[proc.pid], ends, shm, resume,
                  snapshot).read_layout()
    if not members:
        _children_left_out(root, proc.pid, strict)
    saved: list[tuple] = []
    rest = None

    def finish() -> SaveResult:
        try:
            with w:
                result, records = rest()
                t1 = time.perf_counter()
                for rtype, obj in records:
                    w.add_record(rtype, obj)
                for member, records, _ in saved:
                    w.add_record(fmt.RecordType.MEMBER, member)
                    for rtype, obj in records:
                        w.add_record(rtype, obj)
                result.path = w.commit()
            result.phases["metadata and commit"] = time.perf_counter() - t1
        finally:
            root.end_killed_snapshot()
        for member, _, one in saved:
            if one is not None:
                who = f"process {member.pid} ({member.comm})"
                result.notes += [f"{who}: {n}" for n in one.notes]
                result.lost += [f"{who}: {n}" for n in one.lost]
        result.members = members
        result.image_size = _image_size(result.path)
        result.seconds = time.perf_counter() - t0
        result.snapshot = 0 if root.reap else (root.child or 0)    # a zombie left
        return result

    # A Ctrl-C as the temporary file is made: the writer removes it (raised in its
    # __init__), or abort() below does. (Blocking SIGINT around the creation only moved
    # the KeyboardInterrupt to the unblocking, before the try that removed the file.)
    w = None
    try:
        w = ImageWriter(path, sync=sync, compressor=compressor)
        for m in members:
            first, records, result = len(w.chunks), [], None
            if m.proc is not None:
                result, records = savers[m.pid].run(w, t0)
            saved.append((Member(pid=m.pid, ppid=m.ppid, pgid=m.pgid, sid=m.sid, comm=m.comm,
                                 exit_status=m.exit_status, chunks=[first, len(w.chunks) - first]),
                          records, result))
        root.reap = background is None
        rest = root.run_stopped(w, t0)
        if background is None or not root.child:
            return finish()     # without a snapshot, nothing is left to do meanwhile
    except BaseException:
        if w is not None:
            w.abort()           # nothing once committed
        raise
    try:
        detach_snapshot(root.child, proc.syscall_insn())
    except CkptError:
        return finish()     # still ours: read here, while the front end waits
    root.parked = True
    root.front = Front()    # no calls into the front end from the other thread
    background(finish)
    return None


def _image_size(path: str) -> int:
    """The bytes the image takes: fewer than its length where it has holes."""
    st = os.stat(path)
    return min(st.st_size, st.st_blocks * 512)


def _check_snapshot(child: int | None, failed: bool = False) -> None:
    """The snapshot still has its memory: then it had it for every read before (a
    memory does not come back), and they read what it held. It loses it only as it
    ends, which we make it do after this: something else killed it.

    failed: a read or an injected call failed, perhaps as it was being killed; unless
    it is still stopped for us (the failure is another), wait for its end a moment."""
    if child and failed:
        wait_state(child, child, "tXZ", timeout=2)
    if child and not has_memory(child):
        raise SaveError("the snapshot of the process ended while it was read (killed by "
                        "something else?)")


def quiet_connections(proc: Process) -> None:
    """Before a saved process is killed: its TCP connections close silently, their
    addresses free for the restored process (fds.quiet_connections)."""
    fdsmod.quiet_connections(proc.pid)


def _children_left_out(root: _Saver, pid: int, strict: bool) -> None:
    """Saved alone (--single) though it has children: what its restored self misses."""
    left = treemod.children(pid)
    if not left:
        return
    names = ", ".join(f"{c} ({comm_of(c)})" for c in left)
    why = (f"its children {names} are not saved (--single): after a restore it waits for "
           "them in vain, and its pipes and sockets to them are cut")
    if strict:
        raise SaveError(f"{why} (--strict)")
    root.lost.append(why)
    root.notes.append(why)


class _Saver:
    """One process of the saved tree: its chunks into the writer, its records returned."""

    def __init__(self, inf: Process, front: Front, strict: bool, fds: list[FdInfo],
                 ends: treemod.TreeEnds | None, sysv: dict, resume=None,
                 snapshot: bool = True):
        self.inf = inf
        self.front = front
        self.resume = resume
        self.snapshot = snapshot
        self.strict = strict
        self.fd_table = fds
        self.ends = ends
        self.proc = Proc(inf.pid)
        self.state = StateReader(inf, self.proc)
        self.notes: list[str] = []
        self.sysv = sysv                # shmid -> (key, size, perms): procfs.read_sysv_shm
        self.image_sizes: dict[int, int] = {}
        self.lazy_images: set[str] = set()
        self.lost: list[str] = []
        self.child: int | None = None   # the snapshot
        self.reap = True                # the process reaps it as the save ends
        self.parked = False             # let go of by the front end's tracer
        self.killed = False             # by us, once all of it was written
        self.process: ProcessInfo | None = None     # read_state
        self.out: selfdump.SelfDump | None = None   # begun while stopped: begin_self_dump
        self.later: list | None = None              # the snapshot's regions left to it
        self.self_dump_refused = False  # SelfDump.start failed: the reader reads it all
        self.resumed = False

    def read(self) -> _Saver:
        """Everything of the stopped process but its memory."""
        return self.read_layout().read_state()

    def read_layout(self) -> _Saver:
        """Its descriptors, mappings and files: what the reading of its memory needs."""
        self.phases: dict[str, float] = {}
        t0 = time.perf_counter()
        self.status = self.proc.status()    # its ids and seccomp mode; _process reads it anew
        self._check_seccomp()
        self.fds = self._fds()
        self.maps = read_mappings(self.inf.pid)
        self._memfds_mapped(self.fds, self.maps)
        self.files, self.file_of = self._files(self.maps)
        self.phases["maps"] = time.perf_counter() - t0
        return self

    def read_state(self) -> _Saver:
        """Its threads' registers and its process state (injected calls: state.py); once."""
        if self.process is None:
            t0 = time.perf_counter()
            self.threads = self._threads()
            self.process = self._process(self.files, self.threads)
            self.phases["state"] = time.perf_counter() - t0
        return self

    def run(self, w: ImageWriter, start: float) -> tuple[SaveResult, list[tuple]]:
        """The memory into w; returns the result and the records to write."""
        return self.run_stopped(w, start)()

    def run_stopped(self, w: ImageWriter, start: float):
        """What must be read while the process is stopped, then resume(); returns the
        rest (reading the snapshot, when there is one), which needs no ptrace of the
        process: a front end may run it on another thread while the process runs."""
        phases = self.phases
        stored = [m for m in self.maps if m.kind in STORED_KINDS]
        now_maps, later_maps = (_split(stored) if self.resume and self.snapshot
                                else (stored, []))
        if not (later_maps and self.reap):
            self.read_state()       # no snapshot to write meanwhile (begin_self_dump)
        now = self._todo(self.inf.pid, now_maps)
        reserve = w.compressor is None
        self.vdso = self._vdso(self.maps)    # read while stopped: the process may exit after
        # Deleted files' bytes while the process is stopped: it may write them.
        for f in self.fds:
            if f.kind in (fdsmod.FdKind.DELETED, fdsmod.FdKind.MEMFD) and f.same_as < 0:
                f.data = self._file_data(w, f)
        t1 = time.perf_counter()
        dumper = MemoryDumper(self.inf.pid, w, self.front.inserted_breakpoints(self.inf))
        child = None
        try:
            if later_maps:
                # The pages to read of private memory come from the snapshot's own
                # pagemap (a fork copies the page table entries of every mapping
                # that has private pages), not while the process is stopped.
                child = self.child = self._snapshot()
                if child is None:       # read while stopped
                    now += self._todo(self.inf.pid, later_maps)
            total = _size(now)
            if reserve and not self.resume:
                w.reserve(total)
            progress = first = self.front.progress("save", total)
            for region in now:
                dumper.dump(region)
                progress(dumper.stats.mapped)
            if child and self.reap:
                try:
                    self.begin_self_dump(child, dumper, w, later_maps, start)
                except (SaveError, OSError):
                    _check_snapshot(child, failed=True)     # the reason, if it is that
                    raise
            self.read_state()
            if self.resume:
                # Everything that must be one instant has been read (the writer thread
                # may still be writing it): the process runs on.
                phases["stopped"] = time.perf_counter() - start
                self.resume()
                self.resumed = True
        except BaseException:
            self._end_memory(dumper, child)
            raise

        def rest() -> tuple[SaveResult, list[tuple]]:
            try:
                try:
                    self._read_later(dumper, w, child, later_maps, total, first, reserve)
                except (SaveError, OSError):
                    if not self.killed:
                        # The reason, if it is that (a parked one never stops for us).
                        _check_snapshot(child, failed=not self.parked)
                    raise
                # Only we end it, after this: whatever ended it first may have cut short
                # what was read (its pagemap, its pages) without an error.
                if not self.killed:
                    _check_snapshot(child)
            finally:
                self._end_memory(dumper, child)
            phases["memory"] = time.perf_counter() - t1
            return self._result(dumper)
        return rest

    def _read_later(self, dumper: MemoryDumper, w: ImageWriter, child: int | None,
                    later_maps: list[Mapping], total: int, first, reserve: bool) -> None:
        """The private memory, from the snapshot (if there is one) as the process runs."""
        later = []
        if child and self.parked:
            hold_snapshot(child)
        if self.later is not None:
            later = self.later          # what begin_self_dump left
        elif child:
            dumper.switch(child)
            later = self._todo(child, later_maps)
        more = total + _size(later)
        if reserve and self.resume:
            # Not while it was stopped: allocating the blocks can take ext4 200 ms
            # when it is still freeing an old image's.
            w.reserve(more)
        # What is read already (the regions read while stopped, a first batch) and the rest.
        progress = (self.front.progress("save", dumper.stats.mapped + _size(later)) if child
                    else first)
        if later or self.out is not None:
            self._dump_snapshot(child, dumper, w, later, progress)
        progress(dumper.stats.mapped, final=True)

    def begin_self_dump(self, child: int, dumper: MemoryDumper, w: ImageWriter,
                        later_maps: list[Mapping], start: float) -> None:
        """Still stopped: the snapshot is set up to write its own memory (selfdump.py) and
        writes the first FIRST_BATCH of it while the process's state is read
        (read_state): ~5 ms of injected calls that would otherwise come before the
        writing. Not where the process has been stopped OVERLAP_WITHIN already (a large
        one, whose page tables took long to copy): its pause then matters more than
        the few ms, and the state is read before it resumes, as ever."""
        if time.perf_counter() - start > OVERLAP_WITHIN:
            return
        # Its resident memory, before its pagemap is walked: a process too small to be
        # written so is not stopped for that walk.
        resident = sum(m.size if m.resident is None else m.resident for m in later_maps)
        if not self._self_dump_allowed(w, resident):
            return
        dumper.switch(child)
        self.later = self._todo(child, later_maps)
        self.out = self._start_self_dump(child, dumper, w)
        if self.out is None:
            return
        t0 = time.perf_counter()
        first, self.later = _cut(self.later, FIRST_BATCH >> PAGE_SHIFT)
        self.out.meanwhile = self.read_state
        for region in first:
            self.out.dump(region)
        self.out.flush()
        self.phases["memory: first batch, the state read meanwhile"] = time.perf_counter() - t0

    def _dump_snapshot(self, child: int, dumper: MemoryDumper, w: ImageWriter, todo: list,
                       progress) -> None:
        """The snapshot's regions into the image: written by the snapshot itself where it
        can (engine/selfdump.py; perhaps begun while the process was stopped), read by
        dumper otherwise."""
        out, self.out = self.out, None
        if out is None and not self.self_dump_refused and \
                self._self_dump_allowed(w, _size(todo)):
            out = self._start_self_dump(child, dumper, w)
        ok = False
        try:
            for region in todo:
                (out or dumper).dump(region)
                progress(dumper.stats.mapped)
            ok = True
        finally:
            if out is not None:
                out.close(self._end_snapshot_early if ok else None)
                self.phases["memory: written by the snapshot"] = out.write_seconds
                self.phases["memory: zero pages and checksums (meanwhile)"] = out.scan_seconds

    def _self_dump_allowed(self, w: ImageWriter, size: int) -> bool:
        """Worth its set-up from a few MiB on (size: what there is to write), and not for a
        parked snapshot, which has no tracer to make it write (nor for compression:
        selfdump.used_for says the rest)."""
        return not self.parked and w.compressor is None and size >= SELF_DUMP_FROM \
            and selfdump.used_for(self.inf.pid, self._uids(), self._file_size_limit())

    def _start_self_dump(self, child: int, dumper: MemoryDumper,
                         w: ImageWriter) -> selfdump.SelfDump | None:
        """The snapshot set up to write its own memory; None where it could not be, and
        then not tried again."""
        out = selfdump.SelfDump.start(Process(child, [child]), dumper, w,
                                      undumpable=selfdump.another_owner(self._uids()))
        self.self_dump_refused = out is None
        return out

    def _uids(self) -> list[int]:
        return credsmod.from_status(self.status).uids

    def _file_size_limit(self) -> int:
        """RLIMIT_FSIZE's soft limit: the process's state's, or /proc's before it is read."""
        limits = self.process.rlimits if self.process is not None else \
            [Rlimit(*r) for r in rlimits(self.inf.pid)]
        return next(r.soft for r in limits if r.resource == resource.RLIMIT_FSIZE)

    def _end_snapshot_early(self) -> None:
        """All of the snapshot has been written: it is killed now, its end (tens of ms for
        a large one) overlapping the last checks and the commit. Whatever ended it
        first may have cut short the reads before: that is checked first."""
        _check_snapshot(self.child)
        os.kill(self.child, SIGKILL)
        self.killed = True

    def _end_memory(self, dumper: MemoryDumper, child: int | None) -> None:
        try:
            if self.out is not None:        # begun, and the save failed before it went on
                self.out.close()
                self.out = None
            dumper.close()
        finally:
            if child and self.parked:
                end_snapshot(child)
            elif child and not self.killed:
                self._end_snapshot(child)

    def end_killed_snapshot(self) -> None:
        """A snapshot killed once all of it was written (_end_snapshot_early) is waited
        for and reaped last, after the commit: its end (its page tables torn down)
        overlaps the metadata's writing."""
        if self.child and self.killed and not self.parked:
            self._end_snapshot(self.child)

    def _end_snapshot(self, child: int) -> None:
        """Kill it, and have the process reap it: still stopped under us (a save that
        failed before it resumed), or seized again for that."""
        drop_snapshot(child)
        if not self.reap:
            return
        if not self.resumed:
            try:
                reap_snapshot_in(self.inf, child)
            except CkptError:
                pass        # the process has ended: nothing left to reap it
        else:
            reap_snapshot(self.inf.pid, child)

    def _result(self, dumper: MemoryDumper) -> tuple[SaveResult, list[tuple]]:
        phases, threads, process = self.phases, self.threads, self.process
        if dumper.stats.unreadable:
            self.notes.append(f"{dumper.stats.unreadable // PAGE_SIZE} pages could not be read "
                              "(past the end of a mapped file): a restore leaves them as "
                              "the file or zero")
        phases["memory: reading"] = dumper.read_seconds
        phases["memory: finding zero pages"] = dumper.scan_seconds
        phases["memory: checksums and writing (overlapped)"] = dumper.write_seconds
        records = [(fmt.RecordType.PROCESS, process)]
        records += [(fmt.RecordType.THREAD, th) for th in threads]
        records += [(fmt.RecordType.VMAS, {"vmas": [self._vma(m, self.file_of)
                                                    for m in self.maps]}),
                    (fmt.RecordType.FILES, {"files": self.files}),
                    (fmt.RecordType.VDSO, self.vdso), (fmt.RecordType.FDS, {"fds": self.fds})]
        if self.notes:
            records.append((fmt.RecordType.NOTES, {"notes": self.notes}))
        st = dumper.stats
        return SaveResult(path="", pid=self.inf.pid, comm=process.comm, threads=len(threads),
                          mappings=len(self.maps), stored=st.stored, mapped=st.mapped,
                          image_size=0, seconds=0.0, notes=self.notes, phases=phases,
                          lost=self.lost), records

    def _todo(self, pid: int, maps: list[Mapping]) -> list:
        """The regions to read of maps, as process pid's pagemap shows them."""
        return [r for m in maps
                for r in regions(pid, m, self._file_size(m, self.files, self.file_of))]

    def _snapshot(self) -> int | None:
        """A copy-on-write snapshot, or None where one cannot be made (a process limit,
        say): the memory is then read while the process stays stopped."""
        try:
            return self.inf.snapshot()
        except SaveError as e:
            self.notes.append(f"{e}; the process stayed stopped while its memory was read")
            return None

    def _check_seccomp(self) -> None:
        """A seccomp filter may refuse the system calls the save injects, or kill the
        process for them; and a restore could not put the filter back."""
        mode = self.status.get("Seccomp", "0")
        if mode != "0":
            kind = "strict mode" if mode == "1" else "a filter"
            raise SaveError(f"process {self.inf.pid} runs under seccomp ({kind}): the system "
                            "calls a save makes in it could kill it, and a restore could not "
                            "put the filter back; it cannot be saved")

    # -- descriptors and files -----------------------------------------------

    def _file_size(self, m: Mapping, files: list[FileRef], file_of: dict[int, int]) -> int | None:
        if m.start in file_of:
            return files[file_of[m.start]].size
        return self.image_sizes.get(m.start)

    def _fds(self) -> list[FdInfo]:
        fds = self.fd_table
        self.lost = fdsmod.read_states(self.inf.pid, fds, tree=self.ends)
        named = {f.fd for f in fds if any(line.startswith(fdsmod.describe(f) + ":")
                                          for line in self.lost)}
        self.lost += [f"{fdsmod.describe(f)} cannot be restored: a restore puts /dev/null "
                      "there" for f in fds if not fdsmod.restorable(f) and f.same_as < 0
                      and f.fd not in named]
        if self.lost and self.strict:
            raise SaveError("; ".join(self.lost) + " (--strict); save without --strict to "
                            "keep what can be kept")
        self.notes += self.lost
        return fds

    def _memfds_mapped(self, fds: list[FdInfo], maps: list[Mapping]) -> None:
        """A memfd both held and mapped comes back as two copies, no longer one object."""
        mapped = {m.inode for m in maps if m.shared}
        for f in fds:
            if f.kind == fdsmod.FdKind.MEMFD and f.ino in mapped and f.same_as < 0:
                why = (f"{fdsmod.describe(f)} is also mapped shared: after a restore the "
                       "descriptor and the mapping are separate copies")
                if self.strict:
                    raise SaveError(f"{why} (--strict)")
                self.lost.append(why)
                self.notes.append(why)

    def _file_data(self, w: ImageWriter, f: FdInfo) -> list[int]:
        """Store the bytes of a deleted file that is still open."""
        first, count, offset = len(w.chunks), 0, 0
        try:
            with open(f"/proc/{self.inf.pid}/fd/{f.fd}", "rb", buffering=0) as src:
                while block := src.read(READ_PIECE):
                    w.add_chunk(offset, block, fmt.ChunkFlags.FILE_DATA)
                    offset += len(block)
                    count += 1
        except OSError as e:
            raise SaveError(f"cannot read deleted file {f.target} (fd {f.fd}): "
                            f"{e.strerror}") from None
        return [first, count]

    def _files(self, maps: list[Mapping]) -> tuple[list[FileRef], dict[int, int]]:
        files: list[FileRef] = []
        index: dict[str, int] = {}
        file_of: dict[int, int] = {}
        for m in maps:
            if m.kind not in (Kind.FILE, Kind.FILE_SHARED):
                continue
            if _is_image(m.path):
                # Memory a lazy restore maps from an image: a private copy, never the image.
                if m.path not in self.lazy_images:
                    self.lazy_images.add(m.path)
                    self.notes.append(f"memory that a lazy restore maps from {m.path} is saved "
                                      "as private copies")
                m.kind = Kind.DELETED
                self.image_sizes[m.start] = os.path.getsize(m.path)
                continue
            if m.path not in index:
                try:
                    ref = fileid.identify(m.path)
                except OSError as e:
                    # Renamed or unreadable since it was mapped: keep the memory only.
                    self.notes.append(f"{m.path}: {e.strerror}; its mappings are saved as copies")
                    m.kind = Kind.DELETED
                    continue
                if (ref.dev, ref.ino) != _dev_ino(m):
                    self.notes.append(f"{m.path} was replaced on disk since it was mapped; "
                                      "its mappings are saved as copies")
                    m.kind = Kind.DELETED
                    continue
                index[m.path] = len(files)
                files.append(ref)
            file_of[m.start] = index[m.path]
        return files, file_of

    # -- the process -------------------------------------------------------------

    def _process(self, files: list[FileRef], threads: list[ThreadState]) -> ProcessInfo:
        stat = self.proc.stat()
        # Anew: a signal sent while it is stopped is queued (ShdPnd), as PEEKSIGINFO sees.
        status = self.proc.status()
        mm = {k: stat[k] for k in MM_FIELDS}
        mm["brk"] = self.state.brk()
        exe = self._exe()
        exe_file = next((i for i, f in enumerate(files) if f.path == exe), -1)
        timers = self.state.posix_timers()
        return ProcessInfo(
            pid=self.inf.pid, exe=exe, exe_file=exe_file, cwd=self.proc.cwd(),
            comm=self.proc.comm(), cmdline=self.proc.cmdline(), kernel=kernel_identity(),
            saved_at=time.time(), tool_version=__version__, mm=MmBounds(**mm),
            auxv=[list(p) for p in self.proc.auxv()], personality=self.proc.personality(),
            umask=int(status.get("Umask", "0022"), 8), uid=int(status["Uid"].split()[0]),
            gid=int(status["Gid"].split()[0]), sigactions=self.state.sigactions(status),
            sigpending=sigset(status.get("ShdPnd", "0")),
            shared_pending=self.state.pending(self.inf.pid, shared=True),
            stopped_by=self.front.stop_reason(),
            rlimits=[Rlimit(*r) for r in rlimits(self.inf.pid)],
            itimers=self.state.itimers(), timers=timers,
            no_new_privs=status.get("NoNewPrivs", "0") == "1",
            ppid=int(stat["ppid"]), pgid=int(stat["pgrp"]), sid=int(stat["session"]),
            subreaper=self.state.subreaper(), pdeathsig=self.state.pdeathsig(),
            dumpable=self.state.dumpable(), nice=int(stat["nice"]),
            not_restored=list(self.lost), tid_offset=self._tid_offset(threads),
            xcomp_perm=self.state.xcomp_perm(), clocks=clockmod.of_process(self.inf.pid),
            creds=msgspec.structs.replace(credsmod.from_status(status),
                                      securebits=self.state.securebits()))

    def _tid_offset(self, threads: list[ThreadState]) -> int | None:
        """Where glibc keeps a thread's id, read from libc: needed only where the kernel
        did not tell a thread's clear-child-tid address (it is &pd->tid)."""
        if all(t.tid_address for t in threads):
            return None
        from . import elfsym  # pyelftools: 20 ms to import
        return elfsym.tid_offset(self.inf)

    def _exe(self) -> str:
        exe = self.proc.exe()
        # A process gdbckpt restored without the right to set its exe link
        # still points at the stub: the front end, or the mapping of the
        # program's code, knows the real program.
        if os.path.basename(exe) == "gdbckpt-stub":
            start = int(self.proc.stat()["start_code"])
            code = next((m.path for m in self.inf.maps() if m.start <= start < m.end
                         and m.path.startswith("/")), None)
            return self.front.program() or code or exe
        return exe.removesuffix(" (deleted)")

    def _threads(self) -> list[ThreadState]:
        current = self.inf.current
        try:
            out = []
            for tid in self.inf.tids:
                self.inf.current = tid
                out.append(self._thread(tid))
            return out
        finally:
            self.inf.current = current

    def _thread(self, tid: int) -> ThreadState:
        regs = self.inf.regs(tid)
        xstate = xstatemod.split(self.inf.xstate(tid), xstatemod.live_layout())
        rip = regsmod.get(regs, "rip")
        try:
            before = self.inf.read(rip - 7, 7)
        except CkptError:
            before = b""
        syscall = regsmod.apply_restart(regs, before, self.inf.read)
        if syscall and syscall.action == "restart":
            self.notes.append(f"thread {tid} was inside system call {sysname(syscall.nr)}: "
                              "it makes the call again after a restore")
        elif syscall:
            self.notes.append(f"thread {tid} was inside restart_syscall, whose call is unknown: "
                              "after a restore that call returns EINTR")
        task = Proc(self.inf.pid, tid)
        rseq = self.inf.rseq_config(tid)
        robust = self.inf.robust_list(tid)
        altstack, tid_address = self.state.sigaltstack(), self.state.tid_address()
        # Only now: a thread in sigsuspend, ppoll or pselect had a temporary mask, and
        # the kernel put its own back as the thread left that call for the injected ones.
        mask = self.inf.sigmask(tid)
        return ThreadState(
            tid=tid, regs=regs, xstate=xstate, sigmask=mask, name=task.comm(),
            syscall=syscall, rseq=Rseq(*rseq) if rseq else None,
            sigaltstack=altstack, tid_address=tid_address,
            robust_list=list(robust) if robust else None,
            pending=self.state.pending(tid) + self._stop_signal(tid),
            cpus=sorted(os.sched_getaffinity(tid)))

    def _stop_signal(self, tid: int) -> list[bytes]:
        """The signal the thread stopped with, when its tracer would pass it on resuming.

        It has already left the kernel's queue (the tracer holds it), so
        pending signals do not show it; the original would get it on resuming.
        """
        data = self.front.stop_signal(self.inf, tid)
        if not data:
            return []
        signo = int.from_bytes(data[:4], "little", signed=True)
        if signo in (SIGTRAP, SIGSTOP) or debuggers_own(data):
            return []
        self.notes.append(f"thread {tid} stopped with signal {signo}, which GDB would pass: "
                          "it is delivered after a restore")
        return [data.ljust(128, b"\0")[:128]]

    # -- mappings ------------------------------------------------------------------

    def _vma(self, m: Mapping, file_of: dict[int, int]) -> Vma:
        shm = None
        if m.kind == Kind.SHMEM and m.path.startswith("/SYSV"):
            seg = self.sysv.get(m.inode)
            if seg is None:
                self.notes.append(f"SysV segment {m.inode} of {m.describe()} is gone from "
                                  "/proc/sysvipc/shm: restored as shared anonymous memory")
            else:
                shm = SysvShm(key=seg[0], id=m.inode, size=seg[1], perms=seg[2])
        return Vma(start=m.start, end=m.end, prot=int(m.prot), shared=m.shared, kind=m.kind.value,
                   path=m.path, offset=m.offset, file=file_of.get(m.start, -1),
                   vmflags=list(m.vmflags), inode=m.inode, shm=shm)

    def _vdso(self, maps: list[Mapping]) -> VdsoInfo:
        info = VdsoInfo()
        for m in maps:
            if m.kind in (Kind.VDSO, Kind.VVAR, Kind.VVAR_VCLOCK):
                setattr(info, m.kind.value, [m.start, m.end])
            if m.kind == Kind.VDSO:
                data = self.inf.read(m.start, m.size)
                info.hash = vdsomod.digest(data)
                info.build_id = vdsomod.build_id(data)
            if m.kind == Kind.ANON and m.prot == Prot.READ and m.size == PAGE_SIZE:
                # A restore that patched an older vDSO left a mark page: keep knowing it.
                found = vdsomod.read_mark(self.inf.read(m.start, vdsomod.MARK.size))
                if found:
                    info.proxy, info.mark = list(found[0]), [m.start, m.end]
            if m.kind == Kind.SPECIAL:
                self.notes.append(f"mapping {m.describe()} is made by the kernel and cannot be "
                                  "restored; it is left out")
        return info


SELF_DUMP_FROM = 4 << 20
FIRST_BATCH = 8 << 20       # written while the state is read (begin_self_dump)
OVERLAP_WITHIN = 0.015      # seconds stopped, after which the state is read on its own


def _split(maps: list[Mapping]) -> tuple[list[Mapping], list[Mapping]]:
    """What must be read while the process is stopped, and what a snapshot can give later:
    a fork shares shared memory with the process, and has no DONTFORK mappings and
    zeroes WIPEONFORK ones."""
    def now(m: Mapping) -> bool:
        return m.shared or m.kind in (Kind.SHMEM, Kind.FILE_SHARED, Kind.VDSO) or \
            "dc" in m.vmflags or "wf" in m.vmflags
    return [m for m in maps if now(m)], [m for m in maps if not now(m)]


def _cut(todo: list[Region], pages: int) -> tuple[list[Region], list[Region]]:
    """The first pages of todo, and the rest (a region cut in two where they end)."""
    head = []
    for i, r in enumerate(todo):
        if r.count > pages:
            if pages:
                head.append(Region(r.mapping, r.first, pages, r.dirty[:pages]))
            rest = Region(r.mapping, r.first + pages, r.count - pages, r.dirty[pages:])
            return head, [rest] + todo[i + 1:]
        head.append(r)
        pages -= r.count
    return head, []


def _size(todo: list) -> int:
    return sum(r.count for r in todo) * PAGE_SIZE


def _is_image(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(fmt.MAGIC)) == fmt.MAGIC
    except OSError:
        return False


def _dev_ino(m: Mapping) -> tuple[int, int]:
    major, minor = (int(x, 16) for x in m.dev.split(":"))
    return os.makedev(major, minor), m.inode
