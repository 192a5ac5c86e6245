"""The kinds an image names, as typed enums: the model's fields hold these, and a
reader refuses a value it does not know (a newer gdbckpt's) naming the field."""

import enum

try:
    from enum import StrEnum
except ImportError:     # Python 3.10: GDB 12 on Ubuntu 22.04 embeds it
    class StrEnum(str, enum.Enum):
        """Python 3.11's enum.StrEnum: str() and format() give the value."""
        __str__ = str.__str__
        __format__ = str.__format__


class Kind(StrEnum):
    """What a mapping is, as far as save and restore are concerned (maps.py sorts them)."""
    ANON = "anon"              # private anonymous memory (heap, stacks, malloc arenas)
    FILE = "file"              # private mapping of a file that is still on disk
    FILE_SHARED = "file-shared"  # MAP_SHARED of a file on disk: writes reach the file
    SHMEM = "shmem"            # shared anonymous, SysV, deleted or memfd shared memory
    DELETED = "deleted"        # private mapping of a file that was deleted: never reopened
    VDSO = "vdso"
    VVAR = "vvar"
    VVAR_VCLOCK = "vvar_vclock"
    VSYSCALL = "vsyscall"      # fixed by the kernel at the same address in every process
    SPECIAL = "special"        # another kernel-made mapping ([uprobes]): not restorable


class FdKind(StrEnum):
    """What an open descriptor is (fds.py says how each is saved and restored)."""
    FILE = "file"          # a regular file that is still on disk
    DIR = "dir"
    DELETED = "deleted"    # a regular file no longer on disk: its bytes are saved
    CHARDEV = "chardev"    # /dev/null, /dev/urandom, ...
    TTY = "tty"
    PIPE = "pipe"
    SOCKET = "socket"
    MEMFD = "memfd"
    ANON = "anon"          # eventfd, epoll, inotify, signalfd, timerfd, ...
    OTHER = "other"


class LockKind(StrEnum):
    """A file lock held through a descriptor."""
    FLOCK = "flock"
    POSIX = "posix"
    OFD = "ofd"
    LEASE = "lease"
