"""gdbckpt-batch: save and restore processes without a GDB prompt, for scripts and cron.

    gdbckpt-batch [PID] [-o IMG] [--kill | --stop] [--every S --keep N]   save
    gdbckpt-batch restore IMG [--gdb] [--stdin F] [--stdout F] [--stderr F]
    gdbckpt-batch info IMG [--json]
    gdbckpt-batch verify IMG [--json]

GDB does the work, driven through GDB/MI (pygdbmi, gdbckpt/mi.py): every
command waits for its own result, with a timeout, and GDB's stderr is shown
when something fails. Errors are one line on stderr and an exit code from
EXIT below; the target process is left as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import enum
import glob
import json
import os
import re
import signal
import sys
import time

from . import __version__
from .errors import CkptError, ImageError
from .mi import Gdb, MiError, MiTimeout, cli_arg
from .procfs import Proc


class Exit(enum.IntEnum):
    """Exit codes (documented in the README and in --help)."""
    OK = 0
    FAILED = 1          # the save or restore failed (the message says why)
    USAGE = 2
    NO_PROCESS = 3      # no such process (or it ended)
    NOT_PERMITTED = 4   # the process may not be traced: permissions, ptrace_scope, a tracer
    BAD_IMAGE = 5       # missing, unreadable, corrupt or foreign image
    GDB = 6             # GDB failed to start or did not answer in time
    INTERRUPTED = 130


EXIT_HELP = "\n".join(f"  {e.value:>3}  {e.name.lower().replace('_', ' ')}" for e in Exit)
PROGRESS = re.compile(r"\[ckpt-progress\] (\w+) (\d+) (\d+)")


class BatchError(Exception):
    def __init__(self, message: str, code: Exit, detail: str = ""):
        super().__init__(message)
        self.code, self.detail = code, detail


# --- checks before GDB touches anything ------------------------------------

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
                         f"({_comm(tracer)}); detach that debugger first", Exit.NOT_PERMITTED)
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


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def default_image(pid: int, name: str, fine: bool = False) -> str:
    """PROG-PID-TIMESTAMP.img; fine adds microseconds (periodic saves may come faster than
    one a second)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S" + ("-%f" if fine else ""))
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{pid}-{stamp}.img"


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
        """Yields a console callback that drives a prompt_toolkit progress bar."""
        if not self.tty:
            yield None
            return
        from prompt_toolkit.shortcuts import ProgressBar
        with ProgressBar(title=title) as pb:
            counter = pb(total=100)
            state = {"done": 0}

            def on_console(text: str) -> None:
                m = PROGRESS.search(text)
                if m:
                    done, total = int(m.group(2)), max(int(m.group(3)), 1)
                    step = done * 100 // total - state["done"]
                    if step > 0:
                        state["done"] += step
                        counter.items_completed = state["done"]
                        pb.invalidate()
            yield on_console


# --- GDB -------------------------------------------------------------------------

@contextlib.contextmanager
def gdb_session(timeout: float):
    """GDB in a session of its own: a Ctrl-C at the terminal reaches this tool, which
    finishes the save in progress, not GDB, which would abandon it."""
    try:
        g = Gdb(timeout=timeout, prefix=("setsid",))
    except (OSError, MiError, MiTimeout) as e:
        raise BatchError(f"cannot start GDB: {e}", Exit.GDB) from None
    try:
        try:
            g.cli("set ckpt progress on")
        except (MiError, MiTimeout) as e:
            raise BatchError(f"gdbckpt did not load in GDB ({e}); run './dev setup'", Exit.GDB,
                             "".join(g.stderr)) from None
        yield g
    finally:
        g.close()


def run_cli(g: Gdb, command: str, timeout: float, code: Exit, on_console=None) -> str:
    try:
        return g.cli(command, timeout=timeout, on_console=on_console)
    except MiError as e:
        raise BatchError(e.msg, code, e.stderr) from None
    except MiTimeout as e:
        raise BatchError(f"GDB did not finish '{command}' in {timeout:.0f} s", Exit.GDB,
                         str(e)) from None


