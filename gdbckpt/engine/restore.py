"""Restore: image -> plan -> the restart stub, driven by our own ptrace, -> the saved process.

Reads and checks the image, starts the stub, asks it what it looks like,
builds the plan (plan.py) and runs it: stub ops in batches, the rest from
here (register sets, compressed memory, the last touches once the stub is
gone). Any failure kills the stub, so no half-restored process is left, and
names the step that failed. The process is then let go, stopped for a
debugger to attach, or running.
"""

from __future__ import annotations

import errno
import mmap
import os
import resource
import stat
import struct
import threading
import time

import msgspec

from .. import clocks as clockmod
from .. import creds as credsmod
from .. import fds as fdsmod
from .. import plan as planmod
from .. import sysv
from .. import tids as tidsmod
from .. import vdso as vdsomod
from ..errors import CkptError, ImageError, RestoreError
from ..image import Image
from ..image import format as fmt
from ..libc import libc
from ..linux import Prctl, PrSetMM, Sys, is_syscall_error, sysname
from ..maps import Kind
from ..procfs import Proc, rlimits
from ..stubabi import STUB_OP, StubOp, StubOpFlags
from . import fill as fillmod
from . import xstate as xstatemod
from .front import Front
from .process import Process
from .stub import OpFailed, PidTaken, Stub, op_name, pid_cursor, reserve_pids_up_to


class RestoreResult(msgspec.Struct):
    pid: int
    image: Image
    plan: planmod.Plan
    warnings: list[str]
    seconds: float
    phases: dict[str, float]
    tids: dict[int, int] = msgspec.field(default_factory=dict)   # saved tid -> live
    creds_taken: bool = False        # the process became the saved user
    members: dict[int, int] = msgspec.field(default_factory=dict)   # the rest of a
                                     # saved tree: saved pid -> live pid, running on


class Prepared(msgspec.Struct):
    """An image opened and checked, and what was found about this host, before the
    front end gives up anything (GDB kills the process it debugs only after this)."""
    img: Image
    files: dict[int, str | None]
    fds: dict[int, tuple[str, str]]
    force: bool
    fill: str
    vdso_mode: str
    stdio: dict[int, str]
    sysv: dict = msgspec.field(default_factory=dict)
    same_ids: bool = False
    time_offsets: tuple[int, int] | None = None
    clocks_note: str = ""
    clocks_back: bool = False
    take_creds: bool = False
    member_fds: dict[int, dict] = msgspec.field(default_factory=dict)  # a tree's others
    t0: float = 0.0
    phases: dict[str, float] = msgspec.field(default_factory=dict)
    checksums: Checksums | None = None   # being checked on a thread (prepare's background)

    def checked(self) -> None:
        """Wait for the memory checksums, if they are still being checked: raises
        ImageError for a corrupt image."""
        if self.checksums is not None:
            self.checksums.wait()

    def corrupt_first(self, failure: BaseException) -> None:
        """A restore failed: if the image is corrupt, say that rather than what broke on
        the corrupt bytes meanwhile (not on a Ctrl-C: no waiting then)."""
        if isinstance(failure, CkptError) and not isinstance(failure, ImageError):
            try:
                self.checked()
            except ImageError as e:
                raise e from None


