"""ptrace(2) for x86-64, through ctypes: the requests the engine makes, with names.

Every function raises PtraceError (a CkptError) with the request, the thread
and the kernel's reason. The caller must be the tracer: the thread that
attached, which inside GDB is GDB's own (its Python runs there).
"""

from __future__ import annotations

import ctypes
import os
import struct

from ..errors import CkptError
from ..libc import Iovec, libc
from ..linux import names


class PtraceError(CkptError):
    def __init__(self, request: str, tid: int, err: int):
        self.errno = err
        super().__init__(f"ptrace({request}, {tid}) failed: {os.strerror(err)}")


class Req:
    """Requests; plain ints, as linux.py's constants are."""
    CONT = 7
    KILL = 8
    DETACH = 17
    SYSCALL = 24
    GETREGS = 12
    SETREGS = 13
    SETOPTIONS = 0x4200
    GETEVENTMSG = 0x4201
    GETSIGINFO = 0x4202
    SETSIGINFO = 0x4203
    GETREGSET = 0x4204
    SETREGSET = 0x4205
    SEIZE = 0x4206
    INTERRUPT = 0x4207
    PEEKSIGINFO = 0x4209
    GETSIGMASK = 0x420A
    SETSIGMASK = 0x420B
    GET_SYSCALL_INFO = 0x420E
    GET_RSEQ_CONFIGURATION = 0x420F


class Opt:
    NONE = 0
    TRACESYSGOOD = 1
    TRACECLONE = 8
    EXITKILL = 1 << 20


NT_PRSTATUS = 1
NT_X86_XSTATE = 0x202
EVENT_CLONE = 3                  # PTRACE_EVENT_CLONE: a child made by clone() with exit_signal
EVENT_STOP = 128                 # PTRACE_EVENT_STOP: a seized thread's interrupt or group stop
SYSCALL_STOP = 0x80 | 5          # SIGTRAP | 0x80 with TRACESYSGOOD
WALL = 0x40000000
SIGINFO_SIZE = 128
XSTATE_MAX = 64 << 10            # the buffer GETREGSET fills; it answers the real size

# struct user_regs_struct, in the kernel's order: the general register set.
USER_REGS = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags "
             "rsp ss fs_base gs_base ds es fs gs").split()
_REGS = struct.Struct(f"<{len(USER_REGS)}Q")
MASK64 = (1 << 64) - 1


class SyscallOp:
    """struct ptrace_syscall_info's op: what kind of stop a thread is in."""
    NONE = 0
    ENTRY = 1
    EXIT = 2
    SECCOMP = 3


_REQ_NAMES = names(Req)


def _call(req: int, tid: int, addr=None, data=None) -> int:
    ret = libc().ptrace(req, tid, addr, data)
    if ret < 0:
        raise PtraceError(_REQ_NAMES[req], tid, ctypes.get_errno())
    return ret


def seize(tid: int, options: int = Opt.TRACESYSGOOD) -> None:
    _call(Req.SEIZE, tid, None, ctypes.c_void_p(int(options)))


def interrupt(tid: int) -> None:
    _call(Req.INTERRUPT, tid)


def set_options(tid: int, options: int) -> None:
    _call(Req.SETOPTIONS, tid, None, ctypes.c_void_p(int(options)))


def detach(tid: int, sig: int = 0) -> None:
    _call(Req.DETACH, tid, None, ctypes.c_void_p(sig))


def cont(tid: int, sig: int = 0) -> None:
    _call(Req.CONT, tid, None, ctypes.c_void_p(sig))


def syscall(tid: int, sig: int = 0) -> None:
    """Resume to the next system call entry or exit (no single-step, so no trap flag)."""
    _call(Req.SYSCALL, tid, None, ctypes.c_void_p(sig))


def wait(tid: int) -> int:
    """Wait for tid's next stop or end; returns the raw status."""
    while True:
        try:
            _, status = os.waitpid(tid, WALL)
            return status
        except InterruptedError:
            continue
        except ChildProcessError:
            raise PtraceError("wait", tid, 10) from None    # ECHILD: not traced by us


