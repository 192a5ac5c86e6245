"""A running save's snapshot writes its own memory into the image (engine/selfdump.py):
the image holds what a save of the stopped process reads, page for page, with holes
where the zero pages were, and what the snapshot cannot read (a guard page, memory
behind PROT_NONE) is read as before."""

import contextlib
import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from harness import (
    NOBODY,
    SYSTEM_PYTHON,
    batch,
    error_of,
    example,
    pages,
    rewrite_record,
    uninterrupted,
    wait_gone,
)

from gdbckpt.engine.front import Front
from gdbckpt.image import Image
from gdbckpt.image import format as fmt


@pytest.mark.parametrize("owner", ["root", "nobody"])
def test_the_snapshot_writes_what_a_stopped_save_reads_and_it_restores(tmp_path, shared_dir,
                                                                        owner):
    """Root saves its own process, or nobody's (whose snapshot is made undumpable before
    it holds root's image: nobody may not take the descriptor out of it)."""
    work, prefix = (tmp_path, ()) if owner == "root" else (Path(shared_dir), NOBODY)
    data, go, after = work / "data", work / "go", str(work / "after")
    go.write_text("go\n")
    argv = [*prefix, example("holes"), str(data), "4", "10"]
    want = uninterrupted(argv, stdin=str(go))
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        assert p.stdout.readline() == "guard on\n"       # Linux 6.13 and later
        _waiting_for_its_line(p.pid)
        saved = {}
        for name, opts in (("snap", ()), ("stopped", ("--no-snapshot",))):
            img = str(work / f"{name}.img")
            r = batch(str(p.pid), "-o", img, "--no-sync", "--json", *opts, check=0)
            saved[name] = (img, json.loads(r.stdout.splitlines()[-1]))
    finally:
        p.kill()
        p.wait()
    snap, stopped = (Image.open(saved[n][0]) for n in ("snap", "stopped"))
    assert pages(snap) == pages(stopped)
    for name in saved:      # the guard page, unreadable to the reader too
        assert any("1 pages could not be read" in n for n in saved[name][1]["notes"]), name
    # Written by the snapshot: holes where its zero pages were, in the table and on disk.
    assert _gaps(snap) and not _gaps(stopped)
    st = os.stat(saved["snap"][0])
    assert st.st_blocks * 512 < st.st_size - 256 * 4096
    batch("verify", saved["snap"][0], check=0)
    r = batch("restore", saved["snap"][0], "--stdin", str(go), "--stdout", after, check=0)
    wait_gone(int(r.stdout.split("as process ")[1].split()[0]))
    assert "ready\nguard on\n" + open(after).read() == want


def _as_saved(pid: int) -> tuple[int, list[int], int]:
    """What selfdump.used_for is given of process pid: its uids and RLIMIT_FSIZE, as a
    save reads them."""
    import resource

    from gdbckpt.procfs import Proc, rlimits
    uids = [int(u) for u in Proc(pid).status()["Uid"].split()]
    return pid, uids, next(soft for res, soft, _ in rlimits(pid) if res == resource.RLIMIT_FSIZE)


