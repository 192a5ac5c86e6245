"""The `ckpt` commands: one gdb.Command class per subcommand under the `ckpt` prefix."""

from __future__ import annotations

import functools
import json
import os
import traceback

import gdb

from .. import info as infomod
from ..errors import CkptError, UsageError
from ..image import Image
from . import settings


def _guard(name: str):
    """Turn gdbckpt's errors into one-line gdb.GdbError messages that start with the command."""
    def deco(fn):
        @functools.wraps(fn)
        def invoke(self, arg, from_tty):
            try:
                return fn(self, arg, from_tty)
            except CkptError as e:
                raise gdb.GdbError(f"{name}: {e}") from None
            except KeyboardInterrupt:
                raise gdb.GdbError(f"{name}: interrupted") from None
            except gdb.GdbError:
                raise
            except Exception as e:
                hint = " ('set ckpt debug on' shows the traceback)"
                if settings.get("debug"):
                    gdb.write(traceback.format_exc(), gdb.STDERR)
                    hint = ""
                raise gdb.GdbError(f"{name}: internal error: {type(e).__name__}: {e}{hint}") \
                    from None
        return invoke
    return deco


def parse_args(arg: str, usage: str, flags: tuple[str, ...] = (),
               choices: dict[str, tuple[str, ...]] | None = None,
               values: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """Split GDB command arguments into --options and positional words.

    flags take no value, choices one of a list (--key=value), values any
    value (--key=value or --key value).
    """
    choices = choices or {}
    opts: dict[str, object] = {}
    words = []
    try:
        argv = gdb.string_to_argv(arg)
    except gdb.error as e:
        raise UsageError(f"{e}; usage: {usage}") from None
    it = iter(argv)
    for a in it:
        if a.startswith("--") and len(a) > 2:
            key, eq, value = a[2:].partition("=")
            if key in flags and not eq:
                opts[key] = True
            elif key in values:
                if not eq:
                    value = next(it, "")
                if not value:
                    raise UsageError(f"--{key} needs a value; usage: {usage}")
                opts[key] = value
            elif key in choices and eq:
                if value not in choices[key]:
                    raise UsageError(f"--{key} takes one of {', '.join(choices[key])}, not "
                                     f"'{value}'")
                opts[key] = value
            else:
                raise UsageError(f"unknown option '{a}'; usage: {usage}")
        else:
            words.append(a)
    return opts, words


def one_path(words: list[str], usage: str) -> str:
    if len(words) != 1:
        raise UsageError(f"{'missing' if not words else 'too many'} arguments; usage: {usage}")
    return words[0]


class CkptPrefix(gdb.Command):
    """Checkpoint the process being debugged to a file and restore it later.

    ckpt save IMG      save the stopped process (it stays as it is and can continue)
    ckpt restore IMG   bring a saved process back, stopped where it was saved
    ckpt info IMG      show what an image holds
    ckpt verify IMG    check an image's checksums without restoring it
    Settings: 'show ckpt'."""

    def __init__(self):
        super().__init__("ckpt", gdb.COMMAND_RUNNING, gdb.COMPLETE_NONE, True)

    def invoke(self, arg, from_tty):
        if arg.strip():
            raise gdb.GdbError(f'Undefined ckpt command: "{arg.strip()}".  Try "help ckpt".')
        gdb.execute("help ckpt", from_tty)


class CkptSave(gdb.Command):
    """Save the stopped process to an image file.

Usage: ckpt save [--sync] [--compress] [--strict] IMG

IMG is the image file to write; an existing file is replaced only once the
new image is complete. The image holds the process's memory: it is created
readable by you only (mode 0600).
--sync      flush the image to disk before renaming it (default: 'set ckpt sync').
--compress  compress memory with zstd (smaller, slower to save).
--strict    refuse to save a process that a restore would not give back whole
            (a socket whose peer is another process, a TCP connection without
            TCP_REPAIR, an inotify descriptor, ...); by default the save names
            each such thing, and a restore gives a reset socket (or /dev/null).
The process stays stopped where it was; 'continue' runs it on."""

    USAGE = "ckpt save [--sync] [--compress] [--strict] IMG"

    def __init__(self):
        super().__init__("ckpt save", gdb.COMMAND_RUNNING, gdb.COMPLETE_FILENAME)

    @_guard("ckpt save")
    def invoke(self, arg, from_tty):
        from . import save as savemod
        opts, words = parse_args(arg, self.USAGE, flags=("sync", "compress", "strict"))
        path = one_path(words, self.USAGE)
        r = savemod.save(path, sync=opts.get("sync"), compress=bool(opts.get("compress")),
                      strict=bool(opts.get("strict")))
        for note in r.notes:
            gdb.write(f"ckpt save: note: {note}\n")
        gdb.write(f"Saved process {r.pid} ({r.comm}) to {r.path}: {r.threads} thread(s), "
                  f"{r.mappings} mappings, {infomod.mib(r.stored)} of memory "
                  f"({infomod.mib(r.image_size)} image) in {r.seconds:.2f} s.\n")


class CkptRestore(gdb.Command):
    """Restore a saved process, stopped where it was saved.

Usage: ckpt restore [--dry-run] [--no-verify] [--force] [--detach] [--lazy]
                    [--vdso=auto|move|patch] [--clocks=continue|host]
                    [--stdin=FILE] [--stdout=FILE] [--stderr=FILE] IMG

IMG is an image written by 'ckpt save'. A process being debugged now is
replaced (GDB asks first). The restored process has the program's symbols
loaded: bt, print, info locals and breakpoints work; 'continue' runs on.
Its descriptors come back at their numbers: files reopened at their offsets
(a file that is gone or now shorter than the offset refuses the restore
unless --force), deleted files recreated, terminals attached to this
session's terminal; pipes, sockets, eventfd, timerfd, signalfd and epoll
descriptors made again with their data and settings (an established TCP
connection through TCP_REPAIR, where permitted; otherwise it is reset).
--stdin=FILE, --stdout=FILE, --stderr=FILE  instead read from / write to FILE
             (created or truncated, like the shell's < and >).
--force      restore even when a saved file is gone or shorter than its offset.
--detach     let the restored process run on its own (in a new session) instead
             of stopping it in GDB.
--lazy       map memory straight from the image instead of copying it: the
             restore takes milliseconds and pages are read when first touched.
             Checks the metadata but not the memory's checksums (ckpt verify
             does); not for compressed images. The image must stay in place.
--dry-run    print the restore plan without changing anything.
--no-verify  skip checking the memory checksums (default: 'set ckpt verify').
--vdso=MODE  auto (default): move this kernel's vDSO into place when it is the
             saved one, else patch the saved one; move or patch force a way.
--clocks=continue|host  continue (default, where permitted): CLOCK_MONOTONIC and
             CLOCK_BOOTTIME go on from their saved values, in a time namespace, so
             they never run backwards after a reboot or on another host; host:
             the host's clocks (they may jump back; the restore says by how much)."""

    USAGE = ("ckpt restore [--dry-run] [--no-verify] [--force] [--detach] [--lazy] "
             "[--vdso=auto|move|patch] [--clocks=continue|host] "
             "[--stdin=FILE] [--stdout=FILE] [--stderr=FILE] IMG")

    def __init__(self):
        super().__init__("ckpt restore", gdb.COMMAND_RUNNING, gdb.COMPLETE_FILENAME)

    @_guard("ckpt restore")
    def invoke(self, arg, from_tty):
        from . import restore
        opts, words = parse_args(arg, self.USAGE,
                                 flags=("dry-run", "no-verify", "force", "detach", "lazy"),
                                 choices={"vdso": ("auto", "move", "patch"),
                                          "clocks": ("continue", "host")},
                                 values=("stdin", "stdout", "stderr"))
        path = one_path(words, self.USAGE)
        stdio = {fd: str(opts[name]) for fd, name in enumerate(("stdin", "stdout", "stderr"))
                 if name in opts}
        if 0 in stdio and not os.access(stdio[0], os.R_OK):
            raise UsageError(f"--stdin: cannot read '{stdio[0]}'")
        r = restore.restore(path, vdso_mode=str(opts.get("vdso", "auto")),
                            clocks=str(opts.get("clocks", "continue")),
                            dry_run=bool(opts.get("dry-run")), stdio=stdio,
                            force=bool(opts.get("force")), detach=bool(opts.get("detach")),
                            lazy=bool(opts.get("lazy")),
                            verify=False if opts.get("no-verify") else None, from_tty=from_tty)
        if opts.get("dry-run"):
            gdb.write(r.plan.text() + "\n")
            return
        for w in r.warnings:
            gdb.write(f"ckpt restore: warning: {w}\n")
        p = r.image.process
        detached = ", detached: it runs on its own" if opts.get("detach") else ""
        gdb.write(f"Restored process {p.pid} ({p.comm}) as process {r.pid} in "
                  f"{r.seconds:.2f} s (vDSO: {r.plan.vdso_mode}){detached}.\n")
        if not opts.get("detach"):
            gdb.execute("frame", to_string=False)


class CkptInfo(gdb.Command):
    """Show what an image holds.

Usage: ckpt info [--json] [--brief] IMG

Prints the saved process, its threads and registers, its mappings and how
much of each was stored, the kernel it ran on and what a restore here would
do with its vDSO. --json prints all of it as JSON; --brief leaves out the
mappings."""

    USAGE = "ckpt info [--json] [--brief] IMG"

    def __init__(self):
        super().__init__("ckpt info", gdb.COMMAND_STATUS, gdb.COMPLETE_FILENAME)

    @_guard("ckpt info")
    def invoke(self, arg, from_tty):
        opts, words = parse_args(arg, self.USAGE, flags=("json", "brief"))
        img = Image.open(one_path(words, self.USAGE))
        text = json.dumps(infomod.as_json(img), indent=1) if opts.get("json") else \
            infomod.text(img, mappings=not opts.get("brief"))
        # JSON is for programs: never held at GDB's --Type <RET> for more-- prompt.
        with settings.temporarily(pagination="off" if opts.get("json") else
                                  gdb.parameter("pagination") and "on" or "off"):
            gdb.write(text + "\n")


class CkptVerify(gdb.Command):
    """Check an image without restoring it.

Usage: ckpt verify IMG

Reads the whole image and checks its header, trailer, every metadata record
and every memory chunk against their checksums; names the first part that
is wrong."""

    USAGE = "ckpt verify IMG"

    def __init__(self):
        super().__init__("ckpt verify", gdb.COMMAND_STATUS, gdb.COMPLETE_FILENAME)

    @_guard("ckpt verify")
    def invoke(self, arg, from_tty):
        import time
        _, words = parse_args(arg, self.USAGE)
        t0 = time.perf_counter()
        img = Image.open(one_path(words, self.USAGE))
        checked = img.verify_chunks()
        gdb.write(f"{img.path}: good: {len(img.table)} chunks, {infomod.mib(checked)} checked "
                  f"in {time.perf_counter() - t0:.2f} s.\n")


_registered = False


def register() -> bool:
    """Create the commands once; sourcing gdbinit.py again is harmless."""
    global _registered
    if _registered:
        return False
    settings.register()
    CkptPrefix()
    CkptSave()
    CkptRestore()
    CkptInfo()
    CkptVerify()
    _registered = True
    return True
