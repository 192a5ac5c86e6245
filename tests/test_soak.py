"""Soak (short): 20 save/restore rounds of one program; tools/soak.py runs 200."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))

from soak import soak  # noqa: E402


def test_twenty_rounds_of_save_and_restore(tmp_path):
    soak(20, "counter", str(tmp_path), log=lambda s: None)
