import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import REPO, Session, build_shim  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def built():
    """The stub, the helpers and the example programs, built once per run.

    The test run is a child subreaper: the children of a saved tree whose root was
    killed come to it, and harness.reap() reaps them, so that their pids are free
    for the restore (this machine's init does not reap orphans)."""
    subprocess.run(["make", "-s", "native", "examples"], cwd=REPO, check=True)
    build_shim()
    from gdbckpt.libc import libc
    libc().prctl(36, 1, 0, 0, 0)       # PR_SET_CHILD_SUBREAPER


@pytest.fixture
def shared_dir():
    """A directory an unprivileged user can write (tmp_path is root's alone)."""
    d = tempfile.mkdtemp(prefix="gdbckpt-")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sessions():
    """Make GDB sessions; each is killed and closed when the test ends."""
    made = []

    def make(**kw):
        s = Session(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
