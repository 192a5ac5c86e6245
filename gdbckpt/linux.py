"""Linux x86-64 numbers gdbckpt uses, with names.

Only what the save and restore paths need; values are from the kernel's uapi
headers for x86-64.
"""

import functools
import re
import struct

PAGE_SIZE = 4096
PAGE_SHIFT = 12
EM_X86_64 = 62
# The highest errno a raw system call returns as -errno.
MAX_ERRNO = 4095


def page_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def is_syscall_error(ret: int) -> bool:
    return -MAX_ERRNO <= ret < 0


class Prot:
    """mmap's PROT_ bits. This module's flags and codes are plain ints, as Sys is: a
    gdbckpt-batch start made each enum class (~80 us apiece)."""
    NONE = 0
    READ = 1
    WRITE = 2
    EXEC = 4


def prot_of_perms(perms: str) -> int:
    """'r-xp' -> READ|EXEC, from a table: each maps line would cost three ORs otherwise."""
    return _PROT_OF_PERMS[perms[:3]]


def perms_of(prot: int) -> str:
    """READ|EXEC -> 'r-x'."""
    return ("r" if prot & Prot.READ else "-") + ("w" if prot & Prot.WRITE else "-") + (
        "x" if prot & Prot.EXEC else "-")


_PROT_OF_PERMS = {f"{r}{w}{x}": (r == "r") * Prot.READ | (w == "w") * Prot.WRITE |
                  (x == "x") * Prot.EXEC
                  for r in "r-" for w in "w-" for x in "x-"}


class MapFlag:
    SHARED = 0x01
    PRIVATE = 0x02
    FIXED = 0x10
    ANONYMOUS = 0x20
    GROWSDOWN = 0x0100
    NORESERVE = 0x4000
    FIXED_NOREPLACE = 0x100000


class Mremap:
    MAYMOVE = 1
    FIXED = 2


class OpenFlag:
    RDONLY = 0
    WRONLY = 1
    RDWR = 2
    CREAT = 0o100
    EXCL = 0o200
    NOCTTY = 0o400
    TRUNC = 0o1000
    APPEND = 0o2000
    NONBLOCK = 0o4000
    DIRECTORY = 0o200000
    CLOEXEC = 0o2000000


class Sys:
    """System call numbers (x86-64). Plain ints, as are Auxv's: enums of this size cost
    every gdbckpt-batch start ~1 ms to make."""
    read = 0
    write = 1
    close = 3
    lseek = 8
    mmap = 9
    mprotect = 10
    munmap = 11
    brk = 12
    rt_sigaction = 13
    rt_sigprocmask = 14
    pread64 = 17
    mremap = 25
    madvise = 28
    shmget = 29
    shmat = 30
    shmctl = 31
    dup2 = 33
    nanosleep = 35
    pause = 34
    getitimer = 36
    setitimer = 38
    getpid = 39
    recvmsg = 47
    socketpair = 53
    clone = 56
    wait4 = 61
    kill = 62
    setpgid = 109
    setsid = 112
    rt_sigtimedwait = 128
    fcntl = 72
    flock = 73
    chdir = 80
    fchdir = 81
    umask = 95
    setgroups = 116
    getrlimit = 97
    setresuid = 117
    setresgid = 119
    setfsuid = 122
    setfsgid = 123
    capset = 126
    rt_sigqueueinfo = 129
    sigaltstack = 131
    personality = 135
    setpriority = 141
    prctl = 157
    arch_prctl = 158
    setrlimit = 160
    mount = 165
    gettid = 186
    futex = 202
    sched_setaffinity = 203
    set_tid_address = 218
    restart_syscall = 219
    timer_create = 222
    timer_settime = 223
    timer_gettime = 224
    epoll_ctl = 233
    clock_nanosleep = 230
    exit_group = 231
    tgkill = 234
    openat = 257
    unshare = 272
    set_robust_list = 273
    get_robust_list = 274
    dup3 = 292
    pwritev = 296
    rt_tgsigqueueinfo = 297
    prlimit64 = 302
    setns = 308
    copy_file_range = 326
    kcmp = 312
    pidfd_open = 434
    pidfd_getfd = 438
    rseq = 334
    clone3 = 435
    close_range = 436