def _waiting_for_its_line(pid: int) -> None:
    """Asleep in its read of stdin: then every save sees the same instant (just after
    its "ready", it may still be on its way there, its stack changing)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().split()[0] == "0":      # read
                return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} never waited for its line")


def _gaps(img: Image) -> int:
    """How many chunks start past the end of the one before."""
    stored = [c for c in img.chunks if c.stored]
    return sum(b.offset > a.offset + a.span for a, b in zip(stored, stored[1:], strict=False))


def test_an_image_with_holes_restores_in_gdb_and_a_chunk_over_another_is_one_line(
        sessions, tmp_path):
    """gdbckpt-batch's snapshot wrote the image (holes where its zero pages were); GDB
    restores it to the saved point with symbols, and it finishes as an uninterrupted run
    does. The same image with a chunk moved over the one before is refused in one line."""
    data, go, after = tmp_path / "data", tmp_path / "go", str(tmp_path / "after")
    go.write_text("go\n")
    argv = [example("holes"), str(data), "4", "10"]
    want = uninterrupted(argv, stdin=str(go))
    img = str(tmp_path / "h.img")
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        assert p.stdout.readline() == "guard on\n"
        _waiting_for_its_line(p.pid)
        batch(str(p.pid), "-o", img, "--no-sync", check=0)
    finally:
        p.kill()
        p.wait()
    assert _gaps(Image.open(img))
    r = sessions()
    text = r.restore(img, after, str(go))
    assert "Restored process" in text, text
    assert "main" in r.cli("bt")
    assert r.finish().get("reason") == "exited-normally"
    assert "ready\nguard on\n" + open(after).read() == want

    def over_the_one_before(table: bytes) -> bytes:
        entries = [list(e) for e in fmt.CHUNK_ENTRY.iter_unpack(table)]
        stored = [e for e in entries if e[3]]
        stored[1][2] = stored[0][2]
        return b"".join(fmt.CHUNK_ENTRY.pack(*e) for e in entries)
    crafted = rewrite_record(img, fmt.RecordType.CHUNKS, over_the_one_before, raw=True)
    msg = error_of(sessions(), f"ckpt restore {crafted}")
    assert "is corrupt" in msg and "not a page boundary at or after" in msg, msg


TAKE_FD = ("import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
           "fd = libc.syscall(438, os.pidfd_open(int(sys.argv[1])), int(sys.argv[2]), 0); "
           "print(fd, ctypes.get_errno())")


def test_nobody_cannot_take_roots_image_descriptor_out_of_the_snapshot(tmp_path):
    """Root saves nobody's process: the snapshot holding root's image is undumpable, so
    nobody's pidfd_getfd on it fails (root's, the control, does not)."""
    from gdbckpt.engine import selfdump
    from gdbckpt.engine.process import Process, drop_snapshot, reap_snapshot_in
    from gdbckpt.image.writer import ImageWriter
    from gdbckpt.memory import MemoryDumper
    p = subprocess.Popen([*NOBODY, example("sleeper"), "60"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "sleeping"
        assert selfdump.used_for(*_as_saved(p.pid))
        proc = Process.seize(p.pid)
        try:
            child = proc.snapshot()
            w = ImageWriter(str(tmp_path / "i.img"))
            reader = MemoryDumper(child, w)
            out = selfdump.SelfDump.start(Process(child, [child]), reader, w,
                                          undumpable=selfdump.another_owner(_as_saved(p.pid)[1]))
            try:
                assert out is not None
                take = [SYSTEM_PYTHON, "-c", TAKE_FD, str(child), str(out.fd)]
                as_nobody = subprocess.run([*NOBODY, *take], capture_output=True, text=True)
                assert as_nobody.stdout.split() == ["-1", str(errno.EPERM)], as_nobody
                as_root = subprocess.run(take, capture_output=True, text=True)
                assert int(as_root.stdout.split()[0]) >= 0, as_root
            finally:
                if out is not None:
                    out.close(None)
                reader.close()
                w.abort()
                drop_snapshot(child)
                reap_snapshot_in(proc, child)
        finally:
            proc.release()
    finally:
        p.kill()
        p.wait()


def _user_namespaces() -> bool:
    return subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode == 0


# The kernel makes no user namespace for a chrooted process (create_user_ns), so in
# ./dev test-compat's chroot no process can be in one of its own: the case cannot arise.
@pytest.mark.skipif(not _user_namespaces(), reason="no user namespace can be made here "
                    "(a chroot: ./dev test-compat)")
def test_another_users_process_in_a_user_namespace_of_its_own_is_read_instead(shared_dir):
    """There its owner has CAP_SYS_PTRACE over the snapshot, undumpable or not: the image's
    descriptor is not handed to it, and its memory (its zero pages too) is read: an image
    without holes."""
    from gdbckpt.engine import selfdump
    p = subprocess.Popen([*NOBODY, "unshare", "-Ur", example("holes"),
                          os.path.join(shared_dir, "data")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        assert not selfdump.used_for(*_as_saved(p.pid))
        img = os.path.join(shared_dir, "ns.img")
        batch(str(p.pid), "-o", img, "--no-sync", check=0)
    finally:
        p.kill()
        p.wait()
    assert not _gaps(Image.open(img))
    batch("verify", img, check=0)


def test_a_snapshot_whose_writes_are_refused_has_its_memory_read_instead(tmp_path):
    """pwritev refused outright, not cut short (here a file-size limit put on the snapshot
    once it holds the image; an LSM could do the same): the reader reads all the rest,
    and the image holds what a stopped save reads."""
    import resource

    limited = []

    class LimitsTheSnapshot(Front):
        def __init__(self, pid: int):
            super().__init__()
            self.pid = pid

        def progress(self, phase, total):
            def advance(done, final=False):
                with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                    for child in f.read().split():
                        if int(child) not in limited:
                            resource.prlimit(int(child), resource.RLIMIT_FSIZE, (4096, 4096))
                            limited.append(int(child))
            return advance
    images = [str(tmp_path / "refused.img"), str(tmp_path / "stopped.img")]
    _holes_saved_both_ways(tmp_path, images, LimitsTheSnapshot)
    assert limited
    refused, stopped = (Image.open(i) for i in images)
    assert not _gaps(refused)
    assert pages(refused) == pages(stopped)


def test_the_state_read_as_the_snapshot_writes_its_first_batch_is_the_stopped_state(
        tmp_path, monkeypatch):
    """begin_self_dump: the snapshot is made, and the threads' registers and the process's
    state (signal handlers, the alternate stack, blocked and pending signals, the
    interval timer) are read while it writes its first batch. They are what a read of
    the stopped process gives as it resumes, the same stop."""
    from gdbckpt import fds as fdsmod
    from gdbckpt.engine import save as engine_save
    img = str(tmp_path / "s.img")
    read = []

    def state():
        again = engine_save._Saver(proc, Front(), False, fdsmod.read_fds(proc.pid), None,
                                   {}).read()
        read.append((again.threads, again.process))
    with _signals_seized(monkeypatch) as proc:
        state()         # before the snapshot is made
        r = engine_save.save(proc, img, front=(front := Progress()),
                             resume=lambda: (state(), proc.release()))
    assert "memory: first batch, the state read meanwhile" in r.phases
    # The progress shown ends at its total: the memory read while stopped, the first
    # batch and the rest, each counted once.
    total, (done, final) = front.shown[-1][0], front.shown[-1][1][-1]
    assert final and done == total == r.mapped
    saved, ((threads, process), (threads_after, after)) = Image.open(img), read
    assert saved.threads == threads == threads_after
    assert saved.process.sigactions == process.sigactions
    assert any(a.flags & 0x08000000 for a in process.sigactions)      # SA_ONSTACK
    # Pending signals, but for the SIGALRM its 20 ms timer may add while it is stopped.
    assert _but_alarms(saved.process) == _but_alarms(process) == _but_alarms(after)
    assert [(t.which, t.interval_us) for t in saved.process.itimers] == [(0, 20000)]
    for field in ("rlimits", "creds", "umask", "mm", "pdeathsig", "dumpable", "xcomp_perm"):
        assert getattr(saved.process, field) == getattr(process, field), field


@contextlib.contextmanager
def _signals_seized(monkeypatch):
    """examples/signals running, seized (released at the end, then killed); the snapshot
    always written by itself from while the process is stopped (begin_self_dump)."""
    from gdbckpt.engine import save as engine_save
    from gdbckpt.engine.process import Process
    monkeypatch.setattr(engine_save, "SELF_DUMP_FROM", 0)   # its few pages are enough
    monkeypatch.setattr(engine_save, "OVERLAP_WITHIN", 60)  # however busy the machine
    p = subprocess.Popen([example("signals"), "40"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("step 0 ")
        proc = Process.seize(p.pid)
        try:
            yield proc
        finally:
            proc.release()
    finally:
        p.kill()
        p.wait()


def _but_alarms(process) -> tuple[int, list[bytes]]:
    """A process's pending signals, SIGALRM left out."""
    alarm = 14
    return (process.sigpending & ~(1 << (alarm - 1)),
            [si for si in process.shared_pending if si[0] != alarm])


