"""What an image holds, as dataclasses, and their JSON encoding.

Every metadata record's payload is the JSON of one of these classes (see
format.RecordType). Decoding checks every field's type and names the record
and field that is wrong; unknown keys are ignored so that a later minor
version may add fields; fields with defaults may be missing.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import types
import typing

from ..errors import ImageError
from ..tcprepair import TcpConn
from .kinds import FdKind, Kind, LockKind


@dataclasses.dataclass
class Member:
    """A process of a saved tree other than its root (format.RecordType.MEMBER). The
    records after this one, up to the next MEMBER, are its own; a zombie has none."""
    pid: int
    ppid: int
    pgid: int
    sid: int
    comm: str = ""
    exit_status: int | None = None   # a zombie: its status, as wait() gives it
    chunks: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # [first, count]
                                     # of CHUNKS: its memory


@dataclasses.dataclass
class FileRef:
    """A file some mapping came from, and how to tell whether it changed."""
    path: str
    size: int
    mtime_ns: int
    ino: int
    dev: int
    build_id: str | None = None   # hex GNU build-id of an ELF file
    hash: str | None = None       # hex xxh3-128 of the whole file, when no build-id


@dataclasses.dataclass
class Vma:
    start: int
    end: int
    prot: int          # linux.Prot
    shared: bool
    kind: Kind
    path: str          # as /proc/PID/maps showed it
    offset: int = 0    # file offset of start
    file: int = -1     # index into FILES, or -1
    vmflags: list[str] = dataclasses.field(default_factory=list)
    inode: int = 0     # shared memory: mappings of one object share it
    shm: SysvShm | None = None    # a SysV shared memory segment


@dataclasses.dataclass
class SysvShm:
    key: int
    id: int
    size: int
    perms: int


@dataclasses.dataclass
class Rseq:
    addr: int
    size: int
    sig: int
    flags: int = 0


@dataclasses.dataclass
class SyscallState:
    """A thread was stopped inside a system call that the kernel would restart."""
    nr: int            # the system call (orig_rax)
    errno: int         # the ERESTART* code the kernel left in rax
    action: str        # "restart": rip rewound to the syscall instruction;
                       # "eintr": the call (unknown: restart_syscall) returns EINTR


@dataclasses.dataclass
class SigAltStack:
    sp: int
    flags: int
    size: int


@dataclasses.dataclass
class XState:
    """A thread's extended registers (NT_X86_XSTATE), per XSAVE component."""
    xcr0: int                   # the components the saving CPU enabled
    in_use: int                 # XSTATE_BV: components not in their initial state
    legacy: bytes               # the FXSAVE area's first 464 bytes: x87, MXCSR, xmm0-15
    components: dict[str, bytes] = dataclasses.field(default_factory=dict)
    # feature number (2 and up) -> that component's bytes, for those in use


@dataclasses.dataclass
class ThreadState:
    tid: int
    regs: dict[str, int]        # struct user_regs_struct by field name (PTRACE_GETREGS)
    xstate: XState | None = None
    sigmask: int = 0            # bit n-1 blocks signal n
    name: str = ""
    syscall: SyscallState | None = None
    rseq: Rseq | None = None
    sigaltstack: SigAltStack | None = None
    tid_address: int | None = None   # clear_child_tid
    robust_list: list[int] | None = None   # [head, len]
    pending: list[bytes] = dataclasses.field(default_factory=list)   # siginfo, 128 bytes each
    cpus: list[int] | None = None    # CPU affinity


@dataclasses.dataclass
class SigAction:
    sig: int
    handler: int       # 0 = SIG_DFL, 1 = SIG_IGN, else an address
    flags: int
    restorer: int
    mask: int


@dataclasses.dataclass
class MmBounds:
    """The fields of PR_SET_MM_MAP, from /proc/PID/stat and brk(0)."""
    start_code: int
    end_code: int
    start_data: int
    end_data: int
    start_brk: int
    brk: int
    start_stack: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int


@dataclasses.dataclass
class ProcessInfo:
    pid: int
    exe: str
    cwd: str
    comm: str
    cmdline: list[str]
    kernel: dict[str, str]
    saved_at: float
    tool_version: str
    mm: MmBounds
    auxv: list[list[int]]
    exe_file: int = -1          # index into FILES
    personality: int = 0
    umask: int = 0o022
    uid: int = 0
    gid: int = 0
    sigactions: list[SigAction] = dataclasses.field(default_factory=list)
    sigpending: int = 0         # process-wide pending signals, as a mask
    shared_pending: list[bytes] = dataclasses.field(default_factory=list)   # their siginfo
    stopped_by: str = ""        # why the process was stopped at the save
    rlimits: list[Rlimit] = dataclasses.field(default_factory=list)
    itimers: list[ItimerState] = dataclasses.field(default_factory=list)
    timers: list[PosixTimer] = dataclasses.field(default_factory=list)
    no_new_privs: bool = False
    dumpable: int = 1
    nice: int = 0
    not_restored: list[str] = dataclasses.field(default_factory=list)
    tid_offset: int | None = None   # offsetof(struct pthread, tid), from libc
    xcomp_perm: int = 0         # ARCH_GET_XCOMP_PERM: XSAVE components the process may use
    clocks: ClockState | None = None
    creds: Credentials | None = None
    ppid: int = 0               # its place in a saved tree (engine/tree.py)
    pgid: int = 0
    sid: int = 0
    subreaper: bool = False     # PR_SET_CHILD_SUBREAPER
    pdeathsig: int = 0          # PR_SET_PDEATHSIG


