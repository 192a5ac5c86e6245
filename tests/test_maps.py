"""maps/smaps parsing and classification, on fixed lines and on this process's own /proc."""

import mmap
import os

import pytest
from harness import address_of

from gdbckpt.errors import SaveError
from gdbckpt.linux import Prot
from gdbckpt.maps import Kind, classify, find_gap, parse_line, parse_maps, parse_smaps

PAD = " " * 20


def line(perms, dev, inode, path, start="7f0000000000", end="7f0000002000", offset="00000000"):
    return f"{start}-{end} {perms} {offset} {dev} {inode}{PAD}{path}"


@pytest.mark.parametrize("text, kind, path", [
    (line("r-xp", "fe:00", 338944, "/usr/lib/x86_64-linux-gnu/libc.so.6"), Kind.FILE,
     "/usr/lib/x86_64-linux-gnu/libc.so.6"),
    (line("r--p", "fe:00", 12, "/home/me/my lib (v2).so"), Kind.FILE, "/home/me/my lib (v2).so"),
    (line("rw-s", "fe:00", 12, "/var/db/data file"), Kind.FILE_SHARED, "/var/db/data file"),
    (line("r-xp", "fe:00", 12, "/usr/bin/prog (deleted)"), Kind.DELETED,
     "/usr/bin/prog (deleted)"),
    (line("rw-s", "fe:00", 12, "/tmp/gone (deleted)"), Kind.SHMEM, "/tmp/gone (deleted)"),
    (line("rw-p", "00:00", 0, "[heap]"), Kind.ANON, "[heap]"),
    (line("rw-p", "00:00", 0, "[stack]"), Kind.ANON, "[stack]"),
    (line("r-xp", "00:00", 0, "[vdso]"), Kind.VDSO, "[vdso]"),
    (line("r--p", "00:00", 0, "[vvar]"), Kind.VVAR, "[vvar]"),
    (line("r--p", "00:00", 0, "[vvar_vclock]"), Kind.VVAR_VCLOCK, "[vvar_vclock]"),
    (line("--xp", "00:00", 0, "[vsyscall]", "ffffffffff600000", "ffffffffff601000"),
     Kind.VSYSCALL, "[vsyscall]"),
    (line("r-xp", "00:00", 0, "[uprobes]"), Kind.SPECIAL, "[uprobes]"),
    (line("rw-p", "00:00", 0, "[anon:my arena]"), Kind.ANON, "[anon:my arena]"),
    (line("rw-s", "00:01", 0, "[anon_shmem:ring]"), Kind.SHMEM, "[anon_shmem:ring]"),
    (line("rw-s", "00:01", 1062, "/dev/zero (deleted)"), Kind.SHMEM, "/dev/zero (deleted)"),
    (line("rw-s", "00:01", 0, "/SYSV00000000 (deleted)"), Kind.SHMEM, "/SYSV00000000 (deleted)"),
    (line("rw-s", "00:01", 7, "/SYSV0000abcd (deleted)"), Kind.SHMEM, "/SYSV0000abcd (deleted)"),
    (line("rw-s", "00:01", 1059, "/memfd:x (deleted)"), Kind.SHMEM, "/memfd:x (deleted)"),
    (line("rw-p", "00:01", 1059, "/memfd:my mem (deleted)"), Kind.DELETED,
     "/memfd:my mem (deleted)"),
    (line("rw-s", "00:00", 0, ""), Kind.SHMEM, ""),
    (line("rw-p", "00:00", 0, ""), Kind.ANON, ""),
    ("7f0000000000-7f0000002000 rw-p 00000000 00:00 0 ", Kind.ANON, ""),
])
def test_parse_line(text, kind, path):
    m = parse_line(text + "\n")
    assert (m.kind, m.path) == (kind, path)
    assert m.start < m.end and m.size == m.end - m.start
    assert m.perms == text.split()[1]


def test_fields():
    m = parse_line("55d0c1a00000-55d0c1a21000 r-xs 0001f000 fe:01 260811   /usr/bin/a b")
    assert (m.start, m.end, m.offset, m.dev, m.inode) == (
        0x55D0C1A00000, 0x55D0C1A21000, 0x1F000, "fe:01", 260811)
    assert m.prot == Prot.READ | Prot.EXEC and m.shared
    assert m.file_path == "/usr/bin/a b"
    assert m.describe() == "0x55d0c1a00000-0x55d0c1a21000 r-xs /usr/bin/a b"


def test_file_path_and_anon_name():
    assert parse_line(line("rw-p", "00:00", 0, "[heap]")).file_path is None
    assert parse_line(line("r-xp", "fe:00", 1, "/x (deleted)")).file_path is None
    assert parse_line(line("rw-p", "00:00", 0, "[anon:my arena]")).anon_name == "my arena"
    assert parse_line(line("rw-s", "00:01", 0, "[anon_shmem:ring]")).anon_name == "ring"
    assert parse_line(line("rw-p", "00:00", 0, "[heap]")).anon_name is None


def test_classify():
    assert classify("", False, 0) == Kind.ANON
    assert classify("", True, 0) == Kind.SHMEM
    assert classify("[stack:1234]", False, 0) == Kind.ANON
    assert classify("/lib/a.so", False, 5) == Kind.FILE
    assert classify("/lib/a.so", True, 5) == Kind.FILE_SHARED


