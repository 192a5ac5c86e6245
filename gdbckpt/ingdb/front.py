"""GDB as the engine's front end: the process GDB has stopped, and what only GDB knows.

The engine runs on GDB's own thread, which is the tracer of the process GDB
debugs; this module hands it that process and tells GDB afterwards that
registers and memory changed behind its back.
"""

from __future__ import annotations

import re

import gdb

from ..engine.front import Front
from ..engine.process import Process, threads_of
from ..errors import CkptError, SaveError
from . import settings


class GdbFront(Front):
    def progress(self, phase: str, total: int):
        return settings.Progress(phase, total)

    def stop_signal(self, proc: Process, tid: int) -> bytes | None:
        """$_siginfo of the thread, when GDB would pass its signal on resuming."""
        thread = _thread(tid)
        if thread is None:
            return None
        selected = gdb.selected_thread()
        try:
            thread.switch()
            data = _value_bytes(gdb.parse_and_eval("$_siginfo"))
        except gdb.error:
            return None
        finally:
            if selected is not None and selected.is_valid():
                selected.switch()
        signo = int.from_bytes(data[:4], "little", signed=True)
        return data.ljust(128, b"\0")[:128] if settings.signal_passes(signo) else None

    def inserted_breakpoints(self, proc: Process) -> dict[int, bytes]:
        """Original bytes under breakpoints GDB keeps in memory while the process is stopped.

        GDB normally lifts its breakpoints when the process stops, so a read of
        /proc/PID/mem sees the program's code; with 'breakpoint always-inserted'
        or in non-stop mode it sees int3 instead. GDB's own reads show the
        original bytes: those go into the image.
        """
        # GDB's own breakpoints (shared-library events, longjmp) count too: only
        # 'maint info breakpoints' lists them.
        listing = gdb.execute("maintenance info breakpoints", to_string=True)
        out = {}
        for addr in {int(a, 16) for a in re.findall(r"\b0x([0-9a-f]{6,16})\b", listing)}:
            try:
                original = gdb.selected_inferior().read_memory(addr, 1).tobytes()
                if proc.read(addr, 1) != original:
                    out[addr] = original
            except (gdb.error, gdb.MemoryError, CkptError):
                continue
        return out

    def program(self) -> str | None:
        return gdb.current_progspace().filename

    def stop_reason(self) -> str:
        try:
            sig = int(gdb.parse_and_eval("$_siginfo.si_signo"))
        except gdb.error:
            return ""
        return {5: "breakpoint or step (SIGTRAP)", 2: "interrupted (SIGINT)",
                19: "SIGSTOP"}.get(sig, f"signal {sig}")

    def changed(self, proc) -> None:
        gdb.execute("maintenance flush register-cache", to_string=True)
        gdb.execute("maintenance flush dcache", to_string=True)

    def log(self, message: str) -> None:
        if settings.get("debug"):
            gdb.write(f"[ckpt] {message}\n")


def stopped_process(raise_as=SaveError) -> Process:
    """The process GDB debugs, every thread stopped, the selected thread current."""
    inf = gdb.selected_inferior()
    if inf is None or inf.pid == 0:
        raise raise_as("there is no process: start or attach one first")
    threads = [t for t in inf.threads() if t.is_valid()]
    for t in threads:
        if t.is_running():
            raise raise_as("the process is running: interrupt it first (Ctrl-C or 'interrupt')")
    known = {t.ptid[1] for t in threads}
    # A thread GDB does not list is not stopped under it (GDB 16 can miss one that
    # is half-way through its clone): never touch the process then.
    unknown = sorted(set(threads_of(inf.pid)) - known)
    if unknown:
        raise raise_as(f"thread {unknown[0]} of process {inf.pid} is not stopped under GDB; "
                       "step or continue to let GDB see it, then save again")
    tids = sorted(known, key=lambda t: (t != inf.pid, t))
    proc = Process(inf.pid, tids, raise_as)
    selected = gdb.selected_thread()
    if selected is not None:
        proc.current = selected.ptid[1]
    return proc


def _thread(tid: int):
    for t in gdb.selected_inferior().threads():
        if t.ptid[1] == tid:
            return t
    return None


def _value_bytes(v: gdb.Value) -> bytes:
    """A value's bytes; its type's size, whatever GDB's current language."""
    n = v.type.sizeof
    arr = v.cast(gdb.selected_inferior().architecture().integer_type(8, False).array(n - 1))
    return bytes(int(arr[i]) & 0xFF for i in range(n))

