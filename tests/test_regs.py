"""The kernel's syscall-restart rules on saved registers, and XSAVE areas by component."""

import struct
import subprocess

import pytest

from gdbckpt.engine import ptrace, xstate
from gdbckpt.errors import RestoreError
from gdbckpt.image.model import SyscallState, XState
from gdbckpt.linux import Restart, Sys, constants
from gdbckpt.regs import apply_restart, blank, get, get_signed, pending_restart, put, rewind

RIP = 0x401234


def regs(rax, orig_rax, rip=RIP):
    return blank(rax=rax, orig_rax=orig_rax, rip=rip, rbx=7)


def test_put_and_get():
    r = regs(-4, 35)
    assert get_signed(r, "rax") == -4 and get(r, "rax") == 2**64 - 4
    put(r, "rax", -1)
    assert r["rax"] == 2**64 - 1
    assert set(r) == set(ptrace.USER_REGS) and r["cs"] == 0x33


@pytest.mark.parametrize("code", constants(Restart).values())
def test_restart(code):
    r = regs(-code, Sys.clock_nanosleep)
    state = apply_restart(r)
    assert state == SyscallState(nr=Sys.clock_nanosleep, errno=code, action="restart")
    assert get(r, "rip") == RIP - 2
    assert get(r, "rax") == Sys.clock_nanosleep
    assert get_signed(r, "orig_rax") == -1
    assert r["rbx"] == 7
    assert apply_restart(r) is None       # done once: nothing more to rewind


@pytest.mark.parametrize("rax, orig_rax", [
    (-512, -1),                  # not in a system call
    (0, Sys.read),               # a call that returned
    (5, Sys.read),
    (-4, Sys.read),              # EINTR reaches the program as it is
    (-515, Sys.read),            # ENOIOCTLCMD is not a restart code
    (-517, Sys.read),
])
def test_no_restart(rax, orig_rax):
    r = regs(rax, orig_rax)
    before = dict(r)
    assert apply_restart(r) is None and not pending_restart(r)
    rewind(r)
    assert r == before


def test_rewind_is_what_the_kernel_does_on_resuming():
    r = regs(-Restart.ERESTARTSYS, Sys.read)
    rewind(r)
    assert (get(r, "rip"), get(r, "rax"), get_signed(r, "orig_rax")) == (RIP - 2, Sys.read, -1)
    # The restart block is still the kernel's: the call goes on through restart_syscall.
    r = regs(-Restart.ERESTART_RESTARTBLOCK, Sys.clock_nanosleep)
    rewind(r)
    assert get(r, "rax") == Sys.restart_syscall and get(r, "rip") == RIP - 2


# --- XSAVE components -------------------------------------------------------------

def area(layout, size, xcr0, in_use, fill):
    """A standard-format XSAVE area with each component filled with its own byte."""
    raw = bytearray(size)
    raw[:464] = bytes([0xA5]) * 464
    struct.pack_into("<Q", raw, 464, xcr0)
    struct.pack_into("<QQ", raw, 512, in_use, 0)
    for bit, (off, sz) in layout.items():
        raw[off:off + sz] = bytes([fill(bit)]) * sz
    return bytes(raw)


# AVX, opmask, ZMM_Hi256, Hi16_ZMM and PKRU at the offsets two real CPUs give them.
AMD = {2: (576, 256), 5: (832, 64), 6: (896, 512), 7: (1408, 1024), 9: (2432, 8)}
INTEL = {2: (576, 256), 5: (1088, 64), 6: (1152, 512), 7: (1664, 1024), 9: (2688, 8),
         17: (2752, 64), 18: (2816, 8192)}


def test_components_move_between_layouts():
    in_use = 0b11 | 1 << 2 | 1 << 5 | 1 << 7
    saved = xstate.split(area(AMD, 2440, 0x2E7, in_use, lambda b: b), AMD)
    assert saved.in_use == in_use and sorted(saved.components) == ["2", "5", "7"]
    live = area(INTEL, 11008, 0x602E7, 0b11, lambda b: 0)
    out = xstate.merge(saved, live, INTEL)
    assert len(out) == 11008 and out[464:512] == live[464:512]
    assert out[:464] == bytes([0xA5]) * 464
    assert struct.unpack_from("<QQ", out, 512) == (in_use, 0)
    for bit in (2, 5, 7):
        off, size = INTEL[bit]
        assert out[off:off + size] == bytes([bit]) * size
    off, size = INTEL[6]                  # not in use: left as the live area has it
    assert out[off:off + size] == bytes(size)


