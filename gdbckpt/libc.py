"""The C library, once, for the system calls Python's os module does not offer
(process_vm_readv, ptrace, kcmp, renameat2, shmget, prctl, tee,
signalfd, timerfd)."""

import ctypes
import functools
import os


@functools.cache
def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    lib.ptrace.restype = ctypes.c_long
    lib.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    lib.process_vm_readv.restype = ctypes.c_ssize_t
    lib.process_vm_writev.restype = ctypes.c_ssize_t
    lib.tee.restype = ctypes.c_ssize_t
    lib.shmget.restype = ctypes.c_int
    lib.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
    return lib


class Iovec(ctypes.Structure):
    """struct iovec."""
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def errno() -> int:
    return ctypes.get_errno()


def checked(ret: int, what: str) -> int:
    """A libc call's result, or OSError naming the call (its errno, its text)."""
    if ret < 0:
        e = errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def unread_bytes(fd: int) -> int:
    """FIONREAD: what waits to be read in a pipe, socket, inotify or fanotify fd."""
    import fcntl
    import termios
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4), "little")
