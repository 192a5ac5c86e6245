"""A stopped process as the engine works on it: threads, registers, memory, injected calls.

The caller is the tracer of every thread (inside GDB, GDB's own thread is;
headless, Process.seize makes us the tracer). Memory goes through
/proc/PID/mem. A system call is injected by pointing rip at a syscall
instruction already in the process and resuming to its exit with
PTRACE_SYSCALL: no single-step, so no trap flag is left behind should the
tracer die, and nothing is written into the process's code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import time

from ..errors import CkptError, SaveError
from ..linux import Prot, Sys, is_syscall_error, sysname
from ..maps import Kind, Mapping, read_mappings
from ..regs import SYSCALL_INSN, rewind
from . import ptrace
from .ptrace import SyscallOp

# Bytes below rsp that the injected calls may use: past the 128-byte red zone.
_SCRATCH_GAP = 128 + 512
# A fault (or seccomp's SIGSYS) while running the injected call: the call failed.
FAULTS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGSYS}
MAX_CAUGHT = 8
SYSCALL_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
CALL_AND_TRAP = SYSCALL_INSN + b"\xcc"
# Blocked during an injected call: all but SIGTRAP, which the int3 forces (a blocked one
# would make the kernel reset the program's SIGTRAP handler to the default).
ALL_BUT_TRAP = ((1 << 64) - 1) & ~(1 << (signal.SIGTRAP - 1))
DEFERRED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM}


@contextlib.contextmanager
def deferred_signals():
    """Our own SIGINT, SIGTERM, SIGHUP and SIGALRM wait until the block is done: a
    process is never left with an injected call's registers, nor half-attached."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
ATTACH_TIMEOUT = 10


class Call:
    """An injected system call that Process.running started: its rax, once it is done."""
    result: int = 0


