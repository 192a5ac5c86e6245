"""Process trees at a save: a process with all its descendants, stopped together.

A save takes the tree by default: every descendant is seized (and so
stopped) before anything is read, so that the pipes, sockets and shared
memory between them are read at one instant. A zombie child cannot be
seized; it is recorded with the status its parent will reap. What the
processes share is found here too: open file descriptions (kcmp), and the
pipes and sockets whose ends are in different processes of the tree.
"""

from __future__ import annotations

import os

import msgspec

from .. import fds as fdsmod
from ..errors import CkptError, SaveError
from ..image.model import FdInfo
from ..procfs import Proc
from .process import Process


class TreeProcess(msgspec.Struct):
    """A descendant of the saved process: seized (proc), or a zombie (exit_status)."""
    pid: int
    ppid: int
    pgid: int
    sid: int
    comm: str
    proc: Process | None = None
    exit_status: int | None = None


class TreeEnds(msgspec.Struct):
    """Pipe and socket ends anywhere in the tree: a peer there is no outside peer."""
    pipes: dict[int, set[int]] = msgspec.field(default_factory=dict)   # ino -> modes
    sockets: set[int] = msgspec.field(default_factory=set)


def children(pid: int) -> list[int]:
    """The children of every thread of pid (a thread's children are the process's)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return sorted(set(out))


def seize_descendants(root: int, raise_as=SaveError) -> list[TreeProcess]:
    """Seize every descendant of the stopped process root, parents before children.

    A child's children are listed only once it is stopped: none can be born
    unseen. On failure every process seized so far is let go.
    """
    out: list[TreeProcess] = []
    queue = [root]
    try:
        while queue:
            parent = queue.pop(0)
            for pid in children(parent):
                member = _take(pid, parent, raise_as)
                if member is not None:
                    out.append(member)
                    if member.proc is not None:
                        queue.append(pid)
    except BaseException:
        release(out)
        raise
    return out


def _take(pid: int, parent: int, raise_as) -> TreeProcess | None:
    stat = _stat_or_none(pid)
    if stat is None:
        return None                 # gone, and reaped, meanwhile
    member = TreeProcess(pid=pid, ppid=parent, pgid=int(stat["pgrp"]),
                         sid=int(stat["session"]), comm=str(stat["comm"]))
    if stat["state"] == "Z" and len(_tasks(pid)) > 1:
        raise raise_as(f"process {pid} ({member.comm}), a child in the tree, has ended its "
                       "main thread while other threads run: it cannot be saved (save with "
                       "--single to leave the children out)")
    if stat["state"] != "Z":
        try:
            member.proc = Process.seize(pid, raise_as)
            return member
        except CkptError:
            stat = _stat_or_none(pid)
            if stat is None or stat["state"] != "Z":
                raise
    # Dead, not yet reaped: the status its parent's wait() will give.
    member.exit_status = int(stat["exit_code"])
    return member


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _stat_or_none(pid: int) -> dict | None:
    try:
        return Proc(pid).stat()
    except CkptError:
        return None


def release(members: list[TreeProcess], stop: bool = False) -> None:
    """Let go of every seized descendant (stop: leave them stopped)."""
    for m in reversed(members):
        if m.proc is not None and m.proc.owned:
            m.proc.release(stop=stop)


def kill(members: list[TreeProcess]) -> None:
    """After a good save with --kill: the descendants go too (quietly, as the root).
    As their tracer we take each one's death first, so that its parent (or init)
    can reap it and its pid is free for a restore."""
    for m in members:
        if m.proc is None:
            continue
        fdsmod.quiet_connections(m.pid)
        m.proc.kill()


def ends(fd_tables: dict[int, list[FdInfo]]) -> TreeEnds:
    out = TreeEnds()
    for table in fd_tables.values():
        for f in table:
            if f.kind == fdsmod.FdKind.PIPE:
                out.pipes.setdefault(fdsmod.ino_of(f.target), set()).add(f.flags & fdsmod.ACCMODE)
            elif f.kind == fdsmod.FdKind.SOCKET:
                out.sockets.add(fdsmod.ino_of(f.target))
    return out


def shared_descriptions(fd_tables: dict[int, list[FdInfo]]) -> None:
    """Mark each descriptor that is the same open file description as one of a process
    earlier in the tree (in restore order: the root first): FdInfo.shared_from."""
    seen: dict[str, list[tuple[int, FdInfo]]] = {}     # by target: only those may match
    for pid, table in fd_tables.items():
        mine = []
        for f in table:
            if f.same_as >= 0:
                continue
            owner = next(((p, g) for p, g in seen.get(f.target, ())
                          if fdsmod.same_file(p, g.fd, pid, f.fd)), None)
            if owner is not None:
                f.shared_from = [owner[0], owner[1].fd]
            else:
                mine.append((pid, f))
        for p, f in mine:
            seen.setdefault(f.target, []).append((p, f))


def summary(members) -> str:
    """' with its N descendants (pids ...)' for a save's line, or ''."""
    if not members:
        return ""
    zombies = sum(m.exit_status is not None for m in members)
    extra = f", {zombies} of them zombies" if zombies else ""
    return (f" with {len(members)} descendant(s) ({', '.join(str(m.pid) for m in members)}"
            f"{extra})")


def restored_line(members: dict[int, int]) -> str:
    """'; the rest of its tree: pids ...' for a restore's line, or ''."""
    if not members:
        return ""
    return "; the rest of its tree: " + ", ".join(
        str(live) if live == saved else f"{saved} as {live}" for saved, live in members.items())
