"""ckpt save: stopped process -> image.

The pipeline: what /proc and ptrace tell (maps, stat, status, auxv, rseq),
what only the process can tell (brk, signal handlers, through injected
system calls), the registers of every thread through GDB, then the memory
(memory.py) and the metadata into the image writer.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import time

import gdb

from .. import __version__, fileid
from .. import regs as regsmod
from .. import vdso as vdsomod
from ..errors import SaveError
from ..image import format as fmt
from ..image.model import (
    FileRef,
    MmBounds,
    ProcessInfo,
    Rseq,
    SigAction,
    SigAltStack,
    ThreadState,
    VdsoInfo,
    Vma,
)
from ..image.writer import ImageWriter
from ..linux import NSIG, PAGE_SIZE, Prot, Sys
from ..maps import STORED_KINDS, Kind, Mapping, read_mappings
from ..memory import MemoryDumper, regions
from ..procfs import MM_FIELDS, Proc, kernel_identity, sigset
from . import settings
from .inferior import Inferior, check_stopped

SIGKILL, SIGSTOP = 9, 19
KERNEL_SIGACTION = struct.Struct("<QQQQ")   # handler, flags, restorer, mask
STACK_T = struct.Struct("<QiiQ")            # ss_sp, ss_flags, pad, ss_size


@dataclasses.dataclass
class SaveResult:
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


def save(path: str, *, sync: bool | None = None, compress: bool = False) -> SaveResult:
    t0 = time.perf_counter()
    check_stopped(SaveError)
    inf = Inferior(SaveError)
    try:
        return _Saver(inf, path, settings.get("sync") if sync is None else sync,
                      compress).run(t0)
    finally:
        inf.close()


class _Saver:
    def __init__(self, inf: Inferior, path: str, sync: bool, compress: bool):
        self.inf = inf
        self.path = path
        self.sync = sync
        self.compress = compress
        self.proc = Proc(inf.pid)
        self.notes: list[str] = []

    def run(self, t0: float) -> SaveResult:
        maps = read_mappings(self.inf.pid)
        files, file_of = self._files(maps)
        threads = self._threads()
        process = self._process(files)
        compressor = None
        if self.compress:
            import zstandard
            compressor = zstandard.ZstdCompressor(level=1)
        with ImageWriter(self.path, sync=self.sync, compressor=compressor) as w:
            dumper = MemoryDumper(self.inf.pid, w)
            try:
                for m in maps:
                    if m.kind not in STORED_KINDS:
                        continue
                    ref = files[file_of[m.start]] if m.start in file_of else None
                    for region in regions(self.inf.pid, m, ref.size if ref else None):
                        dumper.dump(region)
            finally:
                dumper.close()
            w.add_record(fmt.RecordType.PROCESS, process)
            for th in threads:
                w.add_record(fmt.RecordType.THREAD, th)
            w.add_record(fmt.RecordType.VMAS, {"vmas": [self._vma(m, file_of) for m in maps]})
            w.add_record(fmt.RecordType.FILES, {"files": files})
            w.add_record(fmt.RecordType.VDSO, self._vdso(maps))
            if self.notes:
                w.add_record(fmt.RecordType.NOTES, {"notes": self.notes})
            final = w.commit()
        st = dumper.stats
        return SaveResult(path=final, pid=self.inf.pid, comm=process.comm, threads=len(threads),
                          mappings=len(maps), stored=st.stored, mapped=st.mapped,
                          image_size=os.path.getsize(final),
                          seconds=time.perf_counter() - t0, notes=self.notes)

    # -- what /proc tells ---------------------------------------------------

    def _files(self, maps: list[Mapping]) -> tuple[list[FileRef], dict[int, int]]:
        files: list[FileRef] = []
        index: dict[str, int] = {}
        file_of: dict[int, int] = {}
        for m in maps:
            if m.kind not in (Kind.FILE, Kind.FILE_SHARED):
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

    def _process(self, files: list[FileRef]) -> ProcessInfo:
        stat = self.proc.stat()
        status = self.proc.status()
        mm = {k: stat[k] for k in MM_FIELDS}
        mm["brk"] = self.inf.syscall_ok(Sys.brk, 0, what="brk(0)")
        exe = self._exe()
        exe_file = next((i for i, f in enumerate(files) if f.path == exe), -1)
        return ProcessInfo(
            pid=self.inf.pid, exe=exe, exe_file=exe_file, cwd=self.proc.cwd(),
            comm=self.proc.comm(), cmdline=self.proc.cmdline(), kernel=kernel_identity(),
            saved_at=time.time(), tool_version=__version__, mm=MmBounds(**mm),
            auxv=[list(p) for p in self.proc.auxv()], personality=self.proc.personality(),
            umask=int(status.get("Umask", "0022"), 8), uid=int(status["Uid"].split()[0]),
            gid=int(status["Gid"].split()[0]), sigactions=self._sigactions(status),
            sigpending=sigset(status.get("ShdPnd", "0")), stopped_by=_stop_reason())

    def _exe(self) -> str:
        exe = self.proc.exe()
        # A process gdbckpt restored without the right to set its exe link
        # still points at the stub: GDB knows the real program.
        if os.path.basename(exe) == "gdbckpt-stub":
            prog = gdb.current_progspace().filename
            if prog:
                return prog
        return exe.removesuffix(" (deleted)")

    def _sigactions(self, status: dict[str, str]) -> list[SigAction]:
        """Handlers of every signal not at its default, read with injected rt_sigaction."""
        interesting = sigset(status.get("SigCgt", "0")) | sigset(status.get("SigIgn", "0"))
        out = []
        for sig in range(1, NSIG + 1):
            if not interesting >> (sig - 1) & 1 or sig in (SIGKILL, SIGSTOP):
                continue
            _, raw = self.inf.call_with_output(Sys.rt_sigaction, (sig, 0), KERNEL_SIGACTION.size,
                                               (8,), what=f"rt_sigaction({sig})")
            handler, flags, restorer, mask = KERNEL_SIGACTION.unpack(raw)
            out.append(SigAction(sig=sig, handler=handler, flags=flags, restorer=restorer,
                                 mask=mask))
        return out

    def _threads(self) -> list[ThreadState]:
        selected = gdb.selected_thread()
        out = []
        try:
            for th in self.inf.threads():
                th.switch()
                out.append(self._thread(th))
        finally:
            if selected is not None and selected.is_valid():
                selected.switch()
        return out

    def _thread(self, th) -> ThreadState:
        tid = th.ptid[1]
        regs = self.inf.read_registers()
        syscall = regsmod.apply_restart(regs)
        if syscall:
            self.notes.append(f"thread {tid} was inside system call {_sysname(syscall.nr)}: "
                              "it makes the call again after a restore")
        task = Proc(self.inf.pid, tid)
        status = task.status()
        rseq = self.inf.rseq_config(tid)
        robust = self.inf.robust_list(tid)
        return ThreadState(
            tid=tid, regs=regs, sigmask=sigset(status.get("SigBlk", "0")), name=task.comm(),
            syscall=syscall, rseq=Rseq(*rseq) if rseq else None,
            sigaltstack=self._sigaltstack(), robust_list=list(robust) if robust else None)

    def _sigaltstack(self) -> SigAltStack | None:
        _, raw = self.inf.call_with_output(Sys.sigaltstack, (0,), STACK_T.size,
                                           what="sigaltstack")
        sp, flags, _, size = STACK_T.unpack(raw)
        SS_DISABLE = 2
        if flags & SS_DISABLE:
            return None
        return SigAltStack(sp=sp, flags=flags, size=size)

    def _vma(self, m: Mapping, file_of: dict[int, int]) -> Vma:
        return Vma(start=m.start, end=m.end, prot=int(m.prot), shared=m.shared, kind=m.kind.value,
                   path=m.path, offset=m.offset, file=file_of.get(m.start, -1),
                   vmflags=list(m.vmflags))

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


def _dev_ino(m: Mapping) -> tuple[int, int]:
    major, minor = (int(x, 16) for x in m.dev.split(":"))
    return os.makedev(major, minor), m.inode


def _sysname(nr: int) -> str:
    try:
        return Sys(nr).name
    except ValueError:
        return str(nr)


def _stop_reason() -> str:
    try:
        sig = int(gdb.parse_and_eval("$_siginfo.si_signo"))
    except gdb.error:
        return ""
    return {5: "breakpoint or step (SIGTRAP)", 2: "interrupted (SIGINT)",
            19: "SIGSTOP"}.get(sig, f"signal {sig}")
