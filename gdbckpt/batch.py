"""gdbckpt-batch: save and restore processes without a GDB prompt, for scripts and cron.

    gdbckpt-batch [PID] [-o IMG] [--kill | --stop] [--every S --keep N]   save
    gdbckpt-batch restore IMG [--gdb] [--stdin F] [--stdout F] [--stderr F]
    gdbckpt-batch info IMG [--json]
    gdbckpt-batch verify IMG [--json]

The engine does the work itself, with its own ptrace: no GDB is started
(but for `restore --gdb`, which leaves you in GDB at the saved point).
Errors are one line on stderr and an exit code from EXIT below; the target
process is left as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import re
import signal
import sys
import time

from . import __version__, options
from .engine.front import Front
from .errors import CkptError, ImageError
from .procfs import Proc, comm_of


class Exit(enum.IntEnum):
    """Exit codes (documented in the README and in --help)."""
    OK = 0
    FAILED = 1          # the save or restore failed (the message says why); or --kill
                        # kept the process alive: its image would not restore all of it
    USAGE = 2
    NO_PROCESS = 3      # no such process (or it ended)
    NOT_PERMITTED = 4   # the process may not be traced: permissions, ptrace_scope, a tracer
    BAD_IMAGE = 5       # missing, unreadable, corrupt or foreign image
    GDB = 6             # GDB failed to start (restore --gdb)
    TIMEOUT = 7         # the save or restore took longer than --timeout
    INTERRUPTED = 130


EXIT_HELP = "\n".join(f"  {e.value:>3}  {e.name.lower().replace('_', ' ')}" for e in Exit)


class BatchError(Exception):
    def __init__(self, message: str, code: Exit):
        super().__init__(message)
        self.code = code


# --- checks before anything touches the process ------------------------------------

def check_traceable(pid: int) -> str:
    """The process's name, or BatchError saying why it cannot be traced."""
    if not os.path.exists(f"/proc/{pid}"):
        raise BatchError(f"no process {pid}", Exit.NO_PROCESS)
    try:
        status = Proc(pid).status()
    except CkptError as e:
        raise BatchError(str(e), Exit.NOT_PERMITTED) from None
    name = status.get("Name", "?")
    tracer = int(status.get("TracerPid", "0"))
    if tracer:
        raise BatchError(f"process {pid} ({name}) is already traced by process {tracer} "
                         f"({comm_of(tracer)}); detach that debugger first", Exit.NOT_PERMITTED)
    if "Z" in status.get("State", ""):
        raise BatchError(f"process {pid} ({name}) has exited (zombie)", Exit.NO_PROCESS)
    uid = int(status["Uid"].split()[0])
    if os.geteuid() != 0 and uid != os.geteuid():
        raise BatchError(f"process {pid} ({name}) belongs to uid {uid}: only root or that "
                         "user may checkpoint it", Exit.NOT_PERMITTED)
    scope = _ptrace_scope()
    if scope >= 2 and os.geteuid() != 0:
        raise BatchError(f"ptrace_scope is {scope}: only root may attach to processes "
                         "(kernel.yama.ptrace_scope)", Exit.NOT_PERMITTED)
    if scope == 1 and os.geteuid() != 0 and not _is_descendant(pid):
        raise BatchError(f"ptrace_scope is 1: process {pid} is not a child of this one; "
                         "run as root or set kernel.yama.ptrace_scope=0", Exit.NOT_PERMITTED)
    return name


def alive(pid: int) -> bool:
    """Whether pid exists and has not exited (a zombie cannot be traced)."""
    try:
        return Proc(pid).stat()["state"] not in ("Z", "X")
    except CkptError:
        return False


def _ptrace_scope() -> int:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read())
    except OSError:
        return 0


def _is_descendant(pid: int) -> bool:
    me = os.getpid()
    while pid > 1:
        try:
            pid = int(Proc(pid).stat()["ppid"])
        except CkptError:
            return False
        if pid == me:
            return True
    return False


def default_image(pid: int, name: str, fine: bool = False) -> str:
    """PROG-PID-TIMESTAMP.img; fine adds microseconds (periodic saves may come faster than
    one a second)."""
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{pid}-{_stamp(fine)}.img"


