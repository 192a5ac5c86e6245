"""The restore plan: an image and the live stub's layout in, a list of steps out.

Plain data, made without GDB: `ckpt restore --dry-run` prints it, tests
check it, and a failed restore names the step that failed. Most steps turn
into stub ops (system calls the stub makes in one batch); a few are done by
the engine itself (engine/restore.py): filling memory from compressed
chunks, register sets, and the last touches once the stub is gone.
"""

from __future__ import annotations

import functools
import os
import stat
import struct

import msgspec

from . import clocks as clockmod
from . import fds as fdsmod
from . import fileid
from . import tids as tidsmod
from . import vdso as vdsomod
from .engine import xstate as xstatemod
from .errors import RestoreError
from .image import format as fmt
from .image.model import Credentials, SigAction, ThreadState, Vma
from .image.reader import Chunk, Image
from .linux import (
    KERNEL_SIGACTION,
    NSIG,
    PAGE_SIZE,
    PR_SET_VMA_ANON_NAME,
    SIG_SETMASK,
    SIGKILL,
    SIGSTOP,
    STACK_T,
    MapFlag,
    Mremap,
    OpenFlag,
    Prctl,
    Prot,
    PrSetMM,
    Sys,
    page_up,
    perms_of,
)
from .maps import Kind, Mapping, find_gap
from .procfs import pack_auxv
from .regs import USER_CS_64
from .stubabi import (
    RET_OFFSET,
    STUB_MAX_THREADS,
    STUB_OP,
    STUB_SCRATCH_SIZE,
    StubOp,
    StubOpFlags,
)

# madvise() advice for smaps VmFlags a restore puts back.
VMFLAG_ADVICE = {"dd": 16, "wf": 18, "dc": 10, "hg": 14, "nh": 15}
SPECIAL_KINDS = (Kind.VVAR, Kind.VVAR_VCLOCK, Kind.VDSO)
SPECIAL_AREA_ALIGN = 1 << 30
USER_TOP = 0x7FFFFFFFF000
PRCTL_MM_MAP = struct.Struct("<11QQII")
SS_ONSTACK = 1
O_TMPFILE = 0o20200000
O_NOFOLLOW = 0o400000
F_SETFD, FD_CLOEXEC = 2, 1
PR_TIMER_CREATE_RESTORE_IDS = 77
EPOLL_CTL_ADD = 1
F_RDLCK, F_WRLCK, F_SETLK, F_OFD_SETLK, F_SETLEASE = 0, 1, 6, 37, 1024
LOCK_SH, LOCK_EX, LOCK_NB = 1, 2, 4
FLOCK = struct.Struct("<hh4xqqi4x")    # struct flock: type, whence, start, len, pid
EPOLL_EVENT = struct.Struct("<IQ")     # struct epoll_event is packed on x86-64
RLIMIT_SHORT = ("cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile", "memlock",
                "as", "locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime")
# What glibc's pthread_create passes to clone (VM FS FILES SIGHAND THREAD SYSVSEM
# SETTLS PARENT_SETTID CHILD_CLEARTID), and UNTRACED (see CloneThread).
CLONE_THREAD_FLAGS = (0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 | 0x80000 | 0x100000
                      | 0x200000 | 0x800000)
TID_POINTER_FLAGS = 0x100000 | 0x200000      # PARENT_SETTID, CHILD_CLEARTID


class Op(msgspec.Struct):
    nr: int
    args: tuple[int, ...] = ()
    flags: int = StubOpFlags.NONE


def pack_ops(ops: list[Op]) -> bytes:
    """Ops as the stub reads them (struct stub_op: nr, six arguments, flags, result)."""
    return b"".join(STUB_OP.pack(op.nr, *op.args, *[0] * (6 - len(op.args)), int(op.flags), 0)
                    for op in ops)


def op_result(packed: bytes, k: int) -> int:
    """The result the stub left in op k of ops it ran (as pack_ops laid them out)."""
    return int.from_bytes(packed[k * STUB_OP.size + RET_OFFSET:][:8], "little", signed=True)


class Scratch:
    """Bytes for the stub's scratch buffer: paths and structs the ops point to.

    tids maps saved thread ids to live ones as the restore learns them (a
    step's ops are made only when the restore reaches it).
    """

    def __init__(self, base: int, size: int = STUB_SCRATCH_SIZE):
        self.base = base
        self.size = size
        self.data = bytearray()
        self.tids: dict[int, int] = {}
        self.setups: dict[int, tuple[int, list[Op]]] = {}   # saved tid -> its setup ops

    def put(self, data: bytes) -> int:
        self.data.extend(bytes(-len(self.data) % 16))
        addr = self.base + len(self.data)
        self.data.extend(data)
        if len(self.data) > self.size:
            raise RestoreError("the restore needs more scratch memory than the stub has")
        return addr

    def cstr(self, s: str) -> int:
        return self.put(os.fsencode(s) + b"\0")


# --- steps -------------------------------------------------------------------

# Steps are frozen data, read by describe() and encode(): msgspec Structs, made in
# microseconds where a dataclass costs a third of a millisecond per class (every restore's
# start made all of them). Subclasses inherit frozen and eq; steps are never compared.
class Step(msgspec.Struct, frozen=True, eq=False):
    """One thing the restore does: data, frozen. encode() gives the stub's system calls
    for it; steps marked python the engine carries out itself."""
    thread: int = 0            # the saved tid of the thread that runs it; 0 = the leader

    def describe(self) -> str:
        raise NotImplementedError

    # Done by the engine itself rather than by stub ops.
    python = False


class TimeNamespace(Step):
    """Enter a new time namespace whose offsets make CLOCK_MONOTONIC and CLOCK_BOOTTIME
    go on from the saved values. The stub, single-threaded still, makes it, sets the
    offsets (only possible before anyone is in it) and joins it itself."""
    monotonic_ns: int = 0
    boottime_ns: int = 0
    fd: int = 0

    def describe(self):
        return (f"enter a time namespace: monotonic offset {self.monotonic_ns / 1e9:+.3f} s, "
                f"boottime offset {self.boottime_ns / 1e9:+.3f} s")


class FsIds(Step):
    """Open and create files as the saved user from here on (root restoring another
    user's image): the stub's file-system uid and gid become theirs, so it can open
    nothing on the image's behalf that they could not."""
    uid: int = 0
    gid: int = 0

    def describe(self):
        return f"open files as uid {self.uid}, gid {self.gid} from here on"


class MoveMapping(Step):
    src: int = 0
    size: int = 0
    dst: int = 0
    name: str = ""

    def describe(self):
        return f"move {self.name} {self.src:#x} -> {self.dst:#x} ({self.size:#x} bytes)"


class Unmap(Step):
    start: int = 0
    size: int = 0
    why: str = ""

    def describe(self):
        return f"unmap {self.start:#x}-{self.start + self.size:#x} ({self.why})"


class OpenFile(Step):
    path: str = ""
    flags: int = 0
    fd: int = 0
    why: str = ""
    mode: int = 0o644
    cloexec: bool = True       # the stub's own descriptors; not the program's
    kind: int = 0              # a path the image names: the S_IFMT type it must have
                               # (opened with no symlink followed, never blocking)

    def describe(self):
        return f"open {self.path} as fd {self.fd} ({self.why})"


class SetCloexec(Step):
    fd: int = 0

    def describe(self):
        return f"fd {self.fd}: close-on-exec"


class DupFd(Step):
    fd: int = 0
    to: int = 0

    def describe(self):
        return f"duplicate fd {self.fd} as fd {self.to}"


class MakeFds(Step):
    """Make a pipe, a socket (or a unix pair) or an anon-inode descriptor with its saved
    state in gdbckpt's own process; the stub then takes copies at the saved numbers
    (pidfd_getfd). fds[i] is where the i-th object made goes (-1: nowhere, as the
    write end of a pipe whose writer was another process)."""
    kind: str = ""             # "pipe", "socketpair", "socket", "anon"
    fds: tuple[int, ...] = ()
    infos: tuple = ()          # the saved FdInfo of each fd (None for -1)
    python = True

    def describe(self):
        if self.kind == "pipe":
            data = len(self.infos[0].pipe.data) if self.infos[0] else \
                len(self.infos[1].pipe.data)
            ends = " and ".join(f"fd {fd}" for fd in self.fds if fd >= 0)
            return f"make a pipe with {data} bytes in it, at {ends}"
        return "make " + ", ".join(fdsmod.describe(f) for f in self.infos if f)


class TakeFrom(Step):
    """The open file description that fd theirs of process pid (of the same tree, restored
    before this one) has: one description, one offset, as the saved processes shared."""
    pid: int = 0               # as saved
    theirs: int = 0
    fd: int = 0
    cloexec: bool = False
    python = True

    def describe(self):
        return f"fd {self.fd}: the open file of process {self.pid}'s fd {self.theirs}, shared"


class TakeShared(Step):
    """Shared anonymous memory that processes of the tree map together: one memfd that
    gdbckpt makes for all of them, taken at fd for the mappings to come."""
    inode: int = 0
    fd: int = 0
    python = True

    def describe(self):
        return f"take the shared memory object {self.inode} of the tree at fd {self.fd}"


class Member(Step):
    """In a printed plan of a tree: the steps after this one are another process's,
    forked by its parent's stub before any step ran."""
    pid: int = 0
    ppid: int = 0
    python = True

    def describe(self):
        return f"--- process {self.pid}, child of {self.ppid}, in its own stub:"


