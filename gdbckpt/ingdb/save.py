"""ckpt save in GDB: the engine on the process GDB has stopped, GDB's thread the tracer.

With --snapshot, the command returns once the process's state is read and a
copy-on-write snapshot of its memory made; a thread reads the snapshot and
writes the image while you go on debugging. GDB's Python API is used from
GDB's thread only: the thread leaves its outcome in a queue, which GDB's
thread reports at the next prompt, stop or ckpt command, and before GDB exits.
Not through gdb.post_event: GDB 13 crashes on exit while a posted event is
still pending, as it is at the end of a -batch run.
"""

from __future__ import annotations

import os
import queue
import threading

import gdb

from ..engine import save as engine_save
from ..engine import tree
from ..engine.process import reap_snapshot_in
from ..errors import CkptError, SaveError
from . import settings
from .front import GdbFront, stopped_process

# Background saves being written: image path -> (thread, process pid).
_writing: dict[str, tuple[threading.Thread, int]] = {}
# Their outcomes, from their threads: (path, process pid, SaveResult or error, report).
_finished: queue.SimpleQueue = queue.SimpleQueue()
# Snapshots killed at the end of a background save, the process's zombies until it
# reaps them: (process pid, snapshot pid).
_zombies: set[tuple[int, int]] = set()


def save(path: str, *, sync: bool | None = None, compress: bool = False,
         strict: bool = False, single: bool = False,
         report=None) -> engine_save.SaveResult | None:
    """Save the inferior GDB has stopped, with its descendants (unless single): those the
    engine seizes itself, from GDB's thread, and lets run on after the save.

    With report, the memory is read from a snapshot on another thread: save returns
    None at once, and report(result or error) is called on GDB's thread when done.
    """
    path = os.path.abspath(path)
    if path in _writing:
        raise SaveError(f"{path} is still being written by a background save")
    proc = stopped_process()
    busy = [p for p, (_, pid) in _writing.items() if pid == proc.pid]
    if busy:
        # Its snapshot is a child of the process: a save now would take it for one.
        proc.close()
        raise SaveError(f"a background save of process {proc.pid} is still being written "
                        f"to {busy[0]}; save again once GDB says it is done")
    members = []
    try:
        if not single:
            members = tree.seize_descendants(proc.pid)
        background = None if report is None else _background(path, proc.pid, report)
        with settings.temporarily(language="c"):    # GDB's Go or Rust would misread $_siginfo
            r = engine_save.save(proc, path, front=GdbFront(),
                                 sync=settings.get("sync") if sync is None else sync,
                                 compress=compress, strict=strict, members=members,
                                 resume=_stays_stopped if report else None,
                                 background=background)
    finally:
        tree.release(members)
        proc.close()
    if r is not None and r.snapshot:
        # Read here after all (the snapshot could not be let go of): its zombie is reaped.
        _zombies.add((r.pid, r.snapshot))
        reap_snapshots()
    return r


def _stays_stopped() -> None:
    """The process is GDB's: it runs on when the user resumes it, not before."""


def _background(path: str, pid: int, report):
    _install()

    def start(finish) -> None:
        def run() -> None:
            try:
                outcome = finish()
            except BaseException as e:      # reported on GDB's thread, not raised here
                outcome = e
            _finished.put((path, pid, outcome, report))
        thread = threading.Thread(target=run, name="gdbckpt-save", daemon=True)
        _writing[path] = (thread, pid)
        try:
            thread.start()
        except RuntimeError:                # no thread to be had: done here, then
            run()
    return start


def report_finished(reap: bool = True) -> None:
    """On GDB's thread: what the background saves that ended did; with reap, the
    process reaps their snapshots if GDB has it stopped. From GDB's events: an error
    is one line, never a traceback."""
    try:
        _report_finished(reap)
    except Exception as e:
        gdb.write(f"ckpt save: {e}\n", gdb.STDERR)


def _report_finished(reap: bool) -> None:
    while True:
        try:
            path, pid, outcome, report = _finished.get_nowait()
        except queue.Empty:
            break
        _writing.pop(path, None)
        if isinstance(outcome, engine_save.SaveResult) and outcome.snapshot:
            _zombies.add((pid, outcome.snapshot))
        report(outcome)
    if reap:
        reap_snapshots()


def _exiting(_event) -> None:
    """A save in flight is finished, not left half-written (its snapshot would stay
    stopped for good), and said."""
    for thread, _ in list(_writing.values()):
        thread.join()
    report_finished()       # and the process, still stopped, reaps the snapshots


def reap_snapshots() -> None:
    """The process reaps its ended snapshots, by an injected wait4, when GDB has it
    stopped."""
    inf = gdb.selected_inferior()
    _zombies.difference_update([z for z in _zombies if not os.path.exists(f"/proc/{z[0]}")])
    mine = [(p, c) for p, c in _zombies if p == inf.pid]
    if not mine:
        return
    try:
        proc = stopped_process()
    except CkptError:
        return                                  # running: later
    try:
        for pair in mine:
            if reap_snapshot_in(proc, pair[1]):
                _zombies.discard(pair)
    except CkptError:
        pass
    finally:
        proc.close()
        GdbFront().changed(proc)


_installed = False


def _install() -> None:
    """GDB's events, hooked at the first background save. A stop only reports (GDB is
    still handling it); the prompt and the ckpt commands reap too."""
    global _installed
    if _installed:
        return
    _installed = True
    gdb.events.before_prompt.connect(report_finished)
    gdb.events.stop.connect(lambda _event: report_finished(reap=False))
    if hasattr(gdb.events, "gdb_exiting"):
        gdb.events.gdb_exiting.connect(_exiting)
