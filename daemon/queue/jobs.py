"""Reading jobs, and the edits the watcher and the CLI make to them (drop, move, retry, forget)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from daemon.datatypes import Job, JobState
from daemon.queue import transcripts
from daemon.queue.database import Database
from daemon.queue.schema import JOB_COLUMNS


class JobStore:
    """The `jobs` table as the watcher, the CLI and status lines see it."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- reading ----------------------------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        """Return the earliest next_attempt_at of pending jobs (may be in the past), or None if none."""
        sql = "SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'pending'"
        row = self._db.query(sql).fetchone()
        return row[0]

    def get(self, job_id: int) -> Job | None:
        """Given a job id, return the job, or None if there is none."""
        return self._db.read_job(job_id=job_id)

    def find(self, path: Path) -> Job | None:
        """Given a media path, return its job, or None if there is none."""
        return self._db.read_job(path=path)

    def jobs(self, states: Iterable[JobState] | None = None) -> list[Job]:
        """Return the jobs in `states` (all jobs if None), oldest first."""
        if states is None:
            rows = self._db.query(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY id")
        else:
            wanted = [JobState(s).value for s in states]
            if not wanted:
                return []
            marks = ", ".join("?" * len(wanted))
            rows = self._db.query(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY id", wanted
            )
        return [self._db.job_of(row) for row in rows]

    def counts(self) -> dict[JobState, int]:
        """Return how many jobs are in each state (every state present, zero if none)."""
        counts = dict.fromkeys(JobState, 0)
        for state, n in self._db.query("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[JobState(state)] = n
        return counts

    # -- edits from the watcher and the CLI -------------------------------------------------------

    def drop(self, path: Path, *, claimed: bool = False) -> Job | None:
        """Given a media path deleted before its turn, remove its pending job and return it.

        With `claimed`, a running job is removed too: the worker that claimed it
        found the file gone. Return None (and change nothing) if there is no such job.
        """
        allowed = {JobState.PENDING, JobState.RUNNING} if claimed else {JobState.PENDING}
        with self._db.write() as conn:
            job = self._db.row_by_path(conn, path)
            if job is None or job.state not in allowed:
                return None
            conn.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
            return job

    def move(self, old: Path, new: Path, folder: Path | None = None) -> Job | None:
        """Given a media file's old and new path, return its job with the new path (and `folder`
        if given), or None if the old path has no job.

        A job already at `new` describes a file that was just overwritten, so it is deleted
        together with its sidecar records. Sidecars themselves are the caller's to move.
        """
        with self._db.write() as conn:
            job = self._db.row_by_path(conn, old)
            if job is None:
                return None
            conn.execute("DELETE FROM jobs WHERE path = ? AND id != ?", (self._db.key(new), job.id))
            fields: dict[str, object] = {"path": self._db.key(new)}
            if folder is not None:
                fields["folder"] = self._db.key(folder)
            return self._db.set(conn, job.id, **fields)

    def retry(self, path: Path | None = None, all_failed: bool = False) -> int:
        """Put the failed job at `path` (or every failed job) back to pending with attempts 0 and
        return how many were. Raise ValueError if neither a path nor all_failed is given."""
        sql = (
            "UPDATE jobs SET state = 'pending', attempts = 0, error = NULL, next_attempt_at = 0, "
            "suspect = 0, crashes = 0, in_model_since = NULL, "
            "started_at = NULL, finished_at = NULL, updated_at = ? WHERE state = 'failed'"
        )
        params: tuple[object, ...] = (time.time(),)
        if not all_failed:
            if path is None:
                raise ValueError("retry needs a path or all_failed=True")
            sql += " AND path = ?"
            params += (self._db.key(path),)
        with self._db.write() as conn:
            return conn.execute(sql, params).rowcount

    def forget(self, path: Path) -> bool:
        """Given a media path, delete its job, its sidecar records and (unless a copy's job shares
        it) the transcript stored for its content, so the file can be queued fresh and transcribed
        anew; return False if there was no job. Raise ValueError if the job is running right now."""
        with self._db.write() as conn:
            job = self._db.row_by_path(conn, path)
            if job is None:
                return False
            if job.state is JobState.RUNNING:
                raise ValueError(f"{path} is being transcribed now; wait for it or stop the daemon first")
            conn.execute("DELETE FROM jobs WHERE id = ?", (job.id,))  # sidecars go by ON DELETE CASCADE
            # Queued fresh means transcribed anew: its stored transcript goes, unless a copy uses it.
            transcripts.drop_unused(conn, job.fingerprint)
            return True

    def set_outputs(self, job_id: int, outputs: Iterable[Path]) -> Job:
        """Given a job id and the sidecars now written for it, return the job with them as its
        outputs. Raise KeyError if the job is gone."""
        with self._db.write() as conn:
            self._db.require(conn, job_id)
            return self._db.set(conn, job_id, outputs=self._db.paths_json(outputs))
