"""The burst gate: past `burst` messages in a window, events are held and go out as one digest."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from daemon.notify.messages import (
    Event,
    Message,
    NotifyRules,
    _keys,
    _unsent,
    format_digest,
    message_for,
)

logger = logging.getLogger("subwatch.notify")


@dataclass
class _Window:
    """Burst state for one set of targets."""

    sent: deque[float] = field(default_factory=deque)  # times of single messages in the window
    held: list[Event] = field(default_factory=list)
    digest_due: float | None = None  # set while in digest mode


class BurstGate:
    """Decide, for events and the times they happened, what is sent now and what is held.

    The rules, kept separately for each set of target URLs:
    - Events whose kind is not in `rules.on` are dropped and do not count.
    - While fewer than `burst` single messages went out in the last
      `window_seconds`, an event is sent on its own.
    - The next event starts digest mode: it and every later event are held,
      and at `window_seconds` after it they are released as one digest (a
      single held event goes out as its own message). Without "digest" in
      `rules.on` the held events are dropped, with a log line.
    - Digest mode lasts while events keep arriving: each window that held
      something ends in a digest; the first window that held nothing ends it,
      and events are sent singly again.

    So 12 events at once with burst=5 give 5 single messages and, a window
    later, one digest of the other 7. Not thread-safe: only the delivery
    thread uses it.
    """

    def __init__(self, rules: NotifyRules) -> None:
        self._rules = rules
        self._windows: dict[tuple[str, ...], _Window] = {}

    def update(self, rules: NotifyRules) -> None:
        """Given new rules (a config reload), use them from now on; held events stay held."""
        self._rules = rules

    def offer(self, event: Event, now: float) -> list[Message]:
        """Given an event and when it happened, return the messages to send now (maybe none)."""
        targets = event.urls or self._rules.urls
        if event.kind not in self._rules.on or not targets:
            return _unsent([event])
        window = self._windows.setdefault(targets, _Window())
        if window.digest_due is not None:
            window.held.append(event)
            return []
        while window.sent and window.sent[0] <= now - self._rules.window_seconds:
            window.sent.popleft()
        if len(window.sent) < self._rules.burst:
            window.sent.append(now)
            return [message_for(event, targets)]
        window.held.append(event)
        window.digest_due = now + self._rules.window_seconds
        return []

    def due(self, now: float) -> list[Message]:
        """Given the time now, return the digests whose window has ended."""
        messages = []
        for targets, window in list(self._windows.items()):
            if window.digest_due is None or now < window.digest_due:
                continue
            if window.held:
                messages += self._release(targets, window)
                window.digest_due = now + self._rules.window_seconds
            else:
                del self._windows[targets]  # a quiet window: back to single messages
        return messages

    def flush(self) -> list[Message]:
        """Return digests of everything held, whatever the time (for shutdown)."""
        messages = []
        for targets, window in self._windows.items():
            messages += self._release(targets, window)
        self._windows.clear()
        return messages

    def next_due(self) -> float | None:
        """Return the earliest time a digest window ends, or None if nothing is pending."""
        dues = [w.digest_due for w in self._windows.values() if w.digest_due is not None]
        return min(dues, default=None)

    def _release(self, targets: tuple[str, ...], window: _Window) -> list[Message]:
        held, window.held = window.held, []
        if not held:
            return []
        if len(held) == 1:
            return [message_for(held[0], targets)]
        if "digest" not in self._rules.on:
            logger.info("not notifying about %d files from a burst: 'digest' is not in notify.on", len(held))
            return _unsent(held)
        title, body = format_digest(held)
        kind = "warning" if any(e.kind == "failed" for e in held) else "success"
        return [Message(title, body, kind, targets, _keys(held))]