class Progress(Front):
    """A front end that keeps what progress it was shown: (total, [(done, final)])."""

    def __init__(self):
        super().__init__()
        self.shown: list[tuple[int, list]] = []

    def progress(self, phase, total):
        self.shown.append((total, calls := []))
        return lambda done, final=False: calls.append((done, final))


def test_a_save_that_fails_after_its_snapshot_is_made_leaves_no_zombie(tmp_path, monkeypatch):
    """The state is read after the snapshot is made (begin_self_dump): a save that fails
    there has the still-stopped process reap its snapshot, as one that fails later does
    once it runs on; no image is left."""
    from gdbckpt.engine import save as engine_save
    from gdbckpt.errors import SaveError

    def fails(*args):
        raise SaveError("made to fail by the test")
    monkeypatch.setattr(engine_save._Saver, "_process", fails)
    img = str(tmp_path / "f.img")
    with _signals_seized(monkeypatch) as proc:
        with pytest.raises(SaveError, match="made to fail"):
            engine_save.save(proc, img, resume=proc.release)
        proc.release()
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            assert f.read().split() == []
    assert os.listdir(tmp_path) == []


def test_a_first_batch_cut_mid_mapping_gives_what_a_stopped_save_reads(tmp_path, monkeypatch):
    """begin_self_dump's first batch ends inside a mapping (_cut): the rest of it, and the
    mappings after it (the guard page among them), are written once the process runs
    on. The image is still a stopped save's, page for page."""
    from gdbckpt.engine import save as engine_save
    monkeypatch.setattr(engine_save, "OVERLAP_WITHIN", 60)
    monkeypatch.setattr(engine_save, "FIRST_BATCH", 3 << 20)    # into the 12 MiB of anon
    images = [str(tmp_path / "early.img"), str(tmp_path / "stopped.img")]
    r = _holes_saved_both_ways(tmp_path, images)
    assert "memory: first batch, the state read meanwhile" in r.phases
    early, stopped = (Image.open(i) for i in images)
    assert pages(early) == pages(stopped)
    assert _gaps(early)         # the snapshot wrote it: holes where its zero pages were
    batch("verify", images[0], check=0)


def _holes_saved_both_ways(tmp_path, images: list[str], front_for=None):
    """examples/holes, asleep in its read, saved by the engine as it runs on (into
    images[0]; front_for(pid) its front end) and by `gdbckpt-batch --no-snapshot` (into
    images[1]): the same instant. Returns the engine's SaveResult."""
    from gdbckpt.engine import save as engine_save
    from gdbckpt.engine.process import Process
    p = subprocess.Popen([example("holes"), str(tmp_path / "data")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        assert p.stdout.readline() == "guard on\n"       # Linux 6.13 and later
        _waiting_for_its_line(p.pid)
        proc = Process.seize(p.pid)
        try:
            r = engine_save.save(proc, images[0], front=front_for and front_for(p.pid),
                                 resume=proc.release)
        finally:
            proc.release()
        batch(str(p.pid), "-o", images[1], "--no-sync", "--no-snapshot", check=0)
    finally:
        p.kill()
        p.wait()
    return r
