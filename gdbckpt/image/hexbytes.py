"""The type of an image's bytes fields."""


class Hex(bytes):
    """Bytes that an image stores as a hex string (model.encode and model.decode). A plain
    bytes value may stand in for one anywhere; decoding gives a Hex."""
