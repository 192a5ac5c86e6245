"""What only the process (or its tracer) can tell: read with injected system calls and ptrace.

brk, signal handlers, the alternate signal stack, the clear-child-tid
address, interval timers, POSIX timers' remaining time, the dumpable flag
and pending signals. Everything here runs while the process is stopped and
leaves it exactly as it was.
"""

from __future__ import annotations

import os
import struct

from ..image.model import ItimerState, PosixTimer, SigAction, SigAltStack
from ..linux import KERNEL_SIGACTION, NSIG, SI_USER, SIGCONT, SIGKILL, SIGSTOP, STACK_T, Prctl, Sys
from ..procfs import Proc, parse_timers, sigset
from .process import Process

ITIMERVAL = struct.Struct("<qqqq")          # interval sec, usec, value sec, usec
ITIMERSPEC = struct.Struct("<qqqq")         # interval sec, nsec, value sec, nsec
SS_DISABLE = 2
ARCH_GET_XCOMP_PERM = 0x1022


class StateReader:
    def __init__(self, inf: Process, proc: Proc):
        self.inf = inf
        self.proc = proc

    def brk(self) -> int:
        return self.inf.syscall_ok(Sys.brk, 0, what="brk(0)")

    def sigactions(self, status: dict[str, str]) -> list[SigAction]:
        """Handlers of every signal not at its default (SigCgt and SigIgn say which)."""
        interesting = sigset(status.get("SigCgt", "0")) | sigset(status.get("SigIgn", "0"))
        out = []
        for sig in range(1, NSIG + 1):
            if not interesting >> (sig - 1) & 1 or sig in (SIGKILL, SIGSTOP):
                continue
            _, raw = self.inf.call_with_output(Sys.rt_sigaction, (sig, 0), KERNEL_SIGACTION.size,
                                               (8,), what=f"rt_sigaction({sig})")
            handler, flags, restorer, mask = KERNEL_SIGACTION.unpack(raw)
            out.append(SigAction(sig=sig, handler=handler, flags=flags, restorer=restorer,
                                 mask=mask))
        return out

    def sigaltstack(self) -> SigAltStack | None:
        """The selected thread's alternate signal stack."""
        _, raw = self.inf.call_with_output(Sys.sigaltstack, (0,), STACK_T.size,
                                           what="sigaltstack")
        sp, flags, _, size = STACK_T.unpack(raw)
        return None if flags & SS_DISABLE else SigAltStack(sp=sp, flags=flags, size=size)

    def tid_address(self) -> int | None:
        """The selected thread's clear_child_tid (needs CONFIG_CHECKPOINT_RESTORE)."""
        try:
            _, raw = self.inf.call_with_output(Sys.prctl, (Prctl.GET_TID_ADDRESS,), 8,
                                               what="prctl(PR_GET_TID_ADDRESS)")
        except self.inf.raise_as:
            return None
        return struct.unpack("<Q", raw)[0] or None

    def itimers(self) -> list[ItimerState]:
        out = []
        for which in range(3):
            _, raw = self.inf.call_with_output(Sys.getitimer, (which,), ITIMERVAL.size,
                                               what=f"getitimer({which})")
            isec, iusec, vsec, vusec = ITIMERVAL.unpack(raw)
            if isec or iusec or vsec or vusec:
                out.append(ItimerState(which=which, interval_us=isec * 10**6 + iusec,
                                       value_us=vsec * 10**6 + vusec))
        return out

    def posix_timers(self) -> list[PosixTimer]:
        try:
            with open(f"/proc/{self.proc.pid}/timers") as f:
                listed = parse_timers(f.read())
        except OSError:
            return []
        out = []
        for t in listed:
            _, raw = self.inf.call_with_output(Sys.timer_gettime, (t["id"],), ITIMERSPEC.size,
                                               what=f"timer_gettime({t['id']})")
            isec, insec, vsec, vnsec = ITIMERSPEC.unpack(raw)
            out.append(PosixTimer(id=t["id"], clock=t["clock"], signo=t["signo"],
                                  notify=t["notify"], value=t["value"], tid=t["tid"],
                                  interval_ns=isec * 10**9 + insec,
                                  remaining_ns=vsec * 10**9 + vnsec))
        return out

    def xcomp_perm(self) -> int:
        """The XSAVE components the process may use (ARCH_GET_XCOMP_PERM); 0 where the
        kernel has no such permissions."""
        try:
            _, raw = self.inf.call_with_output(Sys.arch_prctl, (ARCH_GET_XCOMP_PERM,), 8,
                                               what="arch_prctl(ARCH_GET_XCOMP_PERM)")
        except self.inf.raise_as:
            return 0
        return struct.unpack("<Q", raw)[0]

    def securebits(self) -> int:
        return self.inf.syscall_ok(Sys.prctl, Prctl.GET_SECUREBITS,
                                   what="prctl(PR_GET_SECUREBITS)")

    def pdeathsig(self) -> int:
        """The signal the process gets when its parent dies (PR_GET_PDEATHSIG)."""
        _, raw = self.inf.call_with_output(Sys.prctl, (Prctl.GET_PDEATHSIG,), 4,
                                           what="prctl(PR_GET_PDEATHSIG)")
        return int.from_bytes(raw, "little")

    def subreaper(self) -> bool:
        """Whether orphaned descendants are reparented to it (PR_GET_CHILD_SUBREAPER)."""
        _, raw = self.inf.call_with_output(Sys.prctl, (Prctl.GET_CHILD_SUBREAPER,), 4,
                                           what="prctl(PR_GET_CHILD_SUBREAPER)")
        return int.from_bytes(raw, "little") != 0

    def dumpable(self) -> int:
        return self.inf.syscall_ok(Sys.prctl, Prctl.GET_DUMPABLE, what="prctl(PR_GET_DUMPABLE)")

    def pending(self, tid: int, shared: bool = False) -> list[bytes]:
        """Queued signals (siginfo bytes) of a thread, or of the whole process.

        A SIGSTOP is left out: debuggers send those to stop threads themselves.
        """
        return [si for si in self.inf.peek_siginfo(tid, shared)
                if struct.unpack_from("<i", si)[0] != SIGSTOP and not debuggers_own(si)]


def debuggers_own(si: bytes) -> bool:
    """A SIGCONT this GDB sent with kill(): a restore ends its reattach stop so.

    It is no part of the program's state (and a restored process would get a
    SIGCONT it never had).
    """
    signo, _, code, _, pid = struct.unpack_from("<iiiiI", si)
    return signo == SIGCONT and code == SI_USER and pid == os.getpid()
