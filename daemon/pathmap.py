"""Path prefixes mapped between two views of the same files: another program's (Bazarr, Sonarr, a
media server) and this host's, or the shared queue's and this host's (`node.path_map`).

One rule everywhere: the longest prefix that matches whole path components is replaced, so
{"/tv": "/srv/tv"} maps /tv/a.mkv and leaves /tvshows/a.mkv alone; a path no prefix matches is kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def map_prefix(path: str, pairs: Iterable[tuple[str, str]]) -> str:
    """Given a path and (from, to) prefixes, return it with the longest matching prefix replaced."""
    best: tuple[str, str] | None = None
    for source, target in pairs:
        stem = source.rstrip("/") or "/"
        if path == stem or path.startswith(stem.rstrip("/") + "/"):
            if best is None or len(stem) > len(best[0]):
                best = (stem, target)
    if best is None:
        return path
    stem, target = best
    rest = path[len(stem):].lstrip("/") if stem != "/" else path.lstrip("/")
    target = target.rstrip("/") or "/"
    if not rest:
        return target
    return f"{target}/{rest}" if target != "/" else f"/{rest}"


@dataclass(frozen=True)
class PathMap:
    """`node.path_map`: (path as the shared queue stores it, path on this host) prefixes.

    Every path the queue stores (jobs, sidecar records, outputs, owed notifications) is written in
    the stored form and read back in this host's, so hosts that mount the same media at different
    places share one job per file. Empty (the default, and always with SQLite): paths as they are.
    """

    pairs: tuple[tuple[str, str], ...] = ()

    def here(self, stored: str | os.PathLike[str]) -> Path:
        """Given a path as the queue stores it, return it on this host."""
        return Path(map_prefix(os.fsdecode(stored), self.pairs))

    def stored(self, here: str | os.PathLike[str]) -> str:
        """Given a path on this host, return it as the queue stores it."""
        return map_prefix(os.fsdecode(here), ((local, shared) for shared, local in self.pairs))
