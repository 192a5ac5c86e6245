"""ckpt restore: image -> a stub under GDB -> the saved process, stopped where it was.

Reads and checks the image, starts the stub, asks it what it looks like,
builds the plan (plan.py) and runs it: stub ops in batches, the rest from
here. Any failure kills the stub, so no half-restored process is left
running, and names the step that failed.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import signal
import struct
import time

import gdb

from .. import plan as planmod
from .. import sysv
from .. import tids as tidsmod
from .. import vdso as vdsomod
from ..errors import CkptError, RestoreError
from ..image import Image
from ..image import format as fmt
from ..libc import libc
from ..linux import Prctl, PrSetMM, Sys, is_syscall_error
from ..maps import Kind
from ..mi import cli_arg
from ..procfs import Proc, parse_limits
from ..stubabi import RET_OFFSET, STUB_OP, StubOpFlags
from . import settings
from .inferior import Inferior
from .stub import OpFailed, Stub, kill_selected, scratch_inferior


@dataclasses.dataclass
class RestoreResult:
    pid: int
    image: Image
    plan: planmod.Plan
    warnings: list[str]
    seconds: float
    phases: dict[str, float]


def restore(path: str, *, vdso_mode: str = "auto", dry_run: bool = False,
            verify: bool | None = None, stdio: dict[int, str] | None = None,
            force: bool = False, detach: bool = False, lazy: bool = False,
            from_tty: bool = False) -> RestoreResult:
    """Restore the image at path; with detach, let it run on its own in a new session.

    lazy maps memory from the image instead of copying it (pages arrive when
    first touched); it checks the metadata but not the memory's checksums,
    which would mean reading it all.
    """
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    img = Image.open(os.path.abspath(path))
    fill = "lazy" if lazy else settings.value("fill-method")
    if (verify if verify is not None else settings.get("verify")) and not lazy:
        img.verify_chunks()
    checks = _Checks(planmod.check_files(img), planmod.check_fds(img), force)
    phases["read image"] = time.perf_counter() - t0
    if dry_run:
        checks.sysv = sysv.prepare(img.vmas, create=False)
        ids = [t.tid for t in img.threads]
        checks.same_ids = _may_choose_ids() and not any(_exists(t) for t in ids)
        # A stub of its own in a scratch inferior: the process being debugged stays as it is.
        with settings.temporarily(suppress_cli_notifications="on"), scratch_inferior():
            stub = Stub.start()
            try:
                plan = planmod.build(img, _live(stub, img, checks), vdso_mode, stdio, fill)
            finally:
                stub.inf.close()
        return RestoreResult(0, img, plan, plan.warnings, time.perf_counter() - t0, phases)
    # What can be refused without a stub is refused before the process being debugged
    # is replaced. This GDB's own process has this kernel's vDSO.
    planmod.preflight(img, live_vdso=vdsomod.own_vdso(), live_layout=vdsomod.own_layout(),
                      register_names=_current_register_names(), fd_checks=checks.fds,
                      force=force, fill=fill, vdso_mode=vdso_mode)
    _replace_current(from_tty)
    with settings.temporarily(suppress_cli_notifications="on"):
        return _restore(img, checks, vdso_mode, stdio, phases, t0, detach, fill)


@dataclasses.dataclass
class _Checks:
    """What was found about the world before the restore: files, descriptors, segments."""
    files: dict[int, str | None]
    fds: dict[int, tuple[str, str]]
    force: bool
    sysv: dict = dataclasses.field(default_factory=dict)
    same_ids: bool = False


def _restore(img, checks: _Checks, vdso_mode, stdio, phases, t0, detach,
             fill) -> RestoreResult:
    ids = [t.tid for t in img.threads]
    want = ids[0] if _may_choose_ids() and not any(_exists(t) for t in ids) else 0
    stub = Stub.start(want, new_session=detach)
    checks.same_ids = bool(want) and stub.pid == want and not any(_exists(t) for t in ids[1:])
    phases["start stub"] = time.perf_counter() - t0
    try:
        checks.sysv = sysv.prepare(img.vmas)
        live = _live(stub, img, checks)
        plan = planmod.build(img, live, vdso_mode, stdio, fill)
        phases["plan"] = time.perf_counter() - t0
        warnings = list(plan.warnings)
        # Inferior calls run only the thread they are made in.
        executor = _Executor(stub, img, plan)
        try:
            with settings.temporarily(scheduler_locking="on"):
                warnings += executor.run(phases, t0)
        finally:
            executor.close()
        phases["process ready"] = time.perf_counter() - t0
        if detach:
            if plan.after_attach:
                _reattach(stub.pid, None)    # GDB must see the other threads to set them
                executor.after_attach()
            warnings += _after_attach(img)
            with settings.temporarily(confirm="off"):
                gdb.execute("detach", to_string=True)
            if plan.after_attach:
                os.kill(stub.pid, signal.SIGCONT)    # end the stop _reattach left
            phases["detach"] = time.perf_counter() - t0
            return RestoreResult(stub.pid, img, plan, warnings, time.perf_counter() - t0,
                                 phases)
        exe = img.process.exe
        changed = checks.files.get(img.process.exe_file) if img.process.exe_file >= 0 else None
        if changed:
            warnings.append(f"the program changed since the save ({changed}): GDB has no "
                            "symbols for it, only for its shared libraries")
            exe = None
        _reattach(stub.pid, exe)
        executor.after_attach()
        # The SIGSTOP of _reattach left a job-control stop that the next resume
        # would report again: SIGCONT ends it. GDB must not stop on (or pass)
        # that SIGCONT, until the next stop, when the user's setting comes back.
        settings.signal_quietly_once("SIGCONT")
        os.kill(stub.pid, signal.SIGCONT)
        warnings += _after_attach(img)
        phases["load symbols"] = time.perf_counter() - t0
    except BaseException as e:
        kill_selected()
        _kill_quietly(stub.pid)     # GDB may have let go of it (a failed attach)
        sysv.remove(checks.sysv)
        if isinstance(e, gdb.error):
            raise RestoreError(f"GDB failed during the restore: {e}") from None
        raise
    finally:
        stub.inf.close()
    return RestoreResult(stub.pid, img, plan, warnings, time.perf_counter() - t0, phases)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _current_register_names() -> set[str]:
    """The registers GDB has for this CPU, if a process is there to ask; else empty."""
    if not gdb.selected_inferior().pid:
        return set()
    try:
        return set(Inferior(RestoreError).register_names())
    except (gdb.error, CkptError):
        return set()


def _replace_current(from_tty: bool) -> None:
    """A live process is replaced, after GDB's usual confirmation."""
    if gdb.selected_inferior().pid:
        try:
            gdb.execute("kill", from_tty=from_tty, to_string=not from_tty)
        except gdb.error as e:
            raise RestoreError(f"the current process was kept ({e})") from None


def _live(stub: Stub, img: Image, checks: _Checks) -> planmod.Live:
    maps = stub.mappings()
    vdso = next((m for m in maps if m.kind == Kind.VDSO), None)
    proc = Proc(stub.pid)
    return planmod.Live(
        stub_maps=maps, scratch=stub.scratch.base,
        vdso=stub.inf.read(vdso.start, vdso.size) if vdso else None,
        fd_limit=stub.fd_limit(), image_path=img.path, file_problems=checks.files,
        can_set_exe=_may_set_exe(), stub_pid=stub.pid,
        stub_fds={int(n) for n in os.listdir(f"/proc/{stub.pid}/fd")},
        stub_limits={r: (s, h) for r, s, h in parse_limits(proc.limits())},
        has_tty=_has_tty(), fd_checks=checks.fds, force=checks.force,
        timer_ids=_timer_ids_supported(), stub_nice=int(proc.stat()["nice"]),
        sysv=checks.sysv, same_ids=checks.same_ids,
        register_names=set(stub.inf.register_names()))


def _has_tty() -> bool:
    """Whether /dev/tty opens: the restoring session (GDB, and so the stub) has a terminal."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
        return True
    except OSError:
        return False


def _timer_ids_supported() -> bool:
    return libc().prctl(planmod.PR_TIMER_CREATE_RESTORE_IDS, 2, 0, 0, 0) >= 0


def _after_attach(img: Image) -> list[str]:
    """What must wait until GDB holds the restored process: the dumpable flag."""
    if img.process.dumpable == 1:
        return []
    inf = Inferior(RestoreError)
    try:
        ret = inf.syscall(Sys.prctl, Prctl.SET_DUMPABLE, img.process.dumpable)
    finally:
        inf.close()
    if is_syscall_error(ret):
        return [f"the dumpable flag stays 1: PR_SET_DUMPABLE: {os.strerror(-ret)}"]
    return []


def _checkpoint_capable() -> bool:
    """CAP_SYS_ADMIN (21) or CAP_CHECKPOINT_RESTORE (40): what the exe link, ns_last_pid
    and clone3's set_tid need."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                return bool(caps >> 21 & 1 or caps >> 40 & 1)
    return False


