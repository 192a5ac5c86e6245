"""Drive GDB through GDB/MI with pygdbmi: one command at a time, each waited for.

pygdbmi's write() returns whatever arrived within its timeout, not the
command's result. Here every command carries a token and cmd() waits, up to
an explicit timeout, for the result record with that token; console text,
async records and GDB's stderr arrive on the side and are kept.
"""

from __future__ import annotations

import dataclasses
import os
import time

from pygdbmi.gdbcontroller import GdbController

GDBINIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gdbinit.py")


class MiError(Exception):
    """GDB answered ^error: msg is GDB's one-line message."""

    def __init__(self, command: str, msg: str, stderr: str = ""):
        self.command, self.msg, self.stderr = command, msg, stderr
        super().__init__(msg)


class MiTimeout(Exception):
    pass


@dataclasses.dataclass
class MiResult:
    message: str               # done, running, connected, exit
    payload: dict | None
    console: str               # console stream output during the command
    records: list[dict]


def cli_arg(word: str) -> str:
    """A word (a path) as one argument of a GDB command: gdb.string_to_argv and GDB's
    own commands take "..." with backslash escapes."""
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mi_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class Gdb:
    """A GDB process under MI."""

    def __init__(self, *, gdb: str = "gdb", args: tuple[str, ...] = (), load_ckpt: bool = True,
                 prefix: tuple[str, ...] = (), timeout: float = 60):
        cmd = [*prefix, gdb, "--nx", "-q", "--interpreter=mi3"]
        if load_ckpt:
            cmd += ["-ex", f"source {GDBINIT}"]
        cmd += list(args)
        self.ctl = GdbController(command=cmd, time_to_check_for_additional_output_sec=0)
        self.token = 0
        self.stderr: list[str] = []
        self.console_log: list[str] = []
        self.events: list[dict] = []     # async records not yet consumed
        self._backlog: list[dict] = []   # records read after a command's result
        self.timeout = timeout
        self._pump(0.5)
        # Without async MI, GDB reads no command (not even -exec-interrupt)
        # while the program runs.
        self.cmd("-gdb-set mi-async on")

    # -- plumbing --------------------------------------------------------------

    def _pump(self, timeout: float) -> list[dict]:
        try:
            out = self.ctl.get_gdb_response(timeout_sec=timeout, raise_error_on_timeout=False)
        except Exception as e:   # GDB died: report what it said
            raise MiError("(read)", f"GDB is gone: {e}", "".join(self.stderr)) from None
        for r in out:
            if r.get("stream") == "stderr" or r.get("type") == "log":
                self.stderr.append(str(r.get("payload", "")))
            if r.get("type") == "console":
                self.console_log.append(r.get("payload") or "")
            if r.get("type") == "notify":
                self.events.append(r)
        return out

    def cmd(self, command: str, timeout: float | None = None, on_console=None) -> MiResult:
        """Send an MI command and wait for its result record.

        on_console, if given, sees each console line as it arrives.
        """
        self.token += 1
        token = self.token
        self.ctl.write(f"{token}{command}", read_response=False)
        deadline = time.monotonic() + (timeout or self.timeout)
        records: list[dict] = []
        while time.monotonic() < deadline:
            batch, self._backlog = self._backlog or self._pump(0.05), []
            for i, r in enumerate(batch):
                records.append(r)
                if on_console and r.get("type") == "console":
                    on_console(r.get("payload") or "")
                if r.get("type") == "result" and r.get("token") == token:
                    self._backlog = batch[i + 1:]       # for the next command
                    console = "".join(x.get("payload") or "" for x in records
                                      if x.get("type") == "console")
                    if r.get("message") == "error":
                        msg = (r.get("payload") or {}).get("msg", "")
                        raise MiError(command, msg, "".join(self.stderr))
                    return MiResult(r.get("message"), r.get("payload"), console, records)
        raise MiTimeout(f"no answer to {command!r} in {timeout or self.timeout} s; "
                        f"GDB's stderr: {''.join(self.stderr)[-2000:]}")

    def cli(self, command: str, timeout: float | None = None, on_console=None) -> str:
        """Run a CLI command; returns its console output.

        GDB 13 answers ^running to a command that attaches to a multi-threaded
        process (attach marks the command as proceeding, and the threads it
        finds as running), ckpt restore included, before the command is done.
        GDB reads no further command until it is, so a second command's
        result marks the end. (An execution command such as continue also
        returns here: wait_stopped() waits for where it stops.)
        """
        res = self.cmd(f"-interpreter-exec console {mi_quote(command)}", timeout, on_console)
        if res.message != "running":
            return res.console
        after = self.cmd("-gdb-show confirm", timeout, on_console)  # prints nothing of its own
        return res.console + after.console

    def wait_stopped(self, timeout: float | None = None) -> dict:
        """Wait for the next *stopped record; returns its payload (reason, frame, ...)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, r in enumerate(self.events):
                if r.get("message") == "stopped":
                    del self.events[: i + 1]
                    return r.get("payload") or {}
            if time.monotonic() > deadline:
                raise MiTimeout(f"the program did not stop within {timeout or self.timeout} s")
            self._pump(0.05)

    def close(self) -> None:
        try:
            self.ctl.exit()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
