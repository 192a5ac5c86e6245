"""Parse /proc/PID/maps and smaps and sort each mapping into what a restore must do.

Plain Python: works on text, so tests can feed it any maps line.
"""

from __future__ import annotations

import re

import msgspec

from .errors import SaveError
from .image.kinds import Kind
from .linux import perms_of, prot_of_perms

_LINE = re.compile(
    r"^(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+) (?P<perms>[rwxsp-]{4}) (?P<offset>[0-9a-f]+) "
    r"(?P<dev>[0-9a-f]+:[0-9a-f]+) (?P<inode>\d+)\s*(?P<path>.*)$")


SPECIALS = {
    "[vdso]": Kind.VDSO,
    "[vvar]": Kind.VVAR,
    "[vvar_vclock]": Kind.VVAR_VCLOCK,
    "[vsyscall]": Kind.VSYSCALL,
}
# Kinds whose memory the image holds.
STORED_KINDS = {Kind.ANON, Kind.FILE, Kind.FILE_SHARED, Kind.SHMEM, Kind.DELETED, Kind.VDSO}


class Mapping(msgspec.Struct):
    start: int
    end: int
    prot: int             # linux.Prot bits
    shared: bool
    offset: int
    dev: str
    inode: int
    path: str              # as /proc shows it: a path, "[heap]", "" or "... (deleted)"
    kind: Kind
    vmflags: tuple[str, ...] = ()
    resident: int | None = None   # smaps Rss + Swap in bytes; None when read from maps

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def perms(self) -> str:
        return perms_of(self.prot) + ("s" if self.shared else "p")

    @property
    def file_path(self) -> str | None:
        """The file to reopen at restore, or None when there is none."""
        return self.path if self.kind in (Kind.FILE, Kind.FILE_SHARED) else None

    @property
    def anon_name(self) -> str | None:
        """The name a program gave with PR_SET_VMA_ANON_NAME, if any."""
        m = re.fullmatch(r"\[anon(?:_shmem)?:(.*)\]", self.path)
        return m.group(1) if m else None

    def describe(self) -> str:
        return f"{self.start:#x}-{self.end:#x} {self.perms} {self.path or '[anon]'}"


def classify(path: str, shared: bool, inode: int) -> Kind:
    if path in SPECIALS:
        return SPECIALS[path]
    if path.startswith("[") and path.endswith("]"):
        if path in ("[heap]", "[stack]") or path.startswith(("[anon:", "[stack:")):
            return Kind.ANON
        if path.startswith("[anon_shmem:"):
            return Kind.SHMEM
        return Kind.SPECIAL
    if path == "" or inode == 0:
        return Kind.SHMEM if shared else Kind.ANON
    if path.startswith(("/SYSV", "/dev/zero", "/memfd:")) or path.endswith(" (deleted)"):
        return Kind.SHMEM if shared else Kind.DELETED
    return Kind.FILE_SHARED if shared else Kind.FILE


def parse_line(line: str) -> Mapping:
    m = _LINE.match(line.rstrip("\n"))
    if not m:
        raise SaveError(f"cannot parse maps line: {line!r}")
    perms = m.group("perms")
    shared = perms[3] == "s"
    inode = int(m.group("inode"))
    path = m.group("path")
    return Mapping(start=int(m.group("start"), 16), end=int(m.group("end"), 16),
                   prot=prot_of_perms(perms), shared=shared, offset=int(m.group("offset"), 16),
                   dev=m.group("dev"), inode=inode, path=path,
                   kind=classify(path, shared, inode))


def parse_maps(text: str) -> list[Mapping]:
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def parse_smaps(text: str) -> list[Mapping]:
    """Mappings from smaps, each with its VmFlags (gd = grows down, dd = dontdump, ...)."""
    out: list[Mapping] = []
    for line in text.splitlines():
        if _LINE.match(line):
            out.append(parse_line(line))
        elif line.startswith("VmFlags:") and out:
            out[-1].vmflags = tuple(line.split()[1:])
        elif line.startswith(("Rss:", "Swap:")) and out:
            out[-1].resident = (out[-1].resident or 0) + int(line.split()[1]) * 1024
    return out


def read_mappings(pid: int, vmflags: bool = True) -> list[Mapping]:
    """The live mappings of pid; with vmflags, from smaps (which costs a walk of the
    page tables: several ms for a large process), else from maps."""
    name = "smaps" if vmflags else "maps"
    try:
        with open(f"/proc/{pid}/{name}") as f:
            text = f.read()
    except OSError as e:
        raise SaveError(f"cannot read /proc/{pid}/{name}: {e.strerror}") from None
    return parse_smaps(text) if vmflags else parse_maps(text)


def find_gap(taken: list[tuple[int, int]], size: int, lo: int, hi: int) -> int:
    """The lowest address in [lo, hi) where size bytes overlap nothing in taken."""
    addr = lo
    for s, e in sorted(taken):
        if e <= addr:
            continue
        if s >= addr + size:
            break
        addr = e
    if addr + size > hi:
        raise ValueError(f"no free {size:#x} bytes between {lo:#x} and {hi:#x}")
    return addr
