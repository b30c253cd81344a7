"""The transcriber pool: the loader thread and one worker thread per device.

- the loader claims jobs and decodes their audio with ffmpeg (CPU) ahead of
  the model, up to a bound in seconds of audio (workers.Prefetch), so the GPU
  never waits for ffmpeg; a file whose content already has a stored
  transcript for its folder's rules (a copy) it finishes itself, undecoded;
- one transcriber worker per configured device (`cuda:0`, `cuda:1`, …) takes
  the decoded files its device serves, as many as share a model and fit a
  batch (workers.pick_batch), has its decoder child (daemon.decoders) load the
  model and transcribe them together, and hands each result to `Outcomes`; the
  jobs in the model are marked so in the queue, and when the child dies,
  daemon.transcribers.blame decides what that says about them;
- before each batch a worker answers the HTTP requests waiting in `asr`
  (daemon.asr: Bazarr's audio), ahead of the queued files.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial

from daemon import asr, media, pipeline, subtitles
from daemon.config import Config, FolderRules
from daemon.datatypes import Job, Transcript
from daemon.decoders import Decoder, DecoderDied, DecoderPool
from daemon.logs import job_log
from daemon.notify import Notifier
from daemon.outcomes import Outcomes, one_line_error
from daemon.queue import JobQueue, QueueError, until_answered
from daemon.text import printable
from daemon.transcribe import DeviceUnavailable, ModelNotFound
from daemon.transcribers.blame import Blame
from daemon.transcribers.workers import Prefetch, Waiting, describe_files, worker_devices

log = logging.getLogger("subwatch")
QUEUE_RETRY_S = 2.0  # the loader's pause before asking a database that did not answer again


class Cancelled(Exception):
    """Raised inside a progress callback to abandon a transcription at shutdown."""


@dataclass
class Activity:
    """What one transcriber worker is doing, for the systemd status line and the watchdog."""

    current: str | None = None  # "Movie.mkv", or "3 files: A.mkv, B.mkv, …"
    job_ids: tuple[int, ...] = ()
    progress: float | None = None
    heartbeat: float = 0.0
    seconds: float = 0.0  # of audio in the batch the model has now (0 while loading or serving HTTP)
    since: float = 0.0  # monotonic time the model began on it


@dataclass
class Worker:
    """A transcriber thread bound to one device of the config."""

    device: str  # as configured: auto, cpu, cuda, cuda:N
    activity: Activity
    thread: threading.Thread | None = None
    usable: bool = True  # False once its device turned out to be missing


def stored_transcript(jobs: JobQueue, job: Job, rules: FolderRules) -> Transcript | None:
    """Return the transcript stored for the job's content and its folder's rules, or None if there
    is none or it cannot be read (then the file is transcribed again)."""
    try:
        return jobs.transcript(job.fingerprint, rules.transcript_key)
    except QueueError as exc:
        log.warning("%s; transcribing %s again", exc, printable(os.fsdecode(job.path)))
        return None


def waiting(item: pipeline.Prepared) -> Waiting:
    return Waiting(item.rules.transcribe.model, item.rules.devices, item.audio.duration, alone=item.suspect)


class Transcribers:
    """The loader and the workers, sharing the prefetch of decoded files.

    `config` returns the config in force (a reload replaces it); `wake` is set when the queue may
    have work; `stopping` is set at shutdown; `start_thread(name, target)` starts a daemon thread.
    Set `abandon` to make a running transcription give its batch back (stop grace expired).
    """

    def __init__(self, config: Callable[[], Config], jobs: JobQueue, ledger: subtitles.SidecarLedger,
                 models: DecoderPool, notifier: Notifier, outcomes: Outcomes, wake: threading.Event,
                 stopping: threading.Event,
                 start_thread: Callable[[str, Callable[[], None]], threading.Thread]) -> None:
        self._config = config
        self.jobs = jobs
        self.ledger = ledger
        self.models = models
        self.notifier = notifier
        self.outcomes = outcomes
        self._wake = wake
        self._stopping = stopping
        self._start_thread = start_thread
        self.workers: dict[str, Worker] = {}  # by device
        self.prefetch: Prefetch[pipeline.Prepared] = Prefetch(waiting)
        self.blame = Blame(jobs, outcomes, config)
        self.abandon = threading.Event()
        # HTTP requests with their audio: served before the prefetch, as much as http allows to wait.
        self.asr = asr.AsrLane(lambda: asr.queued_seconds_cap(self._config()))

    def busy(self) -> bool:
        """Return True while files or requests wait, or a worker has a batch."""
        return (len(self.prefetch) > 0 or len(self.asr) > 0
                or any(w.activity.current for w in list(self.workers.values())))

    def loader_loop(self) -> None:
        # Room first, then a job: decoding stops at the prefetch bound, not one file past it.
        while self.prefetch.wait_for_room(self._stopping):
            try:
                job = self.jobs.claim()
                if job is None:
                    self._wait_for_work()
                    continue
            except QueueError:  # the database is away (said once by the lease keeper): wait for it
                self._stopping.wait(QUEUE_RETRY_S)
                continue
            prepared = self._prepare(job)
            if prepared is None:
                continue
            if prepared.transcript is not None:
                self._complete_stored(job, prepared)
                continue
            if self._stopping.is_set():
                self.outcomes.release(job.id, "stopping: returned to the queue before its turn")
            else:
                self.prefetch.put(prepared)

    def _complete_stored(self, job: Job, prepared: pipeline.Prepared) -> None:
        """Write the sidecars of a file whose transcript was stored (a copy): no model, no worker."""
        try:
            self.outcomes.complete(job, prepared, prepared.transcript)
        except Exception:  # a bug must cost one job, never the loader thread
            log.exception("unexpected error writing the subtitles of %s", job.path)

    def _wait_for_work(self) -> None:
        wakeup = self.jobs.next_wakeup()
        timeout = 5.0 if wakeup is None else min(max(wakeup - time.time(), 0.05), 5.0)
        self._wake.wait(timeout)
        self._wake.clear()

    def _prepare(self, job: Job) -> pipeline.Prepared | None:
        rules = self._config().folder_for(job.path)
        if rules is None:
            self.outcomes.skipped(job, "no longer inside a watched folder")
            return None
        job_log(log, "started", job.path, f"attempt {job.attempts}", job.id)
        try:
            stored = stored_transcript(self.jobs, job, rules)
            prepared = pipeline.prepare(job.path, rules, self.ledger.owns, stored, self._config().work_dir)
            return replace(prepared, job_id=job.id, suspect=job.suspect)
        except pipeline.Skip as exc:
            self.outcomes.skipped(job, str(exc))
        except media.MediaGone:
            self.outcomes.gone(job, "gone before it was read; dropped")
        except media.MediaError as exc:
            self.outcomes.failed(job, str(exc), permanent=exc.permanent)
        except Exception as exc:  # a bug must cost one job, never the loader thread
            log.exception("unexpected error preparing %s", job.path)
            self.outcomes.failed(job, f"internal error: {exc}", permanent=False)
        return None

    def start_workers(self) -> None:
        """Start a worker for each device of the config that has none yet (at start and after a reload)."""
        for device in worker_devices(rules.devices for rules in self._config().folders):
            if device not in self.workers:
                worker = self.workers[device] = Worker(device, Activity(heartbeat=time.monotonic()))
                name = f"transcriber {device}"
                worker.thread = self._start_thread(name, partial(self._worker_loop, worker))

    def _worker_loop(self, worker: Worker) -> None:
        # Checked before each batch: at shutdown only the batch in hand is finished.
        while not self._stopping.is_set():
            worker.activity.heartbeat = time.monotonic()
            if self._serve_requests(worker):
                continue
            first = self.prefetch.peek(worker.device, 0.5, self._leave_to(worker))
            if first is None:
                continue
            try:
                self._next_batch(worker, first)
            except Exception:  # a bug must cost its batch, never the worker
                log.exception("unexpected error in the transcriber for %s", worker.device)

    def _serve_requests(self, worker: Worker) -> bool:
        """Answer the worker's next batch of waiting HTTP requests; return False if there was none."""
        batch = self.asr.take(worker.device, self._leave_to(worker))
        if not batch:
            return False
        spec = batch[0].rules.transcribe.model
        decoder = self.models.for_worker(worker.device)
        try:
            with self._working_on(worker.activity, [asr.describe(batch)], ()):
                decoder.load(spec, worker.device)
                asr.run_batch(batch, decoder, partial(self._progress, worker.activity))
        except Cancelled:
            pass
        except Exception as exc:  # no device, no model, out of memory, a dead child: the requests say so
            log.debug("HTTP requests on %s failed", worker.device, exc_info=True)
            for pending in batch:
                pending.fail(one_line_error(exc))
        finally:
            for pending in batch:
                pending.fail("subwatch is stopping")  # only those not answered
        return True

    def _leave_to(self, worker: Worker) -> tuple[str, ...]:
        """Return the devices whose workers get the files they share with this one: all working
        others once its own device is missing, so it only fails the files nobody else can take."""
        if worker.usable:
            return ()
        others = list(self.workers.values())  # a reload may add workers meanwhile
        return tuple(w.device for w in others if w.usable and w is not worker)

    def _next_batch(self, worker: Worker, first: pipeline.Prepared) -> None:
        """Load the model of the worker's first waiting file in its decoder child, then take its batch
        and transcribe it. Loading comes first: files decoded meanwhile (a backlog at start) join."""
        spec, error, permanent, died = first.rules.transcribe.model, None, True, None
        decoder = self.models.for_worker(worker.device)
        try:
            with self._working_on(worker.activity, [first.path.name], ()):
                decoder.load(spec, worker.device)
        except DeviceUnavailable as exc:
            error = str(exc)
            if worker.usable:
                worker.usable = False
                log.error("device %s: %s; its files go to their folders' other devices, if any",
                          worker.device, error)
        except ModelNotFound as exc:
            error = str(exc)
        except DecoderDied as exc:  # no file was in it: none is charged, or even counted an attempt
            died = exc.death.cause
        except Exception as exc:  # out of memory, bugs: retried with backoff
            log.debug("loading %s on %s failed", spec, worker.device, exc_info=True)
            error, permanent = f"loading {spec} failed: {one_line_error(exc)}", False
        if self._stopping.is_set():
            return  # stopped while the model loaded: the files wait in the prefetch, released there
        taken = self.prefetch.take(worker.device, spec, self._leave_to(worker))
        live = self.outcomes.still_running(taken)
        if died is not None:
            for _, job in live:
                self.outcomes.release(job.id, f"its decoder on {worker.device} died loading {spec} ({died})")
            return
        if error is not None:
            for _, job in live:
                self.outcomes.failed(job, error, permanent=permanent)
            return
        self._transcribe(worker, decoder, live)

    def _transcribe(self, worker: Worker, decoder: Decoder, live: list[tuple[pipeline.Prepared, Job]],
                    batch_size: int | None = None) -> None:
        """Transcribe a batch in the worker's decoder child and finish each file; if the pass fails, go
        one file at a time, so the error lands on the file that causes it and the others are done.

        While the child has them the jobs are marked in the queue as in the model. If the child dies,
        `Blame` decides what that says about them; if the daemon dies, they are suspects at the next
        start (JobQueue.recover_running), and a suspect comes alone (pick_batch).
        """
        if not live:
            return
        names = [item.path.name for item, _ in live]
        if len(live) > 1:
            log.info("transcribing %d files together on %s: %s", len(live), worker.device,
                     ", ".join(printable(name) for name in names))
        elif live[0][0].suspect:
            log.info("transcribing %s alone on %s: it was in the model when its decoder or the daemon "
                     "last died", printable(names[0]), worker.device)
        job_ids = [job.id for _, job in live]
        failure: BaseException | None = None
        until_answered(lambda: self.jobs.enter_model(job_ids))
        try:
            seconds = sum(item.audio.duration for item, _ in live)
            with self._working_on(worker.activity, names, job_ids, seconds):
                transcripts = decoder.transcribe_many(
                    [(item.audio, item.rules.transcribe) for item, _ in live], names,
                    lambda fraction: self._progress(worker.activity, fraction), batch_size,
                )
        except Cancelled:
            for _, job in live:
                self.outcomes.release(job.id, "stopping: returned to the queue")
            return
        except Exception as exc:  # a dead child, out of memory, a file the model cannot take, bugs
            log.debug("transcription of %s failed", ", ".join(names), exc_info=True)
            failure = exc
        finally:
            until_answered(lambda: self.jobs.leave_model(job_ids, survived=failure is None))
        if failure is None:
            for (item, job), transcript in zip(live, transcripts, strict=True):
                self.outcomes.complete(job, item, transcript)
            return
        retry = self.blame.after(worker.device, live, failure, batch_size)
        for batch, size in retry:
            self._transcribe(worker, decoder, self.outcomes.still_running([item for item, _ in batch]), size)

    @contextmanager
    def _working_on(self, activity: Activity, names: list[str], job_ids: Iterable[int],
                    seconds: float = 0.0) -> Iterator[None]:
        activity.seconds, activity.since = seconds, time.monotonic()
        activity.current, activity.job_ids, activity.progress = describe_files(names), tuple(job_ids), 0.0
        try:
            yield
        finally:
            activity.current, activity.job_ids, activity.progress = None, (), None
            activity.seconds = 0.0
            activity.heartbeat = time.monotonic()

    def _progress(self, activity: Activity, fraction: float) -> None:
        activity.progress = fraction
        activity.heartbeat = time.monotonic()
        if self.abandon.is_set():
            raise Cancelled()

    def release_prefetched(self) -> None:
        for _, job in self.outcomes.still_running(self.prefetch.drain()):
            self.outcomes.release(job.id, "stopping: returned to the queue before its turn")
        for pending in self.asr.drain():
            pending.fail("subwatch is stopping")