_may_set_exe = _may_choose_ids = _checkpoint_capable


def _exists(tid: int) -> bool:
    return os.path.exists(f"/proc/{tid}")


class _Executor:
    def __init__(self, stub: Stub, img: Image, plan: planmod.Plan):
        self.stub = stub
        self.inf = stub.inf
        self.img = img
        self.plan = plan
        self.warnings: list[str] = []
        self.batch: list[tuple[int, planmod.Op]] = []
        self._buf = None
        self._img_fd = None

    def run(self, phases: dict[str, float], t0: float) -> list[str]:
        tids = self.stub.scratch.tids
        tids[self.img.threads[0].tid] = self.stub.pid
        tids[0] = self.stub.pid
        for i, step in enumerate(self.plan.steps):
            if step.python:
                self._flush()
                self._python_step(i, step)
            else:
                self.batch.extend((i, op) for op in step.ops(self.stub.scratch))
            if isinstance(step, planmod.CloneThread):
                self._flush()       # later steps need its thread id
            if isinstance(step, planmod.Registers) and "memory" not in phases:
                phases["memory"] = time.perf_counter() - t0
        self._flush()
        self.inf.memory_changed()
        return self.warnings

    def after_attach(self) -> None:
        """The other threads' registers, now that GDB has attached to every thread."""
        if not self.plan.after_attach:
            return
        selected = gdb.selected_thread()
        for step in self.plan.after_attach:
            self.stub.switch_to(self.stub.scratch.tids[step.thread])
            try:
                self._registers(step.state)
            except CkptError as e:
                raise RestoreError(f"thread {step.state.tid}: {e}") from None
        selected.switch()
        gdb.execute("maintenance flush register-cache", to_string=True)

    def _flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        try:
            ignored, results = self.stub.run(batch)
        except OpFailed as e:
            step = self.plan.steps[e.index]
            raise RestoreError(f"step {e.index} ({step.describe()}) failed: {e}") from None
        except gdb.error as e:
            raise RestoreError(f"the restart stub failed while running ops: {e}") from None
        for (index, _), ret in zip(batch, results, strict=False):
            step = self.plan.steps[index]
            if isinstance(step, planmod.CloneThread):
                self.stub.scratch.tids[step.state.tid] = ret
                self._check_setup(index, step)
        for index, op, errno in ignored:
            from .stub import op_name
            self.warnings.append(f"{self.plan.steps[index].describe()}: {op_name(op)}: "
                                 f"{os.strerror(errno)}")

    def _check_setup(self, index: int, step: planmod.CloneThread) -> None:
        """The new thread ran its own setup ops: fail on what failed there."""
        from .stub import op_name
        raw = self.inf.read(step.setup_at, STUB_OP.size * len(step.setup_ops))
        for k, op in enumerate(step.setup_ops):
            ret = int.from_bytes(raw[k * STUB_OP.size + RET_OFFSET:][:8], "little", signed=True)
            if is_syscall_error(ret):
                msg = f"thread {step.state.tid}: {op_name(op)}: {os.strerror(-ret)}"
                if not op.flags & StubOpFlags.IGNORE_ERROR:
                    raise RestoreError(f"step {index} ({step.describe()}) failed: {msg}")
                self.warnings.append(msg)

    def _python_step(self, i: int, step: planmod.Step) -> None:
        try:
            if isinstance(step, planmod.WriteChunks):
                self._write_chunks(step.chunks)
            elif isinstance(step, planmod.PatchVdso):
                for patch in step.patches:
                    self.inf.write(patch.addr, patch.code)
            elif isinstance(step, planmod.WriteBytes):
                self.inf.write(step.addr, step.data)
            elif isinstance(step, planmod.Registers):
                self._registers(step.state)
            elif isinstance(step, planmod.PatchTids):
                self._patch_tids(step)
            elif isinstance(step, planmod.DropStub):
                self._drop_stub(step.ranges)
            elif isinstance(step, planmod.SetExe):
                self._set_exe(step)
        except CkptError as e:
            raise RestoreError(f"step {i} ({step.describe()}) failed: {e}") from None

    def _registers(self, state) -> None:
        self.inf.set_sigmask(gdb.selected_thread().ptid[1], state.sigmask)
        self.inf.write_registers(state.regs)

    def _write_chunks(self, chunks) -> None:
        """Copy chunks through /proc/PID/mem: raw ones through one reused buffer."""
        if self._buf is None:
            self._buf = mmap.mmap(-1, 4 << 20)
            self._img_fd = os.open(self.img.path, os.O_RDONLY | os.O_CLOEXEC)
        view = memoryview(self._buf)
        for c in chunks:
            if c.codec != fmt.Codec.NONE or c.flags & fmt.ChunkFlags.ZERO:
                self.inf.write(c.vaddr, self.img.read_chunk(c, self._img_fd))
                continue
            for off in range(0, c.size, len(self._buf)):
                n = min(len(self._buf), c.size - off)
                try:
                    got = os.preadv(self._img_fd, [view[:n]], c.offset + off)
                except OSError as e:
                    raise RestoreError(f"reading the image failed: {e.strerror}") from None
                if got != n:
                    raise RestoreError(f"the image ends inside the chunk at {c.vaddr:#x}")
                self.inf.write(c.vaddr + off, view[:n])

    def close(self) -> None:
        if self._img_fd is not None:
            os.close(self._img_fd)

    def _patch_tids(self, step: planmod.PatchTids) -> None:
        tids = self.stub.scratch.tids
        if step.leader_tid_at is not None:
            now = struct.unpack("<i", self.inf.read(step.leader_tid_at, 4))[0]
            if now == step.old_pid:
                self.inf.write(step.leader_tid_at, struct.pack("<i", self.stub.pid))
            else:
                self.warnings.append(f"the main thread's descriptor holds tid {now}, not "
                                     f"{step.old_pid}: left as it is")
        for ref in step.mutexes:
            raw = self.inf.read(ref.addr, tidsmod.MUTEX.size)
            new = tidsmod.patched_mutex(raw, ref, tids[ref.old_tid])
            if new is not None:
                self.inf.write(ref.addr, new)

    def _drop_stub(self, ranges: list[tuple[int, int]]) -> None:
        self.inf.exclude_from_syscall_search(ranges)
        # GDB's breakpoints in the stub would fail to lift once it is gone.
        for bp in gdb.breakpoints():
            if bp.location and "stub_" in bp.location:
                bp.delete()
        for start, end in ranges:
            self.inf.syscall_ok(Sys.munmap, start, end - start,
                                what=f"munmap of the stub at {start:#x}")

    def _set_exe(self, step: planmod.SetExe) -> None:
        """The exe link is a nicety: failing to set it is a warning, never a failed restore."""
        mm = step.mm_map()
        try:
            ret = self.inf.call_with_input(Sys.prctl, (Prctl.SET_MM, PrSetMM.MAP), mm, (len(mm),))
            self.inf.syscall(Sys.close, step.fd)
        except CkptError as e:
            self.warnings.append(f"the exe link still names the stub: {e}")
            return
        if is_syscall_error(ret):
            self.warnings.append(f"the exe link still names the stub: PR_SET_MM_EXE_FILE: "
                                 f"{os.strerror(-ret)}")


def _reattach(pid: int, exe: str | None) -> None:
    """Hand GDB the real program: stop, detach, load its file, attach again.

    GDB cached the stub's auxv and symbols; only a fresh attach makes it read
    the restored process as what it now is (shared libraries, TLS, all its
    threads). The process is left in a job-control stop (SIGSTOP).
    """
    os.kill(pid, signal.SIGSTOP)
    with settings.temporarily(confirm="off", exec_file_mismatch="off"):
        gdb.execute("detach", to_string=True)
        if exe and os.path.exists(exe):
            gdb.execute(f"file {cli_arg(exe)}", to_string=True)
        else:
            gdb.execute("file", to_string=True)      # not the stub's symbols
        gdb.execute(f"attach {pid}", to_string=True)

