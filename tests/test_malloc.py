"""daemon.malloc: a decoding process keeps to one glibc malloc arena, whatever its threads."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Four threads each allocate through the C library (ctypes lets go of the GIL), then glibc's
# malloc_stats prints one "Arena N:" block per arena to stderr.
THREADS = """
import ctypes, sys, threading
from daemon.malloc import one_arena
done = one_arena() if sys.argv[1] == "one" else None
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
together = threading.Barrier(4)  # all four alive at once: none can take over an ended one's arena
def work():
    blocks = [libc.malloc(4096)]
    together.wait()
    blocks += [libc.malloc(4096) for _ in range(2000)]
    for block in blocks:
        libc.free(block)
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(done)
sys.stdout.flush()
libc.malloc_stats()
"""


def arenas(mode: str, env: dict[str, str]) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", THREADS, mode], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    return done.stdout.strip(), sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas and mallopt are glibc's")
def test_threads_share_one_arena_unless_the_user_set_their_own() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert arenas("many", env)[1] >= 4  # glibc's own way: new threads get arenas of their own
    assert arenas("one", env) == ("True", 1)
    # the user's MALLOC_ARENA_MAX wins: one_arena leaves it alone and says so
    said, count = arenas("one", {**env, "MALLOC_ARENA_MAX": "2"})
    assert said == "False" and count == 2
