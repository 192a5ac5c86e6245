"""The process GDB debugs, as gdbckpt needs it: registers, memory, injected system calls.

Memory goes through /proc/PID/mem (GDB's process is the tracer, so it may
open it, and it is far faster than GDB's own memory commands); registers go
through GDB so that its caches stay right; a system call is injected by
pointing rip at a syscall instruction already in the process and stepping
once, which works in any process, with or without libc or symbols.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct

import gdb

from ..errors import CkptError, SaveError
from ..libc import libc
from ..linux import PTRACE_GET_RSEQ_CONFIGURATION, Prot, Sys, is_syscall_error
from ..maps import Kind, Mapping, read_mappings
from ..regs import SYSCALL_INSN

_U8 = None
# Bytes below rsp that the injected calls may use: past the 128-byte red zone.
_SCRATCH_GAP = 128 + 512


def _u8():
    global _U8
    if _U8 is None:
        _U8 = gdb.lookup_type("unsigned char")
    return _U8


class Inferior:
    """The selected inferior; raise_as is the exception class for its failures."""

    def __init__(self, raise_as=SaveError):
        self.raise_as = raise_as
        inf = gdb.selected_inferior()
        if inf is None or inf.pid == 0:
            raise raise_as("there is no process: start or attach one first")
        self.inf = inf
        self.pid = inf.pid
        self._syscall_at: int | None = None
        self._exclude: list[tuple[int, int]] = []
        self._mem = None
        self._maps: list[Mapping] | None = None

    # -- threads and registers ---------------------------------------------

    def threads(self) -> list[gdb.InferiorThread]:
        """All threads, the thread group leader first."""
        ths = [t for t in self.inf.threads() if t.is_valid()]
        return sorted(ths, key=lambda t: (t.ptid[1] != self.pid, t.ptid[1]))

    def register_names(self) -> list[str]:
        arch = gdb.selected_frame().architecture()
        return [r.name for r in arch.registers("save")]

    def read_registers(self) -> dict[str, bytes]:
        """The selected thread's registers of GDB's 'save' group, as raw bytes."""
        frame = gdb.newest_frame()
        out = {}
        for name in self.register_names():
            v = frame.read_register(name)
            n = v.type.sizeof
            arr = v.cast(_u8().array(n - 1))
            out[name] = bytes(int(arr[i]) for i in range(n))
        return out

    def write_registers(self, regs: dict[str, bytes]) -> None:
        """Write raw register values to the selected thread; orig_rax last.

        GDB resets orig_rax when rip is written, so the order matters.
        """
        frame = gdb.newest_frame()
        # Types first: writing rip invalidates the frame.
        types = {name: frame.read_register(name).type for name in regs}
        names = [n for n in regs if n != "orig_rax"] + (["orig_rax"] if "orig_rax" in regs else [])
        for name in names:
            gdb.set_convenience_variable("_ckpt_reg", gdb.Value(regs[name], types[name]))
            gdb.execute(f"set ${name} = $_ckpt_reg", to_string=True)
        gdb.set_convenience_variable("_ckpt_reg", None)

    def read_reg(self, name: str) -> int:
        return int(gdb.newest_frame().read_register(name)) & ((1 << 64) - 1)

    # -- memory ---------------------------------------------------------------

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
                done += os.pwrite(self.mem_fd(), view[done:], addr + done)
        except OSError as e:
            raise self.raise_as(
                f"cannot write {len(view)} bytes at {addr:#x}: {e.strerror}") from None

    def memory_changed(self) -> None:
        """Tell GDB that memory changed behind its back."""
        gdb.execute("maintenance flush dcache", to_string=True)

    def close(self) -> None:
        if self._mem is not None:
            os.close(self._mem)
            self._mem = None

    # -- injected system calls ---------------------------------------------------

    def syscall(self, nr: int, *args: int) -> int:
        """Make the selected thread run one system call; returns rax (may be -errno).

        Done with ptrace directly (GDB's process is the tracer): set the
        registers, single-step over a syscall instruction already in the
        process, wait for the trap, put the registers back. GDB never sees
        the thread run, so GDB/MI front ends see no ^running or *stopped.
        """
        at = self._find_syscall_insn()
        tid = gdb.selected_thread().ptid[1]
        saved = ptrace_getregs(tid, self.raise_as)
        # The stop's siginfo too: the single step replaces it with its SIGTRAP, and GDB
        # (and $_siginfo) would then see, and pass on, the wrong one.
        siginfo = ctypes.create_string_buffer(SIGINFO_SIZE)
        have_siginfo = libc().ptrace(PTRACE_GETSIGINFO, tid, None, siginfo) == 0
        regs = list(saved)
        # orig_rax = -1: a thread stopped inside a system call would
        # otherwise have that call restarted by the kernel instead of ours.
        padded = (*args, *[0] * (6 - len(args)))
        for name, value in (("orig_rax", -1), ("rip", at), ("rax", nr),
                            *zip(SYSCALL_ARG_REGS, padded, strict=True)):
            regs[USER_REGS[name]] = value & MASK64
        caught: list[int] = []
        try:
            ptrace_setregs(tid, regs, self.raise_as)
            while True:
                sig = ptrace_step(tid, self.raise_as)
                if sig == signal.SIGTRAP:
                    break
                if sig in FAULTS or len(caught) >= MAX_CAUGHT:
                    raise self.raise_as(f"injected system call {nr} stopped with signal {sig} "
                                        "instead of completing")
                caught.append(sig)     # arrived while stepping: sent again below
            after = ptrace_getregs(tid, self.raise_as)
        finally:
            ptrace_setregs(tid, saved, self.raise_as)
            if have_siginfo:
                libc().ptrace(PTRACE_SETSIGINFO, tid, None, siginfo)
            gdb.execute("maintenance flush register-cache", to_string=True)
            for sig in caught:
                libc().syscall(Sys.tgkill, self.pid, tid, sig)
        if after[USER_REGS["rip"]] != at + len(SYSCALL_INSN):
            raise self.raise_as(f"injected system call {nr} did not complete "
                                f"(stopped at {after[USER_REGS['rip']]:#x})")
        return _signed(after[USER_REGS["rax"]])

    def syscall_ok(self, nr: int, *args: int, what: str) -> int:
        ret = self.syscall(nr, *args)
        if is_syscall_error(ret):
            raise self.raise_as(f"{what} failed: {os.strerror(-ret)}")
        return ret

    def stack_scratch(self, size: int) -> int:
        """An address below the selected thread's stack pointer for size bytes of output."""
        sp = self.read_reg("rsp")
        addr = (sp - _SCRATCH_GAP - size) & ~15
        for m in self.maps():
            if m.start <= addr and addr + size <= sp <= m.end and m.prot & Prot.WRITE:
                return addr
        raise self.raise_as(f"no writable stack below rsp={sp:#x} for an injected call")

    def call_with_output(self, nr: int, args_before: tuple, out_size: int,
                         args_after: tuple = (), what: str = "") -> tuple[int, bytes]:
        """Run a system call that writes out_size bytes to a pointer argument."""
        addr = self.stack_scratch(out_size)
        keep = self.read(addr, out_size)
        try:
            ret = self.syscall(nr, *args_before, addr, *args_after)
            out = self.read(addr, out_size)
        finally:
            self.write(addr, keep)
        if is_syscall_error(ret):
            raise self.raise_as(f"{what or Sys(nr).name} failed: {os.strerror(-ret)}")
        return ret, out

    def maps(self) -> list[Mapping]:
        """The mappings as they were when first asked for: injected calls change none."""
        if self._maps is None:
            self._maps = read_mappings(self.pid, vmflags=False)
        return self._maps

    def exclude_from_syscall_search(self, ranges: list[tuple[int, int]]) -> None:
        """Never inject from these ranges (code about to be unmapped)."""
        self._exclude = list(ranges)
        self._maps = None       # the address space is about to change
        at = self._syscall_at
        if at is not None and any(s <= at < e for s, e in ranges):
            self._syscall_at = None

    def call_with_input(self, nr: int, args_before: tuple, data: bytes,
                        args_after: tuple = ()) -> int:
        """Run a system call that reads data from a pointer argument; returns rax."""
        addr = self.stack_scratch(len(data))
        keep = self.read(addr, len(data))
        try:
            self.write(addr, data)
            return self.syscall(nr, *args_before, addr, *args_after)
        finally:
            self.write(addr, keep)

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

    # -- ptrace queries (GDB's process is the tracer) -------------------------

    def rseq_config(self, tid: int) -> tuple[int, int, int, int] | None:
        """(addr, size, signature, flags) of the thread's rseq area, or None."""
        buf = ctypes.create_string_buffer(32)
        ret = libc().ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.c_void_p(24), buf)
        if ret < 0:
            return None
        addr, size, sig, flags = struct.unpack_from("<QIII", buf.raw)
        return (addr, size, sig, flags) if size else None

    def peek_siginfo(self, tid: int, shared: bool) -> list[bytes]:
        """Pending signals' siginfo (128 bytes each), private or process-wide."""
        out: list[bytes] = []
        buf = ctypes.create_string_buffer(SIGINFO_SIZE * 64)
        while True:
            args = struct.pack("<QIi", len(out), 1 if shared else 0, 64)
            n = libc().ptrace(PTRACE_PEEKSIGINFO, tid, args, buf)
            if n <= 0:
                return out
            out += [buf.raw[i * SIGINFO_SIZE:(i + 1) * SIGINFO_SIZE] for i in range(n)]

    def set_sigmask(self, tid: int, mask: int) -> None:
        """Set a thread's blocked signals directly, with no window for delivery."""
        data = ctypes.c_uint64(mask)
        if libc().ptrace(PTRACE_SETSIGMASK, tid, ctypes.c_void_p(8), ctypes.byref(data)) < 0:
            raise self.raise_as(f"ptrace(SETSIGMASK, {tid}) failed: "
                                f"{os.strerror(ctypes.get_errno())}")

    def robust_list(self, tid: int) -> tuple[int, int] | None:
        head = ctypes.c_uint64()
        length = ctypes.c_size_t()
        ret = libc().syscall(Sys.get_robust_list, tid, ctypes.byref(head), ctypes.byref(length))
        return (head.value, length.value) if ret == 0 else None


