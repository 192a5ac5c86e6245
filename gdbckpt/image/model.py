"""What an image holds, as msgspec Structs, and their JSON encoding.

Every metadata record's payload is the JSON of one of these classes (see
format.RecordType). Decoding checks every field's type (msgspec) and names the record
and field that is wrong; unknown keys are ignored so that a later minor version may add
fields; fields with defaults may be missing. Bytes are stored as hex (format 2), which
msgspec does not do itself: fields of bytes are typed Hex, decoded by a hook.

Each class comes after the classes its fields name, and annotations are not strings (no
`from __future__ import annotations`): msgspec then needn't evaluate them at a restore's
first read, a few ms of its start.
"""

import json
import math

import msgspec

from ..errors import ImageError
from .hexbytes import Hex
from .kinds import FdKind, Kind, LockKind


class Member(msgspec.Struct):
    """A process of a saved tree other than its root (format.RecordType.MEMBER). The
    records after this one, up to the next MEMBER, are its own; a zombie has none."""
    pid: int
    ppid: int
    pgid: int
    sid: int
    comm: str = ""
    exit_status: int | None = None   # a zombie: its status, as wait() gives it
    chunks: list[int] = msgspec.field(default_factory=lambda: [0, 0])  # [first, count]
                                     # of CHUNKS: its memory


class FileRef(msgspec.Struct):
    """A file some mapping came from, and how to tell whether it changed."""
    path: str
    size: int
    mtime_ns: int
    ino: int
    dev: int
    build_id: str | None = None   # hex GNU build-id of an ELF file
    hash: str | None = None       # hex xxh3-128 of the whole file, when no build-id


class SysvShm(msgspec.Struct):
    key: int
    id: int
    size: int
    perms: int


class Vma(msgspec.Struct):
    start: int
    end: int
    prot: int          # linux.Prot
    shared: bool
    kind: Kind
    path: str          # as /proc/PID/maps showed it
    offset: int = 0    # file offset of start
    file: int = -1     # index into FILES, or -1
    vmflags: list[str] = msgspec.field(default_factory=list)
    inode: int = 0     # shared memory: mappings of one object share it
    shm: SysvShm | None = None    # a SysV shared memory segment


class Rseq(msgspec.Struct):
    addr: int
    size: int
    sig: int
    flags: int = 0


class SyscallState(msgspec.Struct):
    """A thread was stopped inside a system call that the kernel would restart."""
    nr: int            # the system call (orig_rax)
    errno: int         # the ERESTART* code the kernel left in rax
    action: str        # "restart": rip rewound to the syscall instruction;
                       # "eintr": the call (unknown: restart_syscall) returns EINTR


class SigAltStack(msgspec.Struct):
    sp: int
    flags: int
    size: int


class XState(msgspec.Struct):
    """A thread's extended registers (NT_X86_XSTATE), per XSAVE component."""
    xcr0: int                   # the components the saving CPU enabled
    in_use: int                 # XSTATE_BV: components not in their initial state
    legacy: Hex               # the FXSAVE area's first 464 bytes: x87, MXCSR, xmm0-15
    components: dict[str, Hex] = msgspec.field(default_factory=dict)
    # feature number (2 and up) -> that component's bytes, for those in use


class ThreadState(msgspec.Struct):
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
    pending: list[Hex] = msgspec.field(default_factory=list)   # siginfo, 128 bytes each
    cpus: list[int] | None = None    # CPU affinity


class SigAction(msgspec.Struct):
    sig: int
    handler: int       # 0 = SIG_DFL, 1 = SIG_IGN, else an address
    flags: int
    restorer: int
    mask: int


class MmBounds(msgspec.Struct):
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


class Credentials(msgspec.Struct):
    """Who the process ran as: /proc/PID/status's Uid, Gid (real, effective, saved, fs),
    Groups and capability sets, and its securebits."""
    uids: list[int]
    gids: list[int]
    groups: list[int] = msgspec.field(default_factory=list)
    inheritable: int = 0
    permitted: int = 0
    effective: int = 0
    bounding: int = 0
    ambient: int = 0
    securebits: int = 0


class ClockState(msgspec.Struct):
    """CLOCK_MONOTONIC and CLOCK_BOOTTIME as the process saw them at the save, and the
    offsets of the time namespace it ran in (against the host's clocks)."""
    monotonic_ns: int
    boottime_ns: int
    offset_monotonic_ns: int = 0
    offset_boottime_ns: int = 0


class ItimerState(msgspec.Struct):
    which: int                 # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
    interval_us: int
    value_us: int


class PosixTimer(msgspec.Struct):
    id: int
    clock: int
    signo: int
    notify: int                # SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD_ID 4
    value: int                 # sigev_value
    tid: int = 0               # for SIGEV_THREAD_ID
    interval_ns: int = 0
    remaining_ns: int = 0


