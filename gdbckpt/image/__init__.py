"""The image file: format (grammar and numbers), model (what it holds), writer, reader.

The reader and writer load when first named: a save needs no reader, a restore no
writer, and a command-line tool pays for every import at each start.
"""

from .format import ChunkFlags, Codec, RecordType  # noqa: F401

_LAZY = {"Chunk": ".reader", "Image": ".reader", "ImageWriter": ".writer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