def _stamp(fine: bool = True) -> str:
    """YYYYmmdd-HHMMSS[-microseconds], local time (time, not datetime: a lighter import)."""
    now = time.time()
    whole = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{whole}-{int(now % 1 * 1e6):06d}" if fine else whole


# --- output -------------------------------------------------------------------

class Out:
    """Plain lines when not on a terminal; a progress bar on one; JSON on request."""

    def __init__(self, as_json: bool):
        self.json = as_json
        self.tty = sys.stderr.isatty() and not as_json
        self.bar = None

    def line(self, text: str) -> None:
        if not self.json:
            print(text, flush=True)

    def result(self, data: dict) -> None:
        if self.json:
            print(json.dumps(data), flush=True)

    @contextlib.contextmanager
    def progress(self, title: str):
        """Yields a progress(done, total) callback that drives a prompt_toolkit bar."""
        if not self.tty:
            yield lambda done, total: None
            return
        from prompt_toolkit.shortcuts import ProgressBar
        with ProgressBar(title=title) as pb:
            counter = pb(total=100)

            def advance(done: int, total: int) -> None:
                percent = done * 100 // max(total, 1)
                if percent > counter.items_completed:
                    counter.items_completed = percent
                    pb.invalidate()
            yield advance


# --- the engine -----------------------------------------------------------------------

class BatchFront(Front):
    """The engine's front end here: a progress bar, nothing else to tell."""

    def __init__(self, advance):
        self.advance = advance

    def progress(self, phase: str, total: int):
        return lambda done, final=False: self.advance(done, total)