@dataclasses.dataclass
class Credentials:
    """Who the process ran as: /proc/PID/status's Uid, Gid (real, effective, saved, fs),
    Groups and capability sets, and its securebits."""
    uids: list[int]
    gids: list[int]
    groups: list[int] = dataclasses.field(default_factory=list)
    inheritable: int = 0
    permitted: int = 0
    effective: int = 0
    bounding: int = 0
    ambient: int = 0
    securebits: int = 0


@dataclasses.dataclass
class ClockState:
    """CLOCK_MONOTONIC and CLOCK_BOOTTIME as the process saw them at the save, and the
    offsets of the time namespace it ran in (against the host's clocks)."""
    monotonic_ns: int
    boottime_ns: int
    offset_monotonic_ns: int = 0
    offset_boottime_ns: int = 0


@dataclasses.dataclass
class VdsoInfo:
    vdso: list[int] | None = None          # [start, end]
    vvar: list[int] | None = None
    vvar_vclock: list[int] | None = None
    hash: str | None = None                # hex xxh3-64 of the vDSO bytes
    build_id: str | None = None
    proxy: list[int] | None = None         # a patched vDSO of an earlier kernel (vdso.py)
    mark: list[int] | None = None          # the page that names the proxy


@dataclasses.dataclass
class FdInfo:
    """An open file descriptor; fds.py says how each kind is saved and restored."""
    fd: int
    kind: FdKind
    target: str                # readlink of /proc/PID/fd/N
    flags: int = 0             # open flags from fdinfo, O_CLOEXEC included
    pos: int = 0
    same_as: int = -1          # a lower fd sharing this open file description (kcmp)
    size: int | None = None    # a regular file's size at the save
    mtime_ns: int | None = None
    ino: int | None = None
    dev: int | None = None
    data: list[int] | None = None   # [first, count] of the FILE_DATA chunks with its bytes
    pipe: PipeState | None = None
    anon: AnonState | None = None
    sock: SockState | None = None
    locks: list[FileLock] = dataclasses.field(default_factory=list)
    seals: int | None = None   # a memfd's seals (F_GET_SEALS); its bytes are in data
    # The same open file description as fd [1] of process [0], restored before this one
    # in the same tree (kcmp): one description, one shared offset.
    shared_from: list[int] | None = None


@dataclasses.dataclass
class FileLock:
    """A lock the process holds through this descriptor (its fdinfo 'lock:' lines)."""
    kind: LockKind
    write: bool
    start: int = 0
    end: int = -1              # the last byte locked; -1: to the end of the file


@dataclasses.dataclass
class PipeState:
    """A pipe or FIFO end (pipes.py)."""
    ino: int
    size: int                  # F_GETPIPE_SZ
    data: bytes = b""          # what was in it, unread, at the save
    alone: bool = False        # its other side was closed by everyone (no writer or reader)


@dataclasses.dataclass
class EpollTarget:
    fd: int                    # the registered fd, as the process numbers it
    events: int
    data: int


@dataclasses.dataclass
class AnonState:
    """An anon-inode descriptor: eventfd, timerfd, signalfd, epoll or pidfd
    (anonfds.py), inotify or fanotify (watches.py)."""
    type: str
    count: int = 0             # eventfd: the counter
    semaphore: bool = False
    clock: int = 0             # timerfd: clock id, pending expirations, TFD_TIMER_ABSTIME,
    ticks: int = 0             # time to the next expiry and the interval
    abstime: bool = False
    value_ns: int = 0
    interval_ns: int = 0
    saved_ns: int = 0          # the timer's clock at the save (an absolute timer's base)
    sigmask: int = 0           # signalfd
    targets: list[EpollTarget] = dataclasses.field(default_factory=list)   # epoll
    watches: list[Watch] = dataclasses.field(default_factory=list)   # inotify, fanotify
    fan_flags: int = 0         # fanotify_init's flags and event_f_flags
    fan_event_flags: int = 0
    pid: int = 0               # pidfd: the process it refers to (0: the saved process
    pid_start: int = 0         # itself), that process's start time (clock ticks after
    boot_id: str = ""          # boot) and the boot it ran in


