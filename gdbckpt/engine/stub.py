"""The restart stub under the engine's ptrace: spawn it, run batches of ops in it, let go.

A batch runs by resuming the stub at stub_call (native/stub_entry.S) with
the ops' address and count in rdi/rsi; it ends in an int3, whose SIGTRAP
hands control back with the result in rax. The stub is seized with
PTRACE_O_EXITKILL: should the tracer die half-way, the kernel kills the
half-made process instead of leaving it behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import struct

from .. import native
from ..errors import RestoreError
from ..linux import is_syscall_error, names
from ..maps import Mapping, read_mappings
from ..plan import Op, Scratch, op_result, pack_ops
from ..procfs import rlimits
from ..stubabi import (
    STUB_OP,
    STUB_READY_FD,
    STUB_SCRATCH_SIZE,
    STUB_STACK_SIZE,
    StubOp,
    StubOpFlags,
)
from . import ptrace
from .process import Process, deferred_signals, kill_and_reap, wait_state

# The scratch buffer: paths and structs first, the op array in the last MiB.
OPS_AREA = 1 << 20
DATA_AREA = STUB_SCRATCH_SIZE - OPS_AREA
OPS_PER_RUN = OPS_AREA // STUB_OP.size
READY_TIMEOUT = 10
RLIMIT_NOFILE = 7
NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
_RESETTABLE = sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
TRACE_OPTIONS = ptrace.Opt.TRACESYSGOOD | ptrace.Opt.EXITKILL


class PidTaken(RestoreError):
    """A pid to be restored was taken by another process meanwhile."""


class OpFailed(Exception):
    def __init__(self, index: int, op: Op, errno: int):
        self.index, self.op, self.errno = index, op, errno
        super().__init__(f"{op_name(op)} failed: {os.strerror(errno)}")


_STUB_OP_NAMES = names(StubOp)


def op_name(op: Op) -> str:
    from ..linux import sysname
    name = _STUB_OP_NAMES.get(op.nr)
    return name.lower() if name else sysname(op.nr)


# What the stub writes to its ready pipe: where its way in and its buffers are.
HELLO = struct.Struct("<8s4Q")
HELLO_MAGIC = b"READY\0\0\0"


class Stub:
    """A running stub, seized and stopped; its threads too, once made."""

    def __init__(self, pid: int, hello: bytes):
        self.pid = pid
        self.proc = Process(pid, [pid], RestoreError)
        self.proc.owned = True
        _, self.call_at, self.trap_at, scratch, stack = HELLO.unpack(hello)
        self.stack_top = stack + STUB_STACK_SIZE
        self.scratch = Scratch(scratch, DATA_AREA)
        self.ops_at = scratch + DATA_AREA
        self._written = 0
        self.image_fd = None
        # In a pid namespace of its own (a tree whose pids are taken here): its pid
        # there, and a socket to gdbckpt (ours, its fd number) that our descriptors come
        # through: it cannot name our pid, nor (in a user namespace) take from us.
        self.in_ns = False
        self.userns = False         # ... and a user namespace (an unprivileged restore)
        self.inner_pid = pid
        self.channel: tuple[socket.socket, int] | None = None  # noqa: F821 (lazy import)

    def give(self, index: int, items: list[tuple[int, int, bool]]) -> None:
        """Copies of our descriptors, at their numbers in the stub: (ours, fd, cloexec)
        each. Raises OpFailed (tagged with the step index)."""
        if self.channel is None:
            me = os.getpid()
            batch = [(index, Op(StubOp.TAKE_FD, (me, ours, fd, int(cloexec))))
                     for ours, fd, cloexec in items]
        else:
            import socket  # only here: a user namespace's tree (a costly import)
            sock, theirs = self.channel
            for ours, _, _ in items:
                try:
                    socket.send_fds(sock, [b"\0"], [ours])
                except OSError as e:
                    raise RestoreError(f"cannot hand a descriptor to the restart stub: "
                                       f"{e.strerror}") from None
            batch = [(index, Op(StubOp.RECV_FD, (theirs, fd, int(cloexec))))
                     for _, fd, cloexec in items]
        self.run(batch)

    def outer(self, inner: int) -> int:
        """Our pid for a thread of this stub that it knows as inner."""
        if not self.in_ns:
            return inner
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            if _ns_pids(f"/proc/{self.pid}/task/{tid}")[-1:] == [inner]:
                return int(tid)
        raise RestoreError(f"thread {inner} of process {self.inner_pid} is not to be found")

    @classmethod
    def start(cls, want_pid: int = 0, new_session: bool = False,
              hand: tuple[int, int] | None = None) -> Stub:
        """Spawn the stub, wait until it is parked on its own stack, seize it.

        hand: (our fd, its number in the stub): an open file the stub starts with.
        """
        path = native.stub_path()
        if not native.stub_built():
            raise RestoreError(f"the restart stub {path} is not built: {native.native_hint()}")
        with deferred_signals():
            pid, hello = _spawn_parked(path, want_pid, new_session, hand)
            try:
                ptrace.seize(pid, TRACE_OPTIONS)
                ptrace.interrupt(pid)
                _wait_event_stop(pid)
                stub = cls(pid, hello)
                stub.image_fd = hand[1] if hand else None
                return stub
            except (ptrace.PtraceError, RestoreError) as e:
                kill_and_reap(pid)
                raise RestoreError(f"cannot take hold of the restart stub: {e}") from None

    def fork(self, want_pid: int = 0) -> Stub:
        """A child of this stub, made before any op changed it: a copy, parked and seized,
        with pid want_pid if not 0 (a process of a saved tree)."""
        try:
            _, (inner,) = self.run([(0, Op(StubOp.FORK, (want_pid,)))])
        except OpFailed as e:
            kind = PidTaken if e.errno == errno.EEXIST else RestoreError
            raise kind(f"cannot make process {want_pid or ''} of the tree: "
                       f"{os.strerror(e.errno)}") from None
        pid = self._child(inner)
        with deferred_signals():
            try:
                ptrace.seize(pid, TRACE_OPTIONS)
                ptrace.interrupt(pid)
                _wait_event_stop(pid)
            except (ptrace.PtraceError, RestoreError) as e:
                kill_and_reap(pid)
                raise RestoreError(f"cannot take hold of restored process {pid}: {e}") from None
        child = Stub.__new__(Stub)
        child.pid = pid
        child.proc = Process(pid, [pid], RestoreError)
        child.proc.owned = True
        child.call_at, child.trap_at, child.stack_top = self.call_at, self.trap_at, self.stack_top
        child.scratch = Scratch(self.scratch.base, DATA_AREA)
        child.ops_at, child._written = self.ops_at, 0
        child.image_fd, child.channel = self.image_fd, self.channel
        child.in_ns = self.in_ns or self.unshared
        child.userns = self.userns
        child.inner_pid = (_ns_pids(f"/proc/{pid}") or [pid])[-1] if child.in_ns else pid
        return child

    unshared = False        # made a new pid namespace for its children to be in

    def _child(self, inner: int) -> int:
        """Our pid for the child that this stub knows as inner."""
        if not self.in_ns:
            return inner        # the stub sees our pids (if unshared, only its children not)
        from .tree import children
        for child in children(self.pid):
            if _ns_pids(f"/proc/{child}")[-1:] == [inner]:
                return child
        raise RestoreError(f"the child {inner} of the restart stub is not to be found")

    def _load(self, ops: list[Op]) -> None:
        """Ops in place and the stub about to run them, for a run that does not come
        back to its trap."""
        self._flush_scratch()
        blob = pack_ops(ops)
        self.proc.write(self.ops_at, blob)
        self.proc.close()
        regs = self.proc.regs(self.pid)
        regs.update(rip=self.call_at, rdi=self.ops_at, rsi=len(ops), rsp=self.stack_top,
                    rax=0, orig_rax=-1)
        self.proc.set_regs(regs, self.pid)

    def run_detached(self, ops: list[Op]) -> None:
        """Let the stub go, running ops that never end (the init of a pid namespace)."""
        self._load(ops)
        ptrace.set_options(self.pid, ptrace.Opt.TRACESYSGOOD)      # no EXITKILL any more
        ptrace.detach(self.pid)
        self.proc.owned = False

    def end_with(self, status: int, ops: list[Op]) -> None:
        """Run ops that end the stub (a zombie of the tree: exit, or a signal) and take
        its death as its tracer, leaving the zombie to its parent, which reaps it."""
        self._load(ops)
        try:
            ptrace.cont(self.pid)
            while True:
                got = ptrace.wait(self.pid)
                if not os.WIFSTOPPED(got):
                    break
                ptrace.cont(self.pid, self._pass_on(got))
        except ptrace.PtraceError as e:
            raise RestoreError(f"zombie {self.pid} could not be made: {e}") from None
        self.proc.owned = False
        if (got & 0x7f, got >> 8 & 0xff) != (status & 0x7f, status >> 8 & 0xff):
            raise RestoreError(f"zombie {self.pid} ended with status {got:#x}, not the saved "
                               f"{status:#x}")

    def _pass_on(self, status: int) -> int:
        """The signal to resume an ending stub with: the one it sent itself (a SIGTRAP
        too, sent by kill()); a trap at the end of its ops means it did not end."""
        sig = os.WSTOPSIG(status)
        if ptrace.event(status):
            return 0
        if sig == signal.SIGTRAP:
            info = ptrace.getsiginfo(self.pid) or b""
            if info[8:12] == b"\0\0\0\0":         # si_code SI_USER: sent by kill()
                return sig
            if self.proc.regs(self.pid)["rip"] == self.trap_at + 1:
                raise RestoreError(f"zombie {self.pid} did not end as saved")
            return 0
        return sig

    def kill(self) -> None:
        threads = [t for t in self.proc.tids if t != self.pid]
        self.proc.close()
        kill_and_reap(self.pid, threads)

    def mappings(self) -> list[Mapping]:
        return read_mappings(self.pid)

    def fd_limit(self) -> int:
        """The stub's soft RLIMIT_NOFILE."""
        for res, soft, _ in rlimits(self.pid):
            if res == RLIMIT_NOFILE:
                return min(soft, 1 << 20)
        return 1024

    def run(self, batch: list[tuple[int, Op]]) -> tuple[list[tuple[int, Op, int]], list[int]]:
        """Run ops (each tagged with its step index) in the stub's main thread.

        Returns the failures that were marked IGNORE_ERROR and every op's
        result; raises OpFailed for the first other failure.
        """
        self._flush_scratch()
        ignored = []
        results: list[int] = []
        for first in range(0, len(batch), OPS_PER_RUN):
            part = batch[first:first + OPS_PER_RUN]
            blob = pack_ops([op for _, op in part])
            self.proc.write(self.ops_at, blob)
            done = self._call(self.ops_at, len(part))
            out = self.proc.read(self.ops_at, len(blob))
            for k, (step, op) in enumerate(part[:done + 1]):
                ret = op_result(out, k)
                if k == done and done < len(part):
                    raise OpFailed(step, op, -ret)
                if is_syscall_error(ret) and op.flags & StubOpFlags.IGNORE_ERROR:
                    ignored.append((step, op, -ret))
                results.append(ret)
        return ignored, results

    def _call(self, ops: int, count: int) -> int:
        """Resume the stub at stub_call(ops, count) up to its trap; returns rax."""
        regs = self.proc.regs(self.pid)
        regs.update(rip=self.call_at, rdi=ops, rsi=count, rsp=self.stack_top, rax=0,
                    orig_rax=-1)
        self.proc.set_regs(regs, self.pid)
        try:
            ptrace.cont(self.pid)
            while True:
                status = ptrace.wait(self.pid)
                if not os.WIFSTOPPED(status):
                    how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                           else f"exit {os.WEXITSTATUS(status)}")
                    raise RestoreError(f"the restart stub ended ({how}) while running ops")
                sig = os.WSTOPSIG(status)
                if ptrace.event(status) == ptrace.EVENT_STOP:
                    ptrace.cont(self.pid)
                    continue
                after = self.proc.regs(self.pid)
                if sig == signal.SIGTRAP and after["rip"] == self.trap_at + 1:
                    return ptrace.signed(after["rax"])
                raise RestoreError(f"the restart stub got signal {sig} at "
                                   f"{after['rip']:#x} while running ops")
        except ptrace.PtraceError as e:
            raise RestoreError(f"the restart stub could not run ops: {e}") from None

    def take_thread(self, tid: int) -> None:
        """Seize a thread the stub made (it was cloned untraced) and stop it."""
        try:
            ptrace.seize(tid, TRACE_OPTIONS)
            ptrace.interrupt(tid)
            _wait_event_stop(tid)
        except ptrace.PtraceError as e:
            raise RestoreError(f"cannot take hold of restored thread {tid}: {e}") from None
        self.proc.tids.append(tid)

    def release(self, stopped: bool) -> None:
        """Let the restored process go; stopped leaves it in a job-control stop.

        The leader takes the SIGSTOP first: once it is stopped, the group stop
        is under way and every other thread stops as soon as it is let go.
        """
        with deferred_signals():
            self._release(stopped)

    def _release(self, stopped: bool) -> None:
        self.proc.close()
        tids = self.proc.tids
        for tid in tids:
            try:
                ptrace.set_options(tid, ptrace.Opt.TRACESYSGOOD)    # no EXITKILL any more
            except ptrace.PtraceError as e:
                raise RestoreError(f"cannot let go of thread {tid}: {e}") from None
        if stopped:
            # Queued for the process, not given with the detach: that works only from
            # a signal-delivery stop.
            os.kill(self.pid, signal.SIGSTOP)
            ptrace.detach(self.pid)
            if not wait_state(self.pid, self.pid, "Tt"):
                raise RestoreError("the restored process did not stop for the debugger")
        else:
            ptrace.detach(self.pid)
        for tid in tids[1:]:
            ptrace.detach(tid)
        self.proc.owned = False

    def _flush_scratch(self) -> None:
        data = self.scratch.data
        if len(data) > self._written:
            self.proc.write(self.scratch.base + self._written, data[self._written:])
            self._written = len(data)


