"""Pipes and FIFOs: the bytes in them, their size and flags.

A save copies what is unread in a pipe without taking it: tee(2) from a
reader of the same pipe into a pipe of ours. A restore makes a new pipe here
with the saved size and bytes, and the stub takes copies of its ends. An end
whose other end was in another process comes back alone: a read end keeps
the saved bytes and then reads end-of-file; a write end has no reader (its
writes fail with EPIPE), unless it is stdout or stderr, which the restoring
session provides.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select

from . import fds
from .image.model import PipeState
from .libc import errno, libc, unread_bytes

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
SPLICE_F_NONBLOCK = 2
O_DIRECT = 0o40000
O_NONBLOCK = 0o4000
ACCMODE = 3


def save(ours: int, target: str) -> PipeState:
    """The pipe behind ours (a copy of the process's end): its size, unread bytes
    (which stay in it), and whether its other side has anyone left on it."""
    reading = fcntl.fcntl(ours, fcntl.F_GETFL) & ACCMODE == os.O_RDONLY
    ready = select.poll()
    ready.register(ours, 0)
    events = dict(ready.poll(0)).get(ours, 0)
    # A reader sees POLLHUP once no writer is left; a writer POLLERR once no reader is.
    alone = bool(events & (select.POLLHUP if reading else select.POLLERR))
    reader = os.open(f"/proc/self/fd/{ours}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = fcntl.fcntl(reader, F_GETPIPE_SZ)
        return PipeState(ino=fds.ino_of(target), size=size, data=_peek(reader, size),
                         alone=alone)
    finally:
        os.close(reader)


def _peek(reader: int, size: int) -> bytes:
    pending = unread_bytes(reader)
    if not pending:
        return b""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, size)
        got = libc().tee(reader, w, ctypes.c_size_t(pending), SPLICE_F_NONBLOCK)
        if got != pending:
            raise OSError(errno(), f"tee copied {got} of the {pending} bytes in the pipe")
        out = bytearray()
        while len(out) < pending:
            out += os.read(r, pending - len(out))
        return bytes(out)
    finally:
        os.close(r)
        os.close(w)


def make(state: PipeState, read_flags: int | None, write_flags: int | None) -> tuple[int, int]:
    """A new pipe holding the saved bytes: (read end, write end), with the saved file
    flags of each end that the process had (None: that end was elsewhere)."""
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if state.size and fcntl.fcntl(w, F_GETPIPE_SZ) != state.size:
            fcntl.fcntl(w, F_SETPIPE_SZ, state.size)
        view = memoryview(state.data)
        while view:
            view = view[os.write(w, view):]
        for end, flags in ((r, read_flags), (w, write_flags)):
            if flags is not None:
                fcntl.fcntl(end, fcntl.F_SETFL, flags & (O_NONBLOCK | O_DIRECT))
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    return r, w