def event(status: int) -> int:
    return status >> 16


def geteventmsg(tid: int) -> int:
    """The message of tid's event stop: a new child's pid, for a clone event."""
    msg = ctypes.c_ulong()
    _call(Req.GETEVENTMSG, tid, None, ctypes.byref(msg))
    return msg.value


def getregs(tid: int) -> dict[str, int]:
    buf = ctypes.create_string_buffer(_REGS.size)
    _call(Req.GETREGS, tid, None, buf)
    return dict(zip(USER_REGS, _REGS.unpack(buf.raw), strict=True))


def setregs(tid: int, regs: dict[str, int]) -> None:
    buf = ctypes.create_string_buffer(_REGS.pack(*(regs[n] & MASK64 for n in USER_REGS)))
    _call(Req.SETREGS, tid, None, buf)


def get_xstate(tid: int) -> bytes:
    """The thread's XSAVE area (standard format), exactly the kernel's size."""
    buf = ctypes.create_string_buffer(XSTATE_MAX)
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), XSTATE_MAX)
    _call(Req.GETREGSET, tid, ctypes.c_void_p(NT_X86_XSTATE), ctypes.byref(iov))
    return buf.raw[:iov.len]


def set_xstate(tid: int, data: bytes) -> None:
    """Write the XSAVE area; the kernel wants its own full size (EFAULT otherwise)."""
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    _call(Req.SETREGSET, tid, ctypes.c_void_p(NT_X86_XSTATE), ctypes.byref(iov))


def getsiginfo(tid: int) -> bytes | None:
    """The siginfo of the stop tid is in, or None (a group stop has none)."""
    buf = ctypes.create_string_buffer(SIGINFO_SIZE)
    if libc().ptrace(Req.GETSIGINFO, tid, None, buf) < 0:
        return None
    return buf.raw


def setsiginfo(tid: int, info: bytes) -> None:
    buf = ctypes.create_string_buffer(info, SIGINFO_SIZE)
    _call(Req.SETSIGINFO, tid, None, buf)


def peek_siginfo(tid: int, shared: bool) -> list[bytes]:
    """Pending signals' siginfo, private to the thread or process-wide."""
    out: list[bytes] = []
    buf = ctypes.create_string_buffer(SIGINFO_SIZE * 64)
    while True:
        args = ctypes.create_string_buffer(struct.pack("<QIi", len(out), 1 if shared else 0, 64))
        n = _call(Req.PEEKSIGINFO, tid, args, buf)
        if n <= 0:
            return out
        out += [buf.raw[i * SIGINFO_SIZE:(i + 1) * SIGINFO_SIZE] for i in range(n)]


def get_sigmask(tid: int) -> int:
    data = ctypes.c_uint64()
    _call(Req.GETSIGMASK, tid, ctypes.c_void_p(8), ctypes.byref(data))
    return data.value


def set_sigmask(tid: int, mask: int) -> None:
    data = ctypes.c_uint64(mask & MASK64)
    _call(Req.SETSIGMASK, tid, ctypes.c_void_p(8), ctypes.byref(data))


def syscall_op(tid: int) -> int:
    """Whether tid is stopped at a system call's entry or exit (PTRACE_GET_SYSCALL_INFO)."""
    buf = ctypes.create_string_buffer(88)
    _call(Req.GET_SYSCALL_INFO, tid, ctypes.c_void_p(88), buf)
    return buf.raw[0]           # a SyscallOp


def rseq_config(tid: int) -> tuple[int, int, int, int] | None:
    """(addr, size, signature, flags) of the thread's rseq area, or None."""
    buf = ctypes.create_string_buffer(24)
    if libc().ptrace(Req.GET_RSEQ_CONFIGURATION, tid, ctypes.c_void_p(24), buf) < 0:
        return None
    addr, size, sig, flags = struct.unpack_from("<QIII", buf.raw)
    return (addr, size, sig, flags) if size else None


def signed(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value
