"""Time-ordered UUIDs (RFC 9562 version 7) so primary keys sort in insertion order.

Keyset pagination then needs a single column, and B-tree inserts stay local. Within one
process ids are strictly increasing (sub-millisecond clock bits plus a monotonic guard),
so images uploaded in one request keep their order.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last = 0


def uuid7() -> uuid.UUID:
    """A new UUIDv7: 48-bit Unix milliseconds, 12 bits of sub-millisecond time, 62 random."""
    global _last
    nanos = time.time_ns()
    millis, remainder = divmod(nanos, 1_000_000)
    fraction = remainder * 4096 // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= fraction << 64
    value |= 0b10 << 62  # RFC 9562 variant
    value |= int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    with _lock:
        if value <= _last:
            value = _last + 1
        _last = value
    return uuid.UUID(int=value)
