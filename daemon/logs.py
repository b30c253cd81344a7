"""Logging set-up: to the journal under systemd, to stderr otherwise.

Job transitions are logged as one line a person can read in `journalctl`
(`done  Movie (2009).mkv  en  1:52:10 in 41 s (164x realtime)`) and, in the journal,
also carry SUBWATCH_JOB, SUBWATCH_PATH and SUBWATCH_STATE fields, so
`journalctl -u subwatch SUBWATCH_STATE=failed` lists the failures.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from daemon.text import format_duration, format_speed
from daemon.text import printable as _printable

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Chatty at INFO/DEBUG about their own internals; their warnings still show.
QUIET_LIBRARIES = ("urllib3", "apprise", "watchdog", "numba")
# `extra=` keys of a log record and the journal fields they become.
JOURNAL_FIELDS = {"job": "SUBWATCH_JOB", "path": "SUBWATCH_PATH", "state": "SUBWATCH_STATE"}
HANDLER_NAME = "subwatch"  # lets setup_logging replace its own handler when called again
SYSLOG_IDENTIFIER = "subwatch"

_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_SYSLOG_PRIORITIES = ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3))


def parse_level(level: str) -> int:
    """Given a level name such as "info", return its logging level. Raise ValueError if it is unknown."""
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of: {', '.join(LEVELS)}") from None


def stderr_is_journal(journal_stream: str | None, stream: TextIO) -> bool:
    """Given $JOURNAL_STREAM ("device:inode") and a stream, return True if the stream is that journal stream.

    systemd sets $JOURNAL_STREAM for a service whose stderr goes to journald;
    children inherit the variable, so the file itself is compared too.
    """
    if not journal_stream:
        return False
    try:
        device, inode = (int(part) for part in journal_stream.split(":"))
        status = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


def journal_fields(attributes: Mapping[str, Any]) -> dict[str, str | bytes]:
    """Given a log record's attributes, return the SUBWATCH_* journal fields set through `extra=`.

    A path is sent as its raw bytes, so names that are not valid UTF-8 survive.
    """
    fields: dict[str, str | bytes] = {}
    for key, field in JOURNAL_FIELDS.items():
        value = attributes.get(key)
        if value is None:
            continue
        fields[field] = os.fsencode(value) if isinstance(value, Path) else str(value)
    return fields


def journal_sender(send: Callable[..., Any]) -> Callable[..., Any]:
    """Given systemd.journal.send, return a sender for JournalHandler that adds the SUBWATCH_* fields.

    JournalHandler passes every attribute of the record as a field; only
    valid journal field names are kept, and text that cannot be encoded as
    UTF-8 is escaped rather than losing the whole entry.
    """

    def sender(MESSAGE: str, **fields: Any) -> Any:  # noqa: N803 (systemd's argument name)
        kept = {key: _utf8_safe(value) for key, value in fields.items() if _FIELD_NAME.fullmatch(key)}
        kept.update(journal_fields(fields))
        return send(_utf8_safe(MESSAGE), **kept)

    return sender


def _utf8_safe(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


class SyslogPrefixFormatter(logging.Formatter):
    """Prefix each line with "<N>", the syslog priority journald reads from a service's stderr."""

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in _SYSLOG_PRIORITIES if record.levelno <= level), 2)
        return f"<{priority}>{super().format(record)}"


def make_handler(stream: TextIO, journal_stream: str | None) -> logging.Handler:
    """Given stderr and $JOURNAL_STREAM, return the handler to log with.

    The journal's own handler when stderr goes to journald and systemd-python
    is installed; otherwise stderr, without timestamps under journald (it adds
    its own) and with them elsewhere.
    """
    under_journald = stderr_is_journal(journal_stream, stream)
    if under_journald:
        try:
            from systemd import journal
        except ImportError:
            handler: logging.Handler = logging.StreamHandler(stream)
            handler.setFormatter(SyslogPrefixFormatter("%(name)s: %(message)s"))
            return handler
        return journal.JournalHandler(
            sender_function=journal_sender(journal.send), SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER
        )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    return handler


def setup_logging(level: str = "info") -> None:
    """Given a level name, send the root logger's records to the journal or stderr.

    Calling it again (a reload) replaces the handler it installed. Raise
    ValueError if the level is not one of LEVELS.
    """
    number = parse_level(level)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    handler = make_handler(sys.stderr, os.environ.get("JOURNAL_STREAM"))
    handler.set_name(HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(number)
    for name in QUIET_LIBRARIES:
        # Their records bypass the root's level on the way to its handlers, so set each one's.
        logging.getLogger(name).setLevel(max(logging.WARNING, number))
    # psycopg's pool warns at every failed reconnection while the database is away; the lease keeper
    # says it once (daemon.leases), and the pool's details are there at debug.
    logging.getLogger("psycopg.pool").setLevel(logging.DEBUG if number <= logging.DEBUG else logging.ERROR)


def job_log(
    logger: logging.Logger,
    state: str,
    path: Path,
    message: str,
    job_id: int | None = None,
    level: int = logging.INFO,
) -> None:
    """Given a job transition, log one line "<state>  <file name>  <message>" with its journal fields.

    `message` holds the details after the name (see `done_details`); a leading
    repeat of the state ("done  en …", "failed: …") is dropped so it is not
    said twice.
    """
    details = _without_state(message, state)
    line = "  ".join(part for part in (state, _printable(path.name), details) if part)
    logger.log(level, line, extra={"job": job_id, "path": path, "state": state})


def _without_state(message: str, state: str) -> str:
    if message == state:
        return ""
    for separator in ("  ", ": ", " "):
        if message.startswith(state + separator):
            return message[len(state) + len(separator) :].strip()
    return message.strip()


def done_details(
    language: str | None,
    media_duration: float | None,
    elapsed: float | None,
    uncovered_seconds: float | None = None,
    reused: bool = False,
) -> str:
    """Given a finished job's language, times in seconds, seconds of speech no subtitle covers and
    whether it was written from a stored transcript, return its details for the `done` line:
    "en  1:52:10 in 41 s (164x realtime)  12 s of speech without subtitles  from the stored transcript".
    The last two parts appear only when there are uncovered seconds and when reused."""
    parts = []
    if language:
        parts.append(language)
    if media_duration is not None:
        timing = format_duration(media_duration)
        if elapsed:
            timing += f" in {elapsed:.0f} s ({format_speed(media_duration, elapsed)} realtime)"
        parts.append(timing)
    elif elapsed is not None:
        parts.append(f"in {elapsed:.0f} s")
    if uncovered_seconds:
        parts.append(f"{_seconds(uncovered_seconds)} of speech without subtitles")
    if reused:
        parts.append("from the stored transcript (no decoding)")
    return "  ".join(parts)


def _seconds(seconds: float) -> str:
    """Given a positive duration, return it as "0.4 s", "12 s" or "1:02:03"."""
    if seconds < 1:
        return f"{max(seconds, 0.1):.1f} s"
    return f"{seconds:.0f} s" if seconds < 600 else format_duration(seconds)
