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

The package: `messages` (rules, events, calls and their wording), `burst` (the gate that
turns a burst into one digest) and `sender` (the Notifier thread and Apprise).
"""

from daemon.notify.burst import BurstGate
from daemon.notify.messages import (
    DIGEST_LISTED,
    EVENTS,
    QUEUE_LIMIT,
    REASON_CHARS,
    RETRY_DELAY_MAX,
    Call,
    Event,
    Message,
    NotifyRules,
    format_digest,
    format_done,
    format_elapsed,
    format_failed,
    language_label,
    message_for,
    one_line,
    url_label,
)
from daemon.notify.sender import Notifier
from daemon.text import format_speed, printable  # the wording's formatters, as callers found them here

__all__ = [
    "format_speed",
    "printable",
    "BurstGate",
    "Call",
    "DIGEST_LISTED",
    "EVENTS",
    "Event",
    "Message",
    "Notifier",
    "NotifyRules",
    "QUEUE_LIMIT",
    "REASON_CHARS",
    "RETRY_DELAY_MAX",
    "format_digest",
    "format_done",
    "format_elapsed",
    "format_failed",
    "language_label",
    "message_for",
    "one_line",
    "url_label",
]
