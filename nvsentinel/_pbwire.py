"""The two protobuf wire-format encoders both the store twin and the API framing need."""
from __future__ import annotations


def varint(n: int) -> bytes:
    """An unsigned varint (tags, lengths, resource versions)."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    """One length-delimited field (a sub-message, string or bytes) numbered `field`."""
    return bytes(((field << 3) | 2,)) + varint(len(payload)) + payload
