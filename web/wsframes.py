"""WebSocket data frames (RFC 6455 §5.2) for the hub's batched writes.

aiohttp writes one frame per ``send_str`` call, i.e. one system call per message.  The hub
instead frames every message waiting for a socket and writes them with one
``transport.write``.  Server-to-client frames are unmasked, unfragmented (FIN set) and
uncompressed (RSV1 clear — valid even when permessage-deflate was negotiated, RFC 7692 §6).
"""
from __future__ import annotations

import struct

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2

_LEN1 = struct.Struct("!BB")
_LEN2 = struct.Struct("!BBH")
_LEN3 = struct.Struct("!BBQ")


def encode_frame(message: str | bytes) -> bytes:
    """One complete frame: a text frame for ``str``, a binary frame for ``bytes``."""
    if isinstance(message, str):
        payload, opcode = message.encode("utf-8"), OPCODE_TEXT
    else:
        payload, opcode = bytes(message), OPCODE_BINARY
    first = 0x80 | opcode
    length = len(payload)
    if length < 126:
        header = _LEN1.pack(first, length)
    elif length < 1 << 16:
        header = _LEN2.pack(first, 126, length)
    else:
        header = _LEN3.pack(first, 127, length)
    return header + payload
