"""Read what /proc tells about a process: stat, status, auxv, pagemap, links.

Plain Python over a pid; GDB's process may read all of this because it is
the tracer. Parsers take text so tests can check them against fixed input.
"""

from __future__ import annotations

import os
import re
import resource
import struct

from .errors import SaveError
from .linux import PAGE_SHIFT

# /proc/PID/stat field numbers (man 5 proc, counting from 1).
STAT_FIELDS = {
    "state": 3, "ppid": 4, "pgrp": 5, "session": 6, "flags": 9, "nice": 19, "num_threads": 20,
    "start_code": 26, "end_code": 27, "start_stack": 28, "start_data": 45, "end_data": 46,
    "start_brk": 47, "arg_start": 48, "arg_end": 49, "env_start": 50, "env_end": 51,
    "exit_code": 52,
}
MM_FIELDS = ("start_code", "end_code", "start_data", "end_data", "start_brk", "start_stack",
             "arg_start", "arg_end", "env_start", "env_end")

# The top byte of a pagemap entry (bits 56-63).
PM_PRESENT = 0x80   # bit 63
PM_SWAPPED = 0x40   # bit 62
PM_FILE = 0x20      # bit 61: a page of the file or of shared memory, not a private copy


def parse_stat(text: str) -> dict[str, object]:
    """Named fields of /proc/PID/stat; comm may hold spaces and parentheses."""
    lpar, rpar = text.index("("), text.rindex(")")
    rest = text[rpar + 2:].split()
    out: dict[str, object] = {"pid": int(text[:lpar]), "comm": text[lpar + 1:rpar]}
    for name, num in STAT_FIELDS.items():
        value = rest[num - 3]
        out[name] = value if name == "state" else int(value)
    return out


def parse_status(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def parse_auxv(data: bytes) -> list[tuple[int, int]]:
    """(type, value) pairs up to and without AT_NULL."""
    out = []
    for typ, val in struct.iter_unpack("<QQ", data[:len(data) & ~15]):
        if typ == 0:
            break
        out.append((typ, val))
    return out


def pack_auxv(pairs: list[tuple[int, int]]) -> bytes:
    return b"".join(struct.pack("<QQ", t, v) for t, v in pairs) + struct.pack("<QQ", 0, 0)


def sigset(hexmask: str) -> int:
    """A SigBlk/SigIgn/SigCgt mask from status: bit n-1 is signal n."""
    return int(hexmask, 16)


class Proc:
    """Reads the files of /proc/PID, with errors that name the file."""

    def __init__(self, pid: int, tid: int | None = None):
        self.pid = pid
        self.base = f"/proc/{pid}" if tid is None else f"/proc/{pid}/task/{tid}"

    def _read(self, name: str, binary: bool = False):
        try:
            with open(f"{self.base}/{name}", "rb" if binary else "r") as f:
                return f.read()
        except OSError as e:
            raise SaveError(f"cannot read {self.base}/{name}: {e.strerror}") from None

    def _link(self, name: str) -> str:
        try:
            return os.readlink(f"{self.base}/{name}")
        except OSError as e:
            raise SaveError(f"cannot read {self.base}/{name}: {e.strerror}") from None

    def stat(self) -> dict[str, object]:
        return parse_stat(self._read("stat"))

    def limits(self) -> str:
        return self._read("limits")

    def status(self) -> dict[str, str]:
        return parse_status(self._read("status"))

    def auxv(self) -> list[tuple[int, int]]:
        return parse_auxv(self._read("auxv", binary=True))

    def comm(self) -> str:
        return self._read("comm").rstrip("\n")

    def cmdline(self) -> list[str]:
        raw = self._read("cmdline", binary=True)
        return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1]]

    def exe(self) -> str:
        return self._link("exe")

    def cwd(self) -> str:
        return self._link("cwd")

    def personality(self) -> int:
        return int(self._read("personality"), 16)


PAGEMAP_PIECE = 1 << 18    # pages a read covers: 1 GiB of address space, 2 MiB of entries


