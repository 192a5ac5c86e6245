"""End-to-end helpers: real GDB under MI, real example programs, real images.

Every scenario has the same shape: run a program under GDB with its output
to a file, stop it somewhere, `ckpt save`, kill it, restore the image in a
fresh GDB with the rest of the output to a second file, let it finish, and
compare the two files joined with the output of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import shlex
import subprocess
import sys
import threading
import time

from gdbckpt.image import format as fmt
from gdbckpt.libc import libc
from gdbckpt.mi import Gdb, MiError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, "examples", "build")
EXAMPLES = os.path.join(REPO, "examples")
SYSTEM_PYTHON = "/usr/bin/python3"
PR_SET_CHILD_SUBREAPER = 36
# Run as nobody, with no capabilities: how users (not CI's root) run.
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all")


def example(name: str) -> str:
    return os.path.join(BUILD, name)


def shm_scenario(tmp_path, key: int) -> tuple[list[str], str]:
    """examples/shm in tmp_path/work with SysV key; returns its argv and the output of an
    uninterrupted run (in tmp_path/ref, with another key: the two must not share)."""
    ref, work = tmp_path / "ref", tmp_path / "work"
    ref.mkdir()
    work.mkdir()
    expected = uninterrupted([example("shm"), str(ref), str(key + 1), "8"])
    return [example("shm"), str(work), str(key), "8"], expected


def address_of(buf) -> int:
    """Where a writable buffer (an mmap, a bytearray) lies in this process.

    The ctypes view is dropped at once: while it lives, the mmap cannot close.
    """
    c = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(c)
    finally:
        del c


def uninterrupted(argv: list[str], stdin: str = "/dev/null", timeout: float = 60) -> str:
    with open(stdin) as inp:
        return subprocess.run(argv, stdin=inp, capture_output=True, text=True, check=True,
                              timeout=timeout).stdout


def uninterrupted_later(argv: list[str], stdin: str = "/dev/null", timeout: float = 60):
    """uninterrupted(argv), run meanwhile: call the result for its output. For programs
    that take seconds, run beside the one a test saves and restores."""
    with open(stdin) as inp:
        p = subprocess.Popen(argv, stdin=inp, stdout=subprocess.PIPE, text=True)

    def output() -> str:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, (argv, p.returncode)
        return out
    return output


# GDB as it is on hosts with AMX: its own writes of the extended registers fail
# (tests/shim/no_xstate_write.c). Every GDB the tests start runs with it.
SHIM_SOURCE = os.path.join(REPO, "tests", "shim", "no_xstate_write.c")
SHIM = os.path.join(BUILD, "no_xstate_write.so")


def build_shim() -> str:
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-o", SHIM, SHIM_SOURCE, "-ldl"],
                   check=True)
    return SHIM


def gdb_prefix(prefix: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What runs GDB: prefix, then the shim (for GDB, not for what GDB starts)."""
    return (*prefix, "env", f"LD_PRELOAD={SHIM}")


def shimmed_gdb(prefix: tuple[str, ...] = (), timeout: float = 60, **kw) -> Gdb:
    g = Gdb(prefix=gdb_prefix(prefix), timeout=timeout, **kw)
    g.cli("unset environment LD_PRELOAD")
    return g


