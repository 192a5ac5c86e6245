"""Symbols of the files a process maps, read with pyelftools: what the engine needs of libc.

glibc describes its own thread descriptor to libthread_db with
`_thread_db_*` symbols (size, count, offset): the offset of `tid` in
struct pthread comes from there, not from a hard-coded number.
"""

from __future__ import annotations

import struct

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..errors import CkptError
from ..maps import Kind

TID_DESCRIPTOR = "_thread_db_pthread_tid"


def symbol(path: str, name: str) -> tuple[int, bool] | None:
    """(st_value, is the file position-independent) of name in path's symbol tables.

    The GNU hash table first: it finds a name without decoding every symbol
    (libc has 3000; decoding them all costs a save 0.17 s).
    """
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            pie = elf["e_type"] == "ET_DYN"
            hashed = elf.get_section_by_name(".gnu.hash")
            if hasattr(hashed, "get_symbol"):
                found = hashed.get_symbol(name)
                return (found["st_value"], pie) if found else None
            for table in (".dynsym", ".symtab"):
                sec = elf.get_section_by_name(table)
                if sec is None:
                    continue
                found = sec.get_symbol_by_name(name)
                if found:
                    return found[0]["st_value"], pie
    except (OSError, ELFError, ValueError, struct.error):
        return None
    return None


def address_of(proc, name: str) -> int | None:
    """Where name lies in proc: searched in each mapped file that holds code."""
    seen = set()
    # libc first: it is where glibc's own symbols are, and files are slow to scan.
    for m in sorted(proc.maps(), key=lambda m: "libc.so" not in m.path):
        if m.kind not in (Kind.FILE, Kind.DELETED) or not m.path.startswith("/") \
                or m.path in seen:
            continue
        seen.add(m.path)
        found = symbol(m.path, name)
        if found is None:
            continue
        value, pie = found
        base = min(x.start - x.offset for x in proc.maps() if x.path == m.path)
        return base + value if pie else value
    return None


def tid_offset(proc) -> int | None:
    """offsetof(struct pthread, tid), from libc's descriptor for libthread_db."""
    addr = address_of(proc, TID_DESCRIPTOR)
    if addr is None:
        return None
    try:
        bits, count, offset = struct.unpack("<III", proc.read(addr, 12))
    except CkptError:
        return None
    return offset if bits == 32 and count == 1 and offset < 4096 else None
