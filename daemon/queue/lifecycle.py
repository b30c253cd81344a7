"""A job's life with a worker: claimed, in and out of the model, then done, failed, skipped or released.

While the model transcribes a job it is marked so (`enter_model`), so a crash is
held only against the files that were in the model (see `recovery`). The
notification a finished or failed job is owed is written in the transaction that
ends it (`outbox`), so a kill cannot lose it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from daemon.datatypes import Job, JobResult, JobState
from daemon.queue import outbox, transcripts
from daemon.queue.database import Database
from daemon.queue.engines import Connection
from daemon.queue.schema import BACKOFF_BASE_S, MAX_ATTEMPTS


def pick_sql(dialect: str, folders: int = 0) -> str:
    """Return the claim's choice of job: the first due pending one, suspects first, read through the
    partial index jobs_claimable; on PostgreSQL a row another transaction holds is skipped. With
    `folders`, only a job in one of that many folders (`?` each) is chosen."""
    skip = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    within = f" AND folder IN ({', '.join('?' * folders)})" if folders else ""
    return ("SELECT id FROM jobs WHERE state = 'pending' AND next_attempt_at <= ?"
            f"{within} ORDER BY suspect DESC, id LIMIT 1{skip}")


class LeaseLost(Exception):
    """This node's lease on a job lapsed and the job was put back or taken by another node: this
    node's result for it is stale and must be discarded (nothing written for it)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        owner = f"node {job.node}" if job.state is JobState.RUNNING and job.node else "the queue"
        super().__init__(f"the lease on job {job.id} lapsed and {owner} has it now")