class Process:
    """A process whose threads are all stopped under our (or GDB's) ptrace."""

    def __init__(self, pid: int, tids: list[int] | None = None, raise_as=SaveError):
        self.pid = pid
        self.raise_as = raise_as
        self.tids = tids or threads_of(pid)
        self.current = self.tids[0]
        # Signals the seize took out of the queue (a signal-delivery stop): given back
        # at the detach, and saved as pending.
        self.stop_signals: dict[int, tuple[int, bytes]] = {}
        self.owned = False               # we seized it (and must let go of it)
        self.children: list[int] = []   # made by an injected clone (snapshot)
        self._syscall_at: int | None = None
        self._site_at: int | None = None
        self._exclude: list[tuple[int, int]] = []
        self._mem: int | None = None
        self._maps: list[Mapping] | None = None

    # -- attaching (headless) ------------------------------------------------

    @classmethod
    def seize(cls, pid: int, raise_as=SaveError) -> Process:
        """Seize and stop every thread of pid; threads born meanwhile are caught too."""
        proc = cls(pid, [pid], raise_as)
        proc.owned = True
        seized: list[int] = []
        with deferred_signals():
            return proc._seize_all(seized)

    def _seize_all(self, seized: list[int]) -> Process:
        proc, pid, raise_as = self, self.pid, self.raise_as
        try:
            while True:
                new = [t for t in threads_of(pid) if t not in seized]
                if not new:
                    break
                for tid in new:
                    try:
                        ptrace.seize(tid)
                    except ptrace.PtraceError as e:
                        if e.errno == 3:        # ESRCH: the thread ended meanwhile
                            continue
                        raise
                    seized.append(tid)
                    ptrace.interrupt(tid)
                    proc._wait_stopped(tid)
        except (ptrace.PtraceError, CkptError) as e:
            proc.tids = seized
            proc.release()
            raise raise_as(f"cannot attach to process {pid}: {e}") from None
        proc.tids = sorted(seized, key=lambda t: (t != pid, t))
        proc.current = proc.tids[0]
        return proc

    def _wait_stopped(self, tid: int) -> None:
        status = ptrace.wait(tid)
        if not os.WIFSTOPPED(status):
            raise self.raise_as(f"thread {tid} ended while being attached")
        if ptrace.event(status) == ptrace.EVENT_STOP:
            return
        # A signal on its way in: it waits for the detach, and the image has it.
        sig = os.WSTOPSIG(status)
        self.stop_signals[tid] = (sig, ptrace.getsiginfo(tid) or b"")

    def release(self, stop: bool = False) -> None:
        """Let go of every thread we seized; with stop, the process stays stopped."""
        if not self.owned:
            self.close()
            return
        with deferred_signals():
            self._release(stop)

    def _release(self, stop: bool) -> None:
        self.close()
        if stop:
            os.kill(self.pid, signal.SIGSTOP)
        for tid in self.tids:
            sig = self.stop_signals.get(tid, (0, b""))[0]
            try:
                ptrace.detach(tid, sig)
            except ptrace.PtraceError:
                pass        # it ended
        self.owned = False
        if stop:
            # The SIGSTOP is taken once the threads run again, after we return; wait
            # for it so that "left stopped" is true when the command ends.
            for tid in self.tids:
                wait_state(self.pid, tid, "T")

    def kill(self) -> None:
        """SIGKILL a process we seized, and take each thread's death as its tracer: only
        then can its parent (or init) reap it, and its pid be free for a restore."""
        self.close()
        kill_and_reap(self.pid, [t for t in self.tids if t != self.pid] if self.owned else None)
        self.owned = False

    # -- registers -------------------------------------------------------------

    def regs(self, tid: int | None = None) -> dict[str, int]:
        return self._pt(ptrace.getregs, tid or self.current)

    def set_regs(self, regs: dict[str, int], tid: int | None = None) -> None:
        self._pt(ptrace.setregs, tid or self.current, regs)

    def xstate(self, tid: int | None = None) -> bytes:
        return self._pt(ptrace.get_xstate, tid or self.current)

    def set_xstate(self, data: bytes, tid: int | None = None) -> None:
        self._pt(ptrace.set_xstate, tid or self.current, data)

    def sigmask(self, tid: int) -> int:
        return self._pt(ptrace.get_sigmask, tid)

    def set_sigmask(self, tid: int, mask: int) -> None:
        self._pt(ptrace.set_sigmask, tid, mask)

    def rseq_config(self, tid: int):
        return ptrace.rseq_config(tid)

    def peek_siginfo(self, tid: int, shared: bool) -> list[bytes]:
        try:
            return ptrace.peek_siginfo(tid, shared)
        except ptrace.PtraceError:
            return []

    def robust_list(self, tid: int) -> tuple[int, int] | None:
        import ctypes

        from ..libc import libc
        head, length = ctypes.c_uint64(), ctypes.c_size_t()
        ret = libc().syscall(Sys.get_robust_list, tid, ctypes.byref(head), ctypes.byref(length))
        return (head.value, length.value) if ret == 0 else None

    def _pt(self, fn, *args):
        try:
            return fn(*args)
        except ptrace.PtraceError as e:
            raise self.raise_as(str(e)) from None

    # -- memory ------------------------------------------------------------------

    def mem_fd(self) -> int:
        if self._mem is None:
            try:
                self._mem = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise self.raise_as(f"cannot open /proc/{self.pid}/mem: {e.strerror}") from None
        return self._mem

    def read(self, addr: int, size: int) -> bytes:
        try:
            data = os.pread(self.mem_fd(), size, addr)
        except OSError as e:
            raise self.raise_as(f"cannot read {size} bytes at {addr:#x}: {e.strerror}") from None
        if len(data) != size:
            raise self.raise_as(f"short read of {size} bytes at {addr:#x}")
        return data

    def write(self, addr: int, data) -> None:
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                n = os.pwrite(self.mem_fd(), view[done:], addr + done)
                if n == 0:          # its memory is gone: it has ended
                    raise OSError(errno.ESRCH, os.strerror(errno.ESRCH))
                done += n
        except OSError as e:
            raise self.raise_as(
                f"cannot write {len(view)} bytes at {addr:#x}: {e.strerror}") from None

    def close(self) -> None:
        if self._mem is not None:
            os.close(self._mem)
            self._mem = None

    def maps(self) -> list[Mapping]:
        """The mappings as they were when first asked for: injected calls change none."""
        if self._maps is None:
            self._maps = read_mappings(self.pid, vmflags=False)
        return self._maps

    # -- injected system calls -----------------------------------------------------

    def syscall(self, nr: int, *args: int, tid: int | None = None) -> int:
        """Make a thread (the current one by default) run one system call; returns rax.

        As compel does: `syscall; int3` is written for the moment into the
        vDSO's ELF header padding (never executed), and the thread resumed
        there with every signal but SIGTRAP blocked. The int3 ends the call
        in a signal-delivery stop, inside the kernel's get_signal, as a stop
        for a signal does: the thread's own registers and the siginfo of its
        stop go back there, so when it resumes the kernel applies its own
        rules (an interrupted call restarts, or returns EINTR to a handler)
        and a signal its tracer passes on keeps its siginfo. No single-step,
        so no trap flag is left behind should the tracer die.
        """
        with self.running(nr, *args, tid=tid) as call:
            pass
        return call.result

    @contextlib.contextmanager
    def running(self, nr: int, *args: int, tid: int | None = None):
        """syscall(), with the block run while the thread runs the call (a long write, say):
        yields a Call whose result is set once the block is done and the call too."""
        tid = tid or self.current
        call = Call()
        with deferred_signals():
            if self._pt(ptrace.syscall_op, tid) == SyscallOp.ENTRY:
                raise self.raise_as(f"thread {tid} is stopped at the entry of a system call "
                                    "(catch syscall?): step past it first")
            site = self._site()
            saved = self.regs(tid)
            siginfo = ptrace.getsiginfo(tid)
            mask = self._pt(ptrace.get_sigmask, tid)
            regs = dict(saved, orig_rax=-1, rax=nr)
            regs.update(zip(SYSCALL_ARG_REGS, (*args, *[0] * (6 - len(args))), strict=True))
            if site is None:        # no vDSO: run to the exit stop of a call found in the code
                regs["rip"] = self._find_syscall_insn()
                call.result = self._syscall_by_stops(tid, nr, regs, saved, siginfo, mask)
                yield call
                return
            regs["rip"] = site
            original = self.read(site, len(CALL_AND_TRAP))
            blocked = None
            try:
                self.write(site, CALL_AND_TRAP)
                self._pt(ptrace.set_sigmask, tid, ALL_BUT_TRAP)
                blocked = self._pt(ptrace.get_sigmask, tid)
                self.set_regs(regs, tid)
                self._pt(ptrace.cont, tid, 0)
                try:
                    yield call
                finally:
                    after = self._to_trap(tid, site + len(CALL_AND_TRAP), nr)
                call.result = ptrace.signed(after["rax"])
            finally:
                self.write(site, original)
                self._put_back(tid, saved, siginfo, mask, blocked)

    def _put_back(self, tid: int, regs: dict, siginfo: bytes | None, mask: int,
                  blocked: int | None = None) -> None:
        """The thread as its tracer left it: registers, the stop's siginfo, its mask.

        A thread in sigsuspend, ppoll or pselect had a temporary mask: the
        kernel put the real one back as the thread left that call for ours,
        and that one stays (the call restarts with its own again).
        """
        self.set_regs(regs, tid)
        if siginfo is not None:
            try:
                ptrace.setsiginfo(tid, siginfo)
            except ptrace.PtraceError:
                pass
        now = self._pt(ptrace.get_sigmask, tid)
        self._pt(ptrace.set_sigmask, tid, mask if blocked is None or now == blocked else now)

    def _to_trap(self, tid: int, trap: int, nr: int) -> dict[str, int]:
        """Wait for the int3 after the injected call; returns the registers there."""
        while True:
            status = ptrace.wait(tid)
            if not os.WIFSTOPPED(status):
                raise self.raise_as(f"thread {tid} ended during injected system call "
                                    f"{_name(nr)}")
            sig, event = os.WSTOPSIG(status), ptrace.event(status)
            if event == ptrace.EVENT_CLONE:
                self.children.append(self._pt(ptrace.geteventmsg, tid))
            elif sig == signal.SIGTRAP and not event:
                regs = self.regs(tid)
                if regs["rip"] == trap:
                    return regs
                raise self.raise_as(f"injected system call {_name(nr)} stopped at "
                                    f"{regs['rip']:#x}, not at its trap")
            elif event != ptrace.EVENT_STOP:
                raise self.raise_as(f"injected system call {_name(nr)} stopped with signal "
                                    f"{sig} instead of completing")
            self._pt(ptrace.cont, tid, 0)

    def _site(self) -> int | None:
        """Where `syscall; int3` may be written for a moment: the vDSO's e_ident padding."""
        if self._site_at is None:
            self._site_at = 0
            vdso = next((m for m in self.maps() if m.kind == Kind.VDSO), None)
            if vdso is not None:
                head = self.read(vdso.start, 16)
                # Padding; or our call and trap already, in a snapshot: its parent held
                # them there as it forked.
                if head[:4] == b"\x7fELF" and head[9:9 + len(CALL_AND_TRAP)] in (
                        bytes(3), CALL_AND_TRAP):
                    self._site_at = vdso.start + 9
        return self._site_at or None

    def _syscall_by_stops(self, tid: int, nr: int, regs: dict, saved: dict,
                          siginfo: bytes | None, mask: int) -> int:
        """The same with PTRACE_SYSCALL, where there is no vDSO to write the trap into: the
        thread then rests at the call's exit stop, where the kernel makes no syscall
        restart, so that is done here (regs.rewind)."""
        caught: list[int] = []
        at = regs["rip"]
        try:
            self.set_regs(regs, tid)
            self._to_syscall_stop(tid, SyscallOp.ENTRY, nr, caught)
            self._to_syscall_stop(tid, SyscallOp.EXIT, nr, caught)
            after = self.regs(tid)
        finally:
            back = dict(saved)
            rewind(back)
            self._put_back(tid, back, siginfo, mask)
            for sig in caught:
                _tgkill(self.pid, tid, sig)
        if after["rip"] != at + len(SYSCALL_INSN):
            raise self.raise_as(f"injected system call {_name(nr)} did not complete "
                                f"(stopped at {after['rip']:#x})")
        return ptrace.signed(after["rax"])

    def _to_syscall_stop(self, tid: int, want: int, nr: int, caught: list[int]) -> None:
        self._pt(ptrace.syscall, tid, 0)
        while True:
            status = ptrace.wait(tid)
            if not os.WIFSTOPPED(status):
                raise self.raise_as(f"thread {tid} ended during injected system call "
                                    f"{_name(nr)}")
            sig = os.WSTOPSIG(status)
            if sig in (ptrace.SYSCALL_STOP, signal.SIGTRAP) and not ptrace.event(status):
                op = self._pt(ptrace.syscall_op, tid)
                if op == want:
                    return
                if op == SyscallOp.SECCOMP:
                    raise self.raise_as(f"a seccomp filter stopped injected system call "
                                        f"{_name(nr)}")
            elif ptrace.event(status) == ptrace.EVENT_STOP:
                pass                    # a group stop or an interrupt: go on
            elif ptrace.event(status) == ptrace.EVENT_CLONE:
                self.children.append(self._pt(ptrace.geteventmsg, tid))
            elif sig in FAULTS or len(caught) >= MAX_CAUGHT:
                raise self.raise_as(f"injected system call {_name(nr)} stopped with signal "
                                    f"{sig} instead of completing")
            else:
                caught.append(sig)      # arrived meanwhile: sent again once done
            self._pt(ptrace.syscall, tid, 0)

    def snapshot(self) -> int:
        """A copy-on-write copy of the process's memory, as it is now: a child made by an
        injected clone, held in its first stop; its pid.

        exit_signal 0: the process gets no SIGCHLD for it, and no wait() but one with
        __WALL sees it (reap_snapshot makes that one). Should the tracer die, the
        child is killed (EXITKILL), and were it ever to run, it would only exit.
        """
        with deferred_signals():
            try:
                return self._snapshot()
            except BaseException:
                for child in self.children:
                    drop_snapshot(child)
                raise

    def _snapshot(self) -> int:
        tid = self.current
        self.children = []
        # CLONE_FILES and CLONE_FS: the copy holds no reference of its own to the
        # process's files (a closed socket's port is free again, a pipe's peer sees EOF).
        # GDB's tracing options are its own (and already report clones): kept.
        if self.owned:
            self._pt(ptrace.set_options, tid, ptrace.Opt.TRACESYSGOOD | ptrace.Opt.TRACECLONE)
        try:
            ret = self.syscall(Sys.clone, CLONE_FILES | CLONE_FS, 0, 0, 0, 0, tid=tid)
        finally:
            if self.owned:
                self._pt(ptrace.set_options, tid, ptrace.Opt.TRACESYSGOOD)
        if is_syscall_error(ret) or not self.children:
            raise self.raise_as(f"cannot make a copy-on-write snapshot: clone: "
                                f"{os.strerror(-ret) if ret < 0 else 'no child seen'}")
        child = self.children[0]
        status = ptrace.wait(child)
        if not os.WIFSTOPPED(status):
            raise self.raise_as("the snapshot of the process ended at once")
        ptrace.set_options(child, ptrace.Opt.EXITKILL)
        regs = self.regs(child)
        regs.update(rip=self._find_syscall_insn(), rax=Sys.exit_group, rdi=0, orig_rax=-1)
        self.set_regs(regs, child)
        return child

    def syscall_ok(self, nr: int, *args: int, what: str, tid: int | None = None) -> int:
        ret = self.syscall(nr, *args, tid=tid)
        if is_syscall_error(ret):
            raise self.raise_as(f"{what} failed: {os.strerror(-ret)}")
        return ret

    def stack_scratch(self, size: int, tid: int | None = None) -> int:
        """An address below a thread's stack pointer for size bytes of input or output."""
        sp = self.regs(tid)["rsp"]
        addr = (sp - _SCRATCH_GAP - size) & ~15
        for m in self.maps():
            if m.start <= addr and addr + size <= sp <= m.end and m.prot & Prot.WRITE:
                return addr
        raise self.raise_as(f"no writable stack below rsp={sp:#x} for an injected call")

    def call_with_output(self, nr: int, args_before: tuple, out_size: int,
                         args_after: tuple = (), what: str = "",
                         tid: int | None = None) -> tuple[int, bytes]:
        """Run a system call that writes out_size bytes to a pointer argument."""
        addr = self.stack_scratch(out_size, tid)
        keep = self.read(addr, out_size)
        try:
            ret = self.syscall(nr, *args_before, addr, *args_after, tid=tid)
            out = self.read(addr, out_size)
        finally:
            self.write(addr, keep)
        if is_syscall_error(ret):
            raise self.raise_as(f"{what or _name(nr)} failed: {os.strerror(-ret)}")
        return ret, out

    def call_with_input(self, nr: int, args_before: tuple, data: bytes,
                        args_after: tuple = (), tid: int | None = None) -> int:
        """Run a system call that reads data from a pointer argument; returns rax."""
        return self.call_with_data(nr, lambda addr: (*args_before, addr, *args_after), data,
                                   tid)

    def call_with_data(self, nr: int, args, data: bytes, tid: int | None = None) -> int:
        """Run a system call whose arguments point into data: args(address) gives them."""
        addr = self.stack_scratch(len(data), tid)
        keep = self.read(addr, len(data))
        try:
            self.write(addr, data)
            return self.syscall(nr, *args(addr), tid=tid)
        finally:
            self.write(addr, keep)

    def exclude_from_syscall_search(self, ranges: list[tuple[int, int]]) -> None:
        """Never inject from these ranges (code about to be unmapped)."""
        self._exclude = list(ranges)
        self._maps = None       # the address space is about to change
        self._site_at = None
        at = self._syscall_at
        if at is not None and any(s <= at < e for s, e in ranges):
            self._syscall_at = None

    def syscall_insn(self) -> int:
        """The address of a syscall instruction in the process's code."""
        return self._find_syscall_insn()

    def _find_syscall_insn(self) -> int:
        if self._syscall_at is not None:
            return self._syscall_at
        maps = [m for m in read_mappings(self.pid, vmflags=False)
                if not any(s < m.end and m.start < e for s, e in self._exclude)]
        # The vDSO first: it is small and always has one (its fallback paths).
        order = sorted((m for m in maps if m.prot & Prot.EXEC and m.kind != Kind.VSYSCALL),
                       key=lambda m: (m.kind != Kind.VDSO, m.size))
        for m in order:
            found = self._search(m, SYSCALL_INSN)
            if found is not None:
                self._syscall_at = found
                return found
        raise self.raise_as("no syscall instruction in the process's code to inject calls with")

    def _search(self, m: Mapping, needle: bytes) -> int | None:
        step = 1 << 20
        for start in range(m.start, m.end, step):
            try:
                data = os.pread(self.mem_fd(), min(step + len(needle), m.end - start), start)
            except OSError:
                continue
            i = data.find(needle)
            if i >= 0:
                return start + i
        return None


