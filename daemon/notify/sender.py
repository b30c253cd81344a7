"""`Notifier`: the thread that sends messages through Apprise, retries a target that failed with
backoff, makes media servers' calls, and settles what the queue owed once it is told."""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from daemon.notify.burst import (
    BurstGate,
)
from daemon.notify.messages import (
    QUEUE_LIMIT,
    RETRY_DELAY_MAX,
    Call,
    Event,
    Message,
    NotifyRules,
    one_line,
    url_label,
)
from daemon.text import printable

logger = logging.getLogger("subwatch.notify")


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