class Guard:
    """SIGINT, SIGTERM and SIGHUP wait for the save or restore in progress (an image is never
    left half-written, a process never half-made); --timeout ends it with an error."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.interrupted = False

    def __enter__(self):
        self.old = {s: signal.signal(s, self._interrupt)
                    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        self.old_alarm = signal.signal(signal.SIGALRM, self._expired)
        if self.timeout > 0:
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old_alarm)
        for sig, handler in self.old.items():
            signal.signal(sig, handler)

    def _interrupt(self, signum, frame):
        self.interrupted = True

    def _expired(self, signum, frame):
        raise BatchError(f"gave up after {self.timeout:.0f} s (--timeout)", Exit.TIMEOUT)


def seize(pid: int, name: str):
    """Attach to every thread of pid and stop it (engine.process.Process.seize)."""
    from .engine.process import Process
    from .errors import SaveError
    try:
        return Process.seize(pid, SaveError)
    except SaveError as e:
        if not alive(pid):
            raise BatchError(f"process {pid} ended", Exit.NO_PROCESS) from None
        if "not permitted" in str(e):
            raise BatchError(f"cannot attach to process {pid} ({name}): not permitted "
                             "(permissions, ptrace_scope or another tracer)",
                             Exit.NOT_PERMITTED) from None
        raise BatchError(str(e), Exit.FAILED) from None


def save_once(pid: int, name: str, path: str, args, advance, after: str):
    """Seize the process and its descendants, save, then leave them running, stopped or
    killed.

    A tree that runs on is stopped only while its state is read: the root's memory
    comes from a copy-on-write snapshot while it runs (--no-snapshot: read
    before it runs on).
    """
    from .engine import save as engine_save
    from .engine import tree
    proc = seize(pid, name)
    members = []
    try:
        if not args.single:
            members = tree.seize_descendants(pid)
    except CkptError as e:
        proc.release()
        raise BatchError(f"cannot attach to the children of process {pid}: {e}",
                         Exit.FAILED) from None

    def resume() -> None:
        proc.release()
        tree.release(members)
    try:
        result = engine_save.save(proc, path, front=BatchFront(advance), sync=not args.no_sync,
                                  compress=args.compress, strict=args.strict,
                                  resume=resume if after == "running" else None,
                                  snapshot=not args.no_snapshot, members=members)
        if after == "killed":
            if result.lost and not args.force:
                raise BatchError(f"saved to {result.path}, but the process was left running: "
                                 f"a restore would not give back {'; '.join(result.lost)} "
                                 "(--force kills it anyway)", Exit.FAILED)
            tree.kill(members)
            engine_save.quiet_connections(proc)
            proc.kill()
    finally:
        tree.release(members, stop=after == "stopped")
        proc.release(stop=after == "stopped")
    if after == "killed":
        # Only the root: its children go to whoever reaps orphans here, maybe slowly (a
        # tree whose pids are still taken comes back in a pid namespace of its own).
        _wait_reaped(pid)
    return result


def _wait_reaped(pid: int, seconds: float = 2.0) -> None:
    """A killed process keeps its pid until its parent reaps it: a restore started
    right after `--kill` can then have the same pid, which programs notice (asyncio
    checks that its loop belongs to getpid())."""
    deadline = time.monotonic() + seconds
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.005)


def save(args, out: Out) -> Exit:
    pid = args.pid if args.pid is not None else pick_process()
    name = check_traceable(pid)
    path = args.output or default_image(pid, name)
    after = "killed" if args.kill else "stopped" if args.stop else "running"
    with Guard(args.timeout) as guard, out.progress(f"saving {pid} ({name})") as advance:
        r = save_once(pid, name, path, args, advance, after)
    for note in r.notes:
        out.line(f"note: {note}")
    from .engine import tree
    out.line(f"Saved process {r.pid} ({r.comm}){tree.summary(r.members)} to {r.path}: "
             f"{r.threads} thread(s), "
             f"{r.mappings} mappings, {r.stored / 2**20:.1f} MiB of memory "
             f"({r.image_size / 2**20:.1f} MiB image) in {r.seconds:.2f} s; it is {after}.")
    out.result({"image": os.path.abspath(r.path), "pid": pid, "name": name, "process": after,
                "members": [m.pid for m in r.members],
                "seconds": round(r.seconds, 4), "notes": r.notes, "not_restorable": r.lost})
    return Exit.INTERRUPTED if guard.interrupted else Exit.OK


def stamped(path: str) -> str:
    """-o NAME for --every: NAME-TIMESTAMP.EXT, one per save."""
    root, ext = os.path.splitext(path)
    return f"{root}-{_stamp()}{ext or '.img'}"


def save_every(args, out: Out) -> Exit:
    """Periodic checkpoints of a running process, keeping the newest N images."""
    pid = args.pid if args.pid is not None else pick_process()
    name = check_traceable(pid)
    kept: list[str] = []
    with Guard(0) as guard:
        while not guard.interrupted:
            if not alive(pid):
                out.line(f"process {pid} ended; stopping")
                break
            path = stamped(args.output) if args.output else default_image(pid, name, fine=True)
            try:
                save_once(pid, name, path, args, lambda done, total: None, "running")
            except BatchError as e:
                if e.code == Exit.NO_PROCESS or not alive(pid):
                    out.line(f"process {pid} ended; stopping")
                    break
                raise
            except CkptError:
                if not alive(pid):
                    out.line(f"process {pid} ended; stopping")
                    break
                raise
            kept.append(path)
            out.line(f"saved {path}")
            out.result({"image": os.path.abspath(path), "pid": pid})
            while len(kept) > args.keep:
                _remove(kept.pop(0), out)
            deadline = time.monotonic() + args.every
            while not guard.interrupted and time.monotonic() < deadline and alive(pid):
                time.sleep(min(0.1, args.every))
    return Exit.INTERRUPTED if guard.interrupted else Exit.OK


def _remove(path: str, out: Out) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        out.line(f"warning: cannot remove the old image {path}: {e.strerror}")


def restore(args, out: Out) -> Exit:
    img = os.path.abspath(args.image)
    stdio = {fd: os.path.abspath(getattr(args, name))
             for fd, name in enumerate(("stdin", "stdout", "stderr")) if getattr(args, name)}
    if args.gdb:
        _check_image(img)
        return _restore_in_gdb(img, stdio, args)
    from .engine import restore as engine
    with Guard(args.timeout) as guard, out.progress(f"restoring {os.path.basename(img)}"):
        prepared = engine.prepare(img, vdso_mode=args.vdso, stdio=stdio, force=args.force,
                                  clocks=args.clocks,
                                  verify=not args.no_verify,
                                  fill="lazy" if args.lazy else "stub", background=True)
        if args.dry_run:
            r = engine.dry_run(prepared)
            print(r.plan.text())
            return Exit.OK
        r = engine.restore(prepared, stopped=False, new_session=True)
    for warning in r.warnings:
        out.line(f"warning: {warning}")
    from .engine.tree import restored_line
    out.line(f"restored {img} as process {r.pid} in {r.seconds:.2f} s "
             f"(vDSO: {r.plan.vdso_mode}){restored_line(r.members)}")
    out.result({"image": img, "pid": r.pid, "seconds": round(r.seconds, 4),
                "members": {str(k): v for k, v in r.members.items()},
                "warnings": r.warnings, "vdso": r.plan.vdso_mode})
    return Exit.INTERRUPTED if guard.interrupted else Exit.OK


def _restore_in_gdb(img: str, stdio: dict[int, str], args) -> Exit:
    """Replace this tool with GDB, restoring the image at its prompt."""
    from .mi import GDBINIT, cli_arg
    opts = [cli_arg(f"--{('stdin', 'stdout', 'stderr')[fd]}={path}")
            for fd, path in stdio.items()]
    opts += [f"--vdso={args.vdso}"] if args.vdso != "auto" else []
    opts += ["--force"] if args.force else []
    opts += ["--no-verify"] if args.no_verify else []
    opts += ["--lazy"] if args.lazy else []
    opts += [f"--clocks={args.clocks}"] if args.clocks != "continue" else []
    try:
        os.execvp("gdb", ["gdb", "-q", "-x", GDBINIT, "-ex",
                          f"ckpt restore {' '.join(opts)} {cli_arg(img)}"])
    except OSError as e:
        raise BatchError(f"cannot run gdb: {e.strerror}", Exit.GDB) from None


def _check_image(path: str):
    from .image import Image
    try:
        return Image.open(path)
    except ImageError as e:
        raise BatchError(str(e), Exit.BAD_IMAGE) from None


def info(args, out: Out) -> Exit:
    from . import info as infomod
    img = _check_image(os.path.abspath(args.image))
    if args.json:
        print(json.dumps(infomod.as_json(img), indent=1))
    else:
        print(infomod.text(img, mappings=not args.brief))
    return Exit.OK


def verify(args, out: Out) -> Exit:
    img = _check_image(os.path.abspath(args.image))
    t0 = time.perf_counter()
    try:
        checked = img.verify_chunks()
    except ImageError as e:
        raise BatchError(str(e), Exit.BAD_IMAGE) from None
    seconds = time.perf_counter() - t0
    out.line(f"{img.path}: good: {len(img.table)} chunks, {checked} bytes checked in "
             f"{seconds:.2f} s")
    out.result({"image": img.path, "ok": True, "chunks": len(img.table), "bytes": checked})
    return Exit.OK


def pick_process() -> int:
    """Ask for a process on a terminal: your own processes, with their command lines,
    filtered as you type by pid or by any part of the command. Only a process offered
    can be picked: a pid typed in full, or a name that matches exactly one."""
    if not sys.stdin.isatty():
        raise BatchError("no PID given (and no terminal to pick one on)", Exit.USAGE)
    from prompt_toolkit import prompt
    from prompt_toolkit.completion import Completer, Completion
    procs = list_processes()

    class Picker(Completer):
        def get_completions(self, document, complete_event):
            for pid, cmd in matching(procs, document.text):
                yield Completion(str(pid), start_position=-len(document.text),
                                 display=f"{pid}  {cmd[:70]}")

    try:
        answer = prompt("pid or name> ", completer=Picker(), complete_while_typing=True)
    except (EOFError, KeyboardInterrupt):
        raise BatchError("no process picked", Exit.USAGE) from None
    return picked(procs, answer)


def matching(procs: list[tuple[int, str, int]], text: str) -> list[tuple[int, str]]:
    """Processes whose pid starts with text, or whose command contains it."""
    text = text.strip().lower()
    return [(pid, cmd) for pid, cmd, _ in procs
            if str(pid).startswith(text) or (text and text in cmd.lower())]


def picked(procs: list[tuple[int, str, int]], answer: str) -> int:
    """The process an answer names: a listed pid in full, or the one process matching."""
    answer = answer.strip()
    if answer.isdigit() and any(pid == int(answer) for pid, _, _ in procs):
        return int(answer)
    found = [pid for pid, cmd in matching(procs, answer) if not answer.isdigit()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise BatchError(f"'{answer}' is none of your processes", Exit.USAGE)
    raise BatchError(f"'{answer}' matches {len(found)} processes: give the pid", Exit.USAGE)


def list_processes() -> list[tuple[int, str, int]]:
    """(pid, command, RSS in KiB) of this user's processes, newest first."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        d, pid = f"/proc/{name}", int(name)
        try:
            if os.stat(d).st_uid != os.geteuid() or pid == os.getpid():
                continue
            with open(f"{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"{d}/statm") as f:
                rss = int(f.read().split()[1]) * 4
        except OSError:
            continue
        if cmd:
            out.append((pid, cmd, rss))
    return sorted(out, reverse=True)


# --- command line ------------------------------------------------------------------------

def gdbinit_line() -> str:
    """`source FILE` that loads this gdbckpt's commands in GDB: a checkout's gdbinit.py
    (it finds the checkout's .venv), or the installed package's loader."""
    package = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.join(os.path.dirname(package), "gdbinit.py")
    if os.path.isfile(checkout):
        return f"source {checkout}"
    return f"source {os.path.join(package, 'ingdb', 'load.py')}"


class _GdbinitLine(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(gdbinit_line())
        parser.exit(0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gdbckpt-batch", formatter_class=options.Formatter,
        description="Checkpoint a running process by pid, or restore one, without GDB.",
        epilog=f"subcommands: restore IMG | info IMG | verify IMG\nexit codes:\n{EXIT_HELP}")
    p.add_argument("pid", nargs="?", type=int, help="the process to save (on a terminal: "
                   "pick one if left out)")
    p.add_argument("--gdbinit", action=_GdbinitLine, nargs=0,
                   help="print the line to put in ~/.gdbinit for the ckpt commands, and exit")
    p.add_argument("-o", "--output", help="image file (default PROG-PID-TIMESTAMP.img)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--kill", action="store_true", help="end the process after a good save")
    what.add_argument("--stop", action="store_true", help="leave the process stopped")
    p.add_argument("--no-sync", action="store_true",
                   help="skip fsync of the image (on by default: ~1.5 s per GiB here)")
    p.add_argument("--no-snapshot", action="store_true",
                   help="keep the process stopped while its memory is read (by default it "
                   "runs on, its memory read from a copy-on-write snapshot)")
    options.add_to(p, options.SAVE, "batch")      # --compress, --strict: as in GDB
    p.add_argument("--force", action="store_true",
                   help="with --kill: kill the process even if a restore would not give "
                   "all of it back")
    p.add_argument("--every", type=float, metavar="SECONDS", help="save periodically")
    p.add_argument("--keep", type=int, default=3, metavar="N",
                   help="with --every, keep the newest N images (default 3)")
    _common(p)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=600,
                   help="give up a save or restore after this many seconds (default 600)")
    p.add_argument("--version", action="version", version=f"gdbckpt {__version__}")


def sub_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gdbckpt-batch {name}", formatter_class=options.Formatter)
    p.add_argument("image")
    if name == "restore":
        options.add_to(p, options.RESTORE, "batch")     # the options of ckpt restore
    if name == "info":
        options.add_to(p, options.INFO, "batch")
    _common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"restore": restore, "info": info, "verify": verify}
    try:
        if argv and argv[0] in commands:
            args = sub_parser(argv[0]).parse_args(argv[1:])
            run = commands[argv[0]]
        else:
            args = parser().parse_args(argv)
            if args.every is not None and (args.every <= 0 or args.keep < 1):
                raise BatchError("--every needs a positive interval and --keep at least 1",
                                 Exit.USAGE)
            run = save_every if args.every is not None else save
    except SystemExit as e:        # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    except BatchError as e:
        return _fail(e)
    out = Out(getattr(args, "json", False))
    try:
        return int(run(args, out))
    except BatchError as e:
        return _fail(e)
    except ImageError as e:
        return _fail(BatchError(str(e), Exit.BAD_IMAGE))
    except CkptError as e:
        return _fail(BatchError(str(e), Exit.FAILED))
    except KeyboardInterrupt:
        return _fail(BatchError("interrupted", Exit.INTERRUPTED))


def _fail(e: BatchError) -> int:
    print(f"gdbckpt-batch: {e}", file=sys.stderr)
    return int(e.code)


def cli() -> None:
    """The gdbckpt-batch command: main(), then straight out. Python's own shutdown
    (finalizers, module teardown) costs a command-line tool ~10 ms and does nothing
    here: what must be flushed or closed has been."""
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    cli()
