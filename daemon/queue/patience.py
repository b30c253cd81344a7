"""Asking the job database again while it is away, for the worker's side of a job's life."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from daemon.queue.engines import QueueBusy

T = TypeVar("T")
ANSWER_WAIT_S = 600.0  # how long a finished file waits for the database before it is left running


def until_answered(call: Callable[[], T]) -> T:
    """Return call(), asked again while the job database is away (QueueBusy), for up to ANSWER_WAIT_S:
    a file transcribed while the server restarted is recorded once it is back, not done again.
    Past that the error goes up; the job stays running and is put back at the next start."""
    pause, deadline = 1.0, time.monotonic() + ANSWER_WAIT_S
    while True:
        try:
            return call()
        except QueueBusy:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 30.0)
