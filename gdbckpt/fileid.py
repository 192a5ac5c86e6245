"""Identify the files that mappings came from, and tell whether one changed.

An ELF file is known by its size and GNU build-id; any other file by its
size and a hash of its whole content. mtime and inode are kept for `ckpt
info`, not for matching: a copy of the same library on another host matches.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

import msgspec
import xxhash

from .image.model import FileRef

_HASH_BLOCK = 8 << 20


ELF64_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
ELF64_PHDR = struct.Struct("<IIQQQQQQ")
NOTE_HEADER = struct.Struct("<III")
PT_NOTE, NT_GNU_BUILD_ID = 4, 3


def open_regular(path: str):
    """A regular file opened for reading, never blocking: a FIFO or a device named where
    a file was (in an image from someone else, say) is refused, not opened and waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def build_id(path: str) -> str | None:
    """The GNU build-id of a 64-bit little-endian ELF file as hex, or None.

    Read straight from the program headers and notes, a few hundred bytes:
    every save and restore asks this of every mapped file, and pyelftools
    takes tens of milliseconds for libc alone.
    """
    try:
        with open_regular(path) as f:
            return elf_build_id(lambda off, n: (f.seek(off), f.read(n))[1])
    except OSError:
        return None


def elf_build_id(read) -> str | None:
    """The build-id of the ELF image that read(offset, size) -> bytes gives, or None."""
    head = read(0, ELF64_HEADER.size)
    if len(head) < ELF64_HEADER.size or head[:6] != b"\x7fELF\x02\x01":
        return None
    fields = ELF64_HEADER.unpack(head)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    if phentsize != ELF64_PHDR.size or phnum > 4096:
        return None
    table = read(phoff, phentsize * phnum)
    for i in range(len(table) // phentsize):
        ptype, _, offset, _, _, filesz, _, _ = ELF64_PHDR.unpack_from(table, i * phentsize)
        if ptype == PT_NOTE and filesz < 1 << 16:
            found = _find_build_id(read(offset, filesz))
            if found:
                return found
    return None


def _find_build_id(notes: bytes) -> str | None:
    pos = 0
    while pos + NOTE_HEADER.size <= len(notes):
        namesz, descsz, ntype = NOTE_HEADER.unpack_from(notes, pos)
        name_at = pos + NOTE_HEADER.size
        desc_at = name_at + (-(-namesz // 4) * 4)
        if desc_at + descsz > len(notes):
            return None
        if ntype == NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == b"GNU\0":
            return notes[desc_at:desc_at + descsz].hex()
        pos = desc_at + (-(-descsz // 4) * 4)
    return None


def content_hash(path: str) -> str:
    h = xxhash.xxh3_128()
    with open_regular(path) as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


# (path, dev, ino, size, mtime_ns, ctime_ns) -> FileRef: a file that did not change is not
# read again (libc's build-id costs tens of ms through pyelftools).
_known: dict[tuple, FileRef] = {}


def identify(path: str) -> FileRef:
    st = os.stat(path)
    key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _known:
        bid = build_id(path)
        _known[key] = FileRef(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns,
                              ino=st.st_ino, dev=st.st_dev, build_id=bid,
                              hash=None if bid else content_hash(path))
    return msgspec.structs.replace(_known[key])


def check(ref: FileRef) -> str | None:
    """None when the file at ref.path still has the saved content, else why not."""
    try:
        st = os.stat(ref.path)
    except OSError as e:
        return f"{ref.path}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{ref.path}: not a regular file now"
    if st.st_size != ref.size:
        return f"{ref.path}: size is {st.st_size}, was {ref.size}"
    if ref.build_id is not None:
        now = build_id(ref.path)
        if now != ref.build_id:
            return f"{ref.path}: build-id is {now}, was {ref.build_id}"
        return None
    if (st.st_mtime_ns, st.st_ino, st.st_dev) == (ref.mtime_ns, ref.ino, ref.dev):
        return None
    try:
        if content_hash(ref.path) != ref.hash:
            return f"{ref.path}: content changed"
    except OSError as e:
        return f"{ref.path}: {e.strerror}"
    return None