def attach(g: Gdb, pid: int, name: str) -> None:
    try:
        g.cmd(f"-target-attach {pid}", timeout=60)
    except MiError as e:
        reason = e.msg
        if not alive(pid):
            raise BatchError(f"process {pid} ended", Exit.NO_PROCESS) from None
        if "Operation not permitted" in reason:
            raise BatchError(f"cannot attach to process {pid} ({name}): not permitted "
                             "(permissions, ptrace_scope or another tracer)",
                             Exit.NOT_PERMITTED, e.stderr) from None
        if "No such process" in reason:
            raise BatchError(f"process {pid} ended", Exit.NO_PROCESS) from None
        raise BatchError(f"cannot attach to process {pid}: {reason}", Exit.GDB,
                         e.stderr) from None


def _stop_and_detach(g: Gdb, pid: int) -> None:
    """Leave the process stopped: a SIGSTOP queued before the detach takes effect after."""
    os.kill(pid, signal.SIGSTOP)
    g.cmd("-target-detach", timeout=60)


# --- commands -------------------------------------------------------------------------

def save(args, out: Out) -> Exit:
    pid = args.pid if args.pid is not None else pick_process()
    name = check_traceable(pid)
    path = args.output or default_image(pid, name)
    opts = [] if args.no_sync else ["--sync"]
    opts += ["--compress"] if args.compress else []
    opts += ["--strict"] if args.strict else []
    with gdb_session(args.timeout) as g:
        attach(g, pid, name)
        try:
            with out.progress(f"saving {pid} ({name})") as bar:
                text = run_cli(g, f"ckpt save {' '.join(opts)} {cli_arg(path)}", args.timeout,
                               Exit.FAILED, bar)
        except BatchError:
            with contextlib.suppress(MiError, MiTimeout):
                g.cmd("-target-detach", timeout=30)
            raise
        after = "killed" if args.kill else "stopped" if args.stop else "running"
        if args.kill:
            g.cli("kill", timeout=30)
        elif args.stop:
            _stop_and_detach(g, pid)
        else:
            g.cmd("-target-detach", timeout=30)
    m = re.search(r"Saved process .* to (.*): .*", text)
    for note in re.findall(r"ckpt save: note: (.*)", text):
        out.line(f"note: {note}")
    out.line(m.group(0) if m else text.strip())
    out.result({"image": os.path.abspath(path), "pid": pid, "name": name, "process": after})
    return Exit.OK


def save_every(args, out: Out) -> Exit:
    """Periodic checkpoints of a running process, keeping the newest N images."""
    pid = args.pid if args.pid is not None else pick_process()
    name = check_traceable(pid)
    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    old = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    kept: list[str] = []
    try:
        with gdb_session(args.timeout) as g:
            while not stop["now"]:
                if not alive(pid):
                    out.line(f"process {pid} ended; stopping")
                    break
                path = args.output or default_image(pid, name, fine=True)
                if args.output:
                    root, ext = os.path.splitext(args.output)
                    path = f"{root}-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}{ext or '.img'}"
                try:
                    attach(g, pid, name)
                    run_cli(g, f"ckpt save {'' if args.no_sync else '--sync'} {cli_arg(path)}",
                            args.timeout, Exit.FAILED)
                    g.cmd("-target-detach", timeout=30)
                except BatchError as e:
                    if e.code == Exit.NO_PROCESS or not alive(pid):
                        out.line(f"process {pid} ended; stopping")
                        break
                    raise
                kept.append(path)
                out.line(f"saved {path}")
                out.result({"image": os.path.abspath(path), "pid": pid})
                while len(kept) > args.keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(kept.pop(0))
                deadline = time.monotonic() + args.every
                while not stop["now"] and time.monotonic() < deadline:
                    if not alive(pid):
                        break
                    time.sleep(min(0.1, args.every))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return Exit.INTERRUPTED if stop["now"] else Exit.OK