class TreeAttrs(Step):
    """Being a child subreaper, and the parent-death signal."""
    subreaper: bool = False
    pdeathsig: int = 0

    def describe(self):
        return f"child subreaper {'on' if self.subreaper else 'off'}, parent-death signal " \
               f"{self.pdeathsig}"


class TakeLock(Step):
    """Take a lock the saved process held through fd (flock, POSIX, OFD or lease), never
    waiting: a lock another process holds now fails the restore."""
    fd: int = 0
    kind: str = "flock"
    write: bool = False
    start: int = 0
    end: int = -1

    def describe(self):
        where = "" if self.kind in ("flock", "lease") else \
            f" bytes {self.start}-{'EOF' if self.end < 0 else self.end}"
        return f"take the {'write' if self.write else 'read'} {self.kind} lock on fd " \
               f"{self.fd}{where}"


class EpollCtl(Step):
    """Register an fd with an epoll descriptor, as it was (once every fd is in place)."""
    epfd: int = 0
    fd: int = 0
    events: int = 0
    data: int = 0

    def describe(self):
        return f"epoll fd {self.epfd}: watch fd {self.fd} (events {self.events:#x}, " \
               f"data {self.data:#x})"


class CloseFd(Step):
    fd: int = 0

    def describe(self):
        return f"close fd {self.fd}"


class Map(Step):
    """Create a mapping at its saved address, writable until it is filled (or, when
    nothing is to be filled, with its saved protection at once: a large PROT_NONE
    reservation would not get the memory commitment a writable one needs)."""
    vma: Vma = None
    fd: int = -1               # the file to map, or -1 for anonymous memory
    shared: bool = False
    growsdown: bool = False
    note: str = ""
    final: bool = False        # created with vma.prot: nothing to fill

    def describe(self):
        v = self.vma
        src = f"file fd {self.fd} +{v.offset:#x}" if self.fd >= 0 else (
            "shared anonymous" if self.shared else "anonymous")
        extra = f" [{self.note}]" if self.note else ""
        return f"map {v.start:#x}-{v.end:#x} {src} {v.path or ''}{extra}".rstrip()


class Fill(Step):
    """Copy stored pages into place: the stub reads them from the image (pread)."""
    image_fd: int = 0
    runs: list[tuple[int, int, int]] = msgspec.field(default_factory=list)  # addr, len, off

    def describe(self):
        total = sum(n for _, n, _ in self.runs)
        first = self.runs[0][0]
        return f"fill {total:#x} bytes from the image at {first:#x} ({len(self.runs)} reads)"


class MapImage(Fill):
    """Lazy restore: map stored pages straight from the image, privately (copied on write).

    gdbckpt never rewrites an image in place (a save makes a new file and
    renames it), so the mapping keeps seeing the bytes it was made from.
    """

    def describe(self):
        total = sum(n for _, n, _ in self.runs)
        first = self.runs[0][0]
        return f"map {total:#x} bytes of the image at {first:#x} ({len(self.runs)} mappings)"


class WriteChunks(Step):
    """Pages GDB's side writes through /proc/PID/mem: compressed or zeroed chunks."""
    chunks: list[Chunk] = msgspec.field(default_factory=list)
    python = True

    def describe(self):
        total = sum(c.size for c in self.chunks)
        kinds = {("zero" if c.flags & fmt.ChunkFlags.ZERO else fmt.CODEC_NAMES[c.codec].lower())
                 for c in self.chunks}
        return f"write {total:#x} bytes at {self.chunks[0].vaddr:#x} ({', '.join(sorted(kinds))})"


class PatchVdso(Step):
    """Jumps from the saved vDSO's functions into the live vDSO."""
    patches: list = msgspec.field(default_factory=list)    # vdso.Patch
    python = True

    def describe(self):
        return "patch the saved vDSO: " + ", ".join(
            f"{p.names[0]} at {p.addr:#x} -> {p.how}" for p in self.patches)


class WriteBytes(Step):
    addr: int = 0
    data: bytes = b""
    what: str = ""
    python = True

    def describe(self):
        return f"write {self.what} at {self.addr:#x} ({len(self.data)} bytes)"


class ShmAttach(Step):
    shmid: int = 0
    addr: int = 0
    saved_id: int = 0

    def describe(self):
        return f"attach SysV segment {self.shmid} (saved as {self.saved_id}) at {self.addr:#x}"


class ShmRemove(Step):
    shmid: int = 0

    def describe(self):
        return f"mark SysV segment {self.shmid} removed (gone once detached, as it was)"


class Remap(Step):
    """Another view of a shared mapping: mremap with old size 0 duplicates it."""
    src: int = 0
    size: int = 0
    dst: int = 0

    def describe(self):
        return f"map {self.dst:#x}-{self.dst + self.size:#x} as a view of {self.src:#x}"


class Protect(Step):
    start: int = 0
    size: int = 0
    prot: int = 0

    def describe(self):
        return f"protect {self.start:#x}-{self.start + self.size:#x} {perms_of(self.prot)}"


class Advise(Step):
    start: int = 0
    size: int = 0
    advice: list[int] = msgspec.field(default_factory=list)
    name: str | None = None

    def describe(self):
        parts = [f"madvise {a}" for a in self.advice]
        if self.name is not None:
            parts.append(f"name [anon:{self.name}]")
        return f"{', '.join(parts)} at {self.start:#x}"


class SetMM(Step):
    """code/data/brk/stack/arg/env bounds and the auxv, in one PR_SET_MM_MAP."""
    fields: tuple[int, ...] = ()
    auxv: bytes = b""

    def describe(self):
        return "set mm bounds, brk and auxv (PR_SET_MM_MAP)"


class ProcessAttrs(Step):
    """cwd, umask, personality and name: each a warning, not a failure, if refused."""
    cwd: str = ""
    umask: int = 0o022
    personality: int = 0
    comm: str = ""

    def describe(self):
        return (f"cwd {self.cwd}, umask {self.umask:03o}, personality {self.personality:#x}, "
                f"name {self.comm!r}")


class SigActions(Step):
    """Every signal's disposition: the saved ones, the default for the rest.

    The stub may have inherited ignored signals from GDB (Python ignores
    SIGPIPE and SIGXFSZ), so the defaults are set explicitly too.
    """
    actions: list[SigAction] = msgspec.field(default_factory=list)

    def describe(self):
        set_ = ", ".join(str(a.sig) for a in self.actions) or "none"
        return f"signal dispositions: handlers or SIG_IGN for {set_}, default for the others"


class ThreadKernelState(Step):
    """What the kernel keeps per thread: rseq, alt stack, robust list, tid address, mask,
    and room for dynamic XSAVE features (AMX tiles) it had in use."""
    state: ThreadState = None
    xcomp_perm: int = 0        # the leader requests the process's dynamic-feature permission

    def describe(self):
        t = self.state
        parts = [f"mask {t.sigmask:#x}"]
        if t.rseq:
            parts.append(f"rseq {t.rseq.addr:#x}")
        if t.sigaltstack:
            parts.append(f"altstack {t.sigaltstack.sp:#x}")
        if self.xcomp_perm or self._expand():
            parts.append(f"XSAVE permission {self.xcomp_perm:#x}, room {self._expand():#x}")
        if t.pending:
            parts.append("pending signals " + ", ".join(
                str(struct.unpack_from("<i", si)[0]) for si in t.pending))
        return f"thread {t.tid}: " + ", ".join(parts)

    def _expand(self) -> int:
        from .engine.xstate import DYNAMIC
        return self.state.xstate.in_use & DYNAMIC if self.state.xstate else 0


class QueueSignals(Step):
    """Signals that were pending for the whole process, queued again with their siginfo.

    From the leader: rt_sigqueueinfo takes a kill() siginfo only from the
    thread whose id is the target pid. (Each thread's own pending signals
    are queued by that thread, in its ThreadKernelState.)
    """
    tgid: int = 0
    shared: list[bytes] = msgspec.field(default_factory=list)

    def describe(self):
        sigs = [struct.unpack_from("<i", si)[0] for si in self.shared]
        return f"queue process-wide pending signals {', '.join(map(str, sigs))}"


class Seek(Step):
    fd: int = 0
    pos: int = 0

    def describe(self):
        return f"fd {self.fd}: offset {self.pos}"


class RecreateDeleted(Step):
    """A deleted file that was open: a new unlinked file with the saved bytes."""
    fd: int = 0
    tmp_fd: int = 0
    directory: str = "/tmp"
    flags: int = 0
    image_fd: int = 0
    copies: list[tuple[int, int, int]] = msgspec.field(default_factory=list)  # img, file, n
    target: str = ""

    def describe(self):
        total = sum(n for _, _, n in self.copies)
        return f"fd {self.fd}: recreate deleted {self.target} ({total} bytes) in {self.directory}"


class Limits(Step):
    """Resource limits, interval and POSIX timers, nice, no_new_privs."""
    rlimits: list = msgspec.field(default_factory=list)      # model.Rlimit
    itimers: list = msgspec.field(default_factory=list)      # model.ItimerState
    timers: list = msgspec.field(default_factory=list)       # model.PosixTimer
    nice: int | None = None
    no_new_privs: bool = False

    def empty(self) -> bool:
        return not (self.rlimits or self.itimers or self.timers or self.nice is not None
                    or self.no_new_privs)

    def describe(self):
        parts = []
        if self.rlimits:
            parts.append("rlimits " + ", ".join(RLIMIT_SHORT[r.resource] for r in self.rlimits))
        if self.itimers:
            parts.append(f"{len(self.itimers)} interval timers")
        if self.timers:
            parts.append("POSIX timers " + ", ".join(str(t.id) for t in self.timers))
        if self.nice is not None:
            parts.append(f"nice {self.nice}")
        if self.no_new_privs:
            parts.append("no_new_privs")
        return "; ".join(parts) or "no limits to set"