class Rlimit(msgspec.Struct):
    resource: int
    soft: int
    hard: int


class ProcessInfo(msgspec.Struct):
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
    sigactions: list[SigAction] = msgspec.field(default_factory=list)
    sigpending: int = 0         # process-wide pending signals, as a mask
    shared_pending: list[Hex] = msgspec.field(default_factory=list)   # their siginfo
    stopped_by: str = ""        # why the process was stopped at the save
    rlimits: list[Rlimit] = msgspec.field(default_factory=list)
    itimers: list[ItimerState] = msgspec.field(default_factory=list)
    timers: list[PosixTimer] = msgspec.field(default_factory=list)
    no_new_privs: bool = False
    dumpable: int = 1
    nice: int = 0
    not_restored: list[str] = msgspec.field(default_factory=list)
    tid_offset: int | None = None   # offsetof(struct pthread, tid), from libc
    xcomp_perm: int = 0         # ARCH_GET_XCOMP_PERM: XSAVE components the process may use
    clocks: ClockState | None = None
    creds: Credentials | None = None
    ppid: int = 0               # its place in a saved tree (engine/tree.py)
    pgid: int = 0
    sid: int = 0
    subreaper: bool = False     # PR_SET_CHILD_SUBREAPER
    pdeathsig: int = 0          # PR_SET_PDEATHSIG


class VdsoInfo(msgspec.Struct):
    vdso: list[int] | None = None          # [start, end]
    vvar: list[int] | None = None
    vvar_vclock: list[int] | None = None
    hash: str | None = None                # hex xxh3-64 of the vDSO bytes
    build_id: str | None = None
    proxy: list[int] | None = None         # a patched vDSO of an earlier kernel (vdso.py)
    mark: list[int] | None = None          # the page that names the proxy


class FileLock(msgspec.Struct):
    """A lock the process holds through this descriptor (its fdinfo 'lock:' lines)."""
    kind: LockKind
    write: bool
    start: int = 0
    end: int = -1              # the last byte locked; -1: to the end of the file


class PipeState(msgspec.Struct):
    """A pipe or FIFO end (pipes.py)."""
    ino: int
    size: int                  # F_GETPIPE_SZ
    data: Hex = b""          # what was in it, unread, at the save
    alone: bool = False        # its other side was closed by everyone (no writer or reader)


class EpollTarget(msgspec.Struct):
    fd: int                    # the registered fd, as the process numbers it
    events: int
    data: int


class Watch(msgspec.Struct):
    """An inotify watch or a fanotify mark (watches.py)."""
    path: str
    mask: int
    wd: int = 0                # inotify: the watch descriptor the program knows
    ignored: int = 0           # fanotify: the ignored mask
    flags: int = 0             # fanotify: FAN_MARK_* (mount, filesystem, ...)


class AnonState(msgspec.Struct):
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
    targets: list[EpollTarget] = msgspec.field(default_factory=list)   # epoll
    watches: list[Watch] = msgspec.field(default_factory=list)   # inotify, fanotify
    fan_flags: int = 0         # fanotify_init's flags and event_f_flags
    fan_event_flags: int = 0
    pid: int = 0               # pidfd: the process it refers to (0: the saved process
    pid_start: int = 0         # itself), that process's start time (clock ticks after
    boot_id: str = ""          # boot) and the boot it ran in


class InFlight(msgspec.Struct):
    """A file in flight: a descriptor that an unread message carries (SCM_RIGHTS)."""
    message: int               # which message of the queue carries it
    path: str
    flags: int
    pos: int = 0


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TcpConn(msgspec.Struct):
    """One ESTABLISHED connection as save() found it; only JSON-friendly types."""

    family: int                 # AF_INET / AF_INET6
    local: str
    local_port: int
    peer: str
    peer_port: int
    send_seq: int               # write_seq: seq after the last byte of send_queue
    recv_seq: int               # rcv_nxt: seq after the last byte of recv_queue
    send_queue: Hex             # unacked then unsent bytes
    unsent: int                 # how many bytes at the end of send_queue were never sent
    recv_queue: Hex             # received, not yet read by the program
    mss: int                    # mss_clamp (what the peer advertised)
    wscale: bool                # window scaling negotiated
    snd_wscale: int
    rcv_wscale: int
    timestamps: bool
    sack: bool
    tsval: int                  # TCP_TIMESTAMP: our clock as the peer sees it
    window: list[int]           # snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup
    nodelay: bool
    cork: bool
    keepalive: bool
    keepidle: int
    keepintvl: int
    keepcnt: int
    user_timeout: int
    congestion: str
    sndbuf: int                 # as getsockopt reports them (the kernel's doubled value)
    rcvbuf: int
    buf_lock: int               # SO_BUF_LOCK: sizes the program set; the others autotune

    @property
    def name(self) -> str:
        return f"tcp {host_port(self.local, self.local_port)} -> " \
            f"{host_port(self.peer, self.peer_port)}"


