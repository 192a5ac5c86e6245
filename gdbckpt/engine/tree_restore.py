"""Restoring a saved tree: the root and its descendants, as engine/tree.py saved them.

The root's stub forks one stub per process before anything else, parents
first, each with its saved pid (clone3 set_tid): so parent and child are
parent and child again. Sessions and process groups are made next, then
zombies end with their saved status, for their parents to reap. Then each
process's own plan runs in its own stub, the root's first: a descriptor
that shared its open file with an earlier process is taken from that
process (one description, one offset), and pipes, unix socket pairs and
shared anonymous memory between processes are made once by gdbckpt and
handed to each. The descendants then run on their own; the root is let go
as a single restore lets it go.
"""

from __future__ import annotations

import os
import socket
import struct

from .. import fds as fdsmod
from .. import plan as planmod
from ..errors import RestoreError
from ..image import Image
from ..image.model import FdInfo, Member
from ..linux import SIGCHLD, Prctl, Sys
from ..maps import Kind
from ..stubabi import StubOp, StubOpFlags
from .stub import OpFailed, Stub

SIG_UNBLOCK = 1
SIGSET = struct.Struct("<Q")
TIMESPEC = struct.Struct("<qq")


class Objects:
    """What processes of the tree share, made once here and handed to each."""

    def __init__(self, images: list[Image]):
        self.pids: dict[int, int] = {}        # saved pid -> live pid
        self._pipes: dict[int, list[FdInfo | None]] = {}     # ino -> [reader, writer]
        self._socks: dict[int, FdInfo] = {}
        self._shm_size: dict[int, int] = {}
        self.fills: dict[int, int] = {}       # shared memory inode -> the pid that fills it
        self._made: dict[tuple, dict[int, int]] = {}
        for img in images:
            self._index(img)
        self.shared = shared_memory(images)    # shared memory inodes mapped by several

    def _index(self, img: Image) -> None:
        for f in img.fds:
            if f.shared_from is not None or f.same_as >= 0:
                continue
            if f.pipe is not None:
                ends = self._pipes.setdefault(f.pipe.ino, [None, None])
                slot = 0 if f.flags & fdsmod.ACCMODE == os.O_RDONLY else 1
                ends[slot] = ends[slot] or f
            elif f.sock is not None and f.sock.ino:
                self._socks.setdefault(f.sock.ino, f)
        for v in img.vmas:
            if v.kind == Kind.SHMEM.value and v.shm is None and v.inode:
                size = v.offset + v.end - v.start
                self._shm_size[v.inode] = max(size, self._shm_size.get(v.inode, 0))
                self.fills.setdefault(v.inode, img.process.pid)

    def tree_pipes(self, img: Image) -> set[int]:
        """Pipes of img with an end that img does not hold."""
        mine: dict[int, set[int]] = {}
        for f in img.fds:
            if f.pipe is not None:
                mine.setdefault(f.pipe.ino, set()).add(f.flags & fdsmod.ACCMODE)
        return {ino for ino, modes in mine.items()
                if len(modes) < 2 and all(self._pipes.get(ino, [None, None]))}

    def tree_shmem(self, img: Image, shared: set[int] | None = None) -> dict[int, bool]:
        """Shared memory img maps with others: inode -> whether img fills it."""
        shared = self.shared if shared is None else shared
        return {v.inode: self.fills[v.inode] == img.process.pid for v in img.vmas
                if v.inode in shared}

    def pid_of(self, saved: int) -> int:
        if saved not in self.pids:
            raise RestoreError(f"process {saved} is not restored before the process that "
                               "shares its descriptor")
        return self.pids[saved]

    def made_for(self, step: planmod.MakeFds, creds) -> list[int] | None:
        """Our fds for a MakeFds step of one process, where its object is shared with
        another process of the tree (None: it is the process's own)."""
        if step.kind == "pipe":
            info = step.infos[0] or step.infos[1]
            ends = self._pipes.get(info.pipe.ino)
            if ends is None or not all(ends):
                return None
            made = self._make(("pipe", info.pipe.ino), "pipe", tuple(ends), creds)
            return [made[i] if step.infos[i] is not None else -1 for i in (0, 1)]
        if step.kind == "socket" and len(step.infos) == 1:
            s = step.infos[0].sock
            peer = self._socks.get(s.peer_ino) if s.family == 1 and s.peer_ino else None
            if peer is None or peer.sock.peer_ino != s.ino:
                return None
            pair = tuple(sorted((step.infos[0], peer), key=lambda f: f.sock.ino))
            made = self._make(("pair", pair[0].sock.ino), "socketpair", pair, creds)
            return [made[1 if pair[1] is step.infos[0] else 0]]
        return None

    def _make(self, key: tuple, kind: str, infos: tuple, creds) -> dict[int, int]:
        if key not in self._made:
            try:
                ours, _ = fdsmod.make_objects(kind, infos, creds)
            except OSError as e:
                raise RestoreError(e.strerror or str(e)) from None
            self._made[key] = dict(enumerate(ours))
        return self._made[key]

    def shmem(self, inode: int) -> int:
        key = ("shmem", inode)
        if key not in self._made:
            fd = -1
            try:
                fd = os.memfd_create(f"gdbckpt-shared-{inode}", os.MFD_CLOEXEC)
                os.ftruncate(fd, self._shm_size[inode])
            except OSError as e:
                if fd >= 0:
                    os.close(fd)
                raise RestoreError(f"shared memory of the tree ({self._shm_size[inode]:#x} "
                                   f"bytes): {e.strerror}") from None
            self._made[key] = {0: fd}
        return self._made[key][0]

    def close(self) -> None:
        for made in self._made.values():
            for fd in made.values():
                if fd >= 0:
                    os.close(fd)
        self._made.clear()