class Checksums:
    """The image's memory checksums, checked on a thread of their own while the restore
    starts the stub and fills memory: on two cores the hashing costs a restore nothing.
    Whatever the restore does before it waits here stays inside the new process (its
    memory, files opened read-only), which a failed check kills (see _SEEN_INSIDE)."""

    def __init__(self, img: Image):
        self.error: BaseException | None = None
        self.fd = os.dup(img.fd)        # the Image may be dropped, and its fd closed, first
        self.thread = threading.Thread(target=self._run, args=(img,), daemon=True,
                                       name="gdbckpt-verify")
        self.thread.start()

    def _run(self, img: Image) -> None:
        try:
            img.verify_chunks(fd=self.fd)
        except BaseException as e:      # handed to wait()
            self.error = e
        finally:
            os.close(self.fd)

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def prepare(path: str, *, vdso_mode: str = "auto", verify: bool = True,
            stdio: dict[int, str] | None = None, force: bool = False,
            fill: str = "stub", clocks: str = "continue", background: bool = False) -> Prepared:
    """Open and check the image, and refuse what this host cannot restore.

    clocks: "continue" puts the process in a time namespace where its monotonic
    and boot-time clocks go on from the saved values, where that is permitted;
    "host" leaves them the host's.
    background: check the memory checksums on a thread while the restore begins (the
    restore waits for them before anything outside its new process changes); GDB's
    front end wants them checked before it kills the process it debugs.
    """
    t0 = time.perf_counter()
    img = Image.open(os.path.abspath(path))
    if fill == "lazy":
        _check_lazy(img)
    checksums = None
    if verify and fill != "lazy":
        if background:
            checksums = Checksums(img)
        else:
            img.verify_chunks()
    stdio = stdio or {}
    # A --stdin/--stdout/--stderr file stands in for the saved one: whether that is
    # gone does not matter.
    fds = {fd: check for fd, check in planmod.check_fds(img).items() if fd not in stdio}
    p = Prepared(img, planmod.check_files(img), fds, force, fill, vdso_mode, stdio, t0=t0,
                 checksums=checksums)
    for one in img.living:
        if one is not img:
            p.member_fds[one.process.pid] = planmod.check_fds(one)
        planmod.preflight(one, live_vdso=vdsomod.own_vdso(), live_layout=vdsomod.own_layout(),
                          xcr0=xstatemod.live_xcr0(),
                          fd_checks=p.fds if one is img else p.member_fds[one.process.pid],
                          force=force, fill=fill, vdso_mode=vdso_mode)
        creds = credsmod.check(one.process.creds, credsmod.own())
        if one is img:
            p.take_creds = creds
    p.time_offsets, p.clocks_note, p.clocks_back = clockmod.plan_for(img.process.clocks, clocks)
    p.phases["read image"] = time.perf_counter() - t0
    return p


def _check_lazy(img: Image) -> None:
    """A lazy restore maps the image into the process, copy-on-write: a file anyone else
    could write would change the running process under it."""
    st = os.fstat(img.fd)
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise RestoreError(f"--lazy maps the image into the process, and '{img.path}' may be "
                           f"written by others (owner uid {st.st_uid}, mode "
                           f"{st.st_mode & 0o777:o}): restore without --lazy, or from a copy "
                           "only you can write")


def dry_run(p: Prepared) -> RestoreResult:
    """The plan a restore would run, from a stub of its own that is then killed."""
    p.sysv = sysv.prepare(p.img.vmas, create=False)
    ids = [t.tid for t in p.img.threads]
    p.same_ids = _checkpoint_capable() and not any(_exists(t) for t in ids)
    stub = Stub.start(hand=_image_hand(p.img))
    try:
        if p.img.members:
            plan = _tree_plan(p, stub)
        else:
            plan = planmod.build(p.img, _live(stub, p), p.vdso_mode, p.stdio, p.fill)
    finally:
        stub.kill()
    p.checked()
    return RestoreResult(0, p.img, plan, plan.warnings, time.perf_counter() - p.t0, p.phases)


def _tree_plan(p: Prepared, stub: Stub) -> planmod.Plan:
    """One plan for the whole tree, to print: each process's own steps after the root's,
    each planned against a stub like the ones its fork would make."""
    from . import tree_restore as treemod
    objects = treemod.Objects(p.img.living)
    live = _live(stub, p, p.img, objects)
    root = planmod.build(p.img, live, p.vdso_mode, p.stdio, p.fill)
    steps, warnings = list(root.steps), list(root.warnings)
    for m, one in p.img.members:
        if one is None:
            warnings.append(f"process {m.pid} ends with status {m.exit_status:#x}: a zombie "
                            f"for {m.ppid} to reap")
            continue
        plan = planmod.build(one, _live(stub, p, one, objects), p.vdso_mode, {}, p.fill)
        steps.append(planmod.Member(pid=m.pid, ppid=m.ppid))
        steps += plan.steps
        warnings += [f"process {m.pid}: {w}" for w in plan.warnings]
    return planmod.Plan(steps, warnings, root.vdso_mode)


