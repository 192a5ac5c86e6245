"""CLOCK_MONOTONIC and CLOCK_BOOTTIME across a save and a restore: time namespaces.

Both clocks start at boot: restored after a reboot or on another host, a
process would see them jump back, and timers, event loops and runtimes
that assume they never do go wrong. A restore therefore places the process
in a time namespace (CLONE_NEWTIME) whose offsets make both clocks go on
from where they were at the save, as CRIU does. The offsets a process runs
with are in /proc/PID/timens_offsets, relative to the host's clocks.
Plain Python: the restart stub enters the namespace (plan.TimeNamespace).
"""

from __future__ import annotations

import os
import time

from . import creds
from .image.model import ClockState

CLONE_NEWTIME = 0x80
NS = 10**9


def offsets(pid: int | str = "self") -> tuple[int, int]:
    """(monotonic, boottime) offsets of pid's time namespace against the host, in ns."""
    out = {"monotonic": 0, "boottime": 0}
    try:
        with open(f"/proc/{pid}/timens_offsets") as f:
            for line in f:
                name, sec, nsec = line.split()
                name = {"1": "monotonic", "7": "boottime"}.get(name, name)
                if name in out:
                    out[name] = int(sec) * NS + int(nsec)
    except (OSError, ValueError):
        pass
    return out["monotonic"], out["boottime"]


def host_now() -> tuple[int, int]:
    """The host's CLOCK_MONOTONIC and CLOCK_BOOTTIME now (ours, less our own offsets)."""
    mono_off, boot_off = offsets()
    return (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - mono_off,
            time.clock_gettime_ns(time.CLOCK_BOOTTIME) - boot_off)


def of_process(pid: int) -> ClockState:
    """pid's clocks now, and the offsets it runs with."""
    mono_off, boot_off = offsets(pid)
    host_mono, host_boot = host_now()
    return ClockState(monotonic_ns=host_mono + mono_off, boottime_ns=host_boot + boot_off,
                      offset_monotonic_ns=mono_off, offset_boottime_ns=boot_off)


def continuing(saved: ClockState) -> tuple[int, int]:
    """The offsets that make a namespace's clocks go on from the saved values."""
    host_mono, host_boot = host_now()
    return saved.monotonic_ns - host_mono, saved.boottime_ns - host_boot


def offsets_file(mono: int, boot: int) -> bytes:
    """What /proc/self/timens_offsets takes: seconds (maybe negative) and 0-999999999 ns."""
    return b"".join(f"{name} {value // NS} {value % NS}\n".encode()
                    for name, value in (("monotonic", mono), ("boottime", boot)))


def may_make_namespace() -> bool:
    """A kernel with time namespaces, and CAP_SYS_ADMIN (to make one) and CAP_SYS_TIME (to
    set its offsets), which it needs without a user namespace."""
    return os.path.exists("/proc/self/ns/time") and creds.have(creds.CAP_SYS_ADMIN,
                                                                creds.CAP_SYS_TIME)


def seconds(ns: int) -> str:
    return f"{ns / NS:.3f} s"


def plan_for(saved: ClockState | None,
             mode: str) -> tuple[tuple[int, int] | None, str, bool]:
    """What a restore here does with the clocks: (offsets for a time namespace, or None;
    one line that says what the process will see; whether its clocks go back)."""
    if saved is None:
        return None, "the image has no clocks (made before gdbckpt 0.2): they are the host's", \
            False
    # Without a namespace of its own the process gets the restorer's clocks.
    back = saved.monotonic_ns - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    if mode == "continue" and may_make_namespace():
        mono, _ = continuing(saved)
        return continuing(saved), ("they go on from the saved values in a time namespace "
                                   f"(monotonic offset {seconds(mono)})"), False
    why = "--clocks=host" if mode == "host" else \
        "no time namespace without CAP_SYS_ADMIN and CAP_SYS_TIME"
    if back > 0:
        return None, (f"CLOCK_MONOTONIC jumps back by {seconds(back)} ({why}): timers and "
                      "timeouts of the program may go wrong"), True
    return None, f"they are this host's, {seconds(-back)} ahead of the saved values ({why})", \
        False
