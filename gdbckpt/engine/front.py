"""What the engine asks of, and tells, the front end that drives it.

The defaults are those of the headless tool; ingdb/front.py gives GDB's
answers (its stop signal, breakpoints it keeps inserted, its caches).
"""

from __future__ import annotations


class Front:
    def progress(self, phase: str, total: int):
        """A callable progress(done, final=False) for a phase of total bytes."""
        return lambda done, final=False: None

    def stop_signal(self, proc, tid: int) -> bytes | None:
        """The siginfo of a signal the thread stopped with and will get on resuming."""
        sig = proc.stop_signals.get(tid)
        return sig[1] if sig and sig[1] else None

    def inserted_breakpoints(self, proc) -> dict[int, bytes]:
        """Original bytes under breakpoints the debugger keeps in memory while stopped."""
        return {}

    def program(self) -> str | None:
        """The program's file, as the front end knows it (when /proc/PID/exe cannot say)."""
        return None

    def stop_reason(self) -> str:
        return "attached by gdbckpt"

    def changed(self, proc) -> None:
        """Registers and memory changed behind the front end's back."""

    def log(self, message: str) -> None:
        """A step of a restore, as it happens (for `set ckpt debug on`)."""
