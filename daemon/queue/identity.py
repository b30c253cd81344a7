"""A file's identity: size, mtime and a fingerprint of its content, the same under any name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from daemon.queue.schema import key

SAMPLE_BYTES = 1 << 20  # bytes hashed at each of start, middle and end


def fingerprint(path: Path, stored: bytes | None = None) -> tuple[int, float, str]:
    """Given a file, return (size, mtime, content fingerprint).

    The fingerprint is the size plus a blake2b hash of up to 1 MiB at the start,
    middle and end: a few reads even on a 50 GB file, and the same for the same
    content under any name. An empty file's is its name's: `stored`, the
    path as the queue stores it (every host names a shared file alike), else `path`.
    Raise FileNotFoundError/PermissionError as is.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        digest = _sampled_digest(f, st.st_size)
    if st.st_size == 0:
        # Every empty file has the same content; only its path tells two apart.
        return 0, st.st_mtime, f"0:{hashlib.blake2b(stored or key(path), digest_size=16).hexdigest()}"
    return st.st_size, st.st_mtime, f"{st.st_size}:{digest}"


def _sampled_digest(f: BinaryIO, size: int) -> str:
    """Given an open file and its size, return the hex blake2b of its sampled bytes."""
    h = hashlib.blake2b(digest_size=16)
    for offset in _sample_offsets(size):
        f.seek(offset)
        h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _sample_offsets(size: int) -> tuple[int, int, int]:
    """Given a file size, return where to read the three samples.

    Files up to three samples long are read whole (reads past the end are empty).
    """
    if size <= 3 * SAMPLE_BYTES:
        return 0, SAMPLE_BYTES, 2 * SAMPLE_BYTES
    return 0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES
