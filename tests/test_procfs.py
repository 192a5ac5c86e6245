"""procfs parsers on fixed text and on this process's own /proc; pagemap flags of real pages."""

import mmap
import os
import struct

from harness import address_of

from gdbckpt.linux import PAGE_SIZE, Auxv
from gdbckpt.procfs import (
    DIRTY_TABLE,
    PM_FILE,
    PM_PRESENT,
    PM_SWAPPED,
    PRESENT_TABLE,
    Proc,
    pack_auxv,
    parse_auxv,
    parse_stat,
    parse_timers,
    read_pagemap,
    rlimits,
    runs,
)


def stat_line(comm):
    # Fields 3.. of a real /proc/PID/stat; field n is the value n here except a few.
    rest = ["S"] + [str(n) for n in range(4, 53)]
    return f"4242 ({comm}) {' '.join(rest)}\n"


def test_parse_stat_comm_with_spaces_and_parentheses():
    for comm in ("a) (b c", "((x))", ") S 1 2", "plain"):
        st = parse_stat(stat_line(comm))
        assert st["pid"] == 4242 and st["comm"] == comm and st["state"] == "S"
        assert (st["ppid"], st["num_threads"], st["start_code"], st["env_end"]) == (4, 20, 26, 51)


def test_parse_own_stat():
    st = Proc(os.getpid()).stat()
    assert st["pid"] == os.getpid() and st["ppid"] == os.getppid()
    assert st["state"] == "R"
    assert st["comm"] == Proc(os.getpid()).comm()
    assert 0 < st["start_code"] < st["end_code"] and st["arg_start"] < st["arg_end"]
    assert st["env_start"] <= st["env_end"]


def test_parse_auxv_round_trip():
    with open("/proc/self/auxv", "rb") as f:
        raw = f.read()
    pairs = parse_auxv(raw)
    assert dict(pairs)[Auxv.AT_PAGESZ] == PAGE_SIZE
    assert Proc(os.getpid()).auxv() == pairs
    packed = pack_auxv(pairs)
    assert parse_auxv(packed) == pairs
    assert raw.startswith(packed)
    assert set(raw[len(packed):]) <= {0}


def test_auxv_stops_at_null_and_ignores_a_partial_entry():
    data = struct.pack("<6Q", 6, 4096, 0, 0, 25, 1) + b"\1\2\3"
    assert parse_auxv(data) == [(6, 4096)]
    assert parse_auxv(struct.pack("<2Q", 6, 4096) + b"\1\2") == [(6, 4096)]
    assert pack_auxv([]) == bytes(16)


def test_runs():
    assert runs(b"") == []
    assert runs(b"\0\0") == []
    assert runs(b"\1\1\0\1\0\0\1\1\1") == [(0, 2), (3, 1), (6, 3)]
    assert runs(b"\1\1\0\1\0\0\1\1\1", 0) == [(2, 1), (4, 2)]


def test_tables():
    for b in range(256):
        present = bool(b & PM_PRESENT)
        swapped = bool(b & PM_SWAPPED)
        file = bool(b & PM_FILE)
        assert PRESENT_TABLE[b] == (present or swapped), hex(b)
        assert DIRTY_TABLE[b] == ((present and not file) or swapped), hex(b)
    assert bytes([0x80, 0xA0, 0x40, 0x00, 0x1F]).translate(PRESENT_TABLE) == b"\1\1\1\0\0"
    assert bytes([0x80, 0xA0, 0x40, 0x00, 0x1F]).translate(DIRTY_TABLE) == b"\1\0\1\0\0"


def _flags(buf, npages):
    addr = address_of(buf)
    return read_pagemap(os.getpid(), addr, addr + npages * PAGE_SIZE)


def test_pagemap_of_anonymous_memory():
    buf = mmap.mmap(-1, 4 * PAGE_SIZE, mmap.MAP_PRIVATE)
    buf.madvise(mmap.MADV_NOHUGEPAGE)     # one touched page must not bring a large folio
    buf[0] = 1
    buf[3 * PAGE_SIZE] = 1
    flags = _flags(buf, 4)
    assert len(flags) == 4
    assert flags.translate(PRESENT_TABLE) == b"\1\0\0\1"
    assert flags.translate(DIRTY_TABLE) == b"\1\0\0\1"
    assert runs(flags.translate(PRESENT_TABLE)) == [(0, 1), (3, 1)]
    buf.close()


def test_pagemap_of_a_private_file_mapping(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 2 * PAGE_SIZE)
    with open(path, "r+b") as f:
        buf = mmap.mmap(f.fileno(), 2 * PAGE_SIZE, mmap.MAP_PRIVATE)
    assert buf[0] == ord("x")             # read: the page cache page, not a private copy
    buf[PAGE_SIZE] = ord("y")             # written: copied on write
    flags = _flags(buf, 2)
    assert flags.translate(PRESENT_TABLE) == b"\1\1"
    assert flags[0] & PM_FILE and not flags[1] & PM_FILE
    assert flags.translate(DIRTY_TABLE) == b"\0\1"
    buf.close()


def test_parse_timers_notify_kinds_and_values():
    text = ("ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.100\nClockID: 1\n"
            "ID: 1\nsignal: 34/ffffffffffffffff\nnotify: signal/tid.123\nClockID: 0\n"
            "ID: 2\nsignal: 32/00007f0012345678\nnotify: thread/pid.100\nClockID: 1\n"
            "ID: 3\nsignal: 0/0000000000000000\nnotify: none/pid.100\nClockID: 1\n")
    t = parse_timers(text)
    assert [(x["id"], x["notify"], x["tid"]) for x in t] == [(0, 0, 0), (1, 4, 123), (2, 2, 0),
                                                              (3, 1, 0)]
    assert t[1]["value"] == (1 << 64) - 1 and t[2]["value"] == 0x7F0012345678


def test_rlimits_of_another_process_agree_with_its_proc_limits():
    """prlimit's view, checked against the kernel's text (the oracle); infinity as the
    kernel stores it, not Python's -1."""
    import resource
    import subprocess
    p = subprocess.Popen(["sleep", "30"])
    try:
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (123, 456))
        resource.prlimit(p.pid, resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
        got = rlimits(p.pid)
        text = open(f"/proc/{p.pid}/limits").read().splitlines()[1:]
    finally:
        p.kill()
        p.wait()
    assert [r for r, _, _ in got] == list(range(16)) and len(text) == 16
    for (_, soft, hard), line in zip(got, text, strict=True):
        words = line[26:].split()        # after the name column
        want = [(1 << 64) - 1 if w == "unlimited" else int(w) for w in words[:2]]
        assert [soft, hard] == want, line
    assert got[resource.RLIMIT_NOFILE][1:] == (123, 456)

