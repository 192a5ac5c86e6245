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
    """The stub, the helpers and the example programs, built once per run."""
    subprocess.run(["make", "-s", "native", "examples"], cwd=REPO, check=True)
    build_shim()


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
