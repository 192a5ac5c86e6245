"""Soak (short): a few save/restore rounds in a row; tools/soak.py runs 200. Both run
in `make soak`, not in `make test` (marked slow)."""

import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))

import pytest  # noqa: E402
from harness import shimmed_gdb  # noqa: E402
from soak import soak  # noqa: E402

pytestmark = pytest.mark.slow


def test_ten_rounds_of_save_and_restore(tmp_path):
    """A short soak (`make soak` runs 200 rounds)."""
    soak(10, "counter", str(tmp_path), log=lambda s: None, make_gdb=shimmed_gdb)


def test_threads_keep_only_their_own_pending_signals(tmp_path):
    """Each round's restore ends its reattach stop with a SIGCONT; no image may keep it."""
    soak(5, "threads", str(tmp_path), log=lambda s: None, make_gdb=shimmed_gdb)
    with shimmed_gdb() as g:
        info = g.cli(f"ckpt info --brief {tmp_path / 'p.img'}")
    holder = re.search(r"Pending: +1 signals, queued again at restore: 10 \(thread \d+\)$",
                       info, re.M)
    assert holder, info    # the holder's blocked SIGUSR1, nothing else