class Restart:
    """Kernel-internal errnos a stopped system call leaves in rax (negated).

    The kernel rewrites them when the task next returns to user space; a
    saved image must do the same, since the kernel state behind them is gone.
    """
    ERESTARTSYS = 512
    ERESTARTNOINTR = 513
    ERESTARTNOHAND = 514
    ERESTART_RESTARTBLOCK = 516




class Prctl:
    SET_PDEATHSIG = 1
    GET_PDEATHSIG = 2
    SET_CHILD_SUBREAPER = 36
    GET_CHILD_SUBREAPER = 37
    GET_DUMPABLE = 3
    SET_DUMPABLE = 4
    SET_KEEPCAPS = 8
    SET_NAME = 15
    GET_SECUREBITS = 27
    GET_NAME = 16
    SET_MM = 35
    GET_TID_ADDRESS = 40
    SET_NO_NEW_PRIVS = 38
    SET_VMA = 0x53564D41


class PrSetMM:
    EXE_FILE = 13
    MAP = 14
    MAP_SIZE = 15


PR_SET_VMA_ANON_NAME = 0
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
SIG_SETMASK = 2
NSIG = 64


class Auxv:
    AT_NULL = 0
    AT_IGNORE = 1
    AT_EXECFD = 2
    AT_PHDR = 3
    AT_PHENT = 4
    AT_PHNUM = 5
    AT_PAGESZ = 6
    AT_BASE = 7
    AT_FLAGS = 8
    AT_ENTRY = 9
    AT_NOTELF = 10
    AT_UID = 11
    AT_EUID = 12
    AT_GID = 13
    AT_EGID = 14
    AT_PLATFORM = 15
    AT_HWCAP = 16
    AT_CLKTCK = 17
    AT_SECURE = 23
    AT_BASE_PLATFORM = 24
    AT_RANDOM = 25
    AT_HWCAP2 = 26
    AT_RSEQ_FEATURE_SIZE = 27
    AT_RSEQ_ALIGN = 28
    AT_HWCAP3 = 29
    AT_HWCAP4 = 30
    AT_EXECFN = 31
    AT_SYSINFO_EHDR = 33
    AT_MINSIGSTKSZ = 51


SIGTRAP, SIGKILL, SIGSTOP, SIGCONT, SIGCHLD = 5, 9, 19, 18, 17
SI_USER = 0          # si_code of a signal kill() sent
# The kernel's struct sigaction as rt_sigaction takes it: handler, flags, restorer, mask.
KERNEL_SIGACTION = struct.Struct("<QQQQ")
# stack_t: ss_sp, ss_flags, padding, ss_size.
STACK_T = struct.Struct("<QiiQ")


UNISTD = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"


@functools.cache
def _syscall_table() -> dict[int, str]:
    """Every system call's name, from the kernel's headers where they are installed."""
    try:
        with open(UNISTD) as f:
            return {int(m.group(2)): m.group(1)
                    for m in re.finditer(r"#define __NR_(\w+) (\d+)", f.read())}
    except OSError:
        return {}


def constants(cls: type) -> dict[str, int]:
    """{NAME: value} of a class of int constants (Sys, Prot, ...), in their order."""
    return {k: v for k, v in vars(cls).items() if not k.startswith("_") and type(v) is int}


def names(cls: type) -> dict[int, str]:
    """{value: NAME} of a class of int constants, for messages."""
    return {v: k for k, v in constants(cls).items()}


RESTART_CODES = frozenset(constants(Restart).values())
_SYS_NAMES = names(Sys)


def sysname(nr: int) -> str:
    """A system call's name, for messages."""
    return _SYS_NAMES.get(nr) or _syscall_table().get(nr, f"syscall {nr}")