def shared_memory(images: list[Image]) -> set[int]:
    """Inodes of shared anonymous memory mapped by more than one process of the tree."""
    seen: dict[int, set[int]] = {}
    for img in images:
        for v in img.vmas:
            if v.kind == Kind.SHMEM.value and v.shm is None and v.inode:
                seen.setdefault(v.inode, set()).add(img.process.pid)
    return {inode for inode, pids in seen.items() if len(pids) > 1}


def saved_ids(img: Image) -> list[int]:
    """Every pid and thread id of the tree."""
    return [t.tid for t in img.threads] + [m.pid for m, _ in img.members] + \
        [t.tid for _, i in img.members if i is not None for t in i.threads[1:]]


def check_pids(img: Image) -> bool:
    """A tree comes back only with the pids it had: its processes know one another's.
    True when they are taken here: the tree then gets a pid namespace of its own."""
    return any(os.path.exists(f"/proc/{p}") for p in saved_ids(img))


CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000


def start_in_namespace(img: Image, new_session: bool, hand,
                       userns: bool = False) -> tuple[Stub, list[Stub]]:
    """The root's stub as its saved pid in a new pid namespace, whose init (a stub
    that reaps) runs in a new mount namespace with the namespace's own /proc: the
    tree sees its own pids everywhere. userns (a restorer without privilege): in a new
    user namespace too, mapping only the restorer's own ids, where the stubs may choose
    pids; each process keeps only its saved capabilities at the end (KeepOnlyCaps).
    Returns the root and the init."""
    outer = Stub.start(0, new_session=new_session, hand=hand)
    init = root = None
    try:
        # A socket our descriptors go through: the namespace cannot name our pid.
        number = img.free_fd_below(hand[1])
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            outer.give(0, [(theirs.fileno(), number, True)])
        outer.channel = (ours, number)
        _call(outer, Sys.unshare, CLONE_NEWPID | (CLONE_NEWUSER if userns else 0))
        if userns:
            _map_own_ids(outer.pid)
        outer.unshared, outer.userns = True, userns
        init = outer.fork(0)
        s = init.scratch
        for nr, args in ((Sys.unshare, (CLONE_NEWNS,)),
                         (Sys.mount, (0, s.cstr("/"), 0, MS_REC | MS_PRIVATE, 0)),
                         (Sys.mount, (s.cstr("proc"), s.cstr("/proc"), s.cstr("proc"),
                                      MS_NOSUID | MS_NODEV | MS_NOEXEC, 0))):
            _call(init, nr, *args)
        root = init.fork(img.process.pid)
        # The init holds nothing: the session's stdout kept open would keep a caller
        # that reads it waiting for the whole tree.
        init.run_detached([planmod.Op(Sys.close_range, (0, 0xFFFFFFFF, 0)),
                           planmod.Op(StubOp.REAP, ())])
    except BaseException:
        for stub in (root, init, outer):
            if stub is not None:
                stub.kill()
        if outer.channel is not None:
            outer.channel[0].close()
        raise
    outer.kill()            # the init goes on, a child of whoever reaps orphans here
    return root, [init]


