"""The `ckpt` commands: one gdb.Command class per subcommand under the `ckpt` prefix."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback

import gdb

from .. import info as infomod
from .. import options
from ..errors import CkptError, UsageError
from ..image import Image
from . import settings


def _guard(name: str):
    """Turn gdbckpt's errors into one-line gdb.GdbError messages that start with the command."""
    def deco(fn):
        @functools.wraps(fn)
        def invoke(self, arg, from_tty):
            _report_background_saves()
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


def _report_background_saves() -> None:
    """Background saves that ended are said first (ingdb/save.py, if it was loaded)."""
    save = sys.modules.get(f"{__package__}.save")
    if save is not None:
        save.report_finished()      # its errors are one line of its own


def _argv(arg: str, command: str) -> list[str]:
    try:
        return gdb.string_to_argv(arg)
    except gdb.error as e:
        raise UsageError(f"{e}; usage: {command} ... IMG") from None


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
    __doc__ = f"""Save the stopped process to an image file.

Usage: {options.usage("ckpt save", options.SAVE)}

IMG is the image file to write; an existing file is replaced only once the
new image is complete. The image holds the process's memory: it is created
readable by you only (mode 0600).
{options.described(options.SAVE)}
The process stays stopped where it was; 'continue' runs it on."""

    def __init__(self):
        super().__init__("ckpt save", gdb.COMMAND_RUNNING, gdb.COMPLETE_FILENAME)

    @_guard("ckpt save")
    def invoke(self, arg, from_tty):
        self.dont_repeat()      # an empty line after it does not save again
        from . import save as savemod
        args = options.parse_gdb("ckpt save", options.SAVE, _argv(arg, "ckpt save"))
        r = savemod.save(args.image, sync=args.sync or None, compress=args.compress,
                         strict=args.strict, single=args.single,
                         report=_report_saved if args.snapshot else None)
        if r is None:
            gdb.write(f"Saving to {os.path.abspath(args.image)} in the background, from a "
                      "copy-on-write snapshot: the process can go on; GDB says when the "
                      "image is written.\n")
            return
        _report_saved(r)


def _report_saved(r) -> None:
    """What a save did (r: its SaveResult), or why a background save failed."""
    if isinstance(r, BaseException):
        why = str(r) if isinstance(r, CkptError) else f"internal error: {type(r).__name__}: {r}"
        gdb.write(f"ckpt save: the background save failed: {why}\n", gdb.STDERR)
        return
    for note in r.notes:
        gdb.write(f"ckpt save: note: {note}\n")
    gdb.write(f"Saved process {r.pid} ({r.comm}){_tree().summary(r.members)} to "
              f"{r.path}: {r.threads} thread(s), {r.mappings} mappings, "
              f"{infomod.mib(r.stored)} of memory ({infomod.mib(r.image_size)} image) in "
              f"{r.seconds:.2f} s.\n")


class CkptRestore(gdb.Command):
    __doc__ = f"""Restore a saved process, stopped where it was saved.

Usage: {options.usage("ckpt restore", options.RESTORE)}

IMG is an image written by 'ckpt save'. A process being debugged now is
replaced (GDB asks first). The restored process has the program's symbols
loaded: bt, print, info locals and breakpoints work; 'continue' runs on.
Its descriptors come back at their numbers: files reopened at their offsets
(a file that is gone or now shorter than the offset refuses the restore
unless --force), deleted files recreated, terminals attached to this
session's terminal; pipes, sockets, eventfd, timerfd, signalfd, epoll and
inotify descriptors made again with their data and settings (an established
TCP connection through TCP_REPAIR, where permitted; otherwise it is reset).
{options.described(options.RESTORE)}"""

    def __init__(self):
        super().__init__("ckpt restore", gdb.COMMAND_RUNNING, gdb.COMPLETE_FILENAME)

    @_guard("ckpt restore")
    def invoke(self, arg, from_tty):
        self.dont_repeat()      # an empty line after it does not restore again
        from . import restore
        args = options.parse_gdb("ckpt restore", options.RESTORE, _argv(arg, "ckpt restore"))
        stdio = {fd: name for fd, name in enumerate((args.stdin, args.stdout, args.stderr))
                 if name}
        if 0 in stdio and not os.access(stdio[0], os.R_OK):
            raise UsageError(f"--stdin: cannot read '{stdio[0]}'")
        r = restore.restore(args.image, vdso_mode=args.vdso, clocks=args.clocks,
                            dry_run=args.dry_run, stdio=stdio, force=args.force,
                            detach=args.detach, lazy=args.lazy,
                            verify=False if args.no_verify else None, from_tty=from_tty,
                            debug_tree=args.debug_tree)
        if args.dry_run:
            gdb.write(r.plan.text() + "\n")
            return
        for w in r.warnings:
            gdb.write(f"ckpt restore: warning: {w}\n")
        p = r.image.process
        detached = ", detached: it runs on its own" if args.detach else ""
        gdb.write(f"Restored process {p.pid} ({p.comm}) as process {r.pid} in "
                  f"{r.seconds:.2f} s (vDSO: {r.plan.vdso_mode}){detached}"
                  f"{_tree().restored_line(r.members)}.\n")
        if not args.detach:
            gdb.execute("frame", to_string=False)


class CkptInfo(gdb.Command):
    __doc__ = f"""Show what an image holds.

Usage: {options.usage("ckpt info", options.INFO)}

Prints the saved process, its threads and registers, its mappings and how
much of each was stored, the kernel it ran on and what a restore here would
do with its vDSO.
{options.described(options.INFO)}"""

    def __init__(self):
        super().__init__("ckpt info", gdb.COMMAND_STATUS, gdb.COMPLETE_FILENAME)

    @_guard("ckpt info")
    def invoke(self, arg, from_tty):
        args = options.parse_gdb("ckpt info", options.INFO, _argv(arg, "ckpt info"))
        img = Image.open(args.image)
        text = json.dumps(infomod.as_json(img), indent=1) if args.json else \
            infomod.text(img, mappings=not args.brief)
        # JSON is for programs: never held at GDB's --Type <RET> for more-- prompt.
        with settings.temporarily(pagination="off" if args.json else
                                  gdb.parameter("pagination") and "on" or "off"):
            gdb.write(text + "\n")


class CkptVerify(gdb.Command):
    __doc__ = f"""Check an image without restoring it.

Usage: {options.usage("ckpt verify", options.VERIFY)}

Reads the whole image and checks its header, trailer, every metadata record
and every memory chunk against their checksums; names the first part that
is wrong."""

    def __init__(self):
        super().__init__("ckpt verify", gdb.COMMAND_STATUS, gdb.COMPLETE_FILENAME)

    @_guard("ckpt verify")
    def invoke(self, arg, from_tty):
        import time
        args = options.parse_gdb("ckpt verify", options.VERIFY, _argv(arg, "ckpt verify"))
        t0 = time.perf_counter()
        img = Image.open(args.image)
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


def _tree():
    """engine.tree, for a save's or restore's line: not loaded at every GDB start."""
    from ..engine import tree
    return tree
