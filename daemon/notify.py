"""Apprise notifications for finished and failed jobs, without spam.

The pipeline hands each finished job to `Notifier.send`, which only puts it on
a queue: one background thread formats and delivers the messages, so a slow or
dead endpoint never holds up transcription and a failed delivery never fails
a job (borgmatic's rule: notifications wrap the work, they are not part of it).

During a backlog the daemon can finish dozens of files in an hour. Per set of
targets, at most `burst` single messages go out within any `window_seconds`;
the events after that are held and summed up in one digest at the end of the
window (see `BurstGate` for the exact rules).

An event may carry the `key` of the notification the job queue owes for it
(its outbox row): once the message that holds it is delivered, or given up on,
or not to be sent at all, the notifier reports the key as settled. A daemon
killed before that sends it at its next start.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from daemon import languages
from daemon.text import format_duration, format_speed, printable

logger = logging.getLogger("subwatch.notify")

EVENTS = frozenset({"done", "failed", "digest"})
DIGEST_LISTED = 10  # names per section of a digest before "… and N more"
REASON_CHARS = 300  # a failure reason longer than this is cut
QUEUE_LIMIT = 10_000  # events waiting for delivery before new ones are dropped
RETRY_DELAY_MAX = 60.0

# Characters that must not reach a title or body as they are: they would break a
# line, reorder the text shown (bidi overrides) or fail to encode as UTF-8.


@dataclass(frozen=True)
class NotifyRules:
    """Where notifications go and how many may be sent: the `notify:` section of the config.

    `on` holds the events to notify about: "done", "failed" and "digest" (the
    summary sent instead of single messages during a burst). The defaults are
    the config's (daemon.options builds these from the keys written).
    """

    urls: tuple[str, ...] = ()
    on: frozenset[str] = EVENTS
    burst: int = 5  # single messages per window before the rest wait for a digest
    window_seconds: float = 60.0
    retries: int = 3  # further attempts of a failed delivery (not a config key)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.on) - EVENTS)
        if unknown:
            raise ValueError(f"unknown notify event(s) {unknown}; use some of {sorted(EVENTS)}")
        if self.burst < 1 or self.window_seconds <= 0 or self.retries < 0:
            raise ValueError("notify burst must be >= 1, window_seconds > 0 and retries >= 0")


@dataclass(frozen=True)
class Event:
    """One finished job to notify about.

    `urls` are the targets of the job's folder, resolved by the caller; when
    empty the rules' urls are used.
    """

    kind: Literal["done", "failed"]
    path: Path
    language: str | None = None
    media_duration: float | None = None  # seconds
    elapsed: float | None = None  # seconds the job took
    model: str | None = None
    error: str | None = None
    note: str | None = None  # a done job's note: "no speech found" (no sidecars were written)
    urls: tuple[str, ...] = ()
    key: int | None = None  # the queue's outbox row for it: reported settled once sent or given up


@dataclass(frozen=True)
class Call:
    """A delivery that is no Apprise message (a media server told of new sidecars), made on the
    notifier's thread with the same retries and backoff, never gated into digests.

    `attempt()` raises on failure; `settled(told, error)` is called once it succeeded, or was given
    up on after `attempts` tries (with the last error). One still retrying at shutdown is not
    settled: its owner tells it again at the next start.
    """

    label: str  # for the log: never a token
    attempt: Callable[[], None]
    settled: Callable[[bool, str | None], None]
    attempts: int = 6


@dataclass(frozen=True)
class Message:
    """A formatted notification and the Apprise URLs it goes to.

    `kind` is an Apprise notify type: "success", "failure" or "warning". `keys` are those of the
    events it tells of; a message to no URLs only settles them (events not to be sent).
    """

    title: str
    body: str
    kind: str
    urls: tuple[str, ...]
    keys: tuple[int, ...] = ()


def _keys(events: Sequence[Event]) -> tuple[int, ...]:
    return tuple(event.key for event in events if event.key is not None)


def _unsent(events: Sequence[Event]) -> list[Message]:
    """Given events that will not be sent, return a message to nobody that settles their keys."""
    keys = _keys(events)
    return [Message("", "", "info", (), keys)] if keys else []


def format_elapsed(seconds: float) -> str:
    """Given how long a job took in seconds, return "41 s", "12 min 5 s" or "2 h 3 min"."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    return f"{total // 3600} h {total % 3600 // 60} min"


def language_label(code: str) -> str:
    """Given an ISO 639-1 code, return "English (en)", or the code alone if its name is not known."""
    name = languages.name_of(code)
    return f"{name} ({printable(code)})" if name else printable(code)


def one_line(text: str | None, limit: int = REASON_CHARS) -> str:
    """Given an error text of any number of lines, return it on one line of at most `limit` characters."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    joined = printable(" / ".join(lines)) or "unknown error"
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


def format_done(event: Event) -> tuple[str, str]:
    """Given a done event, return the title and body of its message."""
    details = []
    if event.language:
        details.append(f"Language: {language_label(event.language)}")
    if event.media_duration is not None:
        details.append(format_duration(event.media_duration))
    if event.model:
        details.append(f"model {printable(event.model)}")
    lines = [printable(event.path.name)]
    if details:
        lines.append(" · ".join(details))
    if event.elapsed is not None:
        speed = format_speed(event.media_duration or 0.0, event.elapsed)
        lines.append(f"Took {format_elapsed(event.elapsed)}" + (f" ({speed} realtime)" if speed else ""))
    lines.append(printable(str(event.path)))
    if event.note:  # nothing was written: the title and the body say so first
        lines.insert(1, f"{printable(event.note).capitalize()}; no subtitles were written")
    title = printable(event.note).capitalize() if event.note else "Subtitles ready"
    return f"{title}: {printable(event.path.stem)}", "\n".join(lines)


def format_failed(event: Event) -> tuple[str, str]:
    """Given a failed event, return the title and body of its message."""
    body = "\n".join([printable(event.path.name), one_line(event.error), printable(str(event.path))])
    return f"Subtitles failed: {printable(event.path.stem)}", body


def format_digest(events: Sequence[Event]) -> tuple[str, str]:
    """Given the events held back during a burst, return the title and body of one summary.

    Failures come first, each with its reason, then the names of the files done.
    """
    failed = [event for event in events if event.kind == "failed"]
    done = [event for event in events if event.kind == "done"]
    counts = []
    if done:
        counts.append(f"{len(done)} {'file' if len(done) == 1 else 'files'} done")
    if failed:
        noun = "" if done else ("file " if len(failed) == 1 else "files ")
        counts.append(f"{len(failed)} {noun}failed")
    sections = []
    if failed:
        lines = [f"- {printable(e.path.name)}: {one_line(e.error)}" for e in failed]
        sections.append("Failed:\n" + "\n".join(_truncated(lines)))
    if done:
        lines = [f"- {printable(e.path.name)}" + (f": {printable(e.note)}" if e.note else "") for e in done]
        sections.append("Done:\n" + "\n".join(_truncated(lines)))
    return f"Subtitles: {', '.join(counts)}", "\n\n".join(sections)


def _truncated(lines: list[str], limit: int = DIGEST_LISTED) -> list[str]:
    if len(lines) <= limit:
        return lines
    return lines[:limit] + [f"… and {len(lines) - limit} more"]


def message_for(event: Event, urls: tuple[str, ...]) -> Message:
    """Given one event and its targets, return the single message for it."""
    if event.kind == "failed":
        return Message(*format_failed(event), kind="failure", urls=urls, keys=_keys([event]))
    return Message(*format_done(event), kind="success", urls=urls, keys=_keys([event]))


def url_label(url: str) -> str:
    """Given an Apprise URL (best one already masked by Apprise), return "scheme://host[:port]" for logs.

    User, password, path and query are dropped: with Apprise they often hold
    tokens. Return "scheme://…" if the URL has no host that can be read.
    """
    parts = urlsplit(url)
    try:
        host = parts.hostname
        port = parts.port
    except ValueError:
        host = port = None
    if not host:
        return f"{parts.scheme or '?'}://…"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


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


@dataclass(frozen=True)
class _Queued:
    at: float
    event: Event


@dataclass(frozen=True)
class _Update:
    rules: NotifyRules


_STOP = object()


class Notifier:
    """Deliver notifications from one background thread.

    Call `start()` once, `send(event)` from any thread, and `stop(timeout)` at
    shutdown. `clock` (monotonic seconds) times the burst windows; `retry_delay`
    is the first pause before a retry, doubled for each further one. `settled`
    is called, on the delivery thread, with the keys of each message's events
    once it is delivered or given up on.
    """

    def __init__(
        self,
        rules: NotifyRules,
        clock: Callable[[], float] = time.monotonic,
        retry_delay: float = 2.0,
        settled: Callable[[tuple[int, ...]], None] | None = None,
    ) -> None:
        self._settled = settled
        self._unfinished = 0  # events sent and not yet delivered, held or dropped
        self._idle = threading.Condition()
        self._rules = rules
        self._clock = clock
        self._retry_delay = retry_delay
        self._gate = BurstGate(rules)
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_LIMIT)
        self._stopping = threading.Event()
        self._deadline: float | None = None  # time.monotonic() by which stop() wants to return
        self._thread = threading.Thread(target=self._run, name="subwatch-notify", daemon=True)
        self._targets: dict[str, Any] = {}  # Apprise URL -> (Apprise object or None, log label)
        self._retries: list[_Retry] = []  # a heap: failed deliveries waiting for their next attempt
        self._order = itertools.count()

    def start(self) -> None:
        """Start the delivery thread."""
        self._thread.start()

    def send(self, event: Event) -> None:
        """Given a finished job's event, queue it for delivery and return at once. Never raises."""
        if self._stopping.is_set():
            logger.debug("notifier stopped; not sending %s", event.kind)
            return
        try:
            with self._idle:
                self._queue.put_nowait(_Queued(self._clock(), event))
                self._unfinished += 1
        except queue.Full:
            logger.warning(
                "notification queue is full; dropping the notification for %s", printable(str(event.path))
            )

    def call(self, call: Call) -> None:
        """Given a delivery that is no message (see `Call`), make it on the delivery thread, retried
        with backoff; return at once. Never raises."""
        if self._stopping.is_set():
            logger.debug("notifier stopped; not telling %s", call.label)
            return
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            logger.warning("notification queue is full; not telling %s", call.label)

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until every event sent so far is delivered (or given up on,
        held for a digest, or not to be sent); return True if it is. Before a risky step (a file
        that may crash the process), so that no notification is cut off in the middle of delivery."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    def update(self, rules: NotifyRules) -> None:
        """Given new rules (a config reload), apply them to events sent after this call."""
        self._queue.put(_Update(rules))  # the delivery thread alone touches the rules in use

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what is queued or held within `timeout` seconds, then return.

        A delivery still hanging after the timeout is abandoned (the thread is a
        daemon thread, so it does not keep the process alive).
        """
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)  # after everything already queued, so that is delivered first
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.warning(
                "notifications not all delivered within %.0f s of shutdown; giving up on them", timeout
            )

    def _run(self) -> None:
        apprise = _import_apprise()
        while True:
            item = self._next_item()
            if item is _STOP:
                messages = self._gate.flush()
            elif isinstance(item, _Update):
                self._rules = item.rules
                self._gate.update(item.rules)
                messages = []
            elif isinstance(item, Call):
                self._make_call(item, attempt=1)
                messages = []
            elif item is not None:
                # Judge each event by when it was sent, not when this thread got to it,
                # so a slow endpoint that delays the queue does not change what is a burst.
                messages = self._gate.due(item.at) + self._gate.offer(item.event, item.at)
            else:
                messages = self._gate.due(self._clock())
            for message in messages:
                self._deliver(apprise, message)
            self._retry_due(apprise)
            if isinstance(item, _Queued):
                with self._idle:
                    self._unfinished -= 1
                    self._idle.notify_all()
            if item is _STOP:
                self._retry_until_deadline(apprise)
                return

    def _settle(self, keys: tuple[int, ...]) -> None:
        if not keys or self._settled is None:
            return
        try:
            self._settled(keys)
        except Exception:  # never the delivery thread: the notification is only sent again later
            logger.warning("could not record notifications as sent; they may be sent again", exc_info=True)

    def _next_item(self) -> Any:
        dues = [d for d in (self._gate.next_due(), self._next_retry()) if d is not None]
        if not dues:
            return self._queue.get()
        # Wake when a window ends or a retry is due, and at least every 0.25 s in case the gate's
        # clock is not time.monotonic (retries always are).
        wait = min(max(min(dues) - time.monotonic(), 0.0), 0.25)
        try:
            return self._queue.get(timeout=wait)
        except queue.Empty:
            return None

    def _next_retry(self) -> float | None:
        return self._retries[0].due if self._retries else None

    def _deliver(self, apprise: Any, message: Message) -> None:
        """Try each of the message's targets once; a failed one is retried later, from `_retries`,
        so a dead target never holds up the messages behind it or the other targets."""
        if apprise is None:
            urls = []
        else:
            urls = [url for url in message.urls if self._target(apprise, url)[0] is not None]
        delivery = _Delivery(message, set(urls))
        for url in urls:  # in the order configured, not the set's
            self._attempt(apprise, delivery, url, attempt=1)
        if not delivery.waiting:
            self._settle(message.keys)

    def _attempt(self, apprise: Any, delivery: _Delivery, url: str, attempt: int) -> None:
        target, label = self._target(apprise, url)
        attempts = 1 + self._rules.retries
        if self._send(apprise, target, label, delivery.message):
            delivery.waiting.discard(url)
        elif attempt < attempts:
            logger.warning("notification to %s failed (attempt %d of %d)", label, attempt, attempts)
            delay = min(self._retry_delay * 2 ** (attempt - 1), RETRY_DELAY_MAX)
            heapq.heappush(self._retries, _Retry(time.monotonic() + delay, next(self._order), delivery, url,
                                                 attempt + 1))
        else:
            logger.error("gave up on notification %r to %s after %d attempts", delivery.message.title,
                         label, attempts)
            delivery.waiting.discard(url)

    def _send(self, apprise: Any, target: Any, label: str, message: Message) -> bool:
        try:
            sent = target.notify(
                title=message.title,
                body=message.body,
                body_format=apprise.NotifyFormat.TEXT,
                notify_type=apprise.NotifyType(message.kind),
            )
        except Exception:  # a plugin bug must not kill the delivery thread
            logger.exception("notification to %s raised an error", label)
            return False
        if sent:
            logger.debug("notified %s: %s", label, message.title)
        return bool(sent)

    def _make_call(self, call: Call, attempt: int) -> None:
        try:
            call.attempt()
        except Exception as exc:  # whatever it raises: a failed attempt, never the delivery thread's end
            error = one_line(str(exc) or type(exc).__name__)
            if attempt < call.attempts:
                delay = min(self._retry_delay * 2 ** (attempt - 1), RETRY_DELAY_MAX)
                logger.warning("telling %s failed (attempt %d of %d, next in %.0f s): %s",
                               call.label, attempt, call.attempts, delay, error)
                heapq.heappush(self._retries, _Retry(time.monotonic() + delay, next(self._order), call, "",
                                                     attempt + 1))
                return
            logger.error("gave up telling %s after %d attempts: %s", call.label, call.attempts, error)
            self._settle_call(call, False, error)
            return
        self._settle_call(call, True, None)

    def _settle_call(self, call: Call, told: bool, error: str | None) -> None:
        try:
            call.settled(told, error)
        except Exception:  # never the delivery thread
            logger.warning("could not record the outcome of telling %s", call.label, exc_info=True)

    def _retry_due(self, apprise: Any) -> None:
        while self._retries and self._retries[0].due <= time.monotonic() and not self._past_deadline():
            retry = heapq.heappop(self._retries)
            if isinstance(retry.delivery, Call):
                self._make_call(retry.delivery, retry.attempt)
                continue
            self._attempt(apprise, retry.delivery, retry.url, retry.attempt)
            if not retry.delivery.waiting:
                self._settle(retry.delivery.message.keys)

    def _retry_until_deadline(self, apprise: Any) -> None:
        """At shutdown: make the retries that fall before stop()'s deadline. The others are left
        unsettled, so the job queue still owes them and the next start sends them."""
        while self._retries and not self._past_deadline():
            wait = self._retries[0].due - time.monotonic()
            if self._deadline is not None and time.monotonic() + max(wait, 0.0) > self._deadline:
                break
            time.sleep(max(wait, 0.0))
            self._retry_due(apprise)
        for retry in self._retries:
            if isinstance(retry.delivery, Call):
                logger.warning("%s not told before shutdown; told at the next start", retry.delivery.label)
                continue
            logger.warning("notification %r to %s not delivered before shutdown; it is sent again at "
                           "the next start", retry.delivery.message.title, self._targets[retry.url][1])
        self._retries.clear()

    def _target(self, apprise: Any, url: str) -> tuple[Any, str]:
        if url not in self._targets:
            target = apprise.Apprise(asset=apprise.AppriseAsset(app_id="subwatch", app_desc="subwatch"))
            if target.add(url):
                self._targets[url] = (target, url_label(target[0].url(privacy=True)))
            else:
                label = f"{urlsplit(url).scheme or '?'}://…"  # the host part may be a token
                logger.error("notification URL %s is not one Apprise understands; skipping it", label)
                self._targets[url] = (None, label)
        return self._targets[url]

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline


@dataclass
class _Delivery:
    """A message on its way: the URLs it has yet to reach (or be given up on)."""

    message: Message
    waiting: set[str]


@dataclass(frozen=True, order=True)
class _Retry:
    due: float  # time.monotonic()
    order: int  # ties: first failed, first retried
    delivery: _Delivery | Call = field(compare=False)
    url: str = field(compare=False)  # "" for a Call
    attempt: int = field(compare=False)


def _import_apprise() -> Any:
    try:
        import apprise
    except ImportError:
        logger.error("Apprise is not installed, so no notifications will be sent (pip install apprise)")
        return None
    return apprise