def _map_own_ids(pid: int) -> None:
    """The restorer's uid and gid, and only those, the same inside as outside."""
    try:
        for name, text in (("uid_map", f"{os.getuid()} {os.getuid()} 1"),
                           ("setgroups", "deny"), ("gid_map", f"{os.getgid()} {os.getgid()} 1")):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
    except OSError as e:
        raise RestoreError(f"cannot set up a user namespace for the tree: {e.strerror}") \
            from None


def make_processes(stubs: dict[int, Stub], img: Image, root_pgid: int | None,
                   made: dict[int, int]) -> None:
    """One stub per process of the tree, forked by its parent's stub with its saved
    pid, in its session and process group; zombies end with their saved status.
    stubs: saved pid -> stub, the root's in it, the others added as they are made (the
    caller kills them all on failure). root_pgid: the root's group now, if the processes
    can name it. made: saved pid -> our pid, for every process made (zombies too)."""
    for m, _ in img.members:
        parent = stubs.get(m.ppid)
        if parent is None:
            raise RestoreError(f"the image's process {m.pid} has parent {m.ppid}, which is "
                               "not restored before it")
        stubs[m.pid] = child = parent.fork(m.pid)
        made[m.pid] = child.pid
        if child.inner_pid != m.pid:
            raise RestoreError(f"process {m.pid} of the tree came back as {child.inner_pid}")
        if m.sid == m.pid:
            _call(child, Sys.setsid)
    members = [m for m, _ in img.members]
    # Group leaders before the members of their groups.
    for m in sorted(members, key=lambda m: m.pgid != m.pid):
        if m.sid == m.pid:
            continue
        if m.pgid == m.pid:
            _call(stubs[m.pid], Sys.setpgid, 0, 0)
        elif m.pgid in stubs and m.pgid != img.process.pid:
            _call(stubs[m.pid], Sys.setpgid, 0, m.pgid)
        elif m.pgid == img.process.pgid and root_pgid is not None:
            _call(stubs[m.pid], Sys.setpgid, 0, root_pgid)
    for m in members:
        if m.exit_status is not None:
            stubs[m.pid].end_with(m.exit_status, _ending(stubs[m.pid], m))
            del stubs[m.pid]
    for stub in stubs.values():
        _drain_sigchld(stub)


def _call(stub: Stub, nr: int, *args: int) -> int:
    try:
        _, (ret,) = stub.run([(0, planmod.Op(nr, args))])
    except OpFailed as e:
        raise RestoreError(f"process {stub.inner_pid} of the tree: {e}") from None
    return ret


def _ending(stub: Stub, m: Member) -> list[planmod.Op]:
    """Ops that end a zombie's stub as the saved process ended: a signal (not dumping
    core) or an exit code."""
    sig = m.exit_status & 0x7f
    if not sig:
        return [planmod.Op(Sys.exit_group, (m.exit_status >> 8 & 0xff,))]
    mask = stub.scratch.put(SIGSET.pack(1 << (sig - 1)))
    return [planmod.Op(Sys.prctl, (Prctl.SET_DUMPABLE, 0)),     # no core
            planmod.Op(Sys.rt_sigprocmask, (SIG_UNBLOCK, mask, 0, 8)),
            planmod.Op(Sys.kill, (stub.inner_pid, sig))]


def _drain_sigchld(stub: Stub) -> None:
    """A zombie's end queued SIGCHLD for its parent stub (every signal blocked there):
    the saved parent had had its SIGCHLD long before."""
    mask = stub.scratch.put(SIGSET.pack(1 << (SIGCHLD - 1)))
    zero = stub.scratch.put(TIMESPEC.pack(0, 0))
    stub.run([(0, planmod.Op(Sys.rt_sigtimedwait, (mask, 0, zero, 8),
                             StubOpFlags.IGNORE_ERROR))])

