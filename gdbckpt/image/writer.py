"""Write an image: chunks as the memory is read, metadata and trailer at the end.

The image goes to a temporary file in the target directory, created 0600,
and is renamed over the target only when complete, so an existing image is
never lost to a failed save and no reader ever sees half an image.
"""

from __future__ import annotations

import os
import threading
import time

import msgspec

from ..errors import SaveError
from ..libc import libc
from . import format as fmt
from .model import encode

_PAD = bytes(fmt.IMAGE_PAGE_SIZE)


class Prepared(msgspec.Struct):
    """A chunk ready to be written: its payload (possibly compressed) and checksum."""
    payload: object       # a buffer
    size: int             # bytes of memory it stands for
    codec: int              # fmt.Codec
    csum: int


def _pad_len(n: int) -> int:
    return -n % fmt.IMAGE_PAGE_SIZE


RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    fn = getattr(libc(), "renameat2", None)
    if fn is None:
        return False
    return fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


STALE_AFTER = 60      # seconds: a temporary file older than this, of a saver that is gone


def _retire(old: str, new: str) -> None:
    """Remove the old image once the new one is on disk, not before: until then a crash
    (a power cut) may leave the new one's blocks unwritten, and the old one must survive.
    A detached job does it (the saver may exit first): the new image's data and the
    directory flushed, then the old image removed."""
    import subprocess
    script = 'sync --data "$1" && sync "$2" && rm -f "$3"'
    try:
        subprocess.Popen(["sh", "-c", script, "gdbckpt-retire", new, os.path.dirname(new), old],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError:
        pass        # the old image stays at its temporary name: removed by a later save


def _remove_stale(directory: str, base: str, keep=frozenset()) -> None:
    """Temporary files of savers that died (or old images kept after a crash) for this
    image: removed once their saver is gone and they are a minute old."""
    prefix = f".{base}.tmp-"
    try:
        names = [n for n in os.listdir(directory or ".") if n.startswith(prefix)]
    except OSError:
        return
    now = time.time()
    for name in names:
        pid = name[len(prefix):].split("-", 1)[0]
        path = os.path.join(directory, name)
        if path in keep:
            continue
        try:
            if (pid.isdigit() and os.path.exists(f"/proc/{pid}")) or \
                    now - os.lstat(path).st_ctime < STALE_AFTER:     # ctime: renamed
                continue
            os.unlink(path)
        except OSError:
            continue


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class ImageWriter:
    """Use as a context manager; call commit() to finish, else the file is removed."""

    def __init__(self, path: str, *, sync: bool = False, compressor=None):
        """sync: fsync before the rename. compressor: a zstandard.ZstdCompressor or None."""
        self.path = os.path.abspath(path)
        self.sync = sync
        self.compressor = compressor       # zstandard.ZstdCompressor or None
        self.created_ns = time.time_ns()
        self.chunks: list[tuple] = []      # CHUNK_ENTRY tuples
        self.records: list[bytes] = []
        self.flags = fmt.ImageFlags.NONE
        self.committed = False
        self.trim = False                  # the file may run past what commit() writes
        self.offset = fmt.HEADER_SIZE
        d, base = os.path.split(self.path)
        if os.path.isdir(self.path):
            raise SaveError(f"'{path}' is a directory; give a file name for the image")
        self.tmp = os.path.join(d, f".{base}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SaveError(f"cannot create an image in '{d}': {e.strerror}") from None
        try:
            self._seek(self.offset)
        except BaseException:       # a Ctrl-C, even: the caller has no writer to abort
            self.abort()
            raise

    def reserve(self, size: int) -> None:
        """Allocate the blocks for size more bytes of chunks ahead: ext4 then writes ~20%
        faster here. Best effort, and safe while another thread writes chunks (the
        blocks from an offset it has passed are already there); commit() trims the
        file to what was written."""
        try:
            os.posix_fallocate(self.fd, self.offset, size)
            self.trim = True
        except OSError:
            pass

    # -- chunk area ---------------------------------------------------------

    def prepare_chunk(self, data, compress: bool = True) -> Prepared:
        """Compress (when asked and worth it) and checksum data. Touches no shared state but
        the compressor: one thread may prepare while another writes with put_chunk()."""
        size = len(data)
        codec, payload = fmt.Codec.NONE, data
        if self.compressor is not None and compress:
            packed = self.compressor.compress(data)
            if len(packed) + _pad_len(len(packed)) < size:
                codec, payload = fmt.Codec.ZSTD, packed
        pad = _pad_len(len(payload))
        h = fmt.Hasher()
        h.update(payload)
        if pad:
            h.update(_PAD[:pad])
        return Prepared(payload, size, codec, h.intdigest())

    def put_chunk(self, vaddr: int, p: Prepared, flags: int) -> int:
        """Write a prepared chunk at the end of the chunk area; returns its index."""
        stored = len(p.payload)
        pad = _pad_len(stored)
        self._write(p.payload)
        if pad:
            self._write(_PAD[:pad])
        if p.codec != fmt.Codec.NONE:
            self.flags |= fmt.ImageFlags.COMPRESSED
        self.chunks.append((vaddr, p.size, self.offset, stored, int(flags), int(p.codec), p.csum))
        self.offset += stored + pad
        return len(self.chunks) - 1

    def add_chunk(self, vaddr: int, data, flags: int) -> int:
        """Store data (whole pages of memory saved from vaddr; or, with FILE_DATA, the
        bytes of a file at offset vaddr). Returns the chunk's index. A file's bytes are
        never compressed: the stub copies them into the recreated file as they are."""
        compress = not flags & fmt.ChunkFlags.FILE_DATA
        return self.put_chunk(vaddr, self.prepare_chunk(data, compress), flags)

    def add_written_chunk(self, vaddr: int, size: int, offset: int, csum: int,
                          flags: int) -> None:
        """A chunk someone else wrote at offset in the chunk area (engine/selfdump.py),
        with its checksum; whole pages, so no padding."""
        self.chunks.append((vaddr, size, offset, size, int(flags), int(fmt.Codec.NONE), csum))

    def advance(self, size: int) -> None:
        """The chunk area grew by size bytes written by someone else: append after them."""
        self.offset += size
        self._seek(self.offset)

    def add_zero_chunk(self, vaddr: int, size: int, flags: int) -> None:
        """Pages that are all zero but must still be written (over a file mapping)."""
        self.chunks.append((vaddr, size, 0, 0, int(flags | fmt.ChunkFlags.ZERO), 0, 0))

    # -- metadata -----------------------------------------------------------

    def add_record(self, rtype: int, obj, flags=fmt.RecordFlags.NONE) -> None:
        payload = obj if isinstance(obj, bytes) else encode(obj)
        head = fmt.RECORD_HEADER.pack(int(rtype), int(flags), len(payload), fmt.checksum(payload))
        self.records.append(head + payload)

    def commit(self) -> str:
        """Write metadata, trailer and header, then rename into place."""
        table = b"".join(fmt.CHUNK_ENTRY.pack(*c) for c in self.chunks)
        self.add_record(fmt.RecordType.CHUNKS, table)
        meta = b"".join(self.records)
        meta_offset = self.offset
        self._write(meta)
        header = self._header()
        file_size = meta_offset + len(meta) + fmt.TRAILER_SIZE
        image_csum = fmt.checksum(header + meta)
        trailer = fmt.TRAILER.pack(fmt.TRAILER_MAGIC, fmt.FORMAT_VERSION, len(self.records),
                                   meta_offset, len(meta), file_size, image_csum, 0)
        self._write(trailer + fmt.checksum(trailer).to_bytes(8, "little"))
        self._pwrite(header, 0)
        try:
            if self.trim:
                os.ftruncate(self.fd, file_size)
            if self.sync:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            old = self._replace()
            if self.sync:
                self._sync_dir()
        except OSError as e:
            raise SaveError(f"cannot finish '{self.path}': {e.strerror}") from None
        self.committed = True
        # Only once the new image is in place: until then an old one kept after a crash
        # may be the only good image there is.
        _remove_stale(*os.path.split(self.path), keep={old})
        if old and self.sync:
            # Freeing a large old image takes as long as writing one: not while the user waits.
            threading.Thread(target=_unlink_quietly, args=(old,), daemon=True).start()
        elif old:
            _retire(old, self.path)
        return self.path

    def _replace(self) -> str | None:
        """Put the new image in place atomically; returns the old image's new name, if any.

        Over an existing image, an exchange (renameat2 RENAME_EXCHANGE) rather than a
        rename: ext4 flushes a file renamed over another before the rename returns
        (auto_da_alloc), 0.3-0.6 s for 512 MiB here; the old image then ends up at the
        temporary name, and is removed once the new one is on disk (_retire).
        """
        if os.path.exists(self.path) and _exchange(self.tmp, self.path):
            return self.tmp
        os.rename(self.tmp, self.path)
        return None

    def abort(self) -> None:
        """Remove the temporary file; nothing once committed (the name may then be the old
        image's, kept until the new one is on disk)."""
        if self.committed:
            return
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            self.abort()
        return False

    # -- plumbing -----------------------------------------------------------

    def _header(self) -> bytes:
        head = fmt.HEADER.pack(fmt.MAGIC, fmt.FORMAT_VERSION, fmt.HEADER_SIZE, fmt.EM_X86_64,
                               fmt.IMAGE_PAGE_SIZE, int(fmt.CsumAlgo.XXH3_64), int(self.flags),
                               self.created_ns)
        head = head.ljust(fmt.HEADER_CSUM_AT, b"\0")
        return head + fmt.checksum(head).to_bytes(8, "little")

    def _write(self, data) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as e:
            raise SaveError(f"writing '{self.path}' failed: {e.strerror}") from None

    def _pwrite(self, data: bytes, offset: int) -> None:
        try:
            os.pwrite(self.fd, data, offset)
        except OSError as e:
            raise SaveError(f"writing '{self.path}' failed: {e.strerror}") from None

    def _seek(self, offset: int) -> None:
        os.lseek(self.fd, offset, os.SEEK_SET)

    def _sync_dir(self) -> None:
        dfd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
