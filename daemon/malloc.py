"""One malloc arena for the processes that decode (`subwatch transcribe`, a daemon's decoder child).

glibc gives each new thread that allocates an arena of its own (up to eight per core), and an
arena keeps what was freed in it for its own threads to reuse. CTranslate2 decodes on a worker
thread of its own beside Python's, so the two threads' peaks add up instead of sharing one pool.
Held to one arena, the accuracy bench's long file peaked at 1,171 MiB instead of 1,463 at the same
speed (bench/RESULTS.md, issue #22). `MALLOC_ARENA_MAX` in the environment, if set, wins.
"""

from __future__ import annotations

import ctypes
import os

M_ARENA_MAX = -8  # glibc's <malloc.h>


def one_arena() -> bool:
    """Hold glibc's malloc to one arena, unless MALLOC_ARENA_MAX is set; return whether it was done.

    Call it before other threads allocate: arenas already made stay. Elsewhere than glibc (musl,
    macOS) there is no mallopt, or it refuses, and nothing changes.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_ARENA_MAX, 1) == 1
