"""The gdbckpt image format, version 3. docs/image-format.md says the same in prose.

Grammar (all integers little-endian; u32/u64 unsigned)::

    image      := header chunk-area metadata trailer

    header     := 4096 bytes at offset 0
                  magic       8s   b"GDBCKPT\\0"
                  version     u32  FORMAT_VERSION
                  header_size u32  4096
                  machine     u32  62 (EM_X86_64)
                  page_size   u32  4096
                  csum_algo   u32  CsumAlgo
                  flags       u32  ImageFlags
                  created_ns  u64  when the save began (Unix time, ns)
                  zero bytes up to offset 4088
                  header_csum u64  checksum of bytes [0, 4088)

    chunk-area := chunk-data*     from offset 4096 up to meta_offset, with no gaps:
                                  every chunk-data starts on a page boundary at the
                                  offset its CHUNKS entry names and is followed by
                                  zero bytes up to the next page boundary; the
                                  entry's checksum covers those bytes too. An
                                  uncompressed chunk is exactly the saved pages,
                                  so a lazy restore can mmap it from the image.

    metadata   := record*         from meta_offset, meta_length bytes
    record     := type u32 (RecordType), flags u32 (RecordFlags),
                  length u64, csum u64 (checksum of the payload), payload
                  Payloads are UTF-8 JSON objects (image/model.py gives every
                  field) except CHUNKS, an array of CHUNK_ENTRY.

    trailer    := 64 bytes, the last of the file
                  magic       8s   b"GDBCEND\\0"
                  version     u32  FORMAT_VERSION
                  nrecords    u32
                  meta_offset u64
                  meta_length u64
                  file_size   u64  the whole image, trailer included
                  image_csum  u64  checksum of header bytes + metadata bytes (the
                                   metadata holds every chunk's checksum)
                  reserved    u64  zero
                  trailer_csum u64 checksum of trailer bytes [0, 56)

A reader checks header, trailer, sizes and every metadata checksum before it
trusts any field, and bounds every length by what the file holds.
"""

from __future__ import annotations

import struct

import xxhash

from ..linux import (
    EM_X86_64,  # noqa: F401  (re-exported: the header names the machine)
    constants,
    names,
)

MAGIC = b"GDBCKPT\0"
TRAILER_MAGIC = b"GDBCEND\0"
FORMAT_VERSION = 3
# Version 1 (gdbckpt 0.1) kept registers under GDB's names: a restore refuses it.
# Version 2 is read as 3: it only never has holes between chunks (3 may: a gdbckpt that
# reads no more than 2 refuses them as a newer format, not as corrupt).
OLDEST_VERSION = 2
MADE_BY = {1: "gdbckpt 0.1"}
HEADER_SIZE = 4096
IMAGE_PAGE_SIZE = 4096

HEADER = struct.Struct("<8sIIIIIIQ")
HEADER_CSUM_AT = HEADER_SIZE - 8
TRAILER = struct.Struct("<8sIIQQQQQ")
TRAILER_SIZE = TRAILER.size + 8
RECORD_HEADER = struct.Struct("<IIQQ")
# vaddr, size (bytes of memory), offset (in the image), stored (bytes in the
# image before padding), flags (ChunkFlags), codec (Codec), csum. A FILE_DATA
# chunk holds file bytes instead: vaddr is the offset in the file.
CHUNK_ENTRY = struct.Struct("<QQQQIIQ")


# The writer makes chunks of at most 4 MiB (one read of memory or of a file); a
# reader refuses larger claims, so no chunk makes it allocate more than this.
MAX_CHUNK_SIZE = 64 << 20


class CsumAlgo:
    """The header's and records' numbers are plain ints, as linux.py's are."""
    XXH3_64 = 1   # 18 GB/s here against 3.6 GB/s for zlib's crc32 (benchmarks/)


class ImageFlags:
    NONE = 0
    COMPRESSED = 1   # some chunk has a codec other than NONE


class RecordType:
    PROCESS = 1   # model.ProcessInfo: identity, mm bounds, auxv, signals
    THREAD = 2    # model.ThreadState: one per thread, the leader first
    VMAS = 3      # {"vmas": [model.Vma]}: every mapping, in address order
    FILES = 4     # {"files": [model.FileRef]}: files that mappings came from
    CHUNKS = 5    # CHUNK_ENTRY array: where every stored page range lies
    VDSO = 6      # model.VdsoInfo: vDSO/vvar layout and identity
    FDS = 7       # {"fds": [model.FdInfo]}: open file descriptors
    NOTES = 8     # {"notes": [str]}: what the save could not capture
    MEMBER = 9    # model.Member: another process of the saved tree; the records up to
                  # the next MEMBER are its own (the root's come first, with none)


class RecordFlags:
    NONE = 0
    OPTIONAL = 1   # a reader that does not know the type may skip the record


class ChunkFlags:
    NONE = 0
    DIRTY = 1   # differs from the backing file (always set for anonymous memory)
    ZERO = 2    # all zero: no bytes stored; only written over a file mapping
    FILE_DATA = 4   # not memory: bytes of a file (a deleted open file); vaddr is the
                    # offset in that file and size any length. FdInfo.data names them.


class Codec:
    NONE = 0
    ZSTD = 1


CSUM_ALGOS = frozenset(constants(CsumAlgo).values())
RECORD_NAMES = names(RecordType)     # type -> name
CODEC_NAMES = names(Codec)
_CHUNK_FLAGS = tuple((k, v) for k, v in constants(ChunkFlags).items() if v)


def chunk_flag_names(flags: int) -> str:
    """DIRTY|ZERO, or NONE."""
    return "|".join(k for k, v in _CHUNK_FLAGS if v & flags) or "NONE"


def checksum(data) -> int:
    return xxhash.xxh3_64_intdigest(data)


class Hasher:
    """Incremental checksum over several buffers."""

    def __init__(self):
        self._h = xxhash.xxh3_64()

    def update(self, data) -> None:
        self._h.update(data)

    def intdigest(self) -> int:
        return self._h.intdigest()