class Session:
    """One GDB (with the shim); killed with whatever it runs when the test ends."""

    def __init__(self, prefix: tuple[str, ...] = (), timeout: float = 60):
        self.gdb = shimmed_gdb(prefix, timeout)

    def cli(self, command: str, timeout: float | None = None) -> str:
        return self.gdb.cli(command, timeout)

    def pid(self) -> int:
        out = self.cli("info inferiors")
        m = re.search(r"process (\d+)", out)
        return int(m.group(1)) if m else 0

    def start(self, argv: list[str], stdout: str, stdin: str = "/dev/null",
              breakpoint: str | None = None, aslr: bool = False) -> dict:
        """Run argv under GDB, output to stdout; stops at breakpoint if given."""
        self.cli(f"file {shlex.quote(argv[0])}")
        if aslr:
            self.cli("set disable-randomization off")
        if breakpoint:
            self.cli(f"break {breakpoint}")
        args = " ".join(shlex.quote(a) for a in argv[1:])
        self.gdb.cmd(f"-exec-arguments {args} < {shlex.quote(stdin)} > {shlex.quote(stdout)}")
        if breakpoint:
            return self.resume("-exec-run")
        self.gdb.cmd("-exec-run")
        return {}

    def interrupt_when(self, path: str, pattern: str, timeout: float = 30) -> dict:
        """Stop the running program once its output file shows pattern."""
        wait_for_output(path, pattern, timeout)
        return self.resume("-exec-interrupt")

    def save(self, img: str, *opts: str) -> str:
        return self.cli(f"ckpt save {' '.join(opts)} {img}".replace("  ", " "), timeout=120)

    def restore(self, img: str, stdout: str | None = None, stdin: str = "/dev/null",
                *opts: str) -> str:
        words = ["ckpt restore", *opts, f"--stdin={stdin}"]
        if stdout:
            words.append(f"--stdout={stdout}")
        words.append(img)
        return self.cli(" ".join(words), timeout=120)

    def finish(self, timeout: float = 60) -> dict:
        """Continue until the program exits; returns the *stopped record."""
        return self.resume("-exec-continue", timeout)

    def resume(self, command: str, timeout: float = 60) -> dict:
        """Resume with an MI command and wait for the stop it leads to."""
        self.gdb.events.clear()
        self.gdb.cmd(command)
        return self.gdb.wait_stopped(timeout)

    def children(self) -> str:
        """The names of GDB's child processes (a restart stub left behind would show)."""
        return subprocess.run(["ps", "--ppid", str(self.gdb.ctl.gdb_process.pid), "-o",
                               "comm="], capture_output=True, text=True).stdout

    def close(self) -> None:
        try:
            if self.pid():
                self.cli("kill")
        except (MiError, Exception):
            pass
        self.gdb.close()


def wait_for_output(path: str, pattern: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read()
            if re.search(pattern, text, re.M):
                return text
        time.sleep(0.02)
    raise AssertionError(f"{path} never showed {pattern!r}")


BATCH = [sys.executable, "-m", "gdbckpt.batch"]


def pid_cursor() -> int:
    """The last pid the kernel handed out."""
    return int(read("/proc/sys/kernel/ns_last_pid"))


def wait_gone(pid: int, timeout: float = 60) -> None:
    """Until pid has ended (or is a zombie). A pidfd, not /proc polling: a restore
    running beside this test rewinds the pid cursor, and the pid may be reused."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ended = select.poll()
        ended.register(fd, select.POLLIN)
        if not ended.poll(timeout * 1000):
            raise AssertionError(f"process {pid} is still running")
    finally:
        os.close(fd)


def batch(*args, prefix=(), timeout=120, check=None) -> subprocess.CompletedProcess:
    """gdbckpt-batch with args; check: the exit code it must give."""
    r = subprocess.run([*prefix, *BATCH, *args], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    if check is not None:
        assert r.returncode == check, (r.returncode, r.stdout, r.stderr)
    return r


def spawn(argv, out, **kw) -> subprocess.Popen:
    """argv running on its own, stdout to the file out."""
    with open(out, "w") as f:
        return subprocess.Popen(argv, stdout=f, stdin=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, **kw)


def saved_by_pid(argv: list[str], out: str, img: str, ready: str, *opts: str) -> dict:
    """argv run on its own (stdout to out) until its output shows ready, then saved by
    pid with `gdbckpt-batch PID -o IMG --kill OPTS`, and reaped with its children.
    Returns the save's JSON."""
    p = spawn(argv, out)
    try:
        wait_for_output(out, ready)
        # Reaped the moment it is killed: the batch waits until its pid is free.
        threading.Thread(target=p.wait, daemon=True).start()
        r = batch(str(p.pid), "-o", img, "--kill", "--json", *opts, check=0)
        done = json.loads(r.stdout.splitlines()[-1])
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    reap(done["members"])
    return done


def reap(pids) -> None:
    """Wait for processes that ended and came to the test run (a child subreaper): the
    children of a killed tree."""
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            wait_gone(pid)


@contextlib.contextmanager
def leaves_no_process(pattern: str):
    """What the commands run inside leave behind comes to this test, a child subreaper
    meanwhile: none of it may match pattern (as `pgrep -f`). Only this test's own
    processes are looked at, so that tests can run side by side (pytest -n)."""
    libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc().prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    left = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", pattern],
                          capture_output=True, text=True).stdout.split()
    assert not left, [read(f"/proc/{pid}/cmdline").replace("\0", " ") for pid in left]


