"""Start the restart stub under GDB and run batches of ops in it."""

from __future__ import annotations

import os

import gdb

from .. import native
from ..errors import RestoreError
from ..linux import is_syscall_error
from ..maps import Mapping, read_mappings
from ..plan import Op, Scratch
from ..stubabi import RET_OFFSET, STUB_OP, STUB_SCRATCH_SIZE, StubOp, StubOpFlags
from . import settings
from .inferior import Inferior

# The scratch buffer: paths and structs first, the op array in the last MiB.
OPS_AREA = 1 << 20
DATA_AREA = STUB_SCRATCH_SIZE - OPS_AREA
OPS_PER_RUN = OPS_AREA // STUB_OP.size


class OpFailed(Exception):
    def __init__(self, index: int, op: Op, errno: int):
        self.index, self.op, self.errno = index, op, errno
        super().__init__(f"{op_name(op)} failed: {os.strerror(errno)}")


def op_name(op: Op) -> str:
    from ..linux import Sys
    try:
        return StubOp(op.nr).name.lower()
    except ValueError:
        pass
    try:
        return Sys(op.nr).name
    except ValueError:
        return f"syscall {op.nr}"


class Stub:
    """A running stub, stopped in stub_park(), as GDB's selected inferior."""

    def __init__(self):
        self.inf = Inferior(RestoreError)
        self.pid = self.inf.pid
        base = int(gdb.parse_and_eval("(long)&stub_scratch"))
        self.scratch = Scratch(base, DATA_AREA)
        self.ops_at = base + DATA_AREA
        self._written = 0

    @classmethod
    def start(cls) -> Stub:
        path = native.stub_path()
        if not native.stub_built():
            raise RestoreError(f"the restart stub {path} is not built: {native.native_hint()}")
        with settings.temporarily(startup_with_shell="off", confirm="off"):
            gdb.execute(f"file {path}", to_string=True)
            gdb.execute("tbreak stub_park", to_string=True)
            gdb.execute("run", to_string=True)
        frame = gdb.selected_frame() if gdb.selected_inferior().pid else None
        if frame is None or frame.name() != "stub_park":
            raise RestoreError("the restart stub did not start (see GDB's messages above)")
        return cls()

    def mappings(self) -> list[Mapping]:
        return read_mappings(self.pid)

    def fd_limit(self) -> int:
        with open(f"/proc/{self.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return 1 << 20 if soft == "unlimited" else int(soft)
        return 1024

    def run(self, batch: list[tuple[int, Op]]) -> list[tuple[int, Op, int]]:
        """Run ops (each tagged with its step index); returns ignored failures.

        Raises OpFailed for the first failure not marked IGNORE_ERROR.
        """
        self._flush_scratch()
        ignored = []
        for first in range(0, len(batch), OPS_PER_RUN):
            part = batch[first:first + OPS_PER_RUN]
            blob = b"".join(STUB_OP.pack(op.nr, *op.args, *([0] * (6 - len(op.args))),
                                         int(op.flags), 0) for _, op in part)
            self.inf.write(self.ops_at, blob)
            done = int(gdb.parse_and_eval(
                f"stub_run((struct stub_op *){self.ops_at}, {len(part)})"))
            out = self.inf.read(self.ops_at, len(blob))
            for k, (step, op) in enumerate(part[:done + 1]):
                ret = int.from_bytes(out[k * STUB_OP.size + RET_OFFSET:][:8], "little",
                                     signed=True)
                if k == done and done < len(part):
                    raise OpFailed(step, op, -ret)
                if is_syscall_error(ret) and op.flags & StubOpFlags.IGNORE_ERROR:
                    ignored.append((step, op, -ret))
        return ignored

    def _flush_scratch(self) -> None:
        data = self.scratch.data
        if len(data) > self._written:
            self.inf.write(self.scratch.base + self._written, data[self._written:])
            self._written = len(data)

    def kill(self) -> None:
        kill_selected()


def kill_selected() -> None:
    """Kill the selected inferior if it runs, quietly (after a failed restore)."""
    if gdb.selected_inferior().pid:
        with settings.temporarily(confirm="off"):
            gdb.execute("kill", to_string=True)
