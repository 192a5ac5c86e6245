"""The engine: save and restore through our own ptrace, with no GDB.

Nothing in this package imports gdb. GDB (ingdb/) and the batch tool are
front ends: GDB hands the engine a process it has stopped (GDB's thread is
the tracer, and the engine runs on it); the batch tool lets the engine
attach by itself.
"""