class SockState(msgspec.Struct):
    """A socket (sockets.py)."""
    family: int
    type: int
    protocol: int = 0
    ino: int = 0
    state: str = "unbound"     # unbound, bound, listening, connected, other
    name: Hex = b""          # a unix socket's bound name (abstract ones start with NUL)
    peer_name: Hex = b""     # the name of a unix socket's peer, if it has one
    peer_ino: int = 0          # a unix socket's peer
    local: str = ""            # inet addresses
    local_port: int = 0
    peer: str = ""
    peer_port: int = 0
    backlog: int = 0
    shutdown: int = 0          # RCV_SHUTDOWN 1, SEND_SHUTDOWN 2
    options: dict[str, int] = msgspec.field(default_factory=dict)
    queue: list[Hex] = msgspec.field(default_factory=list)   # unread: one per message
    inflight: list[InFlight] = msgspec.field(default_factory=list)   # files they carry
    tcp: TcpConn | None = None   # an established TCP connection, saved with TCP_REPAIR


class FdInfo(msgspec.Struct):
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
    locks: list[FileLock] = msgspec.field(default_factory=list)
    seals: int | None = None   # a memfd's seals (F_GET_SEALS); its bytes are in data
    # The same open file description as fd [1] of process [0], restored before this one
    # in the same tree (kcmp): one description, one shared offset.
    shared_from: list[int] | None = None


# --- JSON encoding ---------------------------------------------------------

def encode(obj) -> bytes:
    """The record payload for a model object: sorted keys, bytes as hex."""
    plain = msgspec.to_builtins(obj, builtin_types=(bytes,), enc_hook=_to_hex)
    return json.dumps(plain, default=_to_hex, separators=(",", ":"),
                      sort_keys=True).encode()


def to_json(obj) -> object:
    """Plain JSON values for a model object, as its record stores them."""
    return json.loads(encode(obj))


def decode(cls, payload: bytes, where: str):
    """Parse a record payload into cls, or raise ImageError naming where."""
    try:
        data = json.loads(payload.decode("utf-8"), parse_int=_int64, parse_float=_finite,
                          parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ImageError(f"{where}: not valid JSON ({e})") from None
    if b"\\ud" in payload.lower():   # an escaped surrogate: rare, so only then look
        _check_texts(data, where)
    return from_json(cls, data, where)


def from_json(cls, data, where: str):
    try:
        return msgspec.convert(data, cls, dec_hook=_from_hex)
    except msgspec.ValidationError as e:
        raise ImageError(_reworded(str(e), where)) from None


def _reworded(message: str, where: str) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.vmas[0].start`" as
    "WHERE.vmas[0].start: expected `int`, got `str`"."""
    what, _, at = message.partition(" - at `$")
    where += at.rstrip("`")
    if what.startswith("Invalid enum value"):
        field = where.rpartition(".")[2]
        return (f"{where}: unknown {field} {what.split(' ', 3)[3]}: it was written by a "
                "newer gdbckpt; upgrade to restore it")
    return f"{where}: {what[:1].lower()}{what[1:]}"


def _to_hex(obj) -> str:
    if isinstance(obj, bytes):   # a Hex, or plain bytes standing in for one
        return obj.hex()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _from_hex(typ, data):
    if typ is Hex:
        if not isinstance(data, str):
            raise TypeError("expected hex bytes")
        try:
            return Hex(bytes.fromhex(data))
        except ValueError:
            raise TypeError("expected hex bytes") from None
    raise NotImplementedError


def _int64(text: str) -> int:
    """Integers a save writes fit in 64 bits, signed or not; bigger ones are refused
    before any field sees them (msgspec bounds only int64)."""
    value = int(text)
    if not -(1 << 63) <= value < 1 << 64:
        raise ValueError(f"integer out of range: {text[:30]}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:30]}")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number an image holds")


def _check_texts(data, where: str) -> None:
    if isinstance(data, str):
        _check_text(data, where)
    elif isinstance(data, list):
        for value in data:
            _check_texts(value, where)
    elif isinstance(data, dict):
        for key, value in data.items():
            _check_text(key, where)
            _check_texts(value, f"{where}.{key}")


def _check_text(data: str, where: str) -> None:
    """A string the save could have written: a path's undecodable bytes come as
    surrogate escapes (\\udc80-\\udcff), never other lone surrogates."""
    try:
        data.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ImageError(f"{where}: not text a save writes (a lone surrogate)") from None
