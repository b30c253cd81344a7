"""Log lines about what outsiders send, bounded: one line per kind of thing per window.

A client that sends the same bad request a thousand times a second must not write a thousand
lines a second to the journal. `RateLimitedLog.warning(key, msg, *args)` logs the first line of
each `key` per window, counts the rest, and says how many were left out on the next line of that
key ("... (and 312 more like it since the last such line)").

The key is the kind of line (a sender and a reason, never a path or anything else the sender
chooses freely); at most `MAX_KEYS` keys are remembered, the oldest forgotten first, so a sender
that varies it cannot grow the memory either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

MAX_KEYS = 1_024


@dataclass
class _Window:
    started: float  # when the line that opened it was logged
    suppressed: int = 0  # lines of this key left out since


class Windows:
    """Per-key windows of `per_seconds`: the first event of a key in a window is admitted, the rest
    counted. Thread-safe; at most `max_keys` keys are remembered, the oldest forgotten first."""

    def __init__(self, per_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_KEYS) -> None:
        self._per_seconds = per_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()

    def admit(self, key: Hashable) -> int | None:
        """Given an event's key, return None if one of its kind was admitted within the window (it is
        counted), else how many were left out since the last admitted one."""
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.started < self._per_seconds:
                window.suppressed += 1
                return None
            self._windows[key] = _Window(now)
            self._windows.move_to_end(key)
            while len(self._windows) > self._max_keys:
                self._windows.popitem(last=False)
        return window.suppressed if window is not None else 0


class RateLimitedLog:
    """Logs through `logger` at most one line per key per `per_seconds`; thread-safe."""

    def __init__(self, logger: logging.Logger, per_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self._logger = logger
        self._windows = Windows(per_seconds, clock, max_keys)

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        """Given the kind of line and its text, log it at WARNING unless one of its kind was logged
        within the window; return whether it was logged."""
        return self.log(logging.WARNING, key, msg, *args)

    def info(self, key: Hashable, msg: str, *args: object) -> bool:
        """As `warning`, at INFO."""
        return self.log(logging.INFO, key, msg, *args)

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> bool:
        """Given a level, the kind of line and its text, log it unless one of its kind was logged
        within the window (then count it); return whether it was logged."""
        if not self._logger.isEnabledFor(level):
            return False
        left_out = self._windows.admit(key)
        if left_out is None:
            return False
        if left_out:
            msg = f"{msg} (and {left_out} more like it since the last such line)"
        self._logger.log(level, msg, *args)
        return True


class OncePerMinute(logging.Filter):
    """A logging filter for other libraries' loggers (uvicorn's, asyncio's), whose lines a stranger
    can cause at any pace: a record passes when none of the same message template passed within
    the window."""

    def __init__(self, per_seconds: float = 60.0) -> None:
        super().__init__()
        self._windows = Windows(per_seconds)

    def filter(self, record: logging.LogRecord) -> bool:
        return self._windows.admit(str(record.msg)[:200]) is not None
