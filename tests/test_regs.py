"""The kernel's syscall-restart rules applied to saved registers, and CPU feature names."""

import pytest

from gdbckpt.image.model import SyscallState
from gdbckpt.linux import Restart, Sys
from gdbckpt.regs import apply_restart, get, get_signed, missing_features, put

RIP = 0x401234


def regs(rax, orig_rax, rip=RIP):
    out = {name: bytes(8) for name in ("rax", "orig_rax", "rip", "rbx")}
    put(out, "rax", rax)
    put(out, "orig_rax", orig_rax)
    put(out, "rip", rip)
    return out


def test_put_and_get():
    r = regs(-4, 35)
    assert get_signed(r, "rax") == -4 and get(r, "rax") == 2**64 - 4
    assert r["rax"] == (2**64 - 4).to_bytes(8, "little")


@pytest.mark.parametrize("code", list(Restart))
def test_restart(code):
    r = regs(-code, Sys.clock_nanosleep)
    before_rbx = r["rbx"]
    state = apply_restart(r)
    assert state == SyscallState(nr=Sys.clock_nanosleep, errno=code, action="restart")
    assert get(r, "rip") == RIP - 2
    assert get(r, "rax") == Sys.clock_nanosleep
    assert get_signed(r, "orig_rax") == -1
    assert r["rbx"] == before_rbx
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
    assert apply_restart(r) is None
    assert r == before


def test_missing_features():
    saved = {"rip": b"", "ymm0h": b"", "ymm15h": b"", "pkru": b"", "zmm0h": b"", "foo": b""}
    assert missing_features(saved, {"rip"}) == [
        "register foo", "PKU (protection keys)", "AVX", "AVX-512"]
    assert missing_features(saved, set(saved)) == []


def test_missing_avx512_is_one_feature():
    # GDB's raw AVX-512 registers (features/i386/64bit-avx512.xml).
    saved = {f"k{i}" for i in range(8)} | {f"zmm{i}h" for i in range(32)}
    saved |= {f"xmm{i}" for i in range(16, 32)} | {f"ymm{i}h" for i in range(16, 32)}
    live = {"rip"} | {f"xmm{i}" for i in range(16)} | {f"ymm{i}h" for i in range(16)}
    assert missing_features(dict.fromkeys(saved | live, b""), live) == ["AVX-512"]
