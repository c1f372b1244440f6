"""Random tokens (lock fencing tokens, write ids) from a buffered os.urandom.

Each os.urandom() call is a getrandom system call, two per lock + write cycle; on
virtual machines a system call is not cheap. Reading 4 KiB at once and handing
out slices gives the same kernel randomness with one call per 256 tokens. Each
byte is handed out once; a forked child starts with an empty buffer, so parent
and child never share a token.
"""

from __future__ import annotations

import os
import threading

_CHUNK = 4096
_lock = threading.Lock()
_buffer = b""
_offset = 0


def _forget() -> None:
    global _buffer, _offset
    _buffer, _offset = b"", 0


os.register_at_fork(after_in_child=_forget)


def token_bytes(size: int = 16) -> bytes:
    """`size` bytes from the kernel's CSPRNG, as os.urandom(size) would give."""
    global _buffer, _offset
    with _lock:
        if _offset + size > len(_buffer):
            _buffer, _offset = os.urandom(max(_CHUNK, size)), 0
        start = _offset
        _offset += size
        return _buffer[start:_offset]
