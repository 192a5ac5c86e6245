"""GDB at a terminal, as a user types: what only the interactive prompt does."""

import os
import pty
import re
import select
import subprocess
import time

import pytest
from harness import example, gdb_prefix

from gdbckpt.mi import GDBINIT


class Terminal:
    """GDB reading its commands from a pseudo-terminal."""

    def __init__(self, argv: list[str]):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=_set_ctty,
                                     env=dict(os.environ, TERM="dumb", COLUMNS="200"))
        os.close(slave)
        self.seen = ""

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def wait(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"GDB never showed {pattern!r}: {self.seen[-3000:]!r}")
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.seen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    raise AssertionError(f"GDB ended: {self.seen[-3000:]!r}") from None
        return self.seen

    def mark(self, name: str) -> None:
        """Until GDB has run every command sent so far."""
        self.send(f"echo {name}-done\\n")
        self.wait(f"{name}-done\r?\n")

    def stop_at_step_2(self, out) -> None:
        """Run examples/counter to its step 2, output to out."""
        self.send("break compute_step if step == 2")
        self.send(f"run 6 100 > {out}")
        self.wait("Breakpoint 1, compute_step")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def _set_ctty():
    import fcntl
    import termios
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.fixture
def terminal():
    # The shim for GDB (it cannot write extended registers, as on AMX hosts), not for
    # what it runs.
    t = Terminal([*gdb_prefix(), "gdb", "-nx", "-q", "-x", GDBINIT, example("counter")])
    for line in ("unset environment LD_PRELOAD", "set pagination off", "set confirm off",
                 "set width 0"):
        t.send(line)
    yield t
    t.close()


def test_an_empty_line_does_not_save_or_restore_again(terminal, tmp_path):
    img = str(tmp_path / "t.img")
    t = terminal
    t.stop_at_step_2(tmp_path / "out")
    t.send(f"ckpt save {img}")
    t.wait("Saved process")
    t.send("")                          # GDB repeats the last command, if it may
    t.mark("after-save")
    assert t.seen.count("Saved process") == 1, t.seen
    t.send("kill")
    t.send(f"ckpt restore {img}")
    t.wait("Restored process")
    t.send("")
    t.mark("after-restore")
    assert t.seen.count("Restored process") == 1, t.seen


def test_a_background_save_is_reported_at_the_prompt(terminal, tmp_path):
    img = str(tmp_path / "b.img")
    t = terminal
    t.stop_at_step_2(tmp_path / "out")
    t.send(f"ckpt save --snapshot {img}")
    t.wait("in the background")
    # Said before the prompt that follows its end: the user's next line shows it.
    deadline = time.monotonic() + 60
    while "Saved process" not in t.seen and time.monotonic() < deadline:
        t.mark(f"wait{int(time.monotonic() * 1000)}")
        time.sleep(0.05)
    assert re.search(rf"Saved process \d+ \(counter\) to {re.escape(img)}", t.seen), t.seen
    assert os.path.exists(img)