def kill_and_reap(pid: int, threads: list[int] | None = ()) -> None:
    """SIGKILL pid and wait for its end, as its parent or tracer. Threads we traced are
    waited for first (__WALL): the leader's end is told only once they are reaped.
    threads None: nothing to wait for (neither parent nor tracer)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for tid in [] if threads is None else [*threads, pid]:
        try:
            os.waitpid(tid, ptrace.WALL)
        except ChildProcessError:
            pass


def drop_snapshot(child: int) -> None:
    """Kill a snapshot child and take its end as its tracer (it stays a zombie of the
    process until reap_snapshot)."""
    try:
        os.kill(child, signal.SIGKILL)
    except ProcessLookupError:
        return
    while True:
        try:
            _, status = os.waitpid(child, ptrace.WALL)
        except ChildProcessError:
            return
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            return


def detach_snapshot(child: int, syscall_at: int) -> None:
    """Let go of a held snapshot child (read through /proc/PID/mem, it needs no tracer,
    and the front end's own tracer, GDB's, then never sees it), parked in pause() with
    every signal blocked until it is killed. Not left stopped: were the process to end
    first, its orphaned process group's SIGHUP and SIGCONT would end the snapshot or
    let it run. It runs no instruction of the program, and writes none of its memory."""
    regs = ptrace.getregs(child)
    regs.update(rip=syscall_at, rax=Sys.pause, orig_rax=-1)
    ptrace.setregs(child, regs)
    ptrace.set_sigmask(child, (1 << 64) - 1)
    ptrace.detach(child, 0)


def hold_snapshot(child: int) -> None:
    """The calling thread (the one that reads the snapshot) becomes its tracer, with
    EXITKILL: the snapshot ends when that thread does, or should the whole front end
    die, instead of sleeping on for good. It stops for nothing meanwhile (every signal
    is blocked), so the front end's own waits see nothing of it."""
    try:
        ptrace.seize(child, ptrace.Opt.EXITKILL)
    except ptrace.PtraceError:
        pass                # read anyway; end_snapshot still ends it


