"""The modules that need GDB: they import the gdb module and run only inside GDB.

Everything else in gdbckpt is plain Python and runs (and is tested) without GDB.
"""
