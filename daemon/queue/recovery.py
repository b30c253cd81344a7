"""Crash recovery: the jobs a killed daemon left running, put back, and a crash held only against its cause.

A claimed job stays in the table as `running` until it is finished, so after a
kill, crash or power loss `recover_running` finds it at the next start. A file
is failed for crashing the daemon only once it did so alone.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.datatypes import Job, JobState
from daemon.queue import outbox
from daemon.queue.database import Database
from daemon.queue.schema import JOB_COLUMNS, MAX_ATTEMPTS, job_of
from daemon.text import printable

RecoveryCause = Literal["waiting", "in_model", "crashed_alone"]


@dataclass(frozen=True)
class Recovered:
    """A job the last daemon left running (it was killed, crashed or lost power), as
    `JobQueue.recover_running` put it back.

    - waiting: claimed, but the model had not begun transcribing it (start-up, model loading,
      decoding, waiting for a worker): pending again, the attempt not counted.
    - in_model: in the model when the daemon died, together with `together - 1` other files or
      alone but not yet suspected: pending again as a suspect, to be transcribed alone next; the
      attempt not counted.
    - crashed_alone: a suspect, and the only file in the model when the daemon died: the attempt
      and a crash count; pending again (still a suspect), or failed (`job.state`) once it has
      `max_attempts` crashes.
    """

    job: Job
    cause: RecoveryCause
    together: int = 0  # how many jobs were in the model when the daemon died


def recover_running(db: Database, max_attempts: int = MAX_ATTEMPTS) -> list[Recovered]:
    """Return the jobs the last daemon left running, each pending again or failed, and why (call
    once at start, before any claim).

    A crash counts against a file only when that file is the likely cause. One that was not in
    the model yet (start-up, model loading, decoding, waiting for a worker) is put back as
    `release` would, the attempt not counted. The files that were in the model become suspects,
    the attempt not counted: each is transcribed alone next. A suspect that was the only file in
    the model has the attempt and a crash counted, and `max_attempts` such crashes fail it: a
    file that kills the daemon (out of memory, a decoder bug) must not make it crash at every
    start, nor condemn the files that shared its batch. A failed one's notification is owed.
    """
    now = time.time()
    with db.write() as conn:
        rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' ORDER BY id")
        running = [job_of(row) for row in rows.fetchall()]
        together = sum(job.in_model_since is not None for job in running)
        recovered = []
        for job in running:
            back = {"state": JobState.PENDING.value, "started_at": None, "in_model_since": None,
                    "next_attempt_at": 0.0}
            if job.in_model_since is None:
                cause: RecoveryCause = "waiting"
                back["attempts"] = max(job.attempts - 1, 0)
            elif together == 1 and job.suspect:
                cause, crashes = "crashed_alone", job.crashes + 1
                back["crashes"] = crashes
                if crashes >= max_attempts:
                    error = crashed_alone_error(job.path, crashes)
                    back.update(state=JobState.FAILED.value, error=error, finished_at=now)
            else:
                cause = "in_model"
                back.update(suspect=1, attempts=max(job.attempts - 1, 0))
            now_job = db.set(conn, job.id, **back)
            if now_job.state is JobState.FAILED:
                outbox.owe(conn, now_job, "failed")
            recovered.append(Recovered(now_job, cause, together))
        return recovered


def crashed_alone_error(path: Path, crashes: int) -> str:
    """Given a file that crashed the daemon each time it was transcribed alone, return why it failed."""
    shown = shlex.quote(printable(os.fsdecode(path)))
    return (
        f"the daemon crashed {crashes} times while transcribing this file alone; it may be damaged: "
        f"check it with ffprobe, then `subwatch retry {shown}`"
    )
