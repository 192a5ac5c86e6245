"""ckpt restore in GDB: the engine makes the process; GDB then attaches to it.

GDB never drives the stub: the engine spawns it and runs the plan through its
own ptrace, then lets the process go in a job-control stop. GDB attaches
with the program as its executable, so it reads the restored process as
what it is now (shared libraries, TLS, every thread, `bt`).
"""

from __future__ import annotations

import os
import re
import signal

import gdb

from ..engine import restore as engine
from ..engine.process import Process
from ..errors import RestoreError
from ..mi import cli_arg
from . import settings
from .front import GdbFront


def restore(path: str, *, vdso_mode: str = "auto", dry_run: bool = False,
            verify: bool | None = None, stdio: dict[int, str] | None = None,
            force: bool = False, detach: bool = False, lazy: bool = False,
            from_tty: bool = False, clocks: str = "continue",
            debug_tree: bool = False) -> engine.RestoreResult:
    """Restore the image at path; with detach, let it run on its own in a new session.
    debug_tree: the rest of a saved tree too, each process an inferior, stopped.

    lazy maps memory from the image instead of copying it (pages arrive when
    first touched); it checks the metadata but not the memory's checksums,
    which would mean reading it all.
    """
    fill = "lazy" if lazy else settings.value("fill-method")
    # The checksums are checked while the restore begins when there is no process to
    # give up for it; else first, before GDB kills the one it debugs.
    prepared = engine.prepare(path, vdso_mode=vdso_mode, stdio=stdio, force=force, fill=fill,
                              clocks=clocks,
                              verify=settings.get("verify") if verify is None else verify,
                              background=not gdb.selected_inferior().pid)
    if dry_run:
        return engine.dry_run(prepared)
    # What can be refused without a stub was refused before the process being
    # debugged is replaced.
    _replace_current(from_tty)
    front = GdbFront()
    if detach:
        return engine.restore(prepared, front=front, stopped=False, new_session=True)
    r = engine.restore(prepared, front=front, stopped=True, members_stopped=debug_tree)
    try:
        r.warnings += _attach(r, wake=not debug_tree)
        if debug_tree:
            _attach_members(r)
            _wake(r.pid)
    except BaseException as e:
        _kill(r.pid)
        if debug_tree:
            for pid in r.members.values():
                _kill(pid)
        if isinstance(e, gdb.error):
            raise RestoreError(f"GDB could not attach to the restored process: {e}") from None
        raise
    r.phases["load symbols"] = r.seconds = _elapsed(prepared)
    return r


def _elapsed(prepared: engine.Prepared) -> float:
    import time
    return time.perf_counter() - prepared.t0


def _attach(r: engine.RestoreResult, wake: bool = True) -> list[str]:
    """Hand GDB the finished process: its program's file, then attach."""
    warnings = []
    img = r.image
    exe = img.process.exe
    problem = None
    if img.process.exe_file >= 0:
        from .. import plan as planmod
        problem = planmod.check_files(img).get(img.process.exe_file)
    if problem:
        warnings.append(f"the program changed since the save ({problem}): GDB has no "
                        "symbols for it, only for its shared libraries")
        exe = None
    with settings.temporarily(confirm="off", exec_file_mismatch="off"):
        if exe and os.path.exists(exe):
            gdb.execute(f"file {cli_arg(exe)}", to_string=True)
        else:
            gdb.execute("file", to_string=True)
        gdb.execute(f"attach {r.pid}", to_string=True)
    if gdb.selected_inferior().pid != r.pid:
        raise RestoreError("GDB did not attach to the restored process")
    if wake:
        _wake(r.pid)
    return warnings + _dumpable(r.pid, img, r.creds_taken)


def _wake(pid: int) -> None:
    """The restore's SIGSTOP left a job-control stop that the next resume would report
    again: SIGCONT ends it. GDB must not stop on (or pass) that SIGCONT, until the
    next stop, when the user's setting comes back."""
    settings.signal_quietly_once("SIGCONT")
    os.kill(pid, signal.SIGCONT)


def _dumpable(pid: int, img, creds_taken: bool) -> list[str]:
    """Only once GDB is attached: a process that is not dumpable refuses an
    unprivileged attach."""
    proc = Process(pid, [t.ptid[1] for t in gdb.selected_inferior().threads()],
                   RestoreError)
    proc.current = pid
    try:
        return engine.set_dumpable(proc, img, creds_taken)
    finally:
        proc.close()
        GdbFront().changed(proc)


def _attach_members(r: engine.RestoreResult) -> None:
    """Each other process of the tree, left stopped by the restore, as an inferior of its
    own (`info inferiors`, `inferior N`); the root's stays the current one."""
    root = gdb.selected_inferior().num
    images = {m.pid: one for m, one in r.image.members if one is not None}
    try:
        for saved, pid in r.members.items():
            if saved not in images:
                continue                    # a zombie: nothing to debug
            exe = images[saved].process.exe
            made = gdb.execute(f"add-inferior -exec {cli_arg(exe)}" if os.path.exists(exe)
                               else "add-inferior", to_string=True)
            num = int(re.search(r"Added inferior (\d+)", made)[1])
            with settings.temporarily(confirm="off", exec_file_mismatch="off"):
                gdb.execute(f"inferior {num}", to_string=True)
                gdb.execute(f"attach {pid}", to_string=True)
            os.kill(pid, signal.SIGCONT)    # ends the restore's job-control stop
            r.warnings += _dumpable(pid, images[saved], r.creds_taken)
    finally:
        gdb.execute(f"inferior {root}", to_string=True)



def _replace_current(from_tty: bool) -> None:
    """A live process is replaced, after GDB's usual confirmation."""
    if gdb.selected_inferior().pid:
        try:
            gdb.execute("kill", from_tty=from_tty, to_string=not from_tty)
        except gdb.error as e:
            raise RestoreError(f"the current process was kept ({e})") from None


def _kill(pid: int) -> None:
    if gdb.selected_inferior().pid == pid:
        with settings.temporarily(confirm="off"):
            gdb.execute("kill", to_string=True)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
