"""Crash recovery: the jobs a dead daemon or decoder child left running, put back, and a crash held
only against a file that caused it.

A claimed job stays in the table as `running` until it is finished, so after a
kill, crash or power loss `recover_running` finds it at the next start. Decoding
runs in a child process (daemon.decoders), so the daemon's own death says nothing
about any file: it charges nobody, and the files that were in the model are
suspects, each decoded alone next. A crash is charged (`charge_crash`) only when
a decoder child died of a fault (a crashing signal, the OOM killer, a hang) with
one file in it; a fault with several in it makes them all suspects (`suspect`).
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.datatypes import Job, JobState
from daemon.queue import outbox
from daemon.queue.database import Database
from daemon.queue.engines import Connection
from daemon.queue.schema import JOB_COLUMNS, MAX_ATTEMPTS
from daemon.text import printable

RecoveryCause = Literal["waiting", "in_model"]


@dataclass(frozen=True)
class Recovered:
    """A job the last daemon left running (it was killed, crashed or lost power), as
    `JobQueue.recover_running` put it back, the attempt not counted.

    - waiting: claimed, but the model had not begun transcribing it (start-up, model loading,
      decoding, waiting for a worker): pending again.
    - in_model: in the model when the daemon died, together with `together - 1` other files:
      pending again as a suspect, to be transcribed alone next.
    """

    job: Job
    cause: RecoveryCause
    together: int = 0  # how many jobs were in the model when the daemon died


def recover_running(db: Database, node: str) -> list[Recovered]:
    """Return the jobs the last run of this node left running, each pending again, and why (call once
    at start, before any claim). In a SQLite file every running job is this node's (one daemon per
    file); in PostgreSQL only those it claimed (or claimed before nodes were recorded), since other
    nodes' running jobs are theirs until their leases lapse (`reap_lapsed`). Nothing is charged a
    crash: see the module's docstring."""
    mine = "" if db.dialect == "sqlite" else " AND (node = ? OR node IS NULL)"
    with db.write() as conn:
        rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running'{mine} ORDER BY id",
                            () if db.dialect == "sqlite" else (node,))
        return _put_back(db, conn, [db.job_of(row) for row in rows.fetchall()])


def reap_lapsed(db: Database, node: str) -> list[Recovered]:
    """Return other nodes' running jobs whose lease lapsed (that node died, hung or lost the
    network for longer than its lease), each pending again by the rules of `recover_running`."""
    with db.write() as conn:
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND node != ? "
            f"AND lease_until < {db.now_sql} ORDER BY id", (node,))
        return _put_back(db, conn, [db.job_of(row) for row in rows.fetchall()])


def _put_back(db: Database, conn: Connection, running: list[Job]) -> list[Recovered]:
    """Given running jobs whose daemon died, make each pending again: the attempt not counted, one
    that was in the model a suspect (transcribed alone next). Counted together per node."""
    in_model: dict[str | None, int] = {}
    for job in running:
        in_model[job.node] = in_model.get(job.node, 0) + (job.in_model_since is not None)
    recovered = []
    for job in running:
        back = {"state": JobState.PENDING.value, "started_at": None, "in_model_since": None,
                "next_attempt_at": 0.0, "attempts": max(job.attempts - 1, 0), "lease_token": None,
                "lease_until": None}
        cause: RecoveryCause = "waiting" if job.in_model_since is None else "in_model"
        if cause == "in_model":
            back["suspect"] = 1
        recovered.append(Recovered(db.set(conn, job.id, **back), cause, in_model[job.node]))
    return recovered


def suspect(db: Database, job_ids: Iterable[int], holds: Callable[[Job], bool]) -> list[Job]:
    """Given running jobs that were in a decoder child when it died of a fault, return them pending
    again as suspects (each transcribed alone next), the attempt not counted. One whose lease this
    node lost (`holds`) is another node's now and left as it is."""
    back = []
    with db.write() as conn:
        for job_id in job_ids:
            job = db.require(conn, job_id)
            if job.state is JobState.RUNNING and holds(job):
                job = db.set(conn, job_id, state=JobState.PENDING.value, attempts=max(job.attempts - 1, 0),
                             started_at=None, in_model_since=None, suspect=1, next_attempt_at=0.0,
                             lease_token=None, lease_until=None)
            back.append(job)
    return back


def charge_crash(
    db: Database, job_id: int, reason: str, holds: Callable[[Job], bool], max_attempts: int = MAX_ATTEMPTS
) -> Job:
    """Given a running job that was alone in a decoder child when it died of a fault, count the crash;
    return it pending again as a suspect, or failed with `reason` (and a way out) once it has
    `max_attempts` crashes, its notification owed. One whose lease this node lost is left as it is."""
    with db.write() as conn:
        job = db.require(conn, job_id)
        if job.state is not JobState.RUNNING or not holds(job):
            return job
        crashes = job.crashes + 1
        back = {"state": JobState.PENDING.value, "attempts": max(job.attempts - 1, 0), "started_at": None,
                "in_model_since": None, "suspect": 1, "crashes": crashes, "next_attempt_at": 0.0,
                "lease_token": None, "lease_until": None}
        if crashes >= max_attempts:
            back.update(state=JobState.FAILED.value, error=crashed_error(job.path, reason),
                        finished_at=time.time())
        job = db.set(conn, job_id, **back)
        if job.state is JobState.FAILED:
            outbox.owe(db, conn, job, "failed")
        return job


def crashed_error(path: Path, reason: str) -> str:
    """Given a file that crashed its decoder each time it was transcribed alone and why, return the
    failure's reason with what to do."""
    shown = shlex.quote(printable(os.fsdecode(path)))
    return f"{reason}; it may be damaged: check it with ffprobe, then `subwatch retry {shown}`"
