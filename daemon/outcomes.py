"""How a job ends: done, failed (or retrying), released, dropped, and the notifications owed.

Both the loader (a stored transcript, a file that cannot be read) and the transcriber
workers end jobs; each ending writes the queue, its one journal line and, for done and
failed, hands the notifier the notification the queue now owes (see JobQueue.notices).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from daemon import media, pipeline, subtitles
from daemon.config import Config, FolderRules
from daemon.datatypes import Job, JobResult, JobState
from daemon.logs import done_details, job_log
from daemon.notify import Event, Notifier
from daemon.queue import JobQueue, LeaseLost, Notice, QueueError, until_answered
from daemon.text import format_duration

log = logging.getLogger("subwatch")


class Outcomes:
    """Ends jobs. `config` returns the config in force (a reload replaces it); `wake` tells the
    loader there is work (a job renamed while in hand goes back to the queue)."""

    def __init__(self, jobs: JobQueue, ledger: subtitles.SidecarLedger, notifier: Notifier,
                 config: Callable[[], Config], wake: Callable[[], None],
                 sidecars_written: Callable[[int, list[Path]], None] = lambda job_id, paths: None) -> None:
        self.jobs = jobs
        self._sidecars_written = sidecars_written  # the media servers are told (daemon.mediaservers)
        self.ledger = ledger
        self.notifier = notifier
        self._config = config
        self._wake = wake
        self._notices_lock = threading.Lock()
        # Outbox rows handed to the notifier and not yet delivered (delivered ones leave the outbox).
        # A set, not the last id: a gone node's notices, taken over later, have lower ids.
        self._handed: set[int] = set()

    def release(self, job_id: int, why: str) -> None:
        """Give a running job back to the queue (a clean stop: no attempt counted), with its line."""
        try:
            job = until_answered(lambda: self.jobs.release(job_id))
        except KeyError:
            return  # forgotten meanwhile
        except LeaseLost as lost:
            self.lease_lost(lost, "not returned")
            return
        if job.state == JobState.PENDING:
            job_log(log, "released", job.path, why, job.id)

    def gone(self, job: Job, why: str) -> None:
        """A claimed job's file is not at the path the worker has: drop the job, or requeue it
        if the watcher saw it renamed meanwhile (Sonarr and Radarr rename right after import)."""
        current = until_answered(lambda: self.jobs.get(job.id))
        if current is None:
            return  # forgotten or dropped meanwhile
        if current.path != job.path and current.path.exists():
            until_answered(lambda: self.jobs.release(job.id))
            job_log(log, "requeued", current.path, f"renamed from {job.path.name} while in hand", job.id)
            self._wake()
            return
        if until_answered(lambda: self.jobs.drop(current.path, claimed=True)) is not None:
            job_log(log, "dropped", job.path, why, job.id)

    def still_running(self, items: Iterable[pipeline.Prepared]) -> list[tuple[pipeline.Prepared, Job]]:
        """Return the items whose job is still running, each with its job; one forgotten or dropped
        while its file waited is left out. An item whose file the watcher saw renamed meanwhile
        comes back with the new path (same content: a rename keeps the job). One whose lease this
        node lost is left out with its `discarded` line: nothing more is done or written for it."""
        live = []
        for item in items:
            job = until_answered(partial(self.jobs.get, item.job_id)) if item.job_id is not None else None
            if job is not None and not self.jobs.holds(job):  # lapsed while it waited: another node's
                self.lease_lost(LeaseLost(job), "not finished here")
                continue
            if job is not None and job.state == JobState.RUNNING:
                live.append((item if job.path == item.path else replace(item, path=job.path), job))
        return live

    def complete(self, job: Job, item: pipeline.Prepared, transcript: Any) -> None:
        live = self.still_running([item])  # renamed while it was transcribed: write beside the new name
        if not live:
            return
        item, job = live[0]
        try:
            result = pipeline.complete(item, transcript, self.ledger.for_job(job.id))
        except media.MediaGone:
            self.gone(job, "deleted while it was transcribed; dropped")
            return
        except subtitles.SidecarFolderError as exc:  # its folder cannot be made: retrying cannot help
            self.failed(job, one_line_error(exc), permanent=True)
            return
        except Exception as exc:  # disk full, permissions: retried with backoff
            log.debug("writing the subtitles of %s failed", item.path, exc_info=True)
            self.failed(job, one_line_error(exc), permanent=False)
            return
        self.done(job, item, result)

    def done(self, job: Job, item: pipeline.Prepared, result: JobResult) -> None:
        try:
            done = until_answered(lambda: self.jobs.finish(job.id, result))
        except LeaseLost as lost:  # lapsed while the sidecars were written: the new holder rewrites them
            self.lease_lost(lost, "not marked done")
            return
        reused = item.transcript is not None
        if result.note:  # no speech found: nothing written, so no timing or language worth a line
            details = f"{result.note} ({format_duration(result.media_duration)} of audio)"
            details += "  from the stored transcript (no decoding)" if reused else ""
        else:
            details = done_details(result.language, result.media_duration, result.elapsed,
                                   done.uncovered_seconds, reused=reused)
        job_log(log, "done", job.path, details, done.id)
        self.notify_owed()
        if result.outputs:  # media servers are told only of sidecars written (none without speech)
            self._sidecars_written(done.id, list(result.outputs))

    def skipped(self, job: Job, why: str) -> None:
        """Mark a claimed job skipped (nothing to do), with its line."""
        try:
            until_answered(lambda: self.jobs.skip(job.id, why))
        except LeaseLost as lost:
            self.lease_lost(lost, "not marked skipped")
            return
        job_log(log, "skipped", job.path, why, job.id)

    def lease_lost(self, lost: LeaseLost, what: str) -> None:
        """Log a result this node discards because its lease on the job lapsed (see daemon.leases)."""
        job_log(log, "discarded", lost.job.path, f"{what}: {lost}", lost.job.id, level=logging.WARNING)

    def failed(self, job: Job, error: str, *, permanent: bool) -> None:
        try:
            updated = until_answered(lambda: self.jobs.fail(job.id, error, permanent=permanent,
                                                            max_attempts=self._config().max_attempts))
        except LeaseLost as lost:
            self.lease_lost(lost, "its failure not recorded")
            return
        if updated.state == JobState.PENDING:
            wait = max(updated.next_attempt_at - time.time(), 0)
            job_log(log, "retrying", job.path, f"in {wait:.0f} s: {error}", job.id,
                    level=logging.WARNING)
            return
        self.report_failure(job, error)

    def report_failure(self, job: Job, error: str) -> None:
        """Log a job that is now failed and send the notification the queue owes for it."""
        job_log(log, "failed", job.path, error, job.id, level=logging.ERROR)
        self.notify_owed()

    def notify_owed(self) -> None:
        """Hand the notifier each notification the queue owes that it has not been handed yet.

        The queue writes them in the transaction that ends a job and deletes them once delivered
        (Notifier's `settled`), so one a kill kept from its target goes out at the next start.
        """
        with self._notices_lock:
            try:
                owed = self.jobs.notices()
            except QueueError:
                return  # closed, or the database is away: the next job's end tries again
            self._handed &= {notice.id for notice in owed}  # delivered: no longer owed
            owed = [notice for notice in owed if notice.id not in self._handed]
            self._handed |= {notice.id for notice in owed}
        for notice in owed:
            self.notifier.send(self._event(notice))

    def _event(self, notice: Notice) -> Event:
        rules = self._config().folder_for(notice.path)  # None: its folder has left the config
        return Event(
            kind=notice.kind, path=notice.path, language=notice.language,
            media_duration=notice.media_duration, elapsed=notice.elapsed,
            model=rules.transcribe.model if rules else None,
            # A done job's `error` is its note (no speech found): see JobQueue.finish.
            error=notice.error if notice.kind == "failed" else None,
            note=notice.error if notice.kind == "done" else None,
            # A folder this node does not watch (it left the config, or the notice was taken over from
            # a gone node that watched it): the global targets still hear of it.
            urls=self._targets(rules) if rules else self._config().notify.urls, key=notice.id,
        )

    def _targets(self, rules: FolderRules) -> tuple[str, ...]:
        if rules.notify.replace:
            return rules.notify.urls
        return self._config().notify.urls + rules.notify.urls


def one_line_error(exc: BaseException) -> str:
    """Given an exception, return its message on one line of at most 300 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "…"