def restore(p: Prepared, *, front: Front | None = None, stopped: bool = True,
            new_session: bool = False, members_stopped: bool = False) -> RestoreResult:
    """Make the saved process, and let it go: stopped (for a debugger to attach, which
    then sets the dumpable flag: a non-dumpable process refuses an unprivileged
    attach) or running on its own (dumpable set here)."""
    front = front or Front()
    if p.img.members:
        return _restore_tree(p, front, stopped, new_session, members_stopped)
    try:
        return _restore(p, front, stopped, new_session, keep_tids=True)
    except _TidTaken as e:
        # Another process took a saved thread id between the check and the clone (a
        # busy machine): once more, with new thread ids patched in where glibc keeps
        # them; the process keeps its pid if it is free.
        front.log(f"{e}: restoring again with new thread ids")
        r = _restore(p, front, stopped, new_session, keep_tids=False)
        r.warnings.append(f"{e}: the threads got new ids")
        return r


class _TidTaken(PidTaken):
    pass


def _restore(p: Prepared, front: Front, stopped: bool, new_session: bool,
             keep_tids: bool) -> RestoreResult:
    img, t0, phases = p.img, p.t0, p.phases
    ids = [t.tid for t in img.threads]
    want = ids[0] if _checkpoint_capable() and not _exists(ids[0]) else 0
    stub = _start_stub(want, new_session, _image_hand(img), hold=ids[1:] if keep_tids else ())
    p.same_ids = keep_tids and bool(want) and stub.pid == want and \
        not any(_exists(t) for t in ids[1:])
    phases["start stub"] = time.perf_counter() - t0
    try:
        p.sysv = _sysv_segments(p)
        plan = planmod.build(img, _live(stub, p), p.vdso_mode, p.stdio, p.fill)
        phases["plan"] = time.perf_counter() - t0
        executor = _Executor(stub, img, plan, front, p.take_creds, checked=p.checked)
        try:
            warnings = list(plan.warnings) + executor.run(phases, t0)
        finally:
            executor.close()
        tids = _let_go(p, stub, stopped, warnings)
    except BaseException as e:
        stub.kill()
        sysv.remove(p.sysv)
        p.corrupt_first(e)
        raise
    return RestoreResult(stub.pid, img, plan, warnings, time.perf_counter() - t0, phases, tids,
                         p.take_creds)


def _restore_tree(p: Prepared, front: Front, stopped: bool, new_session: bool,
                  members_stopped: bool = False) -> RestoreResult:
    """A saved tree (engine/tree_restore.py): every process with its pid, the root's
    plan first; the descendants run on (or stay stopped, for a debugger), the root is
    let go as asked. A pid taken between the check and its fork (a busy machine): once
    more, in a pid namespace of its own."""
    try:
        return _restore_tree_once(p, front, stopped, new_session, members_stopped, False)
    except PidTaken as e:
        front.log(f"{e}: restoring again in a new pid namespace")
        return _restore_tree_once(p, front, stopped, new_session, members_stopped, True)


def _restore_tree_once(p: Prepared, front: Front, stopped: bool, new_session: bool,
                       members_stopped: bool, in_ns: bool) -> RestoreResult:
    from . import tree_restore as treemod
    img, t0, phases = p.img, p.t0, p.phases
    capable = _checkpoint_capable()
    in_ns = in_ns or treemod.check_pids(img) or not capable
    hand = _image_hand(img)
    if in_ns:
        # New pid and mount namespaces take CAP_SYS_ADMIN; without it, a user namespace.
        userns = not credsmod.have(credsmod.CAP_SYS_ADMIN)
        root, helpers = treemod.start_in_namespace(img, new_session, hand, userns=userns)
    else:
        root, helpers = _start_stub(img.process.pid, new_session, hand,
                                    hold=treemod.saved_ids(img)), []
    stubs = {img.process.pid: root}
    objects = treemod.Objects(img.living)
    try:
        if root.inner_pid != img.process.pid:
            raise PidTaken(f"pid {img.process.pid} was taken meanwhile")
        p.same_ids = True
        made: dict[int, int] = {}
        treemod.make_processes(stubs, img, None if in_ns else os.getpgid(root.pid), made)
        phases["start stubs"] = time.perf_counter() - t0
        p.sysv = _sysv_segments(p)
        objects.pids = {saved: stub.inner_pid for saved, stub in stubs.items()}
        root_plan, warnings, member_creds = _run_plans(p, stubs, objects, front)
        phases["plans"] = time.perf_counter() - t0
        objects.close()
        for one in img.living[1:]:
            stub = stubs[one.process.pid]
            if not members_stopped:
                warnings += set_dumpable(stub.proc, one, member_creds[one.process.pid])
            stub.release(members_stopped)
        tids = _let_go(p, root, stopped, warnings)
    except BaseException as e:
        objects.close()
        for stub in reversed(list(stubs.values()) + helpers):
            stub.kill()
        sysv.remove(p.sysv)
        p.corrupt_first(e)
        raise
    finally:
        if root.channel is not None:
            root.channel[0].close()
    members = {m.pid: made[m.pid] for m, _ in img.members}
    if in_ns:
        why = "were taken here" if capable else "cannot be chosen without privilege"
        warnings.append(f"the tree's pids {why}: it runs in a new pid namespace"
                        f"{'' if capable else ' and user namespace'}, where its processes "
                        f"have their saved pids; here the root is {root.pid}")
    return RestoreResult(root.pid, img, root_plan, warnings, time.perf_counter() - t0, phases,
                         tids, p.take_creds, members)


