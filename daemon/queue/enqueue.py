"""Enqueue: a file that finished arriving becomes a job, or is matched to the job its content has.

Identity is the content fingerprint (`identity`): a copy at another path gets its
own job written from the stored transcript, a renamed file takes its job along,
and a file already done, failed or in the works is reported as such.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.datatypes import Job, JobState
from daemon.queue.database import Database
from daemon.queue.engines import Connection
from daemon.queue.identity import fingerprint
from daemon.queue.schema import JOB_COLUMNS

EnqueueAction = Literal[
    "queued", "requeued", "copied", "duplicate", "already_done", "already_failed", "moved"
]


@dataclass(frozen=True)
class EnqueueOutcome:
    """What `JobQueue.enqueue` did with a file.

    - queued: a new pending job (`job`).
    - requeued: the path had a done/skipped/failed job but the content changed;
      that job is pending again with attempts 0.
    - copied: a new pending job (`job`) for a copy of content that is done (or
      skipped) at `copy_of`, another path that still exists: the same film in
      a second library, a hard link. The copy gets its own sidecars, written
      from the transcript stored for its content and its folder's rules when
      there is one (no decoding), else transcribed.
    - duplicate: this path's job is pending or running, or the same content is
      pending or running at another existing path and done nowhere; `job` is
      that job (its path may differ from the one given). No job is made for a
      copy then: the caller enqueues it again once that job has finished,
      and it is `copied` (or `already_failed`) then.
    - already_done: this path's job is done or skipped and its content has
      not changed; `job` is that job.
    - already_failed: this path's job failed, or the same content failed at
      another existing path and is done, pending and running nowhere; it
      stays failed until `subwatch retry` (or new content).
    - moved: a job for the same content sat at `previous_path`, which no longer
      exists; the job now has the new path and keeps its state. The caller
      moves the sidecars and calls `move_sidecar` for each.
    """

    job: Job
    action: EnqueueAction
    previous_path: Path | None = None
    copy_of: Path | None = None

    @property
    def queued(self) -> bool:
        """Return True if a worker has new work because of this call."""
        return self.action in ("queued", "requeued", "copied")


# Which job a copy follows when its content has several: a done one (its transcript is stored), else
# one still in the works (wait for it), else a skipped one (the reason may be its path), else a failure.
_TWIN_PREFERENCE = {JobState.DONE: 0, JobState.PENDING: 1, JobState.RUNNING: 1, JobState.SKIPPED: 2,
                    JobState.FAILED: 3}


class Enqueuer:
    """Applies the enqueue rules to the `jobs` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def enqueue(self, path: Path, folder: Path) -> EnqueueOutcome:
        """Given a file that finished arriving and its watched folder, return what was done with it.

        Identity is the content fingerprint; see EnqueueOutcome for the rules. A file whose
        size and mtime match its job at the same path is not read again (restarts stay cheap).
        Raise FileNotFoundError/PermissionError if the file cannot be read.
        """
        st = os.stat(path)
        known = self._db.read_job(path=path)
        if known is not None and (known.size, known.mtime) == (st.st_size, st.st_mtime):
            size, mtime, content = known.size, known.mtime, known.fingerprint
        else:
            size, mtime, content = fingerprint(path, self._db.key(path))
        with self._db.write(durable=False) as conn:
            job = self._db.row_by_path(conn, path)
            if job is not None:
                return self._enqueue_known(conn, job, folder, size, mtime, content)
            return self._enqueue_new(conn, path, folder, size, mtime, content)

    def _enqueue_known(
        self, conn: Connection, job: Job, folder: Path, size: int, mtime: float, content: str
    ) -> EnqueueOutcome:
        """Given the job already at the path and the file's current identity, apply the path rules."""
        if job.fingerprint != content and job.state is JobState.PENDING:
            # Rewritten before its turn: just describe the new content.
            job = self._db.set(conn, job.id, size=size, mtime=mtime, fingerprint=content)
            return EnqueueOutcome(job, "duplicate")
        if job.fingerprint != content and job.state is not JobState.RUNNING:
            return EnqueueOutcome(self._requeue(conn, job.id, folder, size, mtime, content), "requeued")
        if (job.size, job.mtime) != (size, mtime) and job.fingerprint == content:
            # Same content, new mtime (touched, copied back): remember it so the next scan skips hashing.
            job = self._db.set(conn, job.id, size=size, mtime=mtime)
        # A running job whose file changed keeps its old fingerprint, so once it is done the
        # next scan sees a different fingerprint and requeues it.
        return EnqueueOutcome(job, _action_for_existing(job.state))

    def _enqueue_new(
        self, conn: Connection, path: Path, folder: Path, size: int, mtime: float, content: str
    ) -> EnqueueOutcome:
        """Given a path without a job, move a job for the same content here, or give this copy its
        own job, or report the job it waits for, or insert a new one."""
        twins = [
            self._db.job_of(row)
            for row in conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE fingerprint = ? ORDER BY "
                "CASE state WHEN 'done' THEN 0 WHEN 'skipped' THEN 0 WHEN 'failed' THEN 2 ELSE 1 END, id"
                + self._db.lock_rows,  # PostgreSQL: a claim cannot take a twin this decides about
                (content,),
            )
        ]
        for twin in twins:
            # A running job's worker holds the old path; leave it be and let a later scan move it. A
            # twin whose folder this host does not see (another host's share) may well be there.
            if twin.state is not JobState.RUNNING and twin.folder.is_dir() and not twin.path.exists():
                moved = self._db.set(
                    conn, twin.id, path=self._db.key(path), folder=self._db.key(folder), size=size,
                    mtime=mtime,
                )
                return EnqueueOutcome(moved, "moved", previous_path=twin.path)
        twin = min(twins, key=lambda t: _TWIN_PREFERENCE[t.state], default=None)
        if twin is None:
            return EnqueueOutcome(self._insert(conn, path, folder, size, mtime, content), "queued")
        if twin.state in (JobState.DONE, JobState.SKIPPED):
            copy = self._insert(conn, path, folder, size, mtime, content)
            return EnqueueOutcome(copy, "copied", copy_of=twin.path)
        return EnqueueOutcome(twin, _action_for_existing(twin.state))

    def _insert(
        self, conn: Connection, path: Path, folder: Path, size: int, mtime: float, content: str
    ) -> Job:
        """Given a path without a job and its identity, return a new pending job for it."""
        now = time.time()
        row = conn.execute(
            "INSERT INTO jobs (path, folder, state, size, mtime, fingerprint, created_at, updated_at) "
            "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?) RETURNING id",
            (self._db.key(path), self._db.key(folder), size, mtime, content, now, now),
        ).fetchone()
        return self._db.require(conn, row[0])

    def _requeue(
        self, conn: Connection, job_id: int, folder: Path, size: int, mtime: float, content: str
    ) -> Job:
        """Given a finished job whose file was replaced, return it pending again with the new identity."""
        return self._db.set(
            conn,
            job_id,
            state=JobState.PENDING.value,
            folder=self._db.key(folder),
            size=size,
            mtime=mtime,
            fingerprint=content,
            attempts=0,
            suspect=0,
            crashes=0,
            in_model_since=None,
            error=None,
            language=None,
            language_probability=None,
            outputs="[]",
            media_duration=None,
            elapsed=None,
            transcript_rules=None,
            speech_seconds=None,
            uncovered_seconds=None,
            started_at=None,
            finished_at=None,
            next_attempt_at=0.0,
        )


def _action_for_existing(state: JobState) -> EnqueueAction:
    """Given the state of the job that already covers a file, return the enqueue action to report."""
    if state in (JobState.DONE, JobState.SKIPPED):
        return "already_done"
    if state is JobState.FAILED:
        return "already_failed"
    return "duplicate"
