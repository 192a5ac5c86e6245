"""The restart stub's ABI (native/stub_abi.h), seen from Python.

tests/test_stub_abi.py parses stub_abi.h and checks every number here.
"""

import struct

STUB_BASE = 0x100000000000
STUB_STACK_SIZE = 256 * 1024
STUB_SCRATCH_SIZE = 4 * 1024 * 1024
STUB_MAX_THREADS = 256
STUB_THREAD_STACK = 16 * 1024
STUB_READY_FD = 3

STUB_OP = struct.Struct("<q6qqq")     # nr, arg[6], flags, ret
RET_OFFSET = 8 * 8                    # offsetof(struct stub_op, ret)


class StubOp:
    """Plain ints, as linux.py's constants are (an enum costs each start its making)."""
    PREAD_ALL = 1000
    OPEN_AT = 1001
    CLONE = 1002
    COPY_ALL = 1003
    CLONE3 = 1004
    QUEUE_SELF = 1005
    XCOMP = 1006
    TAKE_FD = 1007
    FORK = 1008
    REAP = 1009
    RECV_FD = 1010


class StubOpFlags:
    NONE = 0
    IGNORE_ERROR = 1