def test_a_component_this_cpu_lacks_is_refused_by_name():
    saved = xstate.split(area(INTEL, 11008, 0x602E7, 0b11 | 1 << 18, lambda b: 1), INTEL)
    live = area(AMD, 2440, 0x2E7, 0b11, lambda b: 0)
    assert xstate.missing(saved, 0x2E7) == ["AMX tile data"]
    with pytest.raises(RestoreError, match="AMX tile data, which this CPU lacks"):
        xstate.merge(saved, live, AMD)


def test_a_component_of_the_wrong_size_is_refused():
    bad = XState(xcr0=0x7, in_use=0x7, legacy=bytes(464), components={"2": bytes(100)})
    with pytest.raises(RestoreError, match="AVX state is 100 bytes"):
        xstate.merge(bad, area(AMD, 2440, 0x2E7, 0b11, lambda b: 0), AMD)


def test_the_live_kernel_round_trips_through_split_and_merge():
    """The oracle is the kernel: a real thread's area, split and merged, is what it was."""
    p = subprocess.Popen(["sleep", "30"])
    try:
        ptrace.seize(p.pid)
        ptrace.interrupt(p.pid)
        ptrace.wait(p.pid)
        raw = ptrace.get_xstate(p.pid)
        assert struct.unpack_from("<Q", raw, 464)[0] == xstate.live_xcr0()
        layout = xstate.live_layout()
        state = xstate.split(raw, layout)
        merged = xstate.merge(state, raw, layout)
        assert merged == raw[:512] + merged[512:576] + raw[576:]
        ptrace.set_xstate(p.pid, merged)
        assert ptrace.get_xstate(p.pid) == raw
    finally:
        p.kill()
        p.wait()


STACK = 0x7FFF_FFFF_E000


def stack_reader(words: dict[int, int]):
    """Reads of the stack as a process's memory would give them."""
    def read(addr, n):
        if addr not in words:
            raise RestoreError(f"cannot read {addr:#x}")
        return words[addr].to_bytes(8, "little")[:n]
    return read


@pytest.mark.parametrize("code_before, words, want", [
    # glibc 2.36: mov $0xe6, %eax; syscall
    (b"\x90\x90\xb8\xe6\x00\x00\x00\x0f\x05"[-7:], {}, Sys.clock_nanosleep),
    # glibc 2.41's __internal_syscall_cancel: mov 0x10(%rsp), %rax; syscall
    (b"\x48\x8b\x44\x24\x10\x0f\x05", {STACK + 0x10: Sys.clock_nanosleep}, Sys.clock_nanosleep),
    # the same, a stack that cannot be read: the call stays unknown
    (b"\x48\x8b\x44\x24\x10\x0f\x05", {}, None),
    # a number no call has: unknown
    (b"\x48\x8b\x44\x24\x10\x0f\x05", {STACK + 0x10: 1 << 40}, None),
    # glibc 2.41, several threads: mov %rsi, %rax; ...; syscall: nothing says
    (b"\x48\x89\xf0\x90\x90\x0f\x05", {}, None),
])
def test_inside_restart_syscall_the_call_is_found_where_glibc_keeps_it(code_before, words, want):
    r = blank(rax=-Restart.ERESTART_RESTARTBLOCK, orig_rax=Sys.restart_syscall, rip=RIP,
              rsp=STACK)
    state = apply_restart(r, code_before, stack_reader(words))
    if want is None:
        assert state.action == "eintr" and get_signed(r, "rax") == -4
    else:
        assert state == SyscallState(nr=want, errno=Restart.ERESTART_RESTARTBLOCK,
                                     action="restart")
        assert (get(r, "rip"), get(r, "rax")) == (RIP - 2, want)