# struct user_regs_struct (x86-64), as PTRACE_GETREGS fills it.
USER_REGS = {name: i for i, name in enumerate(
    "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
    "fs_base gs_base ds es fs gs".split())}
SYSCALL_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
# A fault (or seccomp's SIGSYS) while stepping the injected call: the call failed.
FAULTS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGSYS}
MAX_CAUGHT = 8
MASK64 = (1 << 64) - 1
PTRACE_SINGLESTEP, PTRACE_GETREGS, PTRACE_SETREGS = 9, 12, 13
PTRACE_GETSIGINFO, PTRACE_SETSIGINFO = 0x4202, 0x4203
PTRACE_PEEKSIGINFO, PTRACE_SETSIGMASK = 0x4209, 0x420B
SIGINFO_SIZE = 128
WALL = 0x40000000


def ptrace_getregs(tid: int, err) -> list[int]:
    buf = (ctypes.c_uint64 * len(USER_REGS))()
    if libc().ptrace(PTRACE_GETREGS, tid, None, ctypes.byref(buf)) < 0:
        raise err(f"ptrace(GETREGS, {tid}) failed: {os.strerror(ctypes.get_errno())}")
    return list(buf)


def ptrace_setregs(tid: int, regs: list[int], err) -> None:
    buf = (ctypes.c_uint64 * len(USER_REGS))(*regs)
    if libc().ptrace(PTRACE_SETREGS, tid, None, ctypes.byref(buf)) < 0:
        raise err(f"ptrace(SETREGS, {tid}) failed: {os.strerror(ctypes.get_errno())}")


def ptrace_step(tid: int, err) -> int:
    """Single-step tid and wait for it; returns the signal it stopped with."""
    if libc().ptrace(PTRACE_SINGLESTEP, tid, None, None) < 0:
        raise err(f"ptrace(SINGLESTEP, {tid}) failed: {os.strerror(ctypes.get_errno())}")
    _, status = os.waitpid(tid, WALL)
    if not os.WIFSTOPPED(status):
        raise err(f"thread {tid} ended during an injected system call")
    return os.WSTOPSIG(status)




def _signed(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


def check_stopped(err=CkptError) -> None:
    for th in gdb.selected_inferior().threads():
        if th.is_running():
            raise err("the process is running: interrupt it first (Ctrl-C or 'interrupt')")
