"""Log lines that a stranger's requests cause, limited: one per kind per minute, with a count of the rest."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """Logs the first line of each `key` in a window of `per_seconds`, and counts the rest into the next."""

    def __init__(self, logger: logging.Logger, per_seconds: float = 60.0) -> None:
        self._log = logger
        self._per = per_seconds
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._per:
                self._held[key] = self._held.get(key, 0) + 1
                return
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            message += f" (and {held} more like it since the last such line)"
        self._log.warning(message, *args)
