"""The image file: format (grammar and numbers), model (what it holds), writer, reader."""

from .format import ChunkFlags, Codec, RecordType  # noqa: F401
from .reader import Chunk, Image  # noqa: F401
from .writer import ImageWriter  # noqa: F401
