"""Register sets as raw bytes by GDB register name, and the kernel's syscall-restart rules.

Plain Python: GDB reads and writes the registers (ingdb/inferior.py); this
module only decides what the saved values must be.
"""

from __future__ import annotations

import re

from .image.model import SyscallState
from .linux import Restart, Sys

# Registers every x86-64 image must have; the rest of the 'save' group
# (x87, SSE, AVX, AVX-512, pkru) depends on the CPU.
GENERAL = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
           "r12", "r13", "r14", "r15", "rip", "eflags", "cs", "ss", "ds", "es", "fs", "gs",
           "fs_base", "gs_base", "orig_rax")
# What each CPU feature adds to GDB's register set (gdb/features/i386/64bit-*.xml):
# used to explain a refusal. The first pattern that matches a name wins.
FEATURE_OF = (
    (re.compile(r"zmm\d+h|k[0-7]|(xmm|ymm)(1[6-9]|2\d|3[01])h?"), "AVX-512"),
    (re.compile(r"ymm\d+h"), "AVX"),
    (re.compile(r"pkru"), "PKU (protection keys)"),
)
SYSCALL_INSN = b"\x0f\x05"
# GDB's general registers that are 4 bytes wide (the rest are 8).
FOUR_BYTES = {"eflags", "cs", "ss", "ds", "es", "fs", "gs"}
USER_CS_64 = 0x33      # __USER_CS: the code segment of a 64-bit thread


def blank(**values: int) -> dict[str, bytes]:
    """A 64-bit thread's general registers: zero, but for cs and the values given."""
    regs = {n: bytes(4 if n in FOUR_BYTES else 8) for n in GENERAL}
    regs["cs"] = USER_CS_64.to_bytes(4, "little")
    for name, value in values.items():
        regs[name] = (value & ((1 << 8 * len(regs[name])) - 1)).to_bytes(len(regs[name]),
                                                                          "little")
    return regs


def get(regs: dict[str, bytes], name: str) -> int:
    """A register as an unsigned integer."""
    return int.from_bytes(regs[name], "little")


def get_signed(regs: dict[str, bytes], name: str) -> int:
    return int.from_bytes(regs[name], "little", signed=True)


def put(regs: dict[str, bytes], name: str, value: int) -> None:
    size = len(regs[name])
    regs[name] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


# mov $imm32, %eax; syscall: how glibc's wrappers make most calls.
MOV_EAX_SYSCALL = re.compile(rb"\xb8(....)\x0f\x05\Z", re.S)
EINTR = 4


def apply_restart(regs: dict[str, bytes], code_before: bytes = b"") -> SyscallState | None:
    """Rewind a thread stopped inside a restartable system call, in place.

    A thread stopped in a system call has orig_rax = the call and rax =
    -ERESTART*. The live kernel would rewind rip to the syscall instruction
    (and for ERESTART_RESTARTBLOCK call restart_syscall, whose state is in
    the kernel and is lost). The image gets the rewind done: rip at the
    syscall instruction, rax = the call number, orig_rax = -1, so a restored
    thread makes the same call again. A relative sleep starts over.

    A thread stopped a second time, inside restart_syscall itself, has lost
    which call it was making: code_before (the bytes up to and including the
    syscall instruction) names it when it is glibc's `mov $nr, %eax;
    syscall`; otherwise the call returns EINTR, as the kernel makes it do
    when a handler runs.
    """
    nr = get_signed(regs, "orig_rax")
    err = -get_signed(regs, "rax")
    if nr < 0 or err not in Restart.__members__.values():
        return None
    if nr == Sys.restart_syscall:
        m = MOV_EAX_SYSCALL.search(code_before)
        if m is None:
            put(regs, "rax", -EINTR)
            put(regs, "orig_rax", -1)
            return SyscallState(nr=nr, errno=err, action="eintr")
        nr = int.from_bytes(m.group(1), "little")
    put(regs, "rip", get(regs, "rip") - len(SYSCALL_INSN))
    put(regs, "rax", nr)
    put(regs, "orig_rax", -1)
    return SyscallState(nr=nr, errno=err, action="restart")


def missing_features(saved: dict[str, bytes], live_names: set[str]) -> list[str]:
    """Registers in the image the live CPU has no place for, as feature names."""
    missing = sorted(set(saved) - live_names)
    feats = []
    for name in missing:
        feat = next((f for p, f in FEATURE_OF if p.fullmatch(name)), f"register {name}")
        if feat not in feats:
            feats.append(feat)
    return feats
