"""Identify the files that mappings came from, and tell whether one changed.

An ELF file is known by its size and GNU build-id; any other file by its
size and a hash of its whole content. mtime and inode are kept for `ckpt
info`, not for matching: a copy of the same library on another host matches.
"""

from __future__ import annotations

import dataclasses
import os

import xxhash

from .image.model import FileRef

_HASH_BLOCK = 8 << 20


def build_id(path: str) -> str | None:
    """The GNU build-id of an ELF file as hex, or None."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
            f.seek(0)
            elf = ELFFile(f)
            for seg in elf.iter_segments("PT_NOTE"):
                for note in seg.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return note["n_desc"]
    except (OSError, ELFError, ValueError, KeyError):
        return None
    return None


def content_hash(path: str) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
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
    return dataclasses.replace(_known[key])


def check(ref: FileRef) -> str | None:
    """None when the file at ref.path still has the saved content, else why not."""
    try:
        st = os.stat(ref.path)
    except OSError as e:
        return f"{ref.path}: {e.strerror}"
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