def end_snapshot(child: int, timeout: float = 10) -> None:
    """Kill a snapshot let go of by detach_snapshot, and wait until it has ended (its
    pidfd, taken while it lives, cannot be another's): only then can the process reap
    it. As its tracer, if hold_snapshot made us that, take its end first, which hands
    it to the process."""
    try:
        fd = os.pidfd_open(child)
    except OSError:
        return              # it has ended already
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        ended = select.poll()
        ended.register(fd, select.POLLIN)
        ended.poll(int(timeout * 1000))
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.waitpid(child, ptrace.WALL | os.WNOHANG)
    except ChildProcessError:
        pass                # not ours to wait for: it is the process's already


def reap_snapshot(pid: int, child: int, raise_as=SaveError) -> None:
    """Make the process reap its snapshot child: an injected wait4 (a pause of about a
    millisecond); nothing to do if the process has ended."""
    try:
        proc = Process.seize(pid, raise_as)
    except CkptError:
        return
    try:
        reap_snapshot_in(proc, child)
    finally:
        proc.release()


def reap_snapshot_in(proc: Process, child: int) -> bool:
    """The stopped process (ours or the front end's) reaps its snapshot child, by an
    injected wait4; True once it is gone (reaped, or not the process's to reap)."""
    return proc.syscall(Sys.wait4, child, 0, WALL_FLAG | WNOHANG, 0) in (child, -errno.ECHILD)


WALL_FLAG, WNOHANG = 0x40000000, 1
CLONE_FS, CLONE_FILES = 0x200, 0x400


def threads_of(pid: int) -> list[int]:
    """The thread ids of pid from /proc, the leader first."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        raise CkptError(f"process {pid} does not exist") from None
    return sorted(tids, key=lambda t: (t != pid, t))


def wait_state(pid: int, tid: int, states: str, timeout: float = ATTACH_TIMEOUT) -> bool:
    """Wait until /proc says tid is in one of states (stat's letter); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in states:
                    return True
        except OSError:
            return False
        time.sleep(0.001)
    return False


def _tgkill(pid: int, tid: int, sig: int) -> None:
    from ..libc import libc
    libc().syscall(Sys.tgkill, pid, tid, sig)


def _name(nr: int) -> str:
    return sysname(nr)
