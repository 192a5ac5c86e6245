"""Start the restart stub under GDB and run batches of ops in it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal

import gdb

from .. import native
from ..errors import RestoreError
from ..linux import is_syscall_error
from ..maps import Mapping, read_mappings
from ..mi import cli_arg
from ..plan import Op, Scratch
from ..procfs import Proc, parse_limits
from ..stubabi import RET_OFFSET, STUB_OP, STUB_READY_FD, STUB_SCRATCH_SIZE, StubOp, StubOpFlags
from . import settings
from .inferior import Inferior

# The scratch buffer: paths and structs first, the op array in the last MiB.
OPS_AREA = 1 << 20
DATA_AREA = STUB_SCRATCH_SIZE - OPS_AREA
OPS_PER_RUN = OPS_AREA // STUB_OP.size
READY_TIMEOUT = 10
RLIMIT_NOFILE = 7
NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
_RESETTABLE = sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


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
    def start(cls, want_pid: int = 0, new_session: bool = False) -> Stub:
        """Spawn the stub, wait until it is parked on its own stack, attach to it.

        Not `run`: a run (or any resume that is not an inferior call) makes
        GDB/MI answer the ckpt command with ^running instead of ^done.
        """
        path = native.stub_path()
        if not native.stub_built():
            raise RestoreError(f"the restart stub {path} is not built: {native.native_hint()}")
        pid = _spawn_parked(path, want_pid, new_session)
        try:
            with settings.temporarily(confirm="off"):
                gdb.execute(f"file {cli_arg(path)}", to_string=True)
                gdb.execute(f"attach {pid}", to_string=True)
        except gdb.error as e:
            os.kill(pid, signal.SIGKILL)
            raise RestoreError(f"cannot attach to the restart stub: {e}") from None
        if gdb.selected_inferior().pid != pid:
            os.kill(pid, signal.SIGKILL)
            raise RestoreError("GDB did not attach to the restart stub")
        return cls()

    def mappings(self) -> list[Mapping]:
        return read_mappings(self.pid)

    def fd_limit(self) -> int:
        """The stub's soft RLIMIT_NOFILE."""
        for res, soft, _ in parse_limits(Proc(self.pid).limits()):
            if res == RLIMIT_NOFILE:
                return min(soft, 1 << 20)
        return 1024

    def run(self, batch: list[tuple[int, Op]]) -> tuple[list[tuple[int, Op, int]], list[int]]:
        """Run ops (each tagged with its step index) in the selected thread.

        Returns the failures that were marked IGNORE_ERROR and every op's
        result; raises OpFailed for the first other failure.
        """
        self._flush_scratch()
        ignored = []
        results: list[int] = []
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
                results.append(ret)
        return ignored, results

    def switch_to(self, tid: int) -> None:
        """Select the stub's thread tid in GDB."""
        for th in gdb.selected_inferior().threads():
            if th.ptid[1] == tid:
                th.switch()
                return
        raise RestoreError(f"thread {tid} of the restart stub is not known to GDB")

    def _flush_scratch(self) -> None:
        data = self.scratch.data
        if len(data) > self._written:
            self.inf.write(self.scratch.base + self._written, data[self._written:])
            self._written = len(data)


def _spawn_parked(path: str, want_pid: int = 0, new_session: bool = False) -> int:
    """Start the stub with only stdio and its ready pipe; returns once it is parked.

    With want_pid, ask the kernel for that pid (ns_last_pid: CAP_SYS_ADMIN or
    CAP_CHECKPOINT_RESTORE); the caller checks whether it came.
    """
    if want_pid > 1 and not os.path.exists(f"/proc/{want_pid}"):
        try:
            with open(NS_LAST_PID, "w") as f:
                f.write(str(want_pid - 1))
        except OSError:
            pass
    r, w = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, w, STUB_READY_FD)]
    # Descriptors GDB inherited without close-on-exec must not reach the
    # restored process.
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in (w, STUB_READY_FD):
            try:
                if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                    actions.append((os.POSIX_SPAWN_CLOSE, fd))
            except OSError:
                pass
    try:
        # Default dispositions and an empty mask: nothing of GDB's may leak in.
        pid = os.posix_spawn(path, [path], {}, file_actions=actions, setsigmask=(),
                             setsigdef=_RESETTABLE, setsid=new_session)
    except OSError as e:
        os.close(r)
        os.close(w)
        raise RestoreError(f"cannot start the restart stub {path}: {e.strerror}") from None
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], READY_TIMEOUT)
        if not ready or os.read(r, 1) != b"R":
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RestoreError(f"the restart stub did not start within {READY_TIMEOUT} s")
    finally:
        os.close(r)
    return pid


@contextlib.contextmanager
def scratch_inferior():
    """A new, empty GDB inferior for a while; then the user's one is selected again."""
    old = gdb.selected_inferior().num
    out = gdb.execute("add-inferior", to_string=True)
    num = int(re.search(r"Added inferior (\d+)", out).group(1))
    gdb.execute(f"inferior {num}", to_string=True)
    try:
        yield
    finally:
        kill_selected()
        gdb.execute(f"inferior {old}", to_string=True)
        gdb.execute(f"remove-inferiors {num}", to_string=True)


def kill_selected() -> None:
    """Kill the selected inferior if it runs, quietly (after a failed restore)."""
    if gdb.selected_inferior().pid:
        with settings.temporarily(confirm="off"):
            gdb.execute("kill", to_string=True)
