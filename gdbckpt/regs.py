"""The general registers as the kernel's user_regs_struct, and its syscall-restart rules.

Plain Python: the engine reads and writes the registers (engine/ptrace.py);
this module only decides what the saved values must be.
"""

from __future__ import annotations

import re

from .engine.ptrace import USER_REGS
from .errors import CkptError
from .image.model import SyscallState
from .linux import RESTART_CODES, Restart, Sys

SYSCALL_INSN = b"\x0f\x05"
USER_CS_64 = 0x33      # __USER_CS: the code segment of a 64-bit thread
USER_DS = 0x2B
MASK64 = (1 << 64) - 1


def blank(**values: int) -> dict[str, int]:
    """A 64-bit thread's general registers: zero, but for the segments and the values given."""
    regs = dict.fromkeys(USER_REGS, 0)
    regs.update(cs=USER_CS_64, ss=USER_DS, eflags=0x202)
    regs.update({k: v & MASK64 for k, v in values.items()})
    return regs


def get(regs: dict[str, int], name: str) -> int:
    """A register as an unsigned integer."""
    return regs[name] & MASK64


def get_signed(regs: dict[str, int], name: str) -> int:
    v = regs[name] & MASK64
    return v - (1 << 64) if v >> 63 else v


def put(regs: dict[str, int], name: str, value: int) -> None:
    regs[name] = value & MASK64


# mov $imm32, %eax; syscall: how glibc's wrappers make most calls.
MOV_EAX_SYSCALL = re.compile(rb"\xb8(....)\x0f\x05\Z", re.S)
# glibc 2.41's cancellable calls: `mov disp8(%rsp), %rax; syscall` (the number is the
# 7th argument of __internal_syscall_cancel, on the stack).
MOV_RAX_STACK_SYSCALL = re.compile(rb"\x48\x8b\x44\x24(.)\x0f\x05\Z", re.S)
MAX_SYSCALL = 1024
EINTR = 4


def pending_restart(regs: dict[str, int]) -> bool:
    """Whether the kernel would rewind this thread into its system call on resuming."""
    return get_signed(regs, "orig_rax") >= 0 and \
        -get_signed(regs, "rax") in RESTART_CODES


def rewind(regs: dict[str, int]) -> None:
    """Do in place what the kernel does on resuming a thread stopped inside a
    restartable call with no handler to run: back to the syscall instruction.

    Needed after injected calls: the thread then resumes from a system-call
    stop, where the kernel makes no such rewind itself. ERESTART_RESTARTBLOCK
    goes to restart_syscall, whose state the kernel still has.
    """
    if not pending_restart(regs):
        return
    err = -get_signed(regs, "rax")
    nr = Sys.restart_syscall if err == Restart.ERESTART_RESTARTBLOCK else regs["orig_rax"]
    put(regs, "rip", get(regs, "rip") - len(SYSCALL_INSN))
    put(regs, "rax", nr)
    put(regs, "orig_rax", -1)


def apply_restart(regs: dict[str, int], code_before: bytes = b"",
                  read=None) -> SyscallState | None:
    """Rewind a thread stopped inside a restartable system call, in place.

    A thread stopped in a system call has orig_rax = the call and rax =
    -ERESTART*. The live kernel would rewind rip to the syscall instruction
    (and for ERESTART_RESTARTBLOCK call restart_syscall, whose state is in
    the kernel and is lost). The image gets the rewind done: rip at the
    syscall instruction, rax = the call number, orig_rax = -1, so a restored
    thread makes the same call again. A relative sleep starts over.

    A thread stopped a second time, inside restart_syscall itself, has lost
    which call it was making: code_before (the bytes up to and including the
    syscall instruction) names it when it is glibc's `mov $nr, %eax; syscall`,
    or glibc 2.41's `mov disp(%rsp), %rax; syscall` (read(addr, n) then gives
    the stack's bytes); otherwise the call returns EINTR, as the kernel makes
    it do when a handler runs.
    """
    nr = get_signed(regs, "orig_rax")
    err = -get_signed(regs, "rax")
    if nr < 0 or err not in RESTART_CODES:
        return None
    if nr == Sys.restart_syscall:
        nr = _call_before(regs, code_before, read)
        if nr is None:
            put(regs, "rax", -EINTR)
            put(regs, "orig_rax", -1)
            return SyscallState(nr=Sys.restart_syscall, errno=err, action="eintr")
    put(regs, "rip", get(regs, "rip") - len(SYSCALL_INSN))
    put(regs, "rax", nr)
    put(regs, "orig_rax", -1)
    return SyscallState(nr=nr, errno=err, action="restart")


def _call_before(regs: dict[str, int], code: bytes, read) -> int | None:
    """The call number the code before a syscall instruction loads, if it says."""
    m = MOV_EAX_SYSCALL.search(code)
    if m is not None:
        return int.from_bytes(m.group(1), "little")
    m = MOV_RAX_STACK_SYSCALL.search(code)
    if m is None or read is None:
        return None
    disp = int.from_bytes(m.group(1), "little", signed=True)
    try:
        raw = read(get(regs, "rsp") + disp, 8)
    except (CkptError, OSError):    # the stack unreadable: the call stays unknown
        return None
    nr = int.from_bytes(raw, "little")
    return nr if 0 <= nr < MAX_SYSCALL and nr != Sys.restart_syscall else None