class JobRuns:
    """The worker's side of the `jobs` table, for one node: the leases it holds (job id -> token)
    are checked by every write it makes to those jobs, so a node that lost one writes nothing."""

    def __init__(self, db: Database, node: str, lease_seconds: float) -> None:
        self._db = db
        self.node = node
        self.lease_seconds = lease_seconds
        self._held: dict[int, str] = {}
        self._lost: set[int] = set()  # leases this node lost: it writes nothing for them ever after
        self._held_lock = threading.Lock()
        self._folders: tuple[bytes, ...] | None = None  # None: any folder's job

    def serve(self, folders: Iterable[Path] | None) -> None:
        """Claim only jobs of these watched folders from now on (None: of any). A node has rules only
        for its own folders: another node's job would be skipped as "not in a watched folder"."""
        self._folders = None if folders is None else tuple(sorted({self._db.key(f) for f in folders}))

    def holds(self, job: Job) -> bool:
        """Given a job as read now, return True unless this node claimed it and has lost the lease."""
        with self._held_lock:
            if job.id in self._lost:
                return False
            token = self._held.get(job.id)
            if token is None or (job.state is JobState.RUNNING and job.lease_token == token):
                return True
            del self._held[job.id]  # lost for good: a later claim would carry a new token
            self._lost.add(job.id)
            return False

    def _mine(self, conn: Connection, job_id: int) -> Job:
        """Return the job, raising LeaseLost if this node claimed it and the lease is no longer its
        own (KeyError if the job is gone). Called inside the write transaction that changes it."""
        job = self._db.require(conn, job_id)
        if not self.holds(job):
            raise LeaseLost(job)
        return job

    def _let_go(self, job_id: int) -> None:
        with self._held_lock:
            self._held.pop(job_id, None)

    def held(self) -> dict[int, str]:
        """Return the leases this node holds now: job id -> token."""
        with self._held_lock:
            return dict(self._held)

    def claim(self, now: float | None = None) -> Job | None:
        """Return the oldest pending job that is due at `now` (a suspect before any other), marked
        running, or None if none is.

        Atomic across threads and processes: no two callers get the same job.
        """
        now = time.time() if now is None else now
        # Suspects first: each is transcribed alone (see recover_running), and the sooner the
        # better, before a backlog piles up behind it. The CTE picks one row and the UPDATE takes
        # only it (Oban's note: without the CTE a planner may update more rows than the LIMIT). On
        # PostgreSQL a row another claim or write holds is skipped, not waited for.
        token = secrets.token_hex(16)
        folders = self._folders
        if folders == ():
            return None  # no folder: nothing this node may take
        with self._db.claim() as conn:
            row = conn.execute(
                f"WITH next AS ({pick_sql(self._db.dialect, len(folders or ()))}) "
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, "
                "finished_at = NULL, updated_at = ?, node = ?, lease_token = ?, "
                f"lease_until = {self._db.now_sql} + ? FROM next WHERE jobs.id = next.id RETURNING jobs.id",
                (now, *(folders or ()), now, now, self.node, token, self.lease_seconds),
            ).fetchone()
            if row is None:
                return None
            with self._held_lock:
                self._held[row[0]] = token
                self._lost.discard(row[0])  # lapsed once, put back, claimed by this node again
            return self._db.require(conn, row[0])

    def renew(self) -> int:
        """Extend the lease of every job this node holds by lease_seconds from now (the database's
        clock); return how many were renewed. A lease lapsed and taken over is not renewed: its
        token changed."""
        held = self.held()
        if not held:
            return 0
        with self._db.write(durable=False) as conn:
            renewed = 0
            for job_id, token in held.items():
                renewed += conn.execute(
                    f"UPDATE jobs SET lease_until = {self._db.now_sql} + ? "
                    "WHERE id = ? AND lease_token = ? AND state = 'running'",
                    (self.lease_seconds, job_id, token)).rowcount
            return renewed

    def finish(self, job_id: int, result: JobResult) -> Job:
        """Given a job id and the pipeline's result, return the job marked done. Raise KeyError if gone.

        The result's transcript, if it has one with its key, is stored for the job's content in the
        same transaction, and the job records its seconds of speech and of speech left uncovered.
        The result's `note` (no speech found) is kept in `error`, as a skipped job keeps its reason,
        so the job, its `done` notification and `status` carry it without a column of their own.
        Its `done` notification is owed from the same transaction on (see `notices`).
        """
        transcript, key = result.transcript, result.transcript_key
        with self._db.write() as conn:
            job = self._mine(conn, job_id)
            if transcript is not None and key is not None:
                transcripts.store(conn, job.fingerprint, key, transcript)
            done = self._db.set(
                conn,
                job_id,
                state=JobState.DONE.value,
                error=result.note,
                language=result.language,
                language_probability=result.language_probability,
                outputs=self._db.paths_json(result.outputs),
                media_duration=result.media_duration,
                elapsed=result.elapsed,
                transcript_rules=None if transcript is None or key is None else transcripts.key_text(key),
                speech_seconds=None if transcript is None else transcript.speech_seconds,
                uncovered_seconds=None if transcript is None else transcript.uncovered_seconds,
                in_model_since=None,
                finished_at=time.time(),
                lease_token=None,
                lease_until=None,
            )
            outbox.owe(self._db, conn, done, "done")
        self._let_go(job_id)
        return done

    def fail(
        self,
        job_id: int,
        error: str,
        *,
        permanent: bool,
        max_attempts: int = MAX_ATTEMPTS,
        backoff_base: float = BACKOFF_BASE_S,
        now: float | None = None,
    ) -> Job:
        """Given a job id and why it failed, return the job failed or pending again after a backoff.

        It is failed for good if `permanent` or it has had `max_attempts` attempts, and its `failed`
        notification owed (see `notices`); otherwise it is due again at now + backoff_base *
        2**(attempts - 1). Raise KeyError if the job is gone.
        """
        now = time.time() if now is None else now
        with self._db.write() as conn:
            attempts = max(self._mine(conn, job_id).attempts, 1)
            if permanent or attempts >= max_attempts:
                failed = self._db.set(
                    conn, job_id, state=JobState.FAILED.value, error=error, in_model_since=None,
                    finished_at=now, lease_token=None, lease_until=None,
                )
                outbox.owe(self._db, conn, failed, "failed")
                ended = failed
            else:
                due = now + backoff_base * 2 ** (attempts - 1)
                ended = self._db.set(
                    conn, job_id, state=JobState.PENDING.value, error=error, started_at=None,
                    in_model_since=None, next_attempt_at=due, lease_token=None, lease_until=None,
                )
        self._let_go(job_id)
        return ended

    def skip(self, job_id: int, reason: str) -> Job:
        """Given a job id and why there is nothing to do, return the job marked skipped (reason in
        `error`). Raise KeyError if the job is gone."""
        with self._db.write() as conn:
            self._mine(conn, job_id)
            state = JobState.SKIPPED.value
            skipped = self._db.set(conn, job_id, state=state, error=reason, in_model_since=None,
                                   finished_at=time.time(), lease_token=None, lease_until=None)
        self._let_go(job_id)
        return skipped

    def release(self, job_id: int) -> Job:
        """Given a running job id, return it pending again without counting the attempt.

        For a daemon that stops cleanly mid-job: it is no crash, so a suspect stays one and gains no
        crash. A job in another state is returned unchanged. Raise KeyError if the job is gone.
        """
        with self._db.write() as conn:
            job = self._mine(conn, job_id)
            if job.state is not JobState.RUNNING:
                return job
            released = self._db.set(
                conn, job_id, state=JobState.PENDING.value, attempts=max(job.attempts - 1, 0),
                started_at=None, in_model_since=None, lease_token=None, lease_until=None,
            )
        self._let_go(job_id)
        return released

    def enter_model(self, job_ids: Iterable[int], now: float | None = None) -> None:
        """Given the running jobs a worker is about to hand the model together, mark them in the
        model: if the daemon dies before `leave_model`, recover_running holds it against them."""
        now = time.time() if now is None else now
        ids = list(job_ids)
        with self._db.write() as conn:  # durable: after a power cut the mark must be there
            conn.executemany(
                "UPDATE jobs SET in_model_since = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                [(now, now, job_id) for job_id in ids],
            )

    def leave_model(self, job_ids: Iterable[int], *, survived: bool) -> None:
        """Given jobs the model has finished with, clear their in-model mark; with `survived` (the
        model returned or raised, the daemon lived through it) a suspect among them is cleared too,
        its crashes forgiven: the file does not bring the daemon down. Not `survived`: a stop
        abandoned the transcription, which proves nothing either way."""
        ids = list(job_ids)
        now = time.time()
        cleared = ", suspect = 0, crashes = 0" if survived else ""
        with self._db.write() as conn:
            conn.executemany(
                f"UPDATE jobs SET in_model_since = NULL{cleared}, updated_at = ? WHERE id = ?",
                [(now, job_id) for job_id in ids],
            )