class CloneThread(Step):
    """A thread of the saved process, made by the stub. It runs its own setup ops (what
    the kernel keeps per thread), then parks on a stack of its own in the stub.

    CLONE_UNTRACED: the engine seizes it itself once the batch that made it
    returns, and sets its registers like the leader's.
    """
    state: ThreadState = None
    slot: int = 0
    tid_ptr: int = 0           # &pd->tid: the kernel writes the new tid there, clears it at exit
    same_tid: bool = False     # ask for the saved tid (clone3 set_tid)
    setup: ThreadKernelState = None

    def describe(self):
        how = f"with tid {self.state.tid}" if self.same_tid else "with a new tid"
        return (f"create thread {self.state.tid} ({self.state.name}) {how}, tls {self.tls:#x}; "
                f"it sets up {self.setup.describe().split(': ', 1)[1]}")

    @property
    def tls(self) -> int:
        from .regs import get
        return get(self.state.regs, "fs_base")


class PatchTids(Step):
    """Thread ids glibc keeps in memory: the main thread's descriptor and held mutexes."""
    leader_tid_at: int | None = None     # &pd->tid of the main thread
    old_pid: int = 0
    mutexes: list = msgspec.field(default_factory=list)    # tids.MutexRef
    python = True

    def describe(self):
        parts = []
        if self.leader_tid_at is not None:
            parts.append(f"main thread's tid at {self.leader_tid_at:#x}")
        if self.mutexes:
            parts.append(f"{len(self.mutexes)} held mutexes: " +
                         ", ".join(f"{m.addr:#x}" for m in self.mutexes[:8]))
        return "patch thread ids: " + ("; ".join(parts) or "nothing held")


class Registers(Step):
    state: ThreadState = None
    python = True

    def describe(self):
        from .regs import get
        return f"thread {self.state.tid}: registers, rip {get(self.state.regs, 'rip'):#x}"


class TakeCredentials(Step):
    """Every thread takes on the saved process's credentials (root restoring another
    user's image): last, once nothing that needs privilege is left to do."""
    creds: Credentials = None
    pdeathsig: int = 0          # set again after: a change of credentials clears it
    python = True

    def describe(self):
        from .creds import describe
        return f"every thread becomes {describe(self.creds)}"


class KeepOnlyCaps(Step):
    """In a user namespace of its own, every thread drops the capabilities the stub had
    there, keeping only the saved ones (its ids are the saved ones already)."""
    creds: Credentials = None
    python = True

    def describe(self):
        return f"every thread keeps only the saved capabilities ({self.creds.effective:#x})"


class DropStub(Step):
    """Remove the stub's own mappings, by a system call injected in the restored code."""
    ranges: list[tuple[int, int]] = msgspec.field(default_factory=list)
    python = True

    def describe(self):
        return "unmap the restart stub: " + ", ".join(f"{s:#x}-{e:#x}" for s, e in self.ranges)