def _ns_pids(base: str) -> list[int]:
    """NSpid from base/status: the ids of a task in each pid namespace, ours first."""
    try:
        with open(f"{base}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def _wait_event_stop(tid: int) -> None:
    """Wait for the interrupt's stop; a signal arriving first is put back in the queue."""
    while True:
        status = ptrace.wait(tid)
        if not os.WIFSTOPPED(status):
            raise RestoreError(f"thread {tid} ended while being seized")
        if ptrace.event(status) == ptrace.EVENT_STOP:
            return
        ptrace.cont(tid, os.WSTOPSIG(status))
        ptrace.interrupt(tid)


def pid_cursor() -> int | None:
    """The last pid the kernel handed out (ns_last_pid), if it can be read."""
    try:
        with open(NS_LAST_PID) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def reserve_pids_up_to(pid: int) -> None:
    """Make the kernel hand out pids after this one (ns_last_pid; where permitted)."""
    try:
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid))
    except OSError:
        pass


def _spawn_parked(path: str, want_pid: int = 0, new_session: bool = False,
                  hand: tuple[int, int] | None = None) -> tuple[int, bytes]:
    """Start the stub with only stdio and its ready pipe; returns once it is parked, with
    the pid and what the stub said.

    With want_pid, ask the kernel for that pid (ns_last_pid: CAP_SYS_ADMIN or
    CAP_CHECKPOINT_RESTORE); the caller checks whether it came.
    """
    if want_pid > 1 and not os.path.exists(f"/proc/{want_pid}"):
        reserve_pids_up_to(want_pid - 1)
    r, w = os.pipe()
    # The handed file first: it may sit at STUB_READY_FD's number in this process.
    actions = [(os.POSIX_SPAWN_DUP2, *hand)] if hand is not None else []
    actions.append((os.POSIX_SPAWN_DUP2, w, STUB_READY_FD))
    # Descriptors the front end inherited without close-on-exec must not reach
    # the restored process.
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in (w, STUB_READY_FD) and (hand is None or fd != hand[1]):
            try:
                if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                    actions.append((os.POSIX_SPAWN_CLOSE, fd))
            except OSError:
                pass
    try:
        # Default dispositions, and every signal blocked (a terminal's SIGWINCH or SIGINT
        # would stop the traced stub half-way); the restore sets the saved masks.
        pid = os.posix_spawn(path, [path], {}, file_actions=actions, setsigmask=_RESETTABLE,
                             setsigdef=_RESETTABLE, setsid=new_session)
    except OSError as e:
        os.close(r)
        os.close(w)
        raise RestoreError(f"cannot start the restart stub {path}: {e.strerror}") from None
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], READY_TIMEOUT)
        hello = os.read(r, HELLO.size) if ready else b""
        if len(hello) != HELLO.size or not hello.startswith(HELLO_MAGIC):
            kill_and_reap(pid)
            raise RestoreError(f"the restart stub did not start within {READY_TIMEOUT} s "
                               f"(or is out of date: {native.native_hint()})")
    finally:
        os.close(r)
    return pid, hello