def read_pagemap(pid: int, start: int, end: int) -> bytes:
    """The top byte of the pagemap entry of every page in [start, end)."""
    try:
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    except OSError as e:
        raise SaveError(f"cannot open /proc/{pid}/pagemap: {e.strerror}") from None
    out = []
    try:
        for first in range(start >> PAGE_SHIFT, end >> PAGE_SHIFT, PAGEMAP_PIECE):
            n = min(PAGEMAP_PIECE, (end >> PAGE_SHIFT) - first)
            raw = os.pread(fd, n * 8, first * 8)
            if len(raw) != n * 8:
                raise SaveError(f"short read of /proc/{pid}/pagemap at {first << PAGE_SHIFT:#x}")
            out.append(raw[7::8])
    except OSError as e:
        raise SaveError(f"cannot read /proc/{pid}/pagemap: {e.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(out)


def _table(pred) -> bytes:
    return bytes(1 if pred(b) else 0 for b in range(256))


# bytes.translate tables over pagemap top bytes: 1 where the page qualifies.
PRESENT_TABLE = _table(lambda b: b & (PM_PRESENT | PM_SWAPPED))
# A private page that no longer equals its file: copied on write, or swapped out.
DIRTY_TABLE = _table(lambda b: (b & PM_PRESENT and not b & PM_FILE) or b & PM_SWAPPED)


def runs(mask: bytes, value: int = 1) -> list[tuple[int, int]]:
    """(first, count) of every run of value in mask (a bytes of 0/1)."""
    pattern = re.escape(bytes([value])) + b"+"
    return [(m.start(), m.end() - m.start()) for m in re.finditer(pattern, mask)]


def kernel_identity() -> dict[str, str]:
    u = os.uname()
    return {"release": u.release, "version": u.version, "machine": u.machine,
            "hostname": u.nodename}


RLIM_NLIMITS = 16                   # linux/resource.h: RLIMIT_CPU (0) to RLIMIT_RTTIME (15)
RLIM_INFINITY = (1 << 64) - 1       # as the kernel and an image store it (Python says -1)


def rlimits(pid: int) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) of every resource limit of a process: prlimit, which wants
    the process's ids or CAP_SYS_RESOURCE; a tracer with only CAP_SYS_PTRACE (a container's
    root, another user's process) reads the world-readable /proc/PID/limits instead."""
    out = []
    for res in range(RLIM_NLIMITS):
        try:
            soft, hard = resource.prlimit(pid, res)
        except PermissionError:
            return parse_limits(Proc(pid).limits())
        except OSError as e:
            raise SaveError(f"cannot read the resource limits of {pid}: {e.strerror}") from None
        out.append((res, soft & RLIM_INFINITY, hard & RLIM_INFINITY))
    return out


# /proc/PID/limits names, in RLIMIT_* order.
RLIMIT_NAMES = ("Max cpu time", "Max file size", "Max data size", "Max stack size",
                "Max core file size", "Max resident set", "Max processes", "Max open files",
                "Max locked memory", "Max address space", "Max file locks",
                "Max pending signals", "Max msgqueue size", "Max nice priority",
                "Max realtime priority", "Max realtime timeout")


def parse_limits(text: str) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for every limit /proc/PID/limits shows."""
    out = []
    for line in text.splitlines()[1:]:
        for res, name in enumerate(RLIMIT_NAMES):
            if line.startswith(name):
                soft, hard = line[len(name):].split()[:2]
                out.append((res, _limit(soft), _limit(hard)))
    return out


def _limit(word: str) -> int:
    return RLIM_INFINITY if word == "unlimited" else int(word)


def parse_timers(text: str) -> list[dict[str, int]]:
    """POSIX timers from /proc/PID/timers: id, signo, value, notify, tid, clock."""
    # "signal/pid.N" SIGEV_SIGNAL, "signal/tid.N" SIGEV_SIGNAL|SIGEV_THREAD_ID,
    # "thread/pid.N" SIGEV_THREAD, "none/..." SIGEV_NONE (fs/proc/base.c, show_timer).
    notify_kinds = {"signal": 0, "none": 1, "thread": 2}
    timers, cur = [], None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "ID":
            cur = {"id": int(value), "signo": 0, "value": 0, "notify": 0, "tid": 0, "clock": 0}
            timers.append(cur)
        elif cur is None:
            continue
        elif key == "signal":
            signo, _, sival = value.partition("/")
            cur["signo"], cur["value"] = int(signo), int(sival or "0", 16)
        elif key == "notify":
            kind, _, who = value.partition("/")
            cur["notify"] = notify_kinds.get(kind, 0)
            if who.startswith("tid."):
                cur["notify"] |= 4
                cur["tid"] = int(who[4:])
        elif key == "ClockID":
            cur["clock"] = int(value)
    return timers


def read_sysv_shm() -> dict[int, tuple[int, int, int]]:
    """shmid -> (key, size, perms) of every SysV segment, from /proc/sysvipc/shm."""
    out = {}
    try:
        with open("/proc/sysvipc/shm") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        key, shmid, perms, size = line.split()[:4]
        out[int(shmid)] = (int(key) & 0xFFFFFFFF, int(size), int(perms, 8))
    return out


def comm_of(pid: int) -> str:
    """A process's name, or '?' when it is gone (for messages)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"
