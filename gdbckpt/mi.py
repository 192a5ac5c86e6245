"""Drive GDB through GDB/MI with pygdbmi: one command at a time, each waited for.

pygdbmi's write() returns whatever arrived within its timeout, not the
command's result. Here every command carries a token and cmd() waits, up to
an explicit timeout, for the result record with that token; console text
and *stopped records arrive on the side and are kept, with GDB's stderr
for error messages. A GDB that is gone, or a command that cannot be sent,
is an MiError like any refusal.
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
    console: str               # console stream output during the command


def cli_arg(word: str) -> str:
    """A word (a path) as one argument of a GDB command: gdb.string_to_argv and GDB's
    own commands take "..." with backslash escapes."""
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mi_quote(s: str) -> str:
    """A string as an MI C-string argument: cli_arg's quoting, newlines escaped too."""
    return cli_arg(s).replace("\n", "\\n")


class Gdb:
    """A GDB process under MI."""

    def __init__(self, *, gdb: str = "gdb", args: tuple[str, ...] = (), load_ckpt: bool = True,
                 prefix: tuple[str, ...] = (), timeout: float = 60):
        cmd = [*prefix, gdb, "--nx", "-q", "--interpreter=mi3"]
        if load_ckpt:
            cmd += ["-ex", f"source {GDBINIT}"]
        cmd += list(args)
        # A read returns 1 ms after the last output instead of at its timeout.
        self.ctl = GdbController(command=cmd, time_to_check_for_additional_output_sec=0.001)
        self.token = 0
        self.stderr: list[str] = []
        self.events: list[dict] = []     # *stopped records not yet consumed
        self.printed: list[str] = []     # all console output, asynchronous messages included
        self._backlog: list[dict] = []   # records read after a command's result
        self.timeout = timeout
        # Without async MI, GDB reads no command (not even -exec-interrupt)
        # while the program runs.
        self.cmd("-gdb-set mi-async on")

    # -- plumbing --------------------------------------------------------------

    def _pump(self, timeout: float, command: str) -> list[dict]:
        out = self.ctl.get_gdb_response(timeout_sec=timeout, raise_error_on_timeout=False)
        for r in out:
            if r.get("stream") == "stderr" or r.get("type") == "log":
                self.stderr.append(str(r.get("payload", "")))
            if r.get("type") == "notify" and r.get("message") == "stopped":
                self.events.append(r)
            if r.get("type") == "console":
                self.printed.append(str(r.get("payload") or ""))
        if not out and self.ctl.gdb_process.poll() is not None:
            raise MiError(command, f"GDB is gone (exit status {self.ctl.gdb_process.returncode})",
                          "".join(self.stderr))
        return out

    def cmd(self, command: str, timeout: float | None = None, on_console=None) -> MiResult:
        """Send an MI command and wait for its result record.

        on_console, if given, sees each console line as it arrives.
        """
        self.token += 1
        token = self.token
        try:
            self.ctl.write(f"{token}{command}", read_response=False)
        except (OSError, UnicodeError) as e:     # GDB is gone; a path not in UTF-8
            raise MiError(command, f"cannot send to GDB: {e}", "".join(self.stderr)) from None
        deadline = time.monotonic() + (timeout or self.timeout)
        console: list[str] = []
        while time.monotonic() < deadline:
            batch, self._backlog = self._backlog or self._pump(0.05, command), []
            for i, r in enumerate(batch):
                if r.get("type") == "console":
                    console.append(r.get("payload") or "")
                    if on_console:
                        on_console(console[-1])
                if r.get("type") == "result" and r.get("token") == token:
                    self._backlog = batch[i + 1:]       # for the next command
                    if r.get("message") == "error":
                        msg = (r.get("payload") or {}).get("msg", "")
                        raise MiError(command, msg, "".join(self.stderr))
                    return MiResult(r.get("message"), "".join(console))
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
        while not self.events:
            if time.monotonic() > deadline:
                raise MiTimeout(f"the program did not stop within {timeout or self.timeout} s")
            self._pump(0.05, "(waiting for a stop)")
        return self.events.pop(0).get("payload") or {}

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