def _sysv_segments(p: Prepared) -> dict:
    """The SysV segments the saved processes attached, made once for all of them: seen
    from outside while they exist, so only once the checksums are known good."""
    vmas = [v for one in p.img.living for v in one.vmas]
    if any(v.shm is not None for v in vmas):
        p.checked()
    return sysv.prepare(vmas)


def _run_plans(p: Prepared, stubs: dict[int, Stub], objects,
               front: Front) -> tuple[planmod.Plan, list[str], dict[int, bool]]:
    """Each process's plan in its own stub, the root's first. Returns the root's plan,
    the warnings, and whether each process took the saved credentials on."""
    warnings: list[str] = []
    took: dict[int, bool] = {}
    for one in p.img.living:
        stub = stubs[one.process.pid]
        live = _live(stub, p, one, objects)
        plan = planmod.build(one, live, p.vdso_mode, p.stdio if one is p.img else {}, p.fill)
        executor = _Executor(stub, one, plan, front, live.take_creds, objects, p.checked)
        took[one.process.pid] = live.take_creds
        try:
            found = list(plan.warnings) + executor.run(p.phases, p.t0)
        finally:
            executor.close()
        who = "" if one is p.img else f"process {one.process.pid}: "
        warnings += [who + w for w in found]
        if one is p.img:
            root_plan = plan
    return root_plan, warnings, took


def _let_go(p: Prepared, stub: Stub, stopped: bool, warnings: list[str]) -> dict[int, int]:
    """Release the restored (root) process as asked; returns its saved -> live tids."""
    if not stopped:
        warnings += set_dumpable(stub.proc, p.img, p.take_creds)
    if p.clocks_back:
        warnings.append(f"clocks: {p.clocks_note}")
    tids = dict(stub.scratch.tids)
    stub.release(stopped)
    p.phases["process ready"] = time.perf_counter() - p.t0
    return tids


PID_TRIES = 5


