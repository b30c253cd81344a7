"""What is told: the rules, the events, the calls to media servers, and each message's wording
(a file done, a failure, a digest of many)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from daemon import languages
from daemon.text import format_duration, format_speed, printable

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
