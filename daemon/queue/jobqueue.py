"""`JobQueue`: the one object the daemon and the CLI hold, a thin front over the stores of each table.

Each method hands its work to the store that owns it; the stores share one
`Database` (connections and transactions), so a method that touches several
tables (finish: job, transcript and notice) is still one transaction.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

from daemon.datatypes import Job, JobResult, JobState, Transcript, TranscriptKey
from daemon.pathmap import PathMap
from daemon.queue.database import Database
from daemon.queue.decoders import DecoderRecords
from daemon.queue.enqueue import EnqueueOutcome, Enqueuer
from daemon.queue.jobs import JobStore
from daemon.queue.lifecycle import JobRuns
from daemon.queue.nodes import NodeRecords
from daemon.queue.outbox import Notice, Outbox
from daemon.queue.recovery import Recovered, charge_crash, reap_lapsed, recover_running, suspect
from daemon.queue.schema import BACKOFF_BASE_S, LEASE_SECONDS, MAX_ATTEMPTS, SAME
from daemon.queue.servers import ServerUpdate, ServerUpdates
from daemon.queue.sidecars import SidecarStore
from daemon.queue.stats import QueueStats
from daemon.queue.transcripts import TranscriptStore


class JobQueue:
    """The job table, stored transcripts, owed notifications and sidecar records, in one SQLite file
    or one PostgreSQL database (`engines`).

    Safe to use from many threads (each gets its own connection) and from many
    processes at once (SQLite locking; every read-then-write is one
    `BEGIN IMMEDIATE` transaction).
    """

    def __init__(self, target: Path | str, node: str | None = None,
                 lease_seconds: float = LEASE_SECONDS, paths: PathMap = SAME) -> None:
        """Given a SQLite file's path or a postgresql:// URL, open the queue (creating a file if needed)
        for the node (daemon) `node` (default: the host's name), whose claims hold a lease of
        `lease_seconds` that `renew` extends. `paths` (node.path_map) maps the paths the queue stores
        to this host's: every path given is this host's, and every path handed out too.

        Raise QueueError if the database cannot be created, opened or reached, or if it holds a
        schema newer than this code.
        """
        self._db = Database(target, paths)
        self.target = target  # as given: a URL keeps its password, so never print it (see `where`)
        self.path = self._db.path  # the SQLite file; None on PostgreSQL
        self.where = self._db.where  # the file, or the URL without its password, for messages
        self._enqueuer = Enqueuer(self._db)
        self.node = node or socket.gethostname()
        self.lease_seconds = lease_seconds
        self._runs = JobRuns(self._db, self.node, lease_seconds)
        self.nodes = NodeRecords(self._db)  # each daemon's heartbeat, for the status and the reaping
        self._jobs = JobStore(self._db)
        self._transcripts = TranscriptStore(self._db)
        self._outbox = Outbox(self._db, self.node)
        self._sidecars = SidecarStore(self._db)
        self.server_updates = ServerUpdates(self._db, self.node)  # media servers told of sidecars
        self.decoders = DecoderRecords(self._db)  # each transcriber's decoder child, for the status
        self.stats = QueueStats(self._db)  # read-only sums for the status page and /metrics

    def hold_node(self) -> None:
        """Hold this node's name for this daemon while it runs (PostgreSQL; a SQLite file is one
        daemon's already). Raise QueueError, naming the other daemon's host, if another has it."""
        self._db.hold_node(self.node)

    def close_thread(self) -> None:
        """Close the calling thread's connection, if it has one (see `Database.close_thread`)."""
        self._db.close_thread()

    def close(self) -> None:
        """Close every thread's connection. Call after the threads that use the queue stopped."""
        self._db.close()

    # -- the watcher's side (enqueue.Enqueuer) ---------------------------------------------------

    def enqueue(self, path: Path, folder: Path) -> EnqueueOutcome:
        """Given a file that finished arriving and its watched folder, return what was done with it."""
        return self._enqueuer.enqueue(path, folder)

    # -- the worker's side (lifecycle.JobRuns, recovery) -----------------------------------------

    def claim(self, now: float | None = None) -> Job | None:
        """Return the oldest pending job due at `now` (a suspect first), marked running, or None."""
        return self._runs.claim(now)

    def finish(self, job_id: int, result: JobResult) -> Job:
        """Given a job id and the pipeline's result, return the job marked done, its transcript stored."""
        return self._runs.finish(job_id, result)

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
        """Given a job id and why it failed, return the job failed or pending again after a backoff."""
        return self._runs.fail(
            job_id, error, permanent=permanent, max_attempts=max_attempts, backoff_base=backoff_base, now=now
        )

    def skip(self, job_id: int, reason: str) -> Job:
        """Given a job id and why there is nothing to do, return the job marked skipped."""
        return self._runs.skip(job_id, reason)

    def release(self, job_id: int) -> Job:
        """Given a running job id, return it pending again without counting the attempt."""
        return self._runs.release(job_id)

    def enter_model(self, job_ids: Iterable[int], now: float | None = None) -> None:
        """Given the running jobs a worker is about to hand the model together, mark them in the model."""
        self._runs.enter_model(job_ids, now)

    def leave_model(self, job_ids: Iterable[int], *, survived: bool) -> None:
        """Given jobs the model has finished with, clear their in-model mark (and suspicion if `survived`)."""
        self._runs.leave_model(job_ids, survived=survived)

    def recover_running(self) -> list[Recovered]:
        """Return the jobs this node's last run left running, each pending again, and why (nothing
        charged); and record the node as started."""
        self.nodes.beat(self.node, self.lease_seconds, starting=True)
        recovered = recover_running(self._db, self.node)
        self.adopt_owed()  # what this node's last run, or another gone node, left owed
        return recovered

    def serve(self, folders: Iterable[Path] | None) -> None:
        """Claim only jobs of these watched folders from now on (None, the default: of any)."""
        self._runs.serve(folders)

    def renew(self, workers: Sequence[str] | None = None) -> int:
        """Beat this node's heartbeat (recording the devices its transcribers run on, if given) and
        extend the leases it holds; return how many it renewed."""
        self.nodes.beat(self.node, self.lease_seconds, workers)
        return self._runs.renew()

    def adopt_owed(self) -> int:
        """Take over what no live node owes (a gone node's notifications and media server updates);
        return how many rows this node took. Each row is taken by one node only."""
        return self.nodes.adopt(self.node)

    def reap_lapsed(self) -> list[Recovered]:
        """Return other nodes' running jobs whose lease lapsed, each pending again, and why."""
        return reap_lapsed(self._db, self.node)

    def holds(self, job: Job) -> bool:
        """Given a job as read now, return True unless this node claimed it and lost the lease."""
        return self._runs.holds(job)

    def suspect(self, job_ids: Iterable[int]) -> list[Job]:
        """Running jobs that were in a decoder child that died of a fault together: pending, suspects."""
        return suspect(self._db, job_ids, self._runs.holds)

    def charge_crash(self, job_id: int, reason: str, max_attempts: int = MAX_ATTEMPTS) -> Job:
        """A running job alone in a decoder child that died of a fault: a crash counted (see recovery)."""
        return charge_crash(self._db, job_id, reason, self._runs.holds, max_attempts)

    # -- notifications owed (outbox.Outbox) ------------------------------------------------------

    def notices(self, after: int = 0) -> list[Notice]:
        """Return the notifications owed whose id is above `after`, oldest first."""
        return self._outbox.notices(after)

    def notices_settled(self, ids: Iterable[int]) -> None:
        """Given owed notifications that were delivered (or given up on), owe them no longer."""
        self._outbox.settled(ids)

    def server_updates_of(self, job_id: int) -> list[ServerUpdate]:
        """Return the media servers owed or told of the job's sidecars, oldest first."""
        return self.server_updates.of_job(job_id)

    # -- reading and edits from the watcher and the CLI (jobs.JobStore) --------------------------

    def next_wakeup(self) -> float | None:
        """Return the earliest next_attempt_at of pending jobs (may be in the past), or None if none."""
        return self._jobs.next_wakeup()

    def get(self, job_id: int) -> Job | None:
        """Given a job id, return the job, or None if there is none."""
        return self._jobs.get(job_id)

    def find(self, path: Path) -> Job | None:
        """Given a media path, return its job, or None if there is none."""
        return self._jobs.find(path)

    def jobs(self, states: Iterable[JobState] | None = None) -> list[Job]:
        """Return the jobs in `states` (all jobs if None), oldest first."""
        return self._jobs.jobs(states)

    def counts(self) -> dict[JobState, int]:
        """Return how many jobs are in each state (every state present, zero if none)."""
        return self._jobs.counts()

    def drop(self, path: Path, *, claimed: bool = False) -> Job | None:
        """Given a media path deleted before its turn, remove its pending (or `claimed`) job and return it."""
        return self._jobs.drop(path, claimed=claimed)

    def move(self, old: Path, new: Path, folder: Path | None = None) -> Job | None:
        """Given a media file's old and new path, return its job with the new path, or None if none."""
        return self._jobs.move(old, new, folder)

    def retry(self, path: Path | None = None, all_failed: bool = False) -> int:
        """Put the failed job at `path` (or every failed job) back to pending; return how many were."""
        return self._jobs.retry(path, all_failed)

    def forget(self, path: Path) -> bool:
        """Given a media path, delete its job, sidecar records and unshared stored transcript."""
        return self._jobs.forget(path)

    def set_outputs(self, job_id: int, outputs: Iterable[Path]) -> Job:
        """Given a job id and the sidecars now written for it, return the job with them as its outputs."""
        return self._jobs.set_outputs(job_id, outputs)

    # -- stored transcripts (transcripts.TranscriptStore) ----------------------------------------

    def store_transcript(self, content: str, key: TranscriptKey, transcript: Transcript) -> None:
        """Given a content fingerprint, the rules that shaped a transcript and the transcript, store it."""
        self._transcripts.store(content, key, transcript)

    def transcript(self, content: str, key: TranscriptKey) -> Transcript | None:
        """Given a content fingerprint and the rules, return the stored transcript, or None."""
        return self._transcripts.get(content, key)

    def transcript_of(self, job_id: int) -> Transcript | None:
        """Given a job id, return the stored transcript its sidecars were written from, or None."""
        return self._transcripts.of_job(job_id)

    # -- sidecar records (sidecars.SidecarStore) -------------------------------------------------

    def record_sidecar(self, path: Path, sha256: str, job_id: int) -> None:
        """Record that subwatch wrote `path` with content hash `sha256` for a job."""
        self._sidecars.record(path, sha256, job_id)

    def sidecar_hash(self, path: Path) -> str | None:
        """Given a sidecar path, return the sha256 subwatch recorded for it, or None if it is not ours."""
        return self._sidecars.hash(path)

    def move_sidecar(self, old: Path, new: Path) -> bool:
        """Given a recorded sidecar's old and new path, move the record; return False if none."""
        return self._sidecars.move(old, new)

    def forget_sidecar(self, path: Path) -> bool:
        """Given a sidecar path, delete subwatch's record of it; return False if there was none."""
        return self._sidecars.forget(path)

    def sidecars_of(self, job_id: int) -> list[Path]:
        """Given a job id, return the sidecar paths recorded for it, sorted."""
        return self._sidecars.of_job(job_id)

    def record_sidecar_folder(self, path: Path) -> None:
        """Record that subwatch made the folder `path` for sidecars."""
        self._sidecars.record_folder(path)

    def is_sidecar_folder(self, path: Path) -> bool:
        """Given a folder, return True if subwatch recorded making it for sidecars."""
        return self._sidecars.is_folder(path)

    def forget_sidecar_folder(self, path: Path) -> bool:
        """Given a folder, delete subwatch's record of making it; return False if there was none."""
        return self._sidecars.forget_folder(path)
