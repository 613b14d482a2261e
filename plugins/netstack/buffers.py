"""What every parser accepts, and the byte view it works on.

Parsers take any bytes-like object (:data:`Buffer`) and read it through
:func:`view`, a one-dimensional, byte-format :class:`memoryview`. Payloads
they return are slices of that view: no copy is made, the parsed value
*borrows* the caller's buffer. The caller owns the buffer; a payload stays
valid only while the buffer is unchanged (``bytes(payload)`` keeps a copy).
Addresses, options and other small fields are returned as ``bytes``
(copies, hashable).
"""

from __future__ import annotations

from typing import TypeAlias

Buffer: TypeAlias = "bytes | bytearray | memoryview"
"""What parsers and checksum functions accept."""


def view(data: Buffer) -> memoryview:
    """``data`` as a flat byte :class:`memoryview` (no copy)."""
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv
