"""Images you can trust, through real GDB: refusals, verify, atomic saves, failed restores."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest
from harness import error_of, example, rewrite_record

from gdbckpt.engine import xstate
from gdbckpt.image import format as fmt


@pytest.fixture
def image(sessions, tmp_path):
    img = str(tmp_path / "good.img")
    s = sessions()
    s.start([example("counter"), "8", "1"], str(tmp_path / "out"),
            breakpoint="compute_step if step == 2")
    s.save(img)
    s.cli("kill")
    return img


def test_refusals_name_the_problem(sessions, tmp_path, image):
    s = sessions()
    data = open(image, "rb").read()
    cases = {
        "missing": (str(tmp_path / "nope.img"), "cannot open"),
        "truncated": (data[:len(data) // 2], "truncated or unfinished"),
        "not-image": (b"\x7fELF" + bytes(9000), "is not a gdbckpt image"),
    }
    newer = bytearray(data[:fmt.HEADER_SIZE])
    newer[8:12] = (7).to_bytes(4, "little")
    newer[fmt.HEADER_CSUM_AT:] = fmt.checksum(bytes(newer[:fmt.HEADER_CSUM_AT])).to_bytes(8,
                                                                                         "little")
    cases["newer"] = (bytes(newer) + data[fmt.HEADER_SIZE:],
                      "has format version 7, newer than this gdbckpt's version "
                      f"{fmt.FORMAT_VERSION}")
    arm = bytearray(newer)
    arm[8:12] = (1).to_bytes(4, "little")
    arm[16:20] = (183).to_bytes(4, "little")
    arm[fmt.HEADER_CSUM_AT:] = fmt.checksum(bytes(arm[:fmt.HEADER_CSUM_AT])).to_bytes(8, "little")
    cases["arch"] = (bytes(arm) + data[fmt.HEADER_SIZE:], "is for another architecture")
    for name, (content, want) in cases.items():
        path = content if isinstance(content, str) else str(tmp_path / f"{name}.img")
        if not isinstance(content, str):
            open(path, "wb").write(content)
        for cmd in ("restore", "info", "verify"):
            msg = error_of(s, f"ckpt {cmd} {path}")
            assert msg.startswith(f"ckpt {cmd}: ") and want in msg, (name, cmd, msg)
    assert s.pid() == 0


def test_flipped_bits_are_found_and_named(sessions, tmp_path, image):
    s = sessions()
    data = bytearray(open(image, "rb").read())
    chunk = json.loads(s.cli(f"ckpt info --json {image}"))["chunks"][3]
    data[chunk["offset"] + 100] ^= 0x10
    bad = tmp_path / "chunk.img"
    bad.write_bytes(bytes(data))
    want = f"chunk at {chunk['vaddr']:#x} (image offset {chunk['offset']:#x}) is corrupt"
    assert want in error_of(s, f"ckpt verify {bad}")
    assert want in error_of(s, f"ckpt restore {bad}")
    assert s.pid() == 0, "nothing may run after a refused restore"
    # With a process to give up, the checksums are checked before it is killed (without
    # one, while the restore begins): the refusal keeps it.
    s.start([example("counter"), "8", "1"], str(tmp_path / "live.out"),
            breakpoint="compute_step if step == 2")
    live = s.pid()
    assert want in error_of(s, f"ckpt restore {bad}")
    assert s.pid() == live and os.path.exists(f"/proc/{live}")
    s.cli("kill")
    data = bytearray(open(image, "rb").read())
    meta_off = fmt.TRAILER.unpack_from(data, len(data) - fmt.TRAILER_SIZE)[3]
    data[meta_off + fmt.RECORD_HEADER.size + 5] ^= 1       # inside the first record: PROCESS
    bad.write_bytes(bytes(data))
    assert "record 0 (PROCESS) checksum mismatch" in error_of(s, f"ckpt restore {bad}")
    assert "good: " in s.cli(f"ckpt verify {image}")


def test_cpu_features_and_32_bit_code_are_refused_before_anything_runs(sessions, image):
    s = sessions()

    # A component this CPU lacks, read from the live CPU: the first known one that its
    # XCR0 does not enable (every CPU lacks some: none has all of MPX, AMX and APX).
    lacking = next(b for b in sorted(xstate.FEATURES) if not xstate.live_xcr0() >> b & 1)

    def foreign(t):
        t["xstate"]["in_use"] |= 1 << lacking
        t["xstate"]["components"][str(lacking)] = "00" * 64
        return t
    msg = error_of(s, f"ckpt restore {rewrite_record(image, fmt.RecordType.THREAD, foreign)}")
    assert f"registers use {xstate.feature_name(lacking)}, which this CPU lacks" in msg, msg
    assert s.pid() == 0

    def compat(t):
        t["regs"]["cs"] = 0x23
        return t
    msg = error_of(s, f"ckpt restore {rewrite_record(image, fmt.RecordType.THREAD, compat)}")
    assert "ran 32-bit code" in msg and s.pid() == 0


def test_failed_restore_names_the_step_and_leaves_nothing(sessions, image):
    s = sessions()
    # The plan is fine, the step that opens stdout fails: after the memory is in place.
    msg = error_of(s, f"ckpt restore --stdout=/no/such/dir/out {image}")
    assert msg.startswith("ckpt restore: step ") and "open /no/such/dir/out as fd 1 (stdout)" in msg
    assert "No such file or directory" in msg
    assert s.pid() == 0
    assert "gdbckpt-stub" not in s.children()
    # GDB is usable and the next restore works.
    assert "Restored process" in s.cli(f"ckpt restore --stdin=/dev/null {image}", timeout=120)


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_keeps_the_old_image(sessions, tmp_path, small_fs):
    img = str(small_fs / "p.img")
    s = sessions()
    s.start([example("counter"), "8", "1"], str(tmp_path / "o1"), breakpoint="compute_step")
    s.save(img)
    s.cli("kill")
    before = open(img, "rb").read()
    s.start([example("bigmem"), "16", "3", "1"], str(tmp_path / "o2"), breakpoint="sum_all")
    msg = error_of(s, f"ckpt save {img}")
    assert "No space left on device" in msg, msg
    assert open(img, "rb").read() == before
    assert sorted(os.listdir(small_fs)) == ["p.img"]


def test_interrupted_save_leaves_no_partial_image(sessions, tmp_path):
    img = tmp_path / "p.img"
    img.write_bytes(b"the previous image")
    s = sessions()
    s.start([example("bigmem"), "768", "3", "1"], str(tmp_path / "o"), breakpoint="sum_all")
    gdb_pid = s.gdb.ctl.gdb_process.pid
    sent = []

    def ctrl_c():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(".tmp-" in f for f in os.listdir(tmp_path)):
                os.kill(gdb_pid, signal.SIGINT)
                sent.append(True)
                return
            time.sleep(0.005)
    t = threading.Thread(target=ctrl_c)
    t.start()
    # --sync: 768 MiB then takes over a second, long after the temporary file appears.
    msg = error_of(s, f"ckpt save --sync {img}")
    t.join()
    assert sent, "the Ctrl-C was never sent"
    assert msg == "ckpt save: interrupted", msg
    assert img.read_bytes() == b"the previous image"
    assert sorted(os.listdir(tmp_path)) == ["o", "p.img"]
    assert "sum_all" in s.cli("bt 1")    # the process is still there, as it was


def test_kernel_writes_aimed_outside_private_memory_are_refused(sessions, image):
    """A crafted image may point a thread's clear-child-tid word or rseq area at a
    file mapping or at nothing: the kernel would write there for the process."""
    from gdbckpt.image import Image
    code = next(v.start for v in Image.open(image).vmas if v.prot & 4 and not v.prot & 2)
    s = sessions()
    for field, value in (("tid_address", code), ("tid_address", 0x1000),
                         ("rseq", {"addr": code, "size": 32, "sig": 0x53053053})):
        def aim(t, field=field, value=value):
            t[field] = value
            return t
        msg = error_of(s, f"ckpt restore {rewrite_record(image, fmt.RecordType.THREAD, aim)}")
        assert "is not in private writable memory of the image" in msg, msg
        assert s.pid() == 0


def test_a_saved_path_that_became_a_symlink_is_not_followed(sessions, tmp_path, image):
    """The stub opens the paths an image names with no symlink followed (openat2):
    a saved output file replaced by a link to another file refuses the restore."""
    out = tmp_path / "out"
    target = tmp_path / "elsewhere"
    before = out.read_text()
    target.write_text(before)
    out.unlink()
    out.symlink_to(target)
    s = sessions()
    msg = error_of(s, f"ckpt restore {image}")
    assert f"open {out} as fd 1" in msg and "Too many levels of symbolic links" in msg, msg
    assert s.pid() == 0
    assert target.read_text() == before           # nothing was written through the link
