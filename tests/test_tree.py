"""The pieces of tree saving and restoring, on real processes and real kernel objects:
finding and seizing descendants (zombies too), descriptions shared across processes
(kcmp), and the objects a restore makes once for several processes."""

import os
import subprocess
import time

import pytest
from harness import example, wait_for_output

from gdbckpt import fds as fdsmod
from gdbckpt.engine import tree
from gdbckpt.engine.process import Process
from gdbckpt.engine.tree_restore import Objects, shared_memory
from gdbckpt.errors import ImageError
from gdbckpt.image.model import FdInfo, PipeState, decode


@pytest.fixture
def family(tmp_path):
    """examples/family running, past the point where its zombie child is one."""
    out = tmp_path / "out"
    with open(out, "w") as f:
        p = subprocess.Popen([example("family"), "400", "20"], stdout=f,
                             stdin=subprocess.DEVNULL)
    wait_for_output(str(out), r"^step 2:")
    yield p
    p.kill()
    p.wait()


def test_descendants_are_seized_parents_first_and_the_zombie_is_recorded(family):
    root = Process.seize(family.pid)
    members = tree.seize_descendants(family.pid)
    try:
        assert [m.ppid for m in members] == [family.pid] * 3
        zombie, worker, doubler = members
        assert zombie.proc is None and zombie.exit_status == 7 << 8
        assert worker.proc is not None and doubler.proc is not None
        assert doubler.pgid == doubler.pid and worker.pgid == os.getpgid(family.pid)
        # Seized: stopped under our ptrace, as the root is.
        for m in (worker, doubler):
            with open(f"/proc/{m.pid}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] == "t"
    finally:
        tree.release(members)
        root.release()


def test_descriptions_shared_across_processes_point_at_the_earliest(family):
    children = tree.children(family.pid)
    tables = {pid: fdsmod.read_fds(pid) for pid in [family.pid] + children
              if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"}
    tree.shared_descriptions(tables)
    worker = next(pid for pid in children if pid in tables and any(
        f.kind == fdsmod.FdKind.PIPE for f in tables[pid] if f.fd > 2))
    stdout = next(f for f in tables[worker] if f.fd == 1)
    assert stdout.shared_from == [family.pid, 1]          # the same file, one offset
    assert all(f.shared_from is None for f in tables[family.pid])
    ends = tree.ends(tables)
    both = [ino for ino, modes in ends.pipes.items() if modes == {os.O_RDONLY, os.O_WRONLY}]
    assert len(both) == 2                                 # ask and answer


def pipe_end(fd: int, ino: int, reading: bool, data=b"") -> FdInfo:
    return FdInfo(fd=fd, kind="pipe", target=f"pipe:[{ino}]",
                  flags=os.O_RDONLY if reading else os.O_WRONLY,
                  pipe=PipeState(ino=ino, size=65536, data=data))


class Img:
    """The little of an image Objects reads."""

    def __init__(self, pid, fds, vmas=()):
        self.process = type("P", (), {"pid": pid})()
        self.fds, self.vmas = fds, list(vmas)


def test_a_pipe_between_two_processes_is_made_once_with_its_bytes():
    parent = Img(10, [pipe_end(5, 77, reading=False, data=b"queued")])
    child = Img(11, [pipe_end(3, 77, reading=True, data=b"queued")])
    objects = Objects([parent, child])
    try:
        assert objects.tree_pipes(parent) == {77} and objects.tree_pipes(child) == {77}
        from gdbckpt.plan import MakeFds
        w = objects.made_for(MakeFds(kind="pipe", fds=(-1, 5), infos=(None, parent.fds[0])),
                             None)
        r = objects.made_for(MakeFds(kind="pipe", fds=(3, -1), infos=(child.fds[0], None)),
                             None)
        assert w[0] == -1 and r[1] == -1
        os.write(w[1], b"!")
        assert os.read(r[0], 100) == b"queued!"          # one pipe, the saved bytes first
    finally:
        objects.close()


def test_shared_memory_is_what_two_processes_map():
    vma = {"start": 0x1000, "end": 0x3000, "prot": 3, "shared": True, "kind": "shmem",
           "path": "/dev/zero (deleted)", "inode": 9}
    from gdbckpt.image.model import Vma
    v = Vma(**vma)
    alone = Vma(**{**vma, "inode": 10})
    a, b = Img(1, [], [v, alone]), Img(2, [], [v])
    assert shared_memory([a, b]) == {9}
    objects = Objects([a, b])
    try:
        assert objects.tree_shmem(a, {9}) == {9: True} and objects.tree_shmem(b, {9}) == {9: False}
        assert os.fstat(objects.shmem(9)).st_size == 0x2000
        assert objects.shmem(9) == objects.shmem(9)
    finally:
        objects.close()


def test_a_string_no_save_writes_is_refused():
    with pytest.raises(ImageError, match="lone surrogate"):
        decode(FdInfo, b'{"fd": 3, "kind": "file", "target": "\\ud800"}', "x")
    # A path's undecodable bytes, as a save writes them, are fine.
    assert decode(FdInfo, b'{"fd": 3, "kind": "file", "target": "/a\\udcff"}', "x").target


def test_seizing_an_empty_tree_finds_nothing():
    p = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.05)
        root = Process.seize(p.pid)
        try:
            assert tree.seize_descendants(p.pid) == []
        finally:
            root.release()
    finally:
        p.kill()
        p.wait()