def _adjacent_merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges that touch, as one: one injected munmap each (the stub's are one run)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


class SetExe(Step):
    """Point /proc/PID/exe at the program (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN).

    Only PR_SET_MM_MAP may set it without CAP_SYS_RESOURCE, and only once no
    mapping of the old exe (the stub) is left: so after DropStub, by an
    injected call, with the struct on the restored stack.
    """
    fd: int = -1
    path: str = ""
    fields: tuple[int, ...] = ()
    python = True

    def describe(self):
        return f"set the exe link to {self.path}"

    def mm_map(self) -> bytes:
        return PRCTL_MM_MAP.pack(*self.fields, 0, 0, self.fd)


# --- building the plan ---------------------------------------------------------

class Live(msgspec.Struct):
    """What the freshly started stub looks like, and what the host can do."""
    stub_maps: list[Mapping]
    scratch: int                    # address of the stub's scratch buffer
    vdso: bytes | None              # the live vDSO's bytes
    fd_limit: int                   # the stub's soft RLIMIT_NOFILE
    image_path: str
    file_problems: dict[int, str | None]   # file index -> None (unchanged) or what changed
    can_set_exe: bool = False
    stub_pid: int = 0
    stub_fds: set[int] = msgspec.field(default_factory=lambda: {0, 1, 2})
    stub_limits: dict[int, tuple[int, int]] = msgspec.field(default_factory=dict)
    has_tty: bool = False           # /dev/tty opens (the restoring session has a terminal)
    fd_checks: dict[int, tuple[str, str]] = msgspec.field(default_factory=dict)
    force: bool = False
    timer_ids: bool = False         # PR_TIMER_CREATE_RESTORE_IDS works here
    sysv: dict = msgspec.field(default_factory=dict)   # saved shmid -> sysv.Segment
    same_ids: bool = False          # the stub has the saved pid and threads get their tids
    xcr0: int | None = None         # the XSAVE components this CPU enables
    time_offsets: tuple[int, int] | None = None   # a time namespace's (monotonic, boottime)
    take_creds: bool = False        # the process must become the saved user (root restores)
    image_fd: int | None = None     # where the stub holds the image it was handed (the open
                                    # file that was checked), if it was
    stub_nice: int = 0
    # A process of a saved tree: pipes with an end in another of its processes, and the
    # shared anonymous memory it maps with others (inode -> whether this one fills it).
    tree_pipes: set[int] = msgspec.field(default_factory=set)
    tree_shmem: dict[int, bool] = msgspec.field(default_factory=dict)
    userns: bool = False            # the stub is in a user namespace of its own
    member: bool = False            # a process of a tree other than its root
    held_fds: set[int] = msgspec.field(default_factory=set)   # the stub's own, kept
                                    # until the descriptors are made (a pidfd of gdbckpt)


class Plan(msgspec.Struct):
    steps: list[Step]
    warnings: list[str]
    vdso_mode: str

    def text(self) -> str:
        lines = [f"{i:3d}  {s.describe()}" for i, s in enumerate(self.steps)]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


class _FdAlloc:
    """fd numbers for the stub's own use, from the top of its limit down."""

    def __init__(self, limit: int, taken: set[int]):
        self.next = limit - 1
        self.taken = taken

    def take(self) -> int:
        while self.next in self.taken:
            self.next -= 1
        if self.next < 3:
            raise RestoreError("no file descriptor numbers left for the restore")
        fd, self.next = self.next, self.next - 1
        return fd


STDIO_NAMES = {0: "stdin", 1: "stdout", 2: "stderr"}


def build(img: Image, live: Live, vdso_mode: str = "auto",
          stdio: dict[int, str] | None = None, fill: str = "stub") -> Plan:
    """The steps that turn the live stub into the image's process.

    stdio maps 0/1/2 to files the restored process gets as stdin/stdout/stderr.
    fill says how memory gets its bytes: "stub" (the stub preads them from the
    image), "procmem" (GDB's side writes them through /proc/PID/mem) or "lazy"
    (the image is mapped privately: pages arrive when first touched).
    """
    return _Builder(img, live, vdso_mode, stdio or {}, fill).build()


def preflight(img: Image, *, live_vdso: bytes | None, live_layout: dict[str, int],
              xcr0: int | None, fd_checks: dict[int, tuple[str, str]], force: bool,
              fill: str = "stub", vdso_mode: str = "auto") -> str:
    """Refuse what this host cannot restore, before anything changes (a restore runs
    this before it replaces the process being debugged, and again with the stub's
    own facts). Returns how the vDSO will be put right: move, patch or none."""
    from .regs import get
    if fill == "lazy" and img.compressed:
        raise RestoreError("a lazy restore maps memory straight from the image, and this "
                           "image is compressed; restore it without --lazy")
    if len(img.threads) > STUB_MAX_THREADS:
        raise RestoreError(f"the image has {len(img.threads)} threads; the stub parks "
                           f"at most {STUB_MAX_THREADS}")
    for t in img.threads:
        if get(t.regs, "cs") != USER_CS_64:
            raise RestoreError(f"thread {t.tid} ran 32-bit code (cs {get(t.regs, 'cs'):#x}); "
                               "only 64-bit processes can be restored")
        missing = xstatemod.missing(t.xstate, xcr0) if xcr0 is not None and t.xstate else []
        if missing:
            raise RestoreError(f"thread {t.tid}'s registers use {', '.join(missing)}, which "
                               "this CPU lacks")
    _check_kernel_writes(img)
    for status, why in fd_checks.values():
        if status in ("gone", "shorter") and not force:
            raise RestoreError(f"{why}; restore with --force to go on anyway")
    return _vdso_mode(img, live_vdso, live_layout, vdso_mode)


SS_DISABLE = 2
ROBUST_LIST_HEAD = 24


def _check_kernel_writes(img: Image) -> None:
    """The kernel writes to a thread's clear-child-tid word, robust list, rseq area and
    alternate stack on the process's behalf: each must lie in private writable memory
    of the image, never in a shared mapping (an image is untrusted: a crafted one
    could aim the kernel's writes at a file, or another process's memory)."""
    private: list[tuple[int, int]] = []
    for v in sorted(img.vmas, key=lambda v: v.start):
        if v.shared or not v.prot & Prot.WRITE or v.kind in {k.value for k in SPECIAL_KINDS}:
            continue
        if private and private[-1][1] == v.start:       # a buffer may span .data and .bss
            private[-1] = (private[-1][0], v.end)
        else:
            private.append((v.start, v.end))
    for t in img.threads:
        for what, addr, size in _kernel_written(t):
            if addr and not any(lo <= addr and addr + size <= hi for lo, hi in private):
                raise RestoreError(f"thread {t.tid}'s {what} ({addr:#x}, {size} bytes) is not "
                                   "in private writable memory of the image: a restore "
                                   "would let the kernel write elsewhere; refused")


def _kernel_written(t: ThreadState) -> list[tuple[str, int, int]]:
    out = []
    if t.tid_address:
        out.append(("clear-child-tid word", t.tid_address, 4))
    if t.robust_list and t.robust_list[0]:
        out.append(("robust list head", t.robust_list[0], ROBUST_LIST_HEAD))
    if t.rseq is not None and t.rseq.addr:
        out.append(("rseq area", t.rseq.addr, max(t.rseq.size, 32)))
    if t.sigaltstack is not None and not t.sigaltstack.flags & SS_DISABLE:
        out.append(("alternate signal stack", t.sigaltstack.sp, t.sigaltstack.size))
    return out


def _vdso_mode(img: Image, live: bytes | None, layout: dict[str, int], requested: str) -> str:
    auto, why = vdsomod.compare(img.vdso, live, layout)
    if auto == "none":
        return "none"
    mode = auto if requested == "auto" else requested
    if mode == "move" and auto != "move":
        raise RestoreError(f"--vdso=move: {why}; use --vdso=patch or auto")
    if mode == "patch":
        start, end = img.vdso.vdso
        chunks = img.chunks_in(start, end)
        if sum(c.size for c in chunks) != end - start:
            raise RestoreError("the image does not hold the whole saved vDSO: it cannot be "
                               "patched")
        if live is None:
            raise RestoreError("this kernel gives processes no vDSO to call into")
        # Refuses a saved function too short for the jump.
        vdsomod.patch_plan(b"".join(img.read_chunk(c) for c in chunks), start, live, 0)
    return mode


class _Builder:
    def __init__(self, img: Image, live: Live, vdso_mode: str, stdio: dict[int, str],
                 fill: str = "stub"):
        self.img = img
        self.live = live
        self.vdso_mode = vdso_mode
        self.stdio = stdio
        self.fill = fill
        self.steps: list[Step] = []
        self.warnings: list[str] = []
        self.fds = _FdAlloc(live.fd_limit, {f.fd for f in img.fds} | live.held_fds | (
            {live.image_fd} if live.image_fd is not None else set()))
        self.stub = [m for m in live.stub_maps if m.kind not in SPECIAL_KINDS
                     and m.kind != Kind.VSYSCALL and m.path != "[stack]"]
        self.live_special = {m.kind: m for m in live.stub_maps if m.kind in SPECIAL_KINDS}
        self.shift: int | None = None
        self.attached: set[tuple[int, int]] = set()
        self.shm_remove: list[int] = []
        self.views = {inode: g for inode, g in _shared_groups(img.vmas).items()
                      if inode not in live.tree_shmem}   # inode -> mappings of one object
        self.later_views: dict[int, Vma] = {}

    def build(self) -> Plan:
        layout = {m.kind.value: m.size for m in self.live_special.values()}
        mode = preflight(self.img, live_vdso=self.live.vdso, live_layout=layout,
                         xcr0=self.live.xcr0,
                         fd_checks=self.live.fd_checks, force=self.live.force, fill=self.fill,
                         vdso_mode=self.vdso_mode)
        self._check_collisions()
        self.mode = mode
        if self.live.time_offsets is not None:
            mono, boot = self.live.time_offsets
            self.steps.append(TimeNamespace(monotonic_ns=mono, boottime_ns=boot,
                                            fd=self.fds.take()))
        if self.live.take_creds:
            c = self.img.process.creds
            self.steps.append(FsIds(uid=c.uids[3], gid=c.gids[3]))
        temp = self._park_specials()
        self.shift = temp
        self._clear_stub()
        image_fd = self.live.image_fd
        if image_fd is None:       # a stub that was not handed the image opens it by path
            image_fd = self.fds.take()
            self.steps.append(OpenFile(path=self.live.image_path, flags=OpenFlag.RDONLY,
                                       fd=image_fd, why="the image"))
        file_fds = self._open_files()
        # Opened early: later steps may lower RLIMIT_NOFILE below the fd chosen.
        self.exe_fd = self._open_exe()
        for vma in self.img.vmas:
            self._mapping(vma, image_fd, file_fds)
        for shmid in self.shm_remove:
            self.steps.append(ShmRemove(shmid=shmid))
        self._place_specials(mode, temp)
        self._descriptors(image_fd)
        for fd in [image_fd, *file_fds.values()]:
            self.steps.append(CloseFd(fd=fd))
        self._process()
        self._threads()
        return Plan(self.steps, self.warnings, mode)

    # -- checks ---------------------------------------------------------------

    def _check_collisions(self) -> None:
        for v in self.img.vmas:
            for m in self.stub:
                if v.start < m.end and m.start < v.end:
                    raise RestoreError(
                        f"the image maps {v.start:#x}-{v.end:#x} ({v.path or 'anonymous'}), "
                        f"where the restart stub lives ({m.start:#x}-{m.end:#x}); rebuild the "
                        "stub at another address (STUB_BASE in native/stub_abi.h)")
            if v.end > USER_TOP + 0x1000 and v.kind != Kind.VSYSCALL.value:
                raise RestoreError(f"the image maps {v.start:#x}, above the user address space")

    def _saved_special(self, kind: Kind) -> Vma | None:
        return next((v for v in self.img.vmas if v.kind == kind.value), None)

    # -- the stub's own address space ----------------------------------------

    def _park_specials(self) -> int | None:
        """Move the stub's vvar/vdso to a free area; the target may need their place."""
        if not self.live_special:
            return None
        lo = min(m.start for m in self.live_special.values())
        hi = max(m.end for m in self.live_special.values())
        # Everything the stub has (specials and first stack included) and the image needs.
        taken = [(v.start, v.end) for v in self.img.vmas] + \
                [(m.start, m.end) for m in self.live.stub_maps]
        stub_end = max(m.end for m in self.stub)
        start = -(-stub_end // SPECIAL_AREA_ALIGN) * SPECIAL_AREA_ALIGN
        temp = _gap(taken, hi - lo, start)
        for kind in SPECIAL_KINDS:
            m = self.live_special.get(kind)
            if m is not None:
                self.steps.append(MoveMapping(src=m.start, size=m.size, dst=temp + m.start - lo,
                                              name=m.path))
        return temp - lo    # add to a live address to get its parked address

    def _clear_stub(self) -> None:
        for m in self.live.stub_maps:
            if m.path == "[stack]":
                self.steps.append(Unmap(start=m.start, size=m.size, why="the stub's first stack"))

    def _place_specials(self, mode: str, shift: int | None) -> None:
        if mode == "move":
            for kind in SPECIAL_KINDS:
                m, v = self.live_special.get(kind), self._saved_special(kind)
                if m is not None and v is not None:
                    self.steps.append(MoveMapping(src=m.start + shift, size=m.size, dst=v.start,
                                                  name=m.path))
        elif mode == "none":
            for m in self.live_special.values():
                self.steps.append(Unmap(start=m.start + shift, size=m.size,
                                        why=f"{m.path}: the saved process had none"))

    # -- mappings --------------------------------------------------------------

    def _open_files(self) -> dict[int, int]:
        """fds for files still as saved; a changed file's mappings become copies."""
        fds: dict[int, int] = {}
        needed = {v.file for v in self.img.vmas if v.file >= 0}
        for i in sorted(needed):
            ref = self.img.files[i]
            problem = self.live.file_problems.get(i)
            if problem:
                self.warnings.append(f"{problem}: its mappings are restored from the image "
                                     "as private copies")
                continue
            writable = any(v.file == i and v.shared and v.prot & Prot.WRITE
                           for v in self.img.vmas)
            fd = self.fds.take()
            flags = OpenFlag.RDWR if writable else OpenFlag.RDONLY
            self.steps.append(OpenFile(path=ref.path, flags=int(flags), fd=fd, why="mapped file",
                                       kind=stat.S_IFREG))
            fds[i] = fd
        return fds

    def _mapping(self, v: Vma, image_fd: int, file_fds: dict[int, int]) -> None:
        kind = Kind(v.kind)
        if kind == Kind.VDSO and self.mode == "patch":
            self._vdso_proxy(v, image_fd)
            return
        if kind in SPECIAL_KINDS or kind in (Kind.VSYSCALL, Kind.SPECIAL):
            return
        if v.start in self.later_views:
            # Made with the first view of its object: only fill and protect it.
            self._fill([c for c in self.img.chunks_in(v.start, v.end)
                        if not c.flags & fmt.ChunkFlags.ZERO], image_fd, lazy_ok=False)
            if v.prot != Prot.READ | Prot.WRITE:
                self.steps.append(Protect(start=v.start, size=v.end - v.start, prot=v.prot))
            return
        chunks = [c for c in self.img.chunks_in(v.start, v.end)
                  if not c.flags & fmt.ChunkFlags.ZERO]
        writable = Prot.READ | Prot.WRITE
        if v.shm is not None and v.shm.id in self.live.sysv:
            if not self._attach_sysv(v):
                chunks = []         # the segment still exists: its content is the live one
        elif kind == Kind.SHMEM and v.shm is None and v.inode in self.live.tree_shmem:
            fd = self.fds.take()
            self.steps.append(TakeShared(inode=v.inode, fd=fd))
            self.steps.append(Map(vma=v, fd=fd, shared=True, note="shared with the tree"))
            self.steps.append(CloseFd(fd=fd))
            if not self.live.tree_shmem[v.inode]:
                chunks = []         # another process of the tree fills it
        elif kind == Kind.SHMEM and v.inode in self.views:
            self._shared_view(v)
        else:
            fd = file_fds.get(v.file, -1)
            from_file = fd >= 0
            shared = v.shared and (from_file or kind == Kind.SHMEM)
            note = ""
            if v.shared and not shared:
                note = "was a shared file mapping; its file changed, so writes stay private"
                self.warnings.append(f"{v.path}: {note}")
            if kind == Kind.DELETED:
                note = "deleted file: restored as a private copy"
            if from_file:
                # Over the unchanged file only the pages that differ from it are written;
                # a shared file mapping is the file itself.
                chunks = [] if v.shared else [c for c in self.img.chunks_in(v.start, v.end)
                                              if c.flags & fmt.ChunkFlags.DIRTY]
            self.steps.append(Map(vma=v, fd=fd, shared=shared, growsdown="gd" in v.vmflags,
                                  note=note, final=not chunks))
            if not chunks:
                writable = v.prot
            elif shared and from_file and not v.prot & Prot.WRITE:
                writable = Prot.READ
        self._fill(chunks, image_fd, lazy_ok=not v.shared)
        if v.prot != writable:
            self.steps.append(Protect(start=v.start, size=v.end - v.start, prot=v.prot))
        advice = [VMFLAG_ADVICE[f] for f in v.vmflags if f in VMFLAG_ADVICE]
        name = _anon_name(v.path)
        if advice or name is not None:
            self.steps.append(Advise(start=v.start, size=v.end - v.start, advice=advice,
                                     name=name))

    def _attach_sysv(self, v: Vma) -> bool:
        """Attach v's SysV segment (once per attachment); True if it is new and needs filling."""
        seg = self.live.sysv[v.shm.id]
        base = v.start - v.offset
        if (v.shm.id, base) not in self.attached:
            self.attached.add((v.shm.id, base))
            self.steps.append(ShmAttach(shmid=seg.id, addr=base, saved_id=v.shm.id))
            if seg.note:
                self.warnings.append(seg.note)
            if seg.created and v.shm.key == 0:
                # A private segment is normally removed once attached; do the same.
                self.shm_remove.append(seg.id)
        return seg.created

    def _shared_view(self, v: Vma) -> None:
        """One of several mappings of the same shared memory: all views of one object."""
        group = self.views.pop(v.inode)
        extent = max(g.offset + g.end - g.start for g in group)
        temp = self._free_area(extent)
        obj = Vma(start=temp, end=temp + extent, prot=int(Prot.READ | Prot.WRITE), shared=True,
                  kind=Kind.SHMEM.value, path=v.path)
        self.steps.append(Map(vma=obj, shared=True, note="the object its views share"))
        for g in group:
            self.steps.append(Remap(src=temp + g.offset, size=g.end - g.start, dst=g.start))
        self.steps.append(Unmap(start=temp, size=extent, why="the views keep the object"))
        for g in group[1:]:
            self.later_views[g.start] = g

    def _free_area(self, size: int) -> int:
        taken = [(v.start, v.end) for v in self.img.vmas] + \
                [(m.start, m.end) for m in self.live.stub_maps]
        if self.shift is not None:
            taken += [(m.start + self.shift, m.end + self.shift)
                      for m in self.live_special.values()]
        lo = -(-max(m.end for m in self.stub) // SPECIAL_AREA_ALIGN) * SPECIAL_AREA_ALIGN
        return _gap(taken, page_up(size), lo)

    def _vdso_proxy(self, v: Vma, image_fd: int) -> None:
        """The saved vDSO's bytes at its address, its functions patched to call the live one."""
        live = self.live_special[Kind.VDSO]
        live_at = live.start + self.shift
        saved = b"".join(self.img.read_chunk(c) for c in self.img.chunks_in(v.start, v.end))
        patches = vdsomod.patch_plan(saved, v.start, self.live.vdso, live_at)
        self.steps.append(Map(vma=v, note="the saved vDSO, to be patched"))
        self._fill(self.img.chunks_in(v.start, v.end), image_fd, lazy_ok=False)
        self.steps.append(PatchVdso(patches=patches))
        self.steps.append(Protect(start=v.start, size=v.end - v.start, prot=v.prot))
        vvar = self._saved_special(Kind.VVAR)
        if vvar is not None:
            page = Vma(start=vvar.start, end=vvar.start + PAGE_SIZE, prot=int(Prot.READ),
                       shared=False, kind=Kind.ANON.value, path="")
            self.steps.append(Map(vma=page, note="gdbckpt's mark of the vDSO proxy"))
            self.steps.append(WriteBytes(addr=page.start, data=vdsomod.mark(
                (v.start, v.end), (live_at, live_at + live.size)), what="the vDSO proxy mark"))
            self.steps.append(Protect(start=page.start, size=PAGE_SIZE, prot=int(Prot.READ)))

    def _fill(self, chunks: list[Chunk], image_fd: int, lazy_ok: bool = True) -> None:
        """lazy_ok: False for shared memory, where a private mapping of the image would
        cut the mapping off from the object the others see."""
        runs: list[list[int]] = []
        python: list[Chunk] = []
        for c in chunks:
            if c.flags & fmt.ChunkFlags.ZERO or c.codec != fmt.Codec.NONE \
                    or self.fill == "procmem":
                python.append(c)
                continue
            last = runs[-1] if runs else None
            if last and last[0] + last[1] == c.vaddr and last[2] + last[1] == c.offset:
                last[1] += c.size     # contiguous in memory and in the image: one read
            else:
                runs.append([c.vaddr, c.size, c.offset])
        if runs and self.fill == "lazy" and lazy_ok:
            self.steps.append(MapImage(image_fd=image_fd, runs=[tuple(r) for r in runs]))
        elif runs:
            self.steps.append(Fill(image_fd=image_fd, runs=[tuple(r) for r in runs]))
        if python:
            self.steps.append(WriteChunks(chunks=python))

    # -- file descriptors ------------------------------------------------------

    def _descriptors(self, image_fd: int) -> None:
        """Every saved fd at its number; --stdin/--stdout/--stderr win over the image."""
        saved = {f.fd: f for f in self.img.fds}
        self.made: set[int] = set()
        for f in sorted(self.img.fds, key=lambda f: f.fd):
            if f.fd in self.stdio or f.fd in self.made:
                continue
            if f.shared_from is not None:
                pid, theirs = f.shared_from
                self.steps.append(TakeFrom(pid=pid, theirs=theirs, fd=f.fd,
                                           cloexec=bool(f.flags & fdsmod.O_CLOEXEC)))
                self.made.add(f.fd)
                continue
            if f.same_as >= 0 and f.same_as in saved and f.same_as not in self.stdio:
                self.steps.append(DupFd(fd=f.same_as, to=f.fd))
                if not f.flags & fdsmod.O_CLOEXEC:
                    continue
                self.steps.append(SetCloexec(fd=f.fd))
                continue
            self._descriptor(f, image_fd)
        self._stdio()
        self._epoll()
        if self.img.fds:
            for fd in sorted(self.live.stub_fds - set(saved) - set(self.stdio)):
                self.steps.append(CloseFd(fd=fd))

    def _locks(self, f) -> None:
        for lock in f.locks:
            self.steps.append(TakeLock(fd=f.fd, kind=lock.kind, write=lock.write,
                                       start=lock.start, end=lock.end))

    def _kernel_object(self, f) -> None:
        """Pipes, sockets and anon-inode descriptors, made with their state."""
        if f.pipe is not None:
            return self._pipe(f)
        if f.sock is not None:
            peer = self._unix_peer(f)
            if peer is not None:
                self._make("socketpair", (f, peer))
                return
            peer = self._tcp_peer(f)
            if peer is not None:
                # Made one right after the other: a repaired end's timers run, and its
                # probes must find the other end there, not a reset.
                self._make("tcppair", (f, peer))
                return
            self._make("socket", (f,))
            return
        if f.anon is not None:
            self._make("anon", (f,))
            return
        self.warnings.append(f"{fdsmod.describe(f)} cannot be restored: /dev/null in its "
                             "place")
        self._null(f)

    def _make(self, kind: str, infos: tuple, fds: tuple[int, ...] | None = None) -> None:
        fds = fds if fds is not None else tuple(i.fd for i in infos)
        self.steps.append(MakeFds(kind=kind, fds=fds, infos=infos))
        self.made.update(fd for fd in fds if fd >= 0)

    def _unix_peer(self, f):
        """The other end of a unix socket pair that is also in the image, if any."""
        s = f.sock
        if s.family != 1 or not s.peer_ino or s.state != "connected":
            return None
        return next((g for g in self.img.fds if g.sock is not None and g.same_as < 0
                     and g.sock.ino == s.peer_ino and g.sock.peer_ino == s.ino
                     and g.fd not in self.made and g.fd != f.fd and g.fd not in self.stdio),
                    None)

    def _tcp_peer(self, f):
        """The other end of a TCP connection that is also in the image, if any."""
        t = f.sock.tcp
        if t is None:
            return None
        return next((g for g in self.img.fds if g.sock is not None and g.sock.tcp is not None
                     and g.same_as < 0 and g.fd != f.fd and g.fd not in self.made
                     and g.fd not in self.stdio
                     and (g.sock.tcp.local, g.sock.tcp.local_port) == (t.peer, t.peer_port)
                     and (g.sock.tcp.peer, g.sock.tcp.peer_port) == (t.local, t.local_port)),
                    None)

    def _pipe(self, f) -> None:
        """Both ends if the process had both; an end alone otherwise. A stdio end
        whose other end was another process stays the restoring session's."""
        ends = [g for g in self.img.fds if g.pipe is not None and g.same_as < 0
                and g.pipe.ino == f.pipe.ino and g.fd not in self.stdio]
        reader = next((g for g in ends if g.flags & fdsmod.ACCMODE == os.O_RDONLY), None)
        writer = next((g for g in ends if g.flags & fdsmod.ACCMODE == os.O_WRONLY), None)
        if (reader is None or writer is None) and f.fd <= 2 and f.fd in self.live.stub_fds \
                and f.pipe.ino not in self.live.tree_pipes:
            self.warnings.append(f"{fdsmod.describe(f)}: its other end was another process: "
                                 f"the restored process gets this session's "
                                 f"{STDIO_NAMES[f.fd]}")
            self.made.add(f.fd)
            return
        pair = (reader, writer)
        self._make("pipe", pair, tuple(g.fd if g is not None else -1 for g in pair))
        for g in self.img.fds:      # other descriptions of the same ends: copies
            if g.pipe is not None and g.pipe.ino == f.pipe.ino and g not in pair \
                    and g.same_as < 0 and g.fd not in self.stdio:
                end = reader if g.flags & fdsmod.ACCMODE == os.O_RDONLY else writer
                if end is not None:
                    self.steps.append(DupFd(fd=end.fd, to=g.fd))
                    self.made.add(g.fd)

    def _epoll(self) -> None:
        have = {f.fd for f in self.img.fds} - set(self.stdio)
        for f in self.img.fds:
            if f.anon is None or f.anon.type != "epoll" or f.fd in self.stdio:
                continue
            for t in f.anon.targets:
                if t.fd in have:
                    self.steps.append(EpollCtl(epfd=f.fd, fd=t.fd, events=t.events,
                                               data=t.data))
                else:
                    self.warnings.append(f"epoll fd {f.fd}: fd {t.fd} is given by --std"
                                         "in/--stdout/--stderr now: not watched")

    def _descriptor(self, f, image_fd: int) -> None:
        kind = fdsmod.FdKind(f.kind)
        if kind in (fdsmod.FdKind.FILE, fdsmod.FdKind.DIR):
            status, why = self.live.fd_checks.get(f.fd, ("ok", ""))
            if status == "gone":        # preflight() refused this without --force
                self.warnings.append(f"{why}: /dev/null in its place (--force)")
                return self._null(f)
            if status != "ok":
                self.warnings.append(f"{why}: restored anyway")
            self.steps.append(OpenFile(path=f.target, flags=fdsmod.reopen_flags(f), fd=f.fd,
                                       cloexec=False, why=f"saved fd {f.fd}",
                                       kind=stat.S_IFDIR if kind == fdsmod.FdKind.DIR
                                       else stat.S_IFREG))
            self.steps.append(Seek(fd=f.fd, pos=f.pos))
            self._locks(f)
        elif kind == fdsmod.FdKind.DELETED:
            path = f.target.removesuffix(" (deleted)")
            directory = os.path.dirname(path) or "/"
            if not os.path.isdir(directory):
                directory = "/tmp"
            copies = [(c.offset, c.vaddr, c.size) for c in self.img.fd_chunks(f)]
            if any(c.codec != fmt.Codec.NONE for c in self.img.fd_chunks(f)):
                raise RestoreError(f"{fdsmod.describe(f)}: its bytes were compressed by an "
                                   "older gdbckpt and cannot be copied into the file; save "
                                   "the program again")
            self.steps.append(RecreateDeleted(fd=f.fd, tmp_fd=self.fds.take(),
                                              directory=directory,
                                              flags=fdsmod.reopen_flags(f), image_fd=image_fd,
                                              copies=copies, target=path))
            self.steps.append(Seek(fd=f.fd, pos=f.pos))
            self._locks(f)
        elif kind == fdsmod.FdKind.CHARDEV:
            problem = fdsmod.device_problem(f.target)
            if problem:
                self.warnings.append(f"{fdsmod.describe(f)}: {problem}: /dev/null in its place")
                return self._null(f)
            self.steps.append(OpenFile(path=f.target, flags=fdsmod.reopen_flags(f), fd=f.fd,
                                       cloexec=False, why=f"saved fd {f.fd}",
                                       kind=stat.S_IFCHR))
        elif kind == fdsmod.FdKind.TTY:
            if f.fd <= 2 and f.fd in self.live.stub_fds:
                return      # the restoring session's own stdin/stdout/stderr
            if self.live.has_tty:
                flags = fdsmod.O_RDWR | (f.flags & fdsmod.O_CLOEXEC)
                self.steps.append(OpenFile(path="/dev/tty", flags=flags, fd=f.fd, cloexec=False,
                                           why=f"saved fd {f.fd} was a terminal"))
            else:
                self.warnings.append(f"{fdsmod.describe(f)}: no terminal here, /dev/null "
                                     "in its place")
                self._null(f)
        elif kind in (fdsmod.FdKind.PIPE, fdsmod.FdKind.SOCKET, fdsmod.FdKind.ANON):
            self._kernel_object(f)
        elif kind == fdsmod.FdKind.MEMFD and f.data is not None:
            self._make("memfd", (f,))
        else:
            self.warnings.append(f"{fdsmod.describe(f)} cannot be restored: /dev/null in its "
                                 "place")
            self._null(f)

    def _null(self, f) -> None:
        self.steps.append(OpenFile(path="/dev/null", flags=fdsmod.null_flags(f), fd=f.fd,
                                   cloexec=False, why=f"in place of {f.kind} {f.target}"))

    def _stdio(self) -> None:
        opened: dict[str, int] = {}     # output files opened so far: stdout and stderr share
        for fd in sorted(self.stdio):
            path = os.path.abspath(self.stdio[fd])
            if fd and path in opened:
                self.steps.append(DupFd(fd=opened[path], to=fd))
                continue
            out = OpenFlag.WRONLY | OpenFlag.CREAT | OpenFlag.TRUNC
            flags = OpenFlag.RDONLY if fd == 0 else out
            self.steps.append(OpenFile(path=path, flags=int(flags), fd=fd, cloexec=False,
                                       why=STDIO_NAMES[fd]))
            if fd:
                opened[path] = fd

    # -- process and threads -----------------------------------------------------

    def _process(self) -> None:
        p = self.img.process
        mm = p.mm
        fields = (mm.start_code, mm.end_code, mm.start_data, mm.end_data, mm.start_brk, mm.brk,
                  mm.start_stack, mm.arg_start, mm.arg_end, mm.env_start, mm.env_end)
        self.mm_fields = fields
        self.steps.append(SetMM(fields=fields, auxv=pack_auxv([tuple(a) for a in p.auxv])))
        self.steps.append(ProcessAttrs(cwd=p.cwd, umask=p.umask, personality=p.personality,
                                       comm=p.comm))
        self.steps.append(SigActions(actions=p.sigactions))
        # The root's parent is the restorer now, which soon goes: its parent-death
        # signal would end it. The other processes of a tree have their parents back.
        pdeathsig = p.pdeathsig if self.live.member else 0
        if p.pdeathsig and not pdeathsig:
            self.warnings.append(f"the parent-death signal {p.pdeathsig} is not set again: "
                                 "the process's parent is the restorer now")
        if p.subreaper or pdeathsig:
            self.steps.append(TreeAttrs(subreaper=p.subreaper, pdeathsig=pdeathsig))

    def _limits(self) -> None:
        p = self.img.process
        rlimits = [r for r in p.rlimits
                   if self.live.stub_limits.get(r.resource) != (r.soft, r.hard)]
        timers = p.timers
        if timers and not self.live.timer_ids:
            self.warnings.append("POSIX timers " + ", ".join(str(t.id) for t in timers) +
                                 " are not restored: this kernel cannot create a timer with a "
                                 "given id (PR_TIMER_CREATE_RESTORE_IDS)")
            timers = []
        step = Limits(rlimits=rlimits, itimers=p.itimers, timers=timers,
                      nice=p.nice if p.nice != self.live.stub_nice else None,
                      no_new_privs=p.no_new_privs)
        if not step.empty():
            self.steps.append(step)

    def _threads(self) -> None:
        leader, others = self.img.threads[0], self.img.threads[1:]
        same = self.live.same_ids
        # The leader blocks every signal first: the threads it makes inherit that.
        self.steps.append(ThreadKernelState(state=leader, xcomp_perm=self._xcomp_perm()))
        for slot, t in enumerate(others):
            # No clear-child-tid address and no glibc to say where its thread ids are
            # (Go, musl): the thread is made without them, as its runtime made it.
            ptr = t.tid_address or self._tid_field(t) or 0
            self.steps.append(CloneThread(state=t, slot=slot, tid_ptr=ptr, same_tid=same,
                                          setup=ThreadKernelState(state=t, thread=t.tid)))
        self._limits()
        if self.img.process.shared_pending:
            self.steps.append(QueueSignals(tgid=self.live.stub_pid,
                                           shared=self.img.process.shared_pending))
        if not same:
            self._patch_tids(leader)
        self.steps += [Registers(state=t, thread=t.tid) for t in others]
        self.steps.append(Registers(state=leader))
        self.steps.append(DropStub(ranges=_adjacent_merged([(m.start, m.end) for m in self.stub])))
        if self.exe_fd is not None:
            self.steps.append(SetExe(fd=self.exe_fd, path=self.img.process.exe,
                                     fields=self.mm_fields))
        p = self.img.process
        if self.live.take_creds:
            self.steps.append(TakeCredentials(creds=p.creds,
                                              pdeathsig=p.pdeathsig if self.live.member else 0))
        elif self.live.userns:
            # An image without credentials (older) keeps none.
            self.steps.append(KeepOnlyCaps(creds=p.creds or Credentials(uids=[], gids=[])))

    def _xcomp_perm(self) -> int:
        """The dynamic XSAVE features the process was permitted, that must be asked for."""
        from .engine.xstate import DYNAMIC
        return self.img.process.xcomp_perm & DYNAMIC

    def _tid_field(self, t: ThreadState) -> int | None:
        """&pd->tid of a thread: its fs_base plus the offset libc declares."""
        from .regs import get
        off = self.img.process.tid_offset
        return get(t.regs, "fs_base") + off if off is not None else None

    def _patch_tids(self, leader: ThreadState) -> None:
        old = {t.tid for t in self.img.threads}
        refs = tidsmod.find_held_mutexes(self.img, old)
        where = leader.tid_address or self._tid_field(leader)
        self.steps.append(PatchTids(leader_tid_at=where, old_pid=leader.tid, mutexes=refs))
        if len(self.img.threads) > 1 or refs:
            self.warnings.append("thread ids change: glibc's thread descriptors and "
                                 f"{len(refs)} held mutexes are patched; other places that "
                                 "kept a thread id (rwlocks' writer, the program's own data) "
                                 "keep the old one")

    def _open_exe(self) -> int | None:
        """An fd of the program for the exe link, where that is permitted."""
        exe_ok = (self.img.process.exe_file >= 0
                  and not self.live.file_problems.get(self.img.process.exe_file))
        if exe_ok and not self.live.can_set_exe:
            self.warnings.append("the exe link (/proc/PID/exe) keeps naming the restart stub: "
                                 "setting it is not permitted without CAP_CHECKPOINT_RESTORE")
        if not (exe_ok and self.live.can_set_exe):
            return None
        fd = self.fds.take()
        self.steps.append(OpenFile(path=self.img.process.exe, flags=int(OpenFlag.RDONLY),
                                   fd=fd, why="the exe link", kind=stat.S_IFREG))
        return fd


def _gap(taken: list[tuple[int, int]], size: int, lo: int) -> int:
    try:
        return find_gap(taken, size, lo, USER_TOP)
    except ValueError:
        raise RestoreError(f"no free {size:#x} bytes of address space for the restore's own "
                           "use above the restart stub") from None


def _shared_groups(vmas: list[Vma]) -> dict[int, list[Vma]]:
    """Shared anonymous objects mapped more than once: inode -> their mappings."""
    groups: dict[int, list[Vma]] = {}
    for v in vmas:
        if v.kind == Kind.SHMEM.value and v.shm is None and v.inode:
            groups.setdefault(v.inode, []).append(v)
    return {inode: g for inode, g in groups.items() if len(g) > 1}


def _anon_name(path: str) -> str | None:
    if path.startswith("[anon:") and path.endswith("]"):
        return path[6:-1]
    return None


def check_files(img: Image) -> dict[int, str | None]:
    return {i: fileid.check(ref) for i, ref in enumerate(img.files)}


def check_fds(img: Image) -> dict[int, tuple[str, str]]:
    """How each saved regular file or directory descriptor's file looks now."""
    return {f.fd: fdsmod.check_file(f) for f in img.fds
            if f.kind in (fdsmod.FdKind.FILE.value, fdsmod.FdKind.DIR.value)}


# --- the encoder: stub ops from a step and what the restore has learnt so far ---

@functools.singledispatch
def encode(step: Step, scratch: Scratch) -> list[Op]:
    """The stub ops that carry out step (none for steps the engine does itself).

    Each kind's encoder is registered by class, not by annotation: the annotations are
    strings here, and evaluating 28 of them cost every restore's start ~2 ms.

    scratch is the encoder's state: the bytes the ops point to, the thread ids
    learnt as the restore goes, and where each new thread's own setup ops lie.
    """
    return []


@encode.register(TimeNamespace)
def _time_namespace(step: TimeNamespace, scratch: Scratch) -> list[Op]:
        text = clockmod.offsets_file(step.monotonic_ns, step.boottime_ns)
        return [
            Op(Sys.unshare, (clockmod.CLONE_NEWTIME,)),
            Op(StubOp.OPEN_AT, (scratch.cstr("/proc/self/timens_offsets"),
                                int(OpenFlag.WRONLY | OpenFlag.CLOEXEC), 0, step.fd)),
            Op(Sys.write, (step.fd, scratch.put(text), len(text))),
            Op(Sys.close, (step.fd,)),
            Op(StubOp.OPEN_AT, (scratch.cstr("/proc/self/ns/time_for_children"),
                                int(OpenFlag.RDONLY | OpenFlag.CLOEXEC), 0, step.fd)),
            Op(Sys.setns, (step.fd, clockmod.CLONE_NEWTIME)),
            Op(Sys.close, (step.fd,)),
        ]


@encode.register(FsIds)
def _fs_ids(step: FsIds, scratch: Scratch) -> list[Op]:
        return [Op(Sys.setfsgid, (step.gid,)), Op(Sys.setfsuid, (step.uid,))]


@encode.register(MoveMapping)
def _move_mapping(step: MoveMapping, scratch: Scratch) -> list[Op]:
        flags = Mremap.MAYMOVE | Mremap.FIXED
        return [Op(Sys.mremap, (step.src, step.size, step.size, int(flags), step.dst))]


@encode.register(Unmap)
def _unmap(step: Unmap, scratch: Scratch) -> list[Op]:
        return [Op(Sys.munmap, (step.start, step.size))]


@encode.register(OpenFile)
def _open_file(step: OpenFile, scratch: Scratch) -> list[Op]:
        flags = step.flags | (OpenFlag.CLOEXEC if step.cloexec else 0)
        return [Op(StubOp.OPEN_AT, (scratch.cstr(step.path), int(flags), step.mode, step.fd,
                                    step.kind))]


@encode.register(SetCloexec)
def _set_cloexec(step: SetCloexec, scratch: Scratch) -> list[Op]:
        return [Op(Sys.fcntl, (step.fd, F_SETFD, FD_CLOEXEC))]


@encode.register(DupFd)
def _dup_fd(step: DupFd, scratch: Scratch) -> list[Op]:
        return [Op(Sys.dup3, (step.fd, step.to, 0))]


@encode.register(TakeLock)
def _take_lock(step: TakeLock, scratch: Scratch) -> list[Op]:
        ltype = F_WRLCK if step.write else F_RDLCK
        if step.kind == "flock":
            return [Op(Sys.flock, (step.fd, (LOCK_EX if step.write else LOCK_SH) | LOCK_NB))]
        if step.kind == "lease":
            return [Op(Sys.fcntl, (step.fd, F_SETLEASE, ltype))]
        length = 0 if step.end < 0 else step.end - step.start + 1
        lock = scratch.put(FLOCK.pack(ltype, 0, step.start, length, 0))
        cmd = F_OFD_SETLK if step.kind == "ofd" else F_SETLK
        return [Op(Sys.fcntl, (step.fd, cmd, lock))]


@encode.register(EpollCtl)
def _epoll_ctl(step: EpollCtl, scratch: Scratch) -> list[Op]:
        event = scratch.put(EPOLL_EVENT.pack(step.events, step.data))
        return [Op(Sys.epoll_ctl, (step.epfd, EPOLL_CTL_ADD, step.fd, event))]


@encode.register(TreeAttrs)
def _tree_attrs(step: TreeAttrs, scratch: Scratch) -> list[Op]:
    return [Op(Sys.prctl, (Prctl.SET_CHILD_SUBREAPER, int(step.subreaper))),
            Op(Sys.prctl, (Prctl.SET_PDEATHSIG, step.pdeathsig))]


@encode.register(CloseFd)
def _close_fd(step: CloseFd, scratch: Scratch) -> list[Op]:
        return [Op(Sys.close, (step.fd,))]


@encode.register(Map)
def _map(step: Map, scratch: Scratch) -> list[Op]:
        v = step.vma
        prot = Prot.READ | Prot.WRITE
        flags = MapFlag.FIXED_NOREPLACE | (MapFlag.SHARED if step.shared else MapFlag.PRIVATE)
        if step.fd < 0:
            flags |= MapFlag.ANONYMOUS
        if step.growsdown:
            flags |= MapFlag.GROWSDOWN
        if "nr" in v.vmflags:
            flags |= MapFlag.NORESERVE
        if step.shared and step.fd >= 0 and not v.prot & Prot.WRITE:
            prot = Prot.READ       # the file may be open read-only
        if step.final:
            prot = v.prot
        off = v.offset if step.fd >= 0 else 0
        return [Op(Sys.mmap, (v.start, v.end - v.start, int(prot), int(flags), step.fd, off))]


@encode.register(MapImage)
def _map_image(step: MapImage, scratch: Scratch) -> list[Op]:
    prot = int(Prot.READ | Prot.WRITE)
    flags = int(MapFlag.PRIVATE | MapFlag.FIXED)
    return [Op(Sys.mmap, (a, n, prot, flags, step.image_fd, off)) for a, n, off in step.runs]


@encode.register(Fill)
def _fill(step: Fill, scratch: Scratch) -> list[Op]:
        return [Op(StubOp.PREAD_ALL, (step.image_fd, a, n, off)) for a, n, off in step.runs]


@encode.register(ShmAttach)
def _shm_attach(step: ShmAttach, scratch: Scratch) -> list[Op]:
        return [Op(Sys.shmat, (step.shmid, step.addr, 0))]


@encode.register(ShmRemove)
def _shm_remove(step: ShmRemove, scratch: Scratch) -> list[Op]:
        return [Op(Sys.shmctl, (step.shmid, 0, 0))]


@encode.register(Remap)
def _remap(step: Remap, scratch: Scratch) -> list[Op]:
        flags = Mremap.MAYMOVE | Mremap.FIXED
        return [Op(Sys.mremap, (step.src, 0, step.size, int(flags), step.dst))]


@encode.register(Protect)
def _protect(step: Protect, scratch: Scratch) -> list[Op]:
        return [Op(Sys.mprotect, (step.start, step.size, step.prot))]


@encode.register(Advise)
def _advise(step: Advise, scratch: Scratch) -> list[Op]:
        out = [Op(Sys.madvise, (step.start, step.size, a), StubOpFlags.IGNORE_ERROR)
               for a in step.advice]
        if step.name is not None:
            out.append(Op(Sys.prctl, (Prctl.SET_VMA, PR_SET_VMA_ANON_NAME, step.start, step.size,
                                      scratch.cstr(step.name)), StubOpFlags.IGNORE_ERROR))
        return out


@encode.register(SetMM)
def _set_m_m(step: SetMM, scratch: Scratch) -> list[Op]:
        auxv_at = scratch.put(step.auxv)
        mm = PRCTL_MM_MAP.pack(*step.fields, auxv_at, len(step.auxv), 0xFFFFFFFF)
        return [Op(Sys.prctl, (Prctl.SET_MM, PrSetMM.MAP, scratch.put(mm), len(mm), 0))]


@encode.register(ProcessAttrs)
def _process_attrs(step: ProcessAttrs, scratch: Scratch) -> list[Op]:
        ign = StubOpFlags.IGNORE_ERROR
        name = os.fsencode(step.comm)[:15] + b"\0"
        return [Op(Sys.chdir, (scratch.cstr(step.cwd),), ign),
                Op(Sys.umask, (step.umask,), ign),
                Op(Sys.personality, (step.personality,), ign),
                Op(Sys.prctl, (Prctl.SET_NAME, scratch.put(name)), ign)]


@encode.register(SigActions)
def _sig_actions(step: SigActions, scratch: Scratch) -> list[Op]:
        saved = {a.sig: a for a in step.actions}
        default = scratch.put(KERNEL_SIGACTION.pack(0, 0, 0, 0))
        out = []
        for sig in range(1, NSIG + 1):
            if sig in (SIGKILL, SIGSTOP):
                continue
            a = saved.get(sig)
            act = scratch.put(KERNEL_SIGACTION.pack(a.handler, a.flags, a.restorer, a.mask)) \
                if a else default
            out.append(Op(Sys.rt_sigaction, (sig, act, 0, 8)))
        return out


@encode.register(ThreadKernelState)
def _thread_kernel_state(step: ThreadKernelState, scratch: Scratch) -> list[Op]:
        t = step.state
        out = []
        # Before anything else: a thread without the room cannot take its tile state back.
        for feature in range(64) if step.xcomp_perm else ():
            if step.xcomp_perm >> feature & 1:
                out.append(Op(StubOp.XCOMP, (feature, 0),
                              StubOpFlags.NONE if step._expand() else StubOpFlags.IGNORE_ERROR))
        if step._expand():
            out.append(Op(StubOp.XCOMP, (0, step._expand())))
        if t.rseq:
            out.append(Op(Sys.rseq, (t.rseq.addr, t.rseq.size, 0, t.rseq.sig)))
        if t.sigaltstack:
            s = t.sigaltstack
            out.append(Op(Sys.sigaltstack, (scratch.put(STACK_T.pack(
                s.sp, s.flags & ~SS_ONSTACK, 0, s.size)), 0)))
        if t.robust_list:
            out.append(Op(Sys.set_robust_list, tuple(t.robust_list)))
        if t.tid_address is not None:
            out.append(Op(Sys.set_tid_address, (t.tid_address,)))
        if t.cpus:
            mask = sum(1 << c for c in t.cpus).to_bytes(-(-(max(t.cpus) + 1) // 64) * 8, "little")
            out.append(Op(Sys.sched_setaffinity, (0, len(mask), scratch.put(mask)),
                          StubOpFlags.IGNORE_ERROR))
        if step.thread and t.name:
            name = os.fsencode(t.name)[:15] + b"\0"
            out.append(Op(Sys.prctl, (Prctl.SET_NAME, scratch.put(name)),
                          StubOpFlags.IGNORE_ERROR))
        # Everything blocked until the registers are the program's: a signal
        # queued now must not run a handler on the stub's stack. The saved
        # mask is set with PTRACE_SETSIGMASK together with the registers.
        out.append(Op(Sys.rt_sigprocmask, (SIG_SETMASK, scratch.put(struct.pack("<q", -1)),
                                           0, 8)))
        # Its own pending signals, queued by itself: the kernel lets no other
        # thread queue a siginfo that says kill() or tgkill() sent it.
        for si in t.pending:
            out.append(Op(StubOp.QUEUE_SELF, (struct.unpack_from("<i", si)[0], scratch.put(si))))
        return out


@encode.register(QueueSignals)
def _queue_signals(step: QueueSignals, scratch: Scratch) -> list[Op]:
        return [Op(Sys.rt_sigqueueinfo, (step.tgid, struct.unpack_from("<i", si)[0],
                                         scratch.put(si)))
                for si in step.shared]


@encode.register(Seek)
def _seek(step: Seek, scratch: Scratch) -> list[Op]:
        return [Op(Sys.lseek, (step.fd, step.pos, 0))]


@encode.register(RecreateDeleted)
def _recreate_deleted(step: RecreateDeleted, scratch: Scratch) -> list[Op]:
        tmpfile = OpenFlag.RDWR | O_TMPFILE
        out = [Op(StubOp.OPEN_AT, (scratch.cstr(step.directory), int(tmpfile | OpenFlag.CLOEXEC),
                                   0o600, step.tmp_fd))]
        for img_off, file_off, n in step.copies:
            offs = scratch.put(struct.pack("<qq", img_off, file_off))
            out.append(Op(StubOp.COPY_ALL, (step.image_fd, offs, step.tmp_fd, offs + 8, n)))
        # A file opened O_TMPFILE | O_NOFOLLOW (Python's TemporaryFile) keeps those flags
        # in fdinfo: with them, reopening the new file through /proc fails.
        out.append(Op(StubOp.OPEN_AT, (scratch.cstr(f"/proc/self/fd/{step.tmp_fd}"),
                                       step.flags & ~(O_TMPFILE | O_NOFOLLOW), 0, step.fd)))
        out.append(Op(Sys.close, (step.tmp_fd,)))
        return out


@encode.register(Limits)
def _limits(step: Limits, scratch: Scratch) -> list[Op]:
        ign = StubOpFlags.IGNORE_ERROR
        out = [Op(Sys.prlimit64, (0, r.resource, scratch.put(struct.pack("<QQ", r.soft, r.hard)),
                                  0), ign) for r in step.rlimits]
        for t in step.itimers:
            # ITIMER_REAL expired with its SIGALRM still queued reads 0 and re-arms when the
            # signal is taken: setting 0 would disarm it for good.
            value = t.value_us or t.interval_us
            val = struct.pack("<qqqq", *divmod(t.interval_us, 10**6), *divmod(value, 10**6))
            out.append(Op(Sys.setitimer, (t.which, scratch.put(val), 0), ign))
        if step.timers:
            out.append(Op(Sys.prctl, (PR_TIMER_CREATE_RESTORE_IDS, 1), ign))
            for t in step.timers:
                tid = scratch.tids.get(t.tid, 0)
                sev = struct.pack("<Qiii", t.value & (1 << 64) - 1, t.signo, t.notify,
                                  tid).ljust(64, b"\0")
                idp = scratch.put(struct.pack("<i", t.id))
                out.append(Op(Sys.timer_create, (t.clock, scratch.put(sev), idp), ign))
                its = struct.pack("<qqqq", *divmod(t.interval_ns, 10**9),
                                  *divmod(t.remaining_ns, 10**9))
                out.append(Op(Sys.timer_settime, (t.id, 0, scratch.put(its), 0), ign))
            out.append(Op(Sys.prctl, (PR_TIMER_CREATE_RESTORE_IDS, 0), ign))
        if step.nice is not None:
            out.append(Op(Sys.setpriority, (0, 0, step.nice), ign))
        if step.no_new_privs:
            out.append(Op(Sys.prctl, (Prctl.SET_NO_NEW_PRIVS, 1, 0, 0, 0), ign))
        return out


@encode.register(CloneThread)
def _clone_thread(step: CloneThread, scratch: Scratch) -> list[Op]:
        setup = encode(step.setup, scratch)
        at = scratch.put(pack_ops(setup))
        scratch.setups[step.state.tid] = (at, setup)      # the executor checks their results
        n = len(setup)
        flags = CLONE_THREAD_FLAGS if step.tid_ptr else CLONE_THREAD_FLAGS & ~TID_POINTER_FLAGS
        if step.same_tid:
            return [Op(StubOp.CLONE3, (flags, step.tls, step.tid_ptr, step.slot,
                                       step.state.tid, at << 16 | n))]
        return [Op(StubOp.CLONE, (flags, step.tls, step.tid_ptr, step.slot, at, n))]