def batch_restore(img: str, *opts: str, prefix=()) -> subprocess.CompletedProcess:
    """gdbckpt-batch restore IMG, and wait until the restored process has finished."""
    r = subprocess.run([*prefix, *BATCH, "restore", img, "--json", *opts],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    wait_gone(json.loads(r.stdout.splitlines()[-1])["pid"])
    return r


def by_pid_and_back(argv: list[str], ready: str, tmp_path) -> tuple[dict, str]:
    """argv saved by pid (saved_by_pid) once its output shows ready, restored headless
    and run to its end with the rest of its tree; returns the save's JSON and the whole
    output, checked against an uninterrupted run."""
    want = uninterrupted_later(argv)
    out, img = str(tmp_path / "out"), str(tmp_path / "t.img")
    done = saved_by_pid(argv, out, img, ready)
    r = batch_restore(img)
    reap(json.loads(r.stdout.splitlines()[-1])["members"].values())
    assert read(out) == want()
    return done, read(out)


def rewrite_record(path: str, rtype, edit, raw: bool = False) -> str:
    """A copy of the image with one JSON record changed (raw: a binary one, CHUNKS: edit
    takes and gives bytes) and every checksum made right."""
    data = bytearray(open(path, "rb").read())
    magic, ver, nrec, meta_off, meta_len, size, _, _ = fmt.TRAILER.unpack_from(
        data, len(data) - fmt.TRAILER_SIZE)
    meta, pos, records = bytes(data[meta_off:meta_off + meta_len]), 0, []
    while pos < len(meta):
        t, fl, ln, _ = fmt.RECORD_HEADER.unpack_from(meta, pos)
        payload = meta[pos + fmt.RECORD_HEADER.size:pos + fmt.RECORD_HEADER.size + ln]
        if t == rtype:
            payload = edit(payload) if raw else json.dumps(edit(json.loads(payload))).encode()
        records.append(fmt.RECORD_HEADER.pack(t, fl, len(payload), fmt.checksum(payload))
                       + payload)
        pos += fmt.RECORD_HEADER.size + ln
    meta = b"".join(records)
    head = bytes(data[:fmt.HEADER_SIZE])
    size = meta_off + len(meta) + fmt.TRAILER_SIZE
    trailer = fmt.TRAILER.pack(magic, ver, nrec, meta_off, len(meta), size,
                               fmt.checksum(head + meta), 0)
    out = path + ".edited.img"
    with open(out, "wb") as f:
        f.write(bytes(data[:meta_off]) + meta + trailer + fmt.checksum(trailer).to_bytes(8,
                                                                                          "little"))
    return out


def save_and_kill(sessions, img: str, argv: list[str], out: str, bp: str, *,
                  stdin: str = "/dev/null", setup=(), opts=(), **start) -> str:
    """Run argv under a new GDB (stdout to out) to breakpoint bp, save it to img with
    opts, then kill it. Returns what the save printed."""
    s = sessions()
    for cmd in setup:
        s.cli(cmd)
    stop = s.start(argv, out, stdin=stdin, breakpoint=bp, **start)
    assert stop.get("reason") == "breakpoint-hit", stop
    text = s.save(img, *opts)
    assert "Saved process" in text, text
    s.cli("kill")
    return text


def restore_and_finish(sessions, img: str, *opts: str, setup=()):
    """`ckpt restore OPTS IMG` in a new GDB, then run to the end. Returns (the new
    session, what the restore printed, the restored pid)."""
    r = sessions()
    for cmd in setup:
        r.cli(cmd)
    text = r.cli(" ".join(["ckpt restore", *opts, img]), timeout=120)
    assert "Restored process" in text, text
    pid = r.pid()
    stop = r.finish()
    assert stop.get("reason") == "exited-normally", stop
    return r, text, pid


def error_of(session, command: str, timeout: float = 120) -> str:
    """The one-line error a command must fail with (no traceback)."""
    import pytest
    with pytest.raises(MiError) as e:
        session.cli(command, timeout=timeout)
    msg = e.value.msg
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg
    return msg


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def pages(img) -> dict[int, bytes]:
    """Every page of memory the image holds, by address (chunks are ordered and cut
    differently when some memory is read while stopped and the rest later). The
    threads' rseq areas are blanked: the kernel writes there the CPU a thread runs on
    each time it returns to user space, as the parked snapshot did once."""
    out = {}
    for c in img.table:
        if c.flags & fmt.ChunkFlags.FILE_DATA:
            continue
        data = img.read_chunk(c) if not c.flags & fmt.ChunkFlags.ZERO else bytes(c.size)
        for i in range(0, c.size, 4096):
            out[c.vaddr + i] = data[i:i + 4096]
    for t in img.threads:
        if t.rseq is not None:
            page = t.rseq.addr & ~4095
            at = t.rseq.addr - page
            out[page] = out[page][:at] + bytes(t.rseq.size) + out[page][at + t.rseq.size:]
    return out