@dataclasses.dataclass
class Watch:
    """An inotify watch or a fanotify mark (watches.py)."""
    path: str
    mask: int
    wd: int = 0                # inotify: the watch descriptor the program knows
    ignored: int = 0           # fanotify: the ignored mask
    flags: int = 0             # fanotify: FAN_MARK_* (mount, filesystem, ...)


@dataclasses.dataclass
class InFlight:
    """A file in flight: a descriptor that an unread message carries (SCM_RIGHTS)."""
    message: int               # which message of the queue carries it
    path: str
    flags: int
    pos: int = 0


@dataclasses.dataclass
class SockState:
    """A socket (sockets.py)."""
    family: int
    type: int
    protocol: int = 0
    ino: int = 0
    state: str = "unbound"     # unbound, bound, listening, connected, other
    name: bytes = b""          # a unix socket's bound name (abstract ones start with NUL)
    peer_name: bytes = b""     # the name of a unix socket's peer, if it has one
    peer_ino: int = 0          # a unix socket's peer
    local: str = ""            # inet addresses
    local_port: int = 0
    peer: str = ""
    peer_port: int = 0
    backlog: int = 0
    shutdown: int = 0          # RCV_SHUTDOWN 1, SEND_SHUTDOWN 2
    options: dict[str, int] = dataclasses.field(default_factory=dict)
    queue: list[bytes] = dataclasses.field(default_factory=list)   # unread: one per message
    inflight: list[InFlight] = dataclasses.field(default_factory=list)   # files they carry
    tcp: TcpConn | None = None   # an established TCP connection, saved with TCP_REPAIR


@dataclasses.dataclass
class ItimerState:
    which: int                 # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
    interval_us: int
    value_us: int


@dataclasses.dataclass
class PosixTimer:
    id: int
    clock: int
    signo: int
    notify: int                # SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD_ID 4
    value: int                 # sigev_value
    tid: int = 0               # for SIGEV_THREAD_ID
    interval_ns: int = 0
    remaining_ns: int = 0


@dataclasses.dataclass
class Rlimit:
    resource: int
    soft: int
    hard: int


# --- JSON encoding ---------------------------------------------------------

def to_json(obj) -> object:
    """Plain JSON values for a model object (bytes become hex)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode(obj) -> bytes:
    return json.dumps(to_json(obj), separators=(",", ":"), sort_keys=True).encode()


def decode(cls, payload: bytes, where: str):
    """Parse a record payload into cls, or raise ImageError naming where."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ImageError(f"{where}: not valid JSON ({e})") from None
    return from_json(cls, data, where)


def from_json(typ, data, where: str):
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        return _dataclass_from_json(typ, data, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return from_json(inner[0], data, where)
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(data, list):
            raise ImageError(f"{where}: expected a list")
        return [from_json(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        _, val = typing.get_args(typ)
        if not isinstance(data, dict):
            raise ImageError(f"{where}: expected an object")
        return {k: from_json(val, v, f"{where}.{k}") for k, v in data.items()}
    if typ is bytes:
        if not isinstance(data, str):
            raise ImageError(f"{where}: expected hex bytes")
        try:
            return bytes.fromhex(data)
        except ValueError:
            raise ImageError(f"{where}: expected hex bytes") from None
    if typ is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise ImageError(f"{where}: expected an integer")
        if not -(1 << 63) <= data < 1 << 64:
            raise ImageError(f"{where}: integer out of range")
        return data
    if typ is float:
        if not isinstance(data, (int, float)) or isinstance(data, bool):
            raise ImageError(f"{where}: expected a number")
        try:
            value = float(data)
        except OverflowError:
            raise ImageError(f"{where}: number out of range") from None
        if not math.isfinite(value):
            raise ImageError(f"{where}: expected a finite number")
        return value
    if isinstance(typ, type) and issubclass(typ, enum.Enum):
        try:
            return typ(data)
        except ValueError:
            raise ImageError(f"{where}: unknown {typ.__name__} '{data}': it was written by a "
                             "newer gdbckpt; upgrade to restore it") from None
    if typ in (str, bool):
        if not isinstance(data, typ):
            raise ImageError(f"{where}: expected {typ.__name__}")
        if typ is str:
            _check_text(data, where)
        return data
    raise TypeError(f"model type {typ!r} has no JSON decoding")


def _check_text(data: str, where: str) -> None:
    """A string the save could have written: a path's undecodable bytes come as
    surrogate escapes (\\udc80-\\udcff), never other lone surrogates."""
    try:
        data.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ImageError(f"{where}: not text a save writes (a lone surrogate)") from None


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _dataclass_from_json(cls, data, where: str):
    if not isinstance(data, dict):
        raise ImageError(f"{where}: expected an object")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = from_json(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ImageError(f"{where}: field '{f.name}' is missing")
    return cls(**kwargs)