def restore(args, out: Out) -> Exit:
    img = os.path.abspath(args.image)
    _check_image(img)
    opts = []
    for name in ("stdin", "stdout", "stderr"):
        value = getattr(args, name)
        if value:
            opts.append(cli_arg(f"--{name}={os.path.abspath(value)}"))
    if args.vdso != "auto":
        opts.append(f"--vdso={args.vdso}")
    if args.force:
        opts.append("--force")
    if args.gdb:
        gdbinit = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "gdbinit.py")
        os.execvp("gdb", ["gdb", "-q", "-x", gdbinit, "-ex",
                          f"ckpt restore {' '.join(opts)} {cli_arg(img)}"])
    with gdb_session(args.timeout) as g:
        with out.progress(f"restoring {os.path.basename(img)}") as bar:
            command = f"ckpt restore --detach {' '.join(opts)} {cli_arg(img)}"
            text = run_cli(g, command, args.timeout, Exit.FAILED, bar)
    m = re.search(r"as process (\d+)", text)
    if not m:
        raise BatchError(f"the restore reported no process: {text.strip()}", Exit.FAILED)
    for warning in re.findall(r"ckpt restore: warning: (.*)", text):
        out.line(f"warning: {warning}")
    out.line(f"restored {img} as process {m.group(1)}")
    out.result({"image": img, "pid": int(m.group(1))})
    return Exit.OK


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
    """Ask for a pid on a terminal, completing over this user's processes."""
    if not sys.stdin.isatty():
        raise BatchError("no PID given (and no terminal to pick one on)", Exit.USAGE)
    from prompt_toolkit import prompt
    from prompt_toolkit.completion import WordCompleter
    procs = list_processes()
    words = [str(p) for p, _, _ in procs]
    meta = {str(p): f"{cmd[:60]}  {rss // 1024} MiB" for p, cmd, rss in procs}
    try:
        answer = prompt("pid> ", completer=WordCompleter(words, meta_dict=meta))
    except (EOFError, KeyboardInterrupt):
        raise BatchError("no process picked", Exit.USAGE) from None
    if not answer.strip().isdigit():
        raise BatchError(f"'{answer}' is not a pid", Exit.USAGE)
    return int(answer)


def list_processes() -> list[tuple[int, str, int]]:
    """(pid, command, RSS in KiB) of this user's processes, newest first."""
    out = []
    for d in glob.glob("/proc/[0-9]*"):
        pid = int(os.path.basename(d))
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

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gdbckpt-batch", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Checkpoint a running process by pid, or restore one, through GDB.",
        epilog=f"subcommands: restore IMG | info IMG | verify IMG\nexit codes:\n{EXIT_HELP}")
    p.add_argument("pid", nargs="?", type=int, help="the process to save (on a terminal: "
                   "pick one if left out)")
    p.add_argument("-o", "--output", help="image file (default PROG-PID-TIMESTAMP.img)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--kill", action="store_true", help="end the process after a good save")
    what.add_argument("--stop", action="store_true", help="leave the process stopped")
    p.add_argument("--no-sync", action="store_true",
                   help="skip fsync of the image (on by default: ~1.5 s per GiB here)")
    p.add_argument("--compress", action="store_true", help="compress memory with zstd")
    p.add_argument("--strict", action="store_true",
                   help="refuse processes holding descriptors a restore cannot recreate")
    p.add_argument("--every", type=float, metavar="SECONDS", help="save periodically")
    p.add_argument("--keep", type=int, default=3, metavar="N",
                   help="with --every, keep the newest N images (default 3)")
    _common(p)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for GDB")
    p.add_argument("--version", action="version", version=f"gdbckpt {__version__}")


def sub_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gdbckpt-batch {name}")
    p.add_argument("image")
    if name == "restore":
        p.add_argument("--gdb", action="store_true",
                       help="stay in an interactive GDB at the saved point")
        for s in ("stdin", "stdout", "stderr"):
            p.add_argument(f"--{s}", metavar="FILE", help=f"the restored process's {s}")
        p.add_argument("--vdso", choices=("auto", "move", "patch"), default="auto")
        p.add_argument("--force", action="store_true",
                       help="restore even if a saved file is gone or shorter")
    if name == "info":
        p.add_argument("--brief", action="store_true", help="leave out the mappings")
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
    except CkptError as e:
        return _fail(BatchError(str(e), Exit.FAILED))
    except (MiError, MiTimeout) as e:
        return _fail(BatchError(f"GDB failed: {e}", Exit.GDB, getattr(e, "stderr", "")))
    except KeyboardInterrupt:
        return _fail(BatchError("interrupted", Exit.INTERRUPTED))


def _fail(e: BatchError) -> int:
    print(f"gdbckpt-batch: {e}", file=sys.stderr)
    if e.detail.strip():
        print("GDB said:\n" + e.detail.strip()[-4000:], file=sys.stderr)
    return int(e.code)


if __name__ == "__main__":
    sys.exit(main())
