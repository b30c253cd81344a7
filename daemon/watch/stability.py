"""When a file has finished arriving: `StabilityTracker`, fed by the folders' events.

A file is ready once no event has touched it for its folder's
`settle_seconds` and its size and mtime held still across that quiet window.
Pure bookkeeping with an injectable clock: no threads of its own.
"""

from __future__ import annotations

import heapq
import itertools
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon.watch.rules import WatchSpec

_REMEMBERED_REPORTS = 10_000

Signature = tuple[int, int]  # (size, mtime in ns) of a regular file


def _signature(path: Path) -> Signature | None:
    """Given a path, return (size, mtime_ns) of the regular file there, or None if there is none now."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_size, info.st_mtime_ns


def _depth(spec: WatchSpec) -> int:
    return len(spec.path.parts)


@dataclass(eq=False)
class _Tracked:
    path: Path
    spec: WatchSpec
    signature: Signature
    last_event: float
    version: int = 0  # bumped on every touch and move, so a check made meanwhile is known to be stale


class StabilityTracker:
    """Files that are arriving, each ready once left alone for its folder's `settle_seconds`.

    A file is ready when no event has touched it for `settle_seconds` and its
    size and mtime are the same at both ends of that quiet window: the file is
    re-stat'ed when the window ends and, if it changed (a copy still going
    without events, as between polls), the window starts again. An empty file
    that stays empty is reported too: the daemon says why it cannot be used.

    One heap entry per file keeps `due()` cheap with thousands of files.
    Thread-safe: events may touch from any thread while one thread calls `due()`.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Path, _Tracked] = {}
        self._heap: list[tuple[float, int, _Tracked]] = []
        self._order = itertools.count()
        # Size and mtime of recently reported files: a late event (the next
        # poll, a close after a long pause) for an unchanged file is not news.
        self._reported: OrderedDict[Path, Signature] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return path in self._entries

    def touch(self, path: Path, spec: WatchSpec, *, force: bool = False) -> bool:
        """Given an event on `path`, start its quiet window again and return True if it was not tracked.

        A path that is not a regular file now is not taken. An untracked file
        whose size and mtime are those it had when it was reported is left
        alone unless `force`. Of two folders that both contain the file, the
        deeper one's spec is kept.
        """
        signature = _signature(path)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(path)
            if signature is None:
                # Gone already (the event was queued before a delete). A tracked entry stays, so the
                # delete event that follows finds it tracked; the end of its window drops it anyway.
                return False
            if entry is not None:
                entry.signature, entry.last_event = signature, now
                entry.version += 1
                if _depth(spec) > _depth(entry.spec):
                    entry.spec = spec
                return False
            if not force and self._reported.get(path) == signature:
                return False
            entry = _Tracked(path, spec, signature, now)
            self._entries[path] = entry
            self._schedule(entry, now + spec.settle_seconds)
            return True

    def forget(self, path: Path) -> bool:
        """Given a path that is gone, stop tracking it; return True if it was being tracked."""
        with self._lock:
            self._reported.pop(path, None)
            return self._entries.pop(path, None) is not None

    def move(self, old: Path, new: Path) -> bool:
        """Given a rename, carry the tracking of `old` over to `new` and return True if `old` was tracked.

        The moved file's quiet window starts again. An untracked file keeps
        its memory of having been reported under the new name.
        """
        signature = _signature(new)
        now = self._clock()
        with self._lock:
            remembered = self._reported.pop(old, None)
            self._reported.pop(new, None)
            entry = self._entries.pop(old, None)
            if entry is None:
                if remembered is not None:
                    self._reported[new] = remembered
                return False
            self._entries.pop(new, None)  # a tracked file the rename replaced; its heap slot goes stale
            entry.path, entry.last_event = new, now
            entry.signature = signature or entry.signature  # gone again already: the window's end drops it
            entry.version += 1
            self._entries[new] = entry
            return True

    def replace_spec(self, old: WatchSpec, new: WatchSpec | None) -> None:
        """Given a folder spec replaced by a config reload, move its files to `new` (or drop them if None)."""
        with self._lock:
            for path, entry in list(self._entries.items()):
                if entry.spec == old:
                    if new is None:
                        del self._entries[path]
                    else:
                        entry.spec = new

    def seconds_to_next(self) -> float | None:
        """Return how long until the next window may end (0 if one already has), or None if none is open."""
        with self._lock:
            if not self._heap:
                return None
            return max(0.0, self._heap[0][0] - self._clock())

    def due(self) -> list[tuple[Path, WatchSpec]]:
        """Return the files whose quiet window ended with size and mtime unchanged, and stop tracking them.

        Files that changed start a new window; files that vanished are
        dropped silently. The stat calls happen outside the lock.
        """
        now = self._clock()
        with self._lock:
            checks = []
            while self._heap and self._heap[0][0] <= now:
                _, _, entry = heapq.heappop(self._heap)
                if self._entries.get(entry.path) is not entry:
                    continue  # forgotten, or replaced by a rename
                quiet_until = entry.last_event + entry.spec.settle_seconds
                if quiet_until > now:
                    self._schedule(entry, quiet_until)  # touched since: the window moved on
                else:
                    checks.append((entry, entry.version, entry.path))
        results = [(entry, version, _signature(path)) for entry, version, path in checks]
        now = self._clock()
        ready = []
        with self._lock:
            for entry, version, signature in results:
                if self._entries.get(entry.path) is not entry:
                    continue
                if entry.version != version:
                    self._schedule(entry, entry.last_event + entry.spec.settle_seconds)
                elif signature is None:
                    del self._entries[entry.path]  # vanished while settling
                elif signature != entry.signature:
                    entry.signature, entry.last_event = signature, now
                    self._schedule(entry, now + entry.spec.settle_seconds)
                else:
                    del self._entries[entry.path]
                    self._remember(entry.path, signature)
                    ready.append((entry.path, entry.spec))
        return ready

    def _schedule(self, entry: _Tracked, when: float) -> None:
        heapq.heappush(self._heap, (when, next(self._order), entry))

    def _remember(self, path: Path, signature: Signature) -> None:
        self._reported[path] = signature
        self._reported.move_to_end(path)
        while len(self._reported) > _REMEMBERED_REPORTS:
            self._reported.popitem(last=False)