def test_unparsable_line():
    with pytest.raises(SaveError, match="cannot parse maps line"):
        parse_line("not a maps line")


def test_parse_maps_skips_blank_lines():
    text = "\n".join([line("rw-p", "00:00", 0, "[heap]"), "", line("r-xp", "00:00", 0, "[vdso]"),
                      ""])
    assert [m.kind for m in parse_maps(text)] == [Kind.ANON, Kind.VDSO]


SMAPS = """\
7ffd0ad13000-7ffd0ad34000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
VmFlags: rd wr mr mw me gd ac
7f7ce7874000-7f7ce7876000 r--p 00000000 00:00 0                          [vvar_vclock]
Size:                  8 kB
THPeligible:           0
VmFlags: rd mr pf io de dd
7f0000000000-7f0000001000 r--p 00000000 fe:00 12                         /data/Size: 1 kB
Size:                  4 kB
"""


def test_parse_smaps_vmflags():
    stack, vclock, odd = parse_smaps(SMAPS)
    assert stack.vmflags == ("rd", "wr", "mr", "mw", "me", "gd", "ac")
    assert vclock.kind == Kind.VVAR_VCLOCK and "dd" in vclock.vmflags
    assert odd.path == "/data/Size: 1 kB" and odd.vmflags == ()


def _read_consistent():
    """maps and smaps of this process, read until maps did not change around the smaps read."""
    for _ in range(20):
        with open("/proc/self/maps") as f:
            before = f.read()
        with open("/proc/self/smaps") as f:
            smaps = f.read()
        with open("/proc/self/maps") as f:
            after = f.read()
        if before == after:
            return before, smaps
    pytest.fail("/proc/self/maps kept changing")


def test_live_smaps_agrees_with_maps():
    maps_text, smaps_text = _read_consistent()
    from_maps, from_smaps = parse_maps(maps_text), parse_smaps(smaps_text)
    key = lambda m: (m.start, m.end, m.perms, m.offset, m.dev, m.inode, m.path, m.kind)
    assert [key(m) for m in from_smaps] == [key(m) for m in from_maps]
    assert all(m.vmflags for m in from_smaps)
    assert all(("rd" in m.vmflags) == bool(m.prot & Prot.READ) for m in from_smaps)
    kinds = {m.path: m.kind for m in from_smaps if m.path.startswith("[")}
    assert kinds["[stack]"] == Kind.ANON and kinds["[vdso]"] == Kind.VDSO
    assert "gd" in next(m for m in from_smaps if m.path == "[stack]").vmflags
    exe = os.readlink("/proc/self/exe")
    assert any(m.kind == Kind.FILE and m.path == exe for m in from_smaps)


def _live_mapping(addr):
    with open("/proc/self/smaps") as f:
        return next(m for m in parse_smaps(f.read()) if m.start <= addr < m.end)


def test_live_kinds(tmp_path):
    """The kernel's own lines for mappings this test makes are classified as expected."""
    spaced = tmp_path / "a file"
    spaced.write_bytes(b"x" * 8192)
    memfd = os.memfd_create("my mem")
    os.ftruncate(memfd, 8192)
    zero = os.open("/dev/zero", os.O_RDWR)
    made = []
    try:
        with open(spaced, "r+b") as f:
            made += [(mmap.mmap(f.fileno(), 8192, mmap.MAP_PRIVATE), Kind.FILE, str(spaced)),
                     (mmap.mmap(f.fileno(), 8192, mmap.MAP_SHARED), Kind.FILE_SHARED,
                      str(spaced))]
        made += [(mmap.mmap(-1, 8192, mmap.MAP_PRIVATE), Kind.ANON, None),
                 (mmap.mmap(-1, 8192, mmap.MAP_SHARED), Kind.SHMEM, "/dev/zero (deleted)"),
                 (mmap.mmap(zero, 8192, mmap.MAP_SHARED), Kind.SHMEM, "/dev/zero (deleted)"),
                 (mmap.mmap(memfd, 8192, mmap.MAP_SHARED), Kind.SHMEM,
                  "/memfd:my mem (deleted)"),
                 (mmap.mmap(memfd, 8192, mmap.MAP_PRIVATE), Kind.DELETED,
                  "/memfd:my mem (deleted)")]
        for buf, kind, path in made:
            m = _live_mapping(address_of(buf))
            assert m.kind == kind, m.describe()
            if path is not None:
                assert m.path == path
    finally:
        for buf, _, _ in made:
            buf.close()
        os.close(memfd)
        os.close(zero)


def test_find_gap():
    taken = [(0x3000, 0x5000), (0x1000, 0x2000), (0x6000, 0x8000)]
    assert find_gap(taken, 0x1000, 0x0, 0x10000) == 0x0
    assert find_gap(taken, 0x1000, 0x1000, 0x10000) == 0x2000
    assert find_gap(taken, 0x2000, 0x1000, 0x10000) == 0x8000
    assert find_gap(taken, 0x1000, 0x4000, 0x10000) == 0x5000
    assert find_gap([(0x1000, 0x9000), (0x2000, 0x3000)], 0x1000, 0x1000, 0x10000) == 0x9000
    assert find_gap([], 0x1000, 0x5000, 0x6000) == 0x5000
    with pytest.raises(ValueError, match="no free"):
        find_gap(taken, 0x3000, 0x1000, 0x9000)