def _image_hand(img: Image) -> tuple[int, int]:
    """The image's open file, and the number the stub holds it at: the highest below the
    fd limit (which the stub inherits) that no saved descriptor uses, of any process of a
    tree (whose stubs all inherit it)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return img.fd, img.free_fd_below(min(soft, 1 << 20))


def _start_stub(want: int, new_session: bool, hand: tuple[int, int],
                hold: list[int] | tuple = ()) -> Stub:
    """The stub, with pid want if it can be had: on a busy machine another process may
    take the pid between ns_last_pid and the spawn, so a few tries; then any pid.
    hold: the ids still to be asked for (threads, a tree's processes)."""
    before = pid_cursor() if want else None
    try:
        for _ in range(PID_TRIES if want else 1):
            stub = Stub.start(want, new_session=new_session, hand=hand)
            if not want or stub.pid == want:
                return stub
            stub.kill()
            if _exists(want):
                break           # taken for good: go on with a new pid
        return Stub.start(0, new_session=new_session, hand=hand)
    finally:
        if before is not None:
            # The kernel's pid cursor back where it was, or past the ids still to be
            # asked for: else the processes started next get pids just freed (and
            # may take those ids before the restore asks for them).
            reserve_pids_up_to(max(before, want, *hold))


def set_dumpable(proc: Process, img: Image, creds_taken: bool = False) -> list[str]:
    """The dumpable flag, by a call injected in the restored process (a change of
    credentials has reset it)."""
    if img.process.dumpable == 1 and not creds_taken:
        return []
    ret = proc.syscall(Sys.prctl, Prctl.SET_DUMPABLE, img.process.dumpable)
    if is_syscall_error(ret):
        return [f"the dumpable flag stays 1: PR_SET_DUMPABLE: {os.strerror(-ret)}"]
    return []


def _live(stub: Stub, p: Prepared, img: Image | None = None, objects=None) -> planmod.Live:
    """What the stub looks like; img: a process of a tree, whose pipes and shared memory
    with the others objects (tree_restore.Objects) knows."""
    root = img is None or img is p.img
    img = img or p.img
    take_creds = p.take_creds if root else credsmod.check(img.process.creds, credsmod.own())
    maps = stub.mappings()
    vdso = next((m for m in maps if m.kind == Kind.VDSO), None)
    proc = Proc(stub.pid)
    return planmod.Live(
        stub_maps=maps, scratch=stub.scratch.base,
        vdso=stub.proc.read(vdso.start, vdso.size) if vdso else None,
        fd_limit=stub.fd_limit(), image_path=p.img.path,
        file_problems=p.files if root else planmod.check_files(img),
        can_set_exe=_checkpoint_capable() or stub.userns, stub_pid=stub.inner_pid,
        stub_fds={int(n) for n in os.listdir(f"/proc/{stub.pid}/fd")} - {stub.image_fd},
        stub_limits={r: (s, h) for r, s, h in rlimits(stub.pid)},
        has_tty=_has_tty(), fd_checks=p.fds if root else p.member_fds.get(img.process.pid, {}),
        force=p.force, timer_ids=_timer_ids_supported(), stub_nice=int(proc.stat()["nice"]),
        sysv=p.sysv, same_ids=p.same_ids, xcr0=xstatemod.live_xcr0(),
        time_offsets=_time_offsets(p), take_creds=take_creds,
        image_fd=stub.image_fd,
        tree_pipes=objects.tree_pipes(img) if objects else set(),
        tree_shmem=objects.tree_shmem(img) if objects else {},
        held_fds={stub.channel[1]} if stub.channel is not None else set(), member=not root,
        userns=stub.userns)


def _time_offsets(p: Prepared) -> tuple[int, int] | None:
    """Computed again just before the stub uses them: time went by since prepare()."""
    if p.time_offsets is None:
        return None
    return clockmod.continuing(p.img.process.clocks)


def _has_tty() -> bool:
    """Whether /dev/tty opens: the restoring session (and so the stub) has a terminal."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
        return True
    except OSError:
        return False


def _timer_ids_supported() -> bool:
    return libc().prctl(planmod.PR_TIMER_CREATE_RESTORE_IDS, 2, 0, 0, 0) >= 0


def _checkpoint_capable() -> bool:
    """CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE: what the exe link, ns_last_pid and
    clone3's set_tid need."""
    return credsmod.have(credsmod.CAP_SYS_ADMIN) or \
        credsmod.have(credsmod.CAP_CHECKPOINT_RESTORE)


def _exists(tid: int) -> bool:
    return os.path.exists(f"/proc/{tid}")


# Steps whose effects stay inside the stub (its memory, files it opens read-only): they
# may run while the image's checksums are still being checked (Checksums).
_SEEN_INSIDE = (planmod.TimeNamespace, planmod.MoveMapping, planmod.Unmap, planmod.Map,
                planmod.Fill, planmod.WriteChunks, planmod.Protect, planmod.Advise,
                planmod.PatchVdso, planmod.WriteBytes, planmod.Remap, planmod.CloseFd)
_CHANGES_FILES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _seen_inside(step: planmod.Step) -> bool:
    if isinstance(step, planmod.OpenFile):
        # Read-only, and of a kind whose opening nobody notices: a FIFO's writer or a
        # terminal would (the stub checks the kind as it opens, never blocking).
        return not step.flags & _CHANGES_FILES and step.kind in (stat.S_IFREG, stat.S_IFDIR)
    return isinstance(step, _SEEN_INSIDE)


class _Executor:
    def __init__(self, stub: Stub, img: Image, plan: planmod.Plan, front: Front,
                 take_creds: bool = False, objects=None, checked=lambda: None):
        self.objects = objects          # a tree's shared objects (engine/tree_restore.py)
        self.checked = checked          # waits for the image's checksums
        self.stub = stub
        self.proc = stub.proc
        self.img = img
        self.plan = plan
        self.front = front
        self.take_creds = take_creds
        self.warnings: list[str] = []
        self.batch: list[tuple[int, planmod.Op]] = []
        self._buf = None
        self._img_fd = None

    def run(self, phases: dict[str, float], t0: float) -> list[str]:
        tids = self.stub.scratch.tids
        tids[self.img.threads[0].tid] = self.stub.pid
        tids[0] = self.stub.pid
        waiting = True
        for i, step in enumerate(self.plan.steps):
            if waiting and not _seen_inside(step):
                self._flush()
                self.checked()
                waiting = False
            if step.python:
                self._flush()
                self._python_step(i, step)
            elif type(step) is planmod.Fill and fillmod.worth_sharing(step.runs):
                self._shared_fill(i, step)
            else:
                self._add(i, step)
            if isinstance(step, planmod.CloneThread) and not self._clone_next(i):
                # Later steps need the thread ids; threads made one after another share
                # one run of the stub (64 threads: 13 ms less than one run each).
                self._flush()
            if isinstance(step, planmod.Registers) and "memory" not in phases:
                phases["memory"] = time.perf_counter() - t0
        self._flush()
        return self.warnings

    def _shared_fill(self, i: int, step: planmod.Fill) -> None:
        """A large fill, half read by the stub while a thread of ours copies the other
        half (engine/fill.py); what that thread could not copy, the stub reads after."""
        theirs, ours = fillmod.halves(step.runs)
        self._flush()           # the mapping it fills exists from here
        copier = fillmod.Copier(self.img.fd, self.img.file_size, self.stub.pid, ours)
        copier.start()
        try:
            self._add(i, msgspec.structs.replace(step, runs=theirs))
            self._flush()
        finally:
            copier.join()
        if copier.error is not None:
            raise copier.error
        if copier.left:
            self._add(i, msgspec.structs.replace(step, runs=copier.left))

    def _add(self, i: int, step: planmod.Step) -> None:
        self.batch.extend((i, op) for op in planmod.encode(step, self.stub.scratch))

    def _clone_next(self, i: int) -> bool:
        return i + 1 < len(self.plan.steps) and \
            isinstance(self.plan.steps[i + 1], planmod.CloneThread)

    def _flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        self.front.log(f"running {len(batch)} stub ops")
        try:
            ignored, results = self.stub.run(batch)
        except OpFailed as e:
            step = self.plan.steps[e.index]
            if isinstance(step, planmod.CloneThread) and step.same_tid and \
                    e.errno == errno.EEXIST:
                raise _TidTaken(f"thread id {step.state.tid} was taken meanwhile") from None
            if e.errno == errno.EMEDIUMTYPE:        # the stub's kind check (OPEN_AT)
                raise RestoreError(f"step {e.index} ({step.describe()}) failed: it is no "
                                   "longer the kind of file that was saved") from None
            raise RestoreError(f"step {e.index} ({step.describe()}) failed: {e}") from None
        for (index, _), ret in zip(batch, results, strict=False):
            step = self.plan.steps[index]
            if isinstance(step, planmod.CloneThread):
                ret = self.stub.outer(ret)
                self.stub.scratch.tids[step.state.tid] = ret
                self._check_setup(index, step)
                self.stub.take_thread(ret)
        for index, op, err in ignored:
            self.warnings.append(f"{self.plan.steps[index].describe()}: {op_name(op)}: "
                                 f"{os.strerror(err)}")

    def _check_setup(self, index: int, step: planmod.CloneThread) -> None:
        """The new thread ran its own setup ops: fail on what failed there."""
        at, setup = self.stub.scratch.setups[step.state.tid]
        raw = self.proc.read(at, STUB_OP.size * len(setup))
        for k, op in enumerate(setup):
            ret = planmod.op_result(raw, k)
            if is_syscall_error(ret):
                msg = f"thread {step.state.tid}: {op_name(op)}: {os.strerror(-ret)}"
                if not op.flags & StubOpFlags.IGNORE_ERROR:
                    raise RestoreError(f"step {index} ({step.describe()}) failed: {msg}")
                self.warnings.append(msg)

    def _python_step(self, i: int, step: planmod.Step) -> None:
        self.front.log(f"step {i}: {step.describe()}")
        try:
            if isinstance(step, planmod.WriteChunks):
                self._write_chunks(step.chunks)
            elif isinstance(step, planmod.PatchVdso):
                for patch in step.patches:
                    self.proc.write(patch.addr, patch.code)
            elif isinstance(step, planmod.WriteBytes):
                self.proc.write(step.addr, step.data)
            elif isinstance(step, planmod.Registers):
                self._registers(step.state)
            elif isinstance(step, planmod.PatchTids):
                self._patch_tids(step)
            elif isinstance(step, planmod.DropStub):
                self._drop_stub(step.ranges)
            elif isinstance(step, planmod.SetExe):
                self._set_exe(step)
            elif isinstance(step, planmod.TakeCredentials):
                self._take_credentials(credsmod.calls(step.creds))
                if step.pdeathsig:
                    self.proc.syscall_ok(Sys.prctl, Prctl.SET_PDEATHSIG, step.pdeathsig,
                                         what="prctl(PR_SET_PDEATHSIG)", tid=self.stub.pid)
            elif isinstance(step, planmod.KeepOnlyCaps):
                self._take_credentials(credsmod.keep_only_calls(step.creds))
            elif isinstance(step, planmod.MakeFds):
                self._make_fds(i, step)
            elif isinstance(step, planmod.TakeFrom):
                self._take(i, self.objects.pid_of(step.pid), step.theirs, step.fd, step.cloexec)
            elif isinstance(step, planmod.TakeShared):
                self._take(i, None, self.objects.shmem(step.inode), step.fd, False)
        except ImageError:
            raise                   # a corrupt chunk is the image's fault (exit 5), not a step's
        except CkptError as e:
            raise RestoreError(f"step {i} ({step.describe()}) failed: {e}") from None

    def _take(self, index: int, pid: int | None, theirs: int, fd: int, cloexec: bool) -> None:
        """The stub takes a copy of fd theirs of process pid (None: ours)."""
        try:
            if pid is None:
                self.stub.give(index, [(theirs, fd, cloexec)])
            else:
                self.stub.run([(index, planmod.Op(StubOp.TAKE_FD,
                                                  (pid, theirs, fd, int(cloexec))))])
        except OpFailed as e:
            raise RestoreError(str(e)) from None

    def _make_fds(self, index: int, step: planmod.MakeFds) -> None:
        """Make the objects here, then have the stub take copies at their numbers."""
        creds = self.img.process.creds if self.take_creds else None
        shared = self.objects.made_for(step, creds) if self.objects else None
        if shared is not None:
            # Made once for the whole tree, and kept until it is all restored.
            self._hand_over(index, step, [os.dup(fd) if fd >= 0 else -1 for fd in shared], [])
            return
        try:
            ours, warnings = fdsmod.make_objects(step.kind, step.infos, creds, self.stub.pid,
                                                 data=self._fd_bytes)
        except OSError as e:
            raise RestoreError(e.strerror or str(e)) from None
        self._hand_over(index, step, ours, warnings)

    def _hand_over(self, index: int, step: planmod.MakeFds, ours: list[int],
                   warnings: list[str]) -> None:
        try:
            self.stub.give(index, [(mine, fd, bool(info.flags & fdsmod.O_CLOEXEC))
                                   for mine, fd, info in zip(ours, step.fds, step.infos,
                                                             strict=True)
                                   if fd >= 0 and mine >= 0])
        except OpFailed as e:
            raise RestoreError(str(e)) from None
        finally:
            for mine in ours:
                if mine >= 0:
                    os.close(mine)
        self.warnings += warnings

    def _fd_bytes(self, f) -> bytes:
        return b"".join(self.img.read_chunk(c) for c in self.img.fd_chunks(f))

    def _registers(self, state) -> None:
        """A thread's mask and register sets, with our own ptrace: general registers,
        then the extended state laid out for this CPU, at the kernel's full size."""
        tid = self.stub.scratch.tids[state.tid]
        self.proc.set_sigmask(tid, state.sigmask)
        if state.xstate is not None:
            live = self.proc.xstate(tid)
            self.proc.set_xstate(xstatemod.merge(state.xstate, live, xstatemod.live_layout()),
                                 tid)
        self.proc.set_regs(state.regs, tid)

    def _write_chunks(self, chunks) -> None:
        """Copy chunks through /proc/PID/mem: raw ones through one reused buffer."""
        if self._buf is None:
            self._buf = mmap.mmap(-1, 4 << 20)
            self._img_fd = os.dup(self.img.fd)
        # Released however this ends: close() must be able to close the buffer.
        with memoryview(self._buf) as view:
            for c in chunks:
                if c.codec != fmt.Codec.NONE or c.flags & fmt.ChunkFlags.ZERO:
                    self.proc.write(c.vaddr, self.img.read_chunk(c, self._img_fd))
                    continue
                for off in range(0, c.size, len(self._buf)):
                    n = min(len(self._buf), c.size - off)
                    try:
                        got = os.preadv(self._img_fd, [view[:n]], c.offset + off)
                    except OSError as e:
                        raise RestoreError(f"reading the image failed: {e.strerror}") from None
                    if got != n:
                        raise RestoreError(f"the image ends inside the chunk at {c.vaddr:#x}")
                    self.proc.write(c.vaddr + off, view[:n])

    def close(self) -> None:
        if self._img_fd is not None:
            os.close(self._img_fd)
            self._img_fd = None
        if self._buf is not None:
            self._buf.close()
            self._buf = None

    def _patch_tids(self, step: planmod.PatchTids) -> None:
        tids = self.stub.scratch.tids
        if step.leader_tid_at is not None:
            now = struct.unpack("<i", self.proc.read(step.leader_tid_at, 4))[0]
            if now == step.old_pid:
                self.proc.write(step.leader_tid_at, struct.pack("<i", self.stub.pid))
            else:
                self.warnings.append(f"the main thread's descriptor holds tid {now}, not "
                                     f"{step.old_pid}: left as it is")
        for ref in step.mutexes:
            raw = self.proc.read(ref.addr, tidsmod.MUTEX.size)
            new = tidsmod.patched_mutex(raw, ref, tids[ref.old_tid])
            if new is not None:
                self.proc.write(ref.addr, new)

    def _drop_stub(self, ranges: list[tuple[int, int]]) -> None:
        self.proc.exclude_from_syscall_search(ranges)
        for start, end in ranges:
            self.proc.syscall_ok(Sys.munmap, start, end - start,
                                 what=f"munmap of the stub at {start:#x}")

    def _take_credentials(self, calls) -> None:
        """Each thread makes the calls itself (credentials are per thread), the leader
        last; any that fails fails the restore: never more than the saved process had."""
        tids = sorted(set(self.stub.scratch.tids.values()), key=lambda t: t == self.stub.pid)
        for tid in tids:
            for nr, args, data in calls:
                if data is None:
                    ret = self.proc.syscall(nr, *args, tid=tid)
                else:
                    ret = self.proc.call_with_data(nr, args, data, tid=tid)
                if is_syscall_error(ret):
                    raise RestoreError(f"thread {tid}: {sysname(nr)}: {os.strerror(-ret)}")

    def _set_exe(self, step: planmod.SetExe) -> None:
        """The exe link is a nicety: failing to set it is a warning, never a failed restore."""
        mm = step.mm_map()
        try:
            ret = self.proc.call_with_input(Sys.prctl, (Prctl.SET_MM, PrSetMM.MAP), mm,
                                            (len(mm),))
            self.proc.syscall(Sys.close, step.fd)
        except CkptError as e:
            self.warnings.append(f"the exe link still names the stub: {e}")
            return
        if is_syscall_error(ret):
            self.warnings.append(f"the exe link still names the stub: PR_SET_MM_EXE_FILE: "
                                 f"{os.strerror(-ret)}")
