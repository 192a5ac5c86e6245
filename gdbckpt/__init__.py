"""gdbckpt: checkpoint and restore Linux x86-64 processes from inside GDB."""

__version__ = "0.2.0"
