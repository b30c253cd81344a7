"""The daemon: intake → queue → loader → workers, with systemd, signals and notifications around them.

Threads, and why each exists:
- the intake's threads (daemon.intake: the watcher's, probes of unknown
  extensions, scans) only record arrivals in the queue, so a long
  transcription never delays noticing files;
- the loader claims jobs and decodes their audio with ffmpeg (CPU) ahead of
  the model, up to a bound in seconds of audio (workers.Prefetch), so the GPU
  never waits for ffmpeg; a file whose content already has a stored
  transcript for its folder's rules (a copy) it finishes itself, undecoded;
- one transcriber worker per configured device (`cuda:0`, `cuda:1`, …) takes
  the decoded files its device serves, as many as share a model and fit a
  batch, runs them through the model together and writes their sidecars;
  the jobs in the model are marked so in the queue, so that after a crash
  only they are suspected, and each suspect then goes through alone;
- the main thread owns signals (handlers only set flags), reloads, the
  systemd status line, idle-model unloading, and the intake's tick (copies
  that waited for their twin's job to finish, periodic rescans).
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from daemon import media, pipeline, subtitles
from daemon.config import Config, ConfigError, FolderRules, load_config
from daemon.datatypes import Job, JobResult, JobState, Transcript
from daemon.intake import Intake
from daemon.logs import done_details, job_log
from daemon.notify import Event, Notifier
from daemon.queue import JobQueue, Notice, QueueError, Recovered
from daemon.sdnotify import SystemdNotifier, WatchdogLoop, percent, status_line
from daemon.text import printable
from daemon.transcribe import DeviceUnavailable, ModelNotFound, ModelStore, resolve_device, transcribe_many
from daemon.workers import Prefetch, SoloGate, Waiting, describe_files, worker_devices

log = logging.getLogger("subwatch")

# On SIGTERM the running batch gets this long to finish before it is returned to the queue;
# with the joins after it this stays inside the unit's TimeoutStopSec=30.
STOP_GRACE_SECONDS = 12.0
WEDGED_AFTER_SECONDS = 3600.0  # a transcriber silent this long stops the watchdog pings
# Test-only (tests/test_daemon_crashes.py): a file name whose batch makes the process abort once it
# is in the model, as a file that crashes a decoder or driver would. Nothing in subwatch sets it.
CRASH_ON_ENV = "SUBWATCH_TEST_CRASH_ON"
# Before a suspect goes into the model, notifications already sent get this long to be delivered: if it
# does crash the daemon, none is cut off mid-delivery (to be lost, or sent twice at the next start).
NOTIFY_FLUSH_SECONDS = 10.0


class Cancelled(Exception):
    """Raised inside a progress callback to abandon a transcription at shutdown."""


@dataclass
class Activity:
    """What one transcriber worker is doing, for the systemd status line and the watchdog."""

    current: str | None = None  # "Movie.mkv", or "3 files: A.mkv, B.mkv, …"
    job_ids: tuple[int, ...] = ()
    progress: float | None = None
    heartbeat: float = 0.0


@dataclass
class Worker:
    """A transcriber thread bound to one device of the config."""

    device: str  # as configured: auto, cpu, cuda, cuda:N
    activity: Activity
    thread: threading.Thread | None = None
    usable: bool = True  # False once its device turned out to be missing


def waiting(item: pipeline.Prepared) -> Waiting:
    return Waiting(item.rules.transcribe.model, item.rules.devices, item.audio.duration, alone=item.suspect)




class Service:
    """Runs subwatch until SIGTERM/SIGINT; SIGHUP reloads the config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.jobs = JobQueue(config.db_path)
        self.ledger = subtitles.SidecarLedger(self.jobs)
        self.models = ModelStore(config.models_dir, config.unload_after_seconds, config.gpu_memory_limit)
        self.notifier = Notifier(config.notify, settled=self.jobs.notices_settled)
        self._notices_lock = threading.Lock()
        self._notices_sent = 0  # the last outbox row handed to the notifier
        self.systemd = SystemdNotifier()
        self.workers: dict[str, Worker] = {}  # by device
        self._prefetch: Prefetch[pipeline.Prepared] = Prefetch(waiting)
        self._gate = SoloGate()  # a suspect is alone in the models
        self._wake = threading.Event()  # new work for the loader
        self.intake = Intake(config, self.jobs, wake=self._wake.set)
        self._stopping = threading.Event()
        self._abandon = threading.Event()  # stop grace expired: drop the running transcription
        self._reload_requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self._worked = False  # a batch ran since the freed memory was last given back

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Run until asked to stop; return the process exit code."""
        self._install_signal_handlers()
        self._create_folders()
        self.notifier.start()
        self._recover()
        self._notify_owed()  # what a killed daemon left unsent, and failures found just now
        self.intake.start()  # the watcher, then a scan for what arrived while nobody watched
        self._start_thread("loader", self._loader_loop)
        self._start_workers()
        self.systemd.ready()
        watchdog = WatchdogLoop(self.systemd, self._healthy)
        watchdog.start()
        log.info("watching %d folder(s); queue at %s", len(self.config.folders), self.config.db_path)
        while not self._stopping.wait(1.0):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            if self.models.unload_idle():  # never one a worker holds
                release_freed_memory()
            self._release_memory_when_idle()
            self.intake.tick()
            self.systemd.status(self._status_text())
        watchdog.stop()
        self._shutdown()
        return 0

    def _release_memory_when_idle(self) -> None:
        """Once the work in hand is done, give back to the system the memory its batches freed."""
        busy = len(self._prefetch) > 0 or any(w.activity.current for w in list(self.workers.values()))
        if busy:
            self._worked = True
        elif self._worked:
            self._worked = False
            release_freed_memory()

    def _recover(self) -> None:
        """Put back the jobs the last daemon left running (see JobQueue.recover_running), each with its
        journal line; one failed for crashing the daemon is notified like any other failure. A job
        killed while its sidecars were written may have left a temp file beside them: it goes."""
        recovered = self.jobs.recover_running(self.config.max_attempts)
        folders = {f for back in recovered for f in self.ledger.folders_of(back.job.id, back.job.path)}
        for folder in sorted(folders):
            for temp in subtitles.remove_stale_temps(folder):
                log.info("removed %s, left by a daemon killed while it wrote subtitles", printable(str(temp)))
        for back in recovered:
            job = back.job
            if job.state == JobState.FAILED:
                self._report_failure(job, job.error or "")
                continue
            level = logging.WARNING if back.cause == "crashed_alone" else logging.INFO
            job_log(log, "requeued", job.path, _recovery_note(back, self.config.max_attempts), job.id, level)

    def _create_folders(self) -> None:
        for rules in self.config.folders:
            if rules.create_if_missing and not rules.path.exists():
                try:
                    rules.path.mkdir(parents=True)
                    log.info("created watched folder %s", rules.path)
                except OSError as exc:
                    log.error("cannot create watched folder %s: %s", rules.path, exc)

    def _install_signal_handlers(self) -> None:
        # Handlers only set flags: the main loop acts on them outside signal context.
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self._reload_requested.set())

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _start_thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]  # past scans' threads go
        return thread

    def _shutdown(self) -> None:
        self.systemd.stopping()
        log.info("stopping")
        self.intake.stop()
        workers = [w for w in self.workers.values() if w.thread is not None]
        _join_all([w.thread for w in workers], STOP_GRACE_SECONDS)
        if any(w.thread.is_alive() for w in workers):
            self._abandon.set()  # progress callbacks raise Cancelled; the batches go back to pending
            _join_all([w.thread for w in workers], 5.0)
        for worker in workers:
            job_ids, current = worker.activity.job_ids, worker.activity.current
            if worker.thread.is_alive() and job_ids:
                # Stuck inside the model with no progress callback: give the jobs back
                # ourselves; the caller ends the process without waiting for the thread.
                log.info("%s did not finish in time", current)
                for job_id in job_ids:
                    self._release(job_id, "stopping: returned to the queue")
        for thread in self._threads:
            thread.join(2.0)
        self._release_prefetched()
        self.notifier.stop(timeout=5.0)
        self.jobs.close()
        log.info("stopped")

    def _release_prefetched(self) -> None:
        for _, job in self._still_running(self._prefetch.drain()):
            self._release(job.id, "stopping: returned to the queue before its turn")

    def _release(self, job_id: int, why: str) -> None:
        """Give a running job back to the queue (a clean stop: no attempt counted), with its line."""
        try:
            job = self.jobs.release(job_id)
        except KeyError:
            return  # forgotten meanwhile
        if job.state == JobState.PENDING:
            job_log(log, "released", job.path, why, job.id)

    # ------------------------------------------------------------ reload (SIGHUP)

    def reload(self) -> bool:
        """Re-read the config; keep the old one if the new one is broken. Return True if applied."""
        self.systemd.reloading()
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            self.systemd.ready()
            return False
        self.config = new
        self.models.set_memory_limit(new.gpu_memory_limit)
        self._start_workers()  # for devices the new config adds
        self.intake.update(new)
        self.notifier.update(new.notify)
        log.info("reloaded %s: watching %d folder(s)", new.source, len(new.folders))
        self.systemd.ready()
        return True

    # ------------------------------------------------------------ loader thread

    def _loader_loop(self) -> None:
        # Room first, then a job: decoding stops at the prefetch bound, not one file past it.
        while self._prefetch.wait_for_room(self._stopping):
            job = self.jobs.claim()
            if job is None:
                self._wait_for_work()
                continue
            prepared = self._prepare(job)
            if prepared is None:
                continue
            if prepared.transcript is not None:
                self._complete_stored(job, prepared)
                continue
            if self._stopping.is_set():
                self._release(job.id, "stopping: returned to the queue before its turn")
            else:
                self._prefetch.put(prepared)

    def _complete_stored(self, job: Job, prepared: pipeline.Prepared) -> None:
        """Write the sidecars of a file whose transcript was stored (a copy): no model, no worker."""
        try:
            self._complete(job, prepared, prepared.transcript)
        except Exception:  # a bug must cost one job, never the loader thread
            log.exception("unexpected error writing the subtitles of %s", job.path)

    def _wait_for_work(self) -> None:
        wakeup = self.jobs.next_wakeup()
        timeout = 5.0 if wakeup is None else min(max(wakeup - time.time(), 0.05), 5.0)
        self._wake.wait(timeout)
        self._wake.clear()

    def _prepare(self, job: Job) -> pipeline.Prepared | None:
        rules = self.config.folder_for(job.path)
        if rules is None:
            why = "no longer inside a watched folder"
            self.jobs.skip(job.id, why)
            job_log(log, "skipped", job.path, why, job.id)
            return None
        job_log(log, "started", job.path, f"attempt {job.attempts}", job.id)
        try:
            stored = self._stored_transcript(job, rules)
            prepared = pipeline.prepare(job.path, rules, self.ledger.owns, stored)
            return replace(prepared, job_id=job.id, suspect=job.suspect)
        except pipeline.Skip as exc:
            self.jobs.skip(job.id, str(exc))
            job_log(log, "skipped", job.path, str(exc), job.id)
        except media.MediaGone:
            self._gone(job, "gone before it was read; dropped")
        except media.MediaError as exc:
            self._failed(job, str(exc), permanent=exc.permanent)
        except Exception as exc:  # a bug must cost one job, never the loader thread
            log.exception("unexpected error preparing %s", job.path)
            self._failed(job, f"internal error: {exc}", permanent=False)
        return None

    def _stored_transcript(self, job: Job, rules: FolderRules) -> Transcript | None:
        """Return the transcript stored for the job's content and its folder's rules, or None if there
        is none or it cannot be read (then the file is transcribed again)."""
        try:
            return self.jobs.transcript(job.fingerprint, rules.transcript_key)
        except QueueError as exc:
            log.warning("%s; transcribing %s again", exc, printable(os.fsdecode(job.path)))
            return None

    def _gone(self, job: Job, why: str) -> None:
        """A claimed job's file is not at the path the worker has: drop the job, or requeue it
        if the watcher saw it renamed meanwhile (Sonarr and Radarr rename right after import)."""
        current = self.jobs.get(job.id)
        if current is None:
            return  # forgotten or dropped meanwhile
        if current.path != job.path and current.path.exists():
            self.jobs.release(job.id)
            job_log(log, "requeued", current.path, f"renamed from {job.path.name} while in hand", job.id)
            self._wake.set()
            return
        if self.jobs.drop(current.path, claimed=True) is not None:
            job_log(log, "dropped", job.path, why, job.id)

    # ------------------------------------------------------------ transcriber workers

    def _start_workers(self) -> None:
        """Start a worker for each device of the config that has none yet (at start and after a reload)."""
        for device in worker_devices(rules.devices for rules in self.config.folders):
            if device not in self.workers:
                worker = self.workers[device] = Worker(device, Activity(heartbeat=time.monotonic()))
                name = f"transcriber {device}"
                worker.thread = self._start_thread(name, partial(self._worker_loop, worker))

    def _worker_loop(self, worker: Worker) -> None:
        # Checked before each batch: at shutdown only the batch in hand is finished.
        while not self._stopping.is_set():
            worker.activity.heartbeat = time.monotonic()
            first = self._prefetch.peek(worker.device, 0.5, self._leave_to(worker))
            if first is None:
                continue
            try:
                self._next_batch(worker, first)
            except Exception:  # a bug must cost its batch, never the worker
                log.exception("unexpected error in the transcriber for %s", worker.device)

    def _leave_to(self, worker: Worker) -> tuple[str, ...]:
        """Return the devices whose workers get the files they share with this one: all working
        others once its own device is missing, so it only fails the files nobody else can take."""
        if worker.usable:
            return ()
        others = list(self.workers.values())  # a reload may add workers meanwhile
        return tuple(w.device for w in others if w.usable and w is not worker)

    def _next_batch(self, worker: Worker, first: pipeline.Prepared) -> None:
        """Load the model of the worker's first waiting file, then take its batch and transcribe it.

        Loading comes first: files decoded meanwhile (a backlog at start) join the batch.
        """
        spec, error, permanent = first.rules.transcribe.model, None, True
        with ExitStack() as held:
            try:
                with self._working_on(worker.activity, [first.path.name], ()):
                    device = resolve_device(worker.device)
                    model = held.enter_context(self.models.use(spec, device))
            except DeviceUnavailable as exc:
                error = str(exc)
                if worker.usable:
                    worker.usable = False
                    log.error("device %s: %s; its files go to their folders' other devices, if any",
                              worker.device, error)
            except ModelNotFound as exc:
                error = str(exc)
            except Exception as exc:  # out of memory, bugs: retried with backoff
                log.debug("loading %s on %s failed", spec, worker.device, exc_info=True)
                error, permanent = _one_line(exc), False
            if self._stopping.is_set():
                return  # stopped while the model loaded: the files wait in the prefetch, released there
            live = self._still_running(self._prefetch.take(worker.device, spec, self._leave_to(worker)))
            if error is not None:
                for _, job in live:
                    self._failed(job, error, permanent=permanent)
                return
            self._transcribe(worker, model, live)

    def _transcribe(self, worker: Worker, model: Any, live: list[tuple[pipeline.Prepared, Job]]) -> None:
        """Transcribe a batch in one pass and finish each file; if the pass fails, go one file at a time,
        so the error lands on the file that causes it and the others are done.

        While the model has them the jobs are marked in the queue as in the model: if the daemon dies
        then, they are the suspects (JobQueue.recover_running). A suspect comes alone (pick_batch)
        and goes in alone (SoloGate), so a crash then is its own.
        """
        if not live:
            return
        names = [item.path.name for item, _ in live]
        alone = any(item.suspect for item, _ in live)
        if len(live) > 1:
            log.info("transcribing %d files together on %s: %s", len(live), worker.device,
                     ", ".join(printable(name) for name in names))
        elif alone:
            log.info("transcribing %s alone on %s: it was in the model when the daemon last died",
                     printable(names[0]), worker.device)
        job_ids = [job.id for _, job in live]
        if alone:
            self.notifier.wait_idle(NOTIFY_FLUSH_SECONDS)
        if not self._gate.enter(alone, self._stopping):
            for _, job in live:
                self._release(job.id, "stopping: returned to the queue before its turn")
            return
        failure, survived = None, False
        try:
            self.jobs.enter_model(job_ids)
            _crash_if_asked(names)
            with self._working_on(worker.activity, names, job_ids):
                transcripts = transcribe_many(
                    [(item.audio, item.rules.transcribe) for item, _ in live], model,
                    lambda fraction: self._progress(worker.activity, fraction),
                )
            survived = True
        except Cancelled:
            for _, job in live:
                self._release(job.id, "stopping: returned to the queue")
            return
        except Exception as exc:  # out of memory, a file the model cannot take, bugs
            survived = True
            log.debug("transcription of %s failed", ", ".join(names), exc_info=True)
            if len(live) == 1:
                self._failed(live[0][1], _one_line(exc), permanent=False)
                return
            failure = _one_line(exc)
        finally:
            self._gate.leave()
            self.jobs.leave_model(job_ids, survived=survived)
        if failure is not None:  # outside the except block: its traceback holds the batch's tensors
            log.warning("a batch of %d files failed (%s); transcribing them one at a time",
                        len(live), failure)
            for item, _ in live:
                self._transcribe(worker, model, self._still_running([item]))
            return
        for (item, job), transcript in zip(live, transcripts, strict=True):
            self._complete(job, item, transcript)

    def _complete(self, job: Job, item: pipeline.Prepared, transcript: Any) -> None:
        live = self._still_running([item])  # renamed while it was transcribed: write beside the new name
        if not live:
            return
        item, job = live[0]
        try:
            result = pipeline.complete(item, transcript, self.ledger.for_job(job.id))
        except media.MediaGone:
            self._gone(job, "deleted while it was transcribed; dropped")
            return
        except subtitles.SidecarFolderError as exc:  # its folder cannot be made: retrying cannot help
            self._failed(job, _one_line(exc), permanent=True)
            return
        except Exception as exc:  # disk full, permissions: retried with backoff
            log.debug("writing the subtitles of %s failed", item.path, exc_info=True)
            self._failed(job, _one_line(exc), permanent=False)
            return
        self._done(job, item, result)

    def _still_running(self, items: Iterable[pipeline.Prepared]) -> list[tuple[pipeline.Prepared, Job]]:
        """Return the items whose job is still running, each with its job; one forgotten or dropped
        while its file waited is left out. An item whose file the watcher saw renamed meanwhile
        comes back with the new path (same content: a rename keeps the job)."""
        live = []
        for item in items:
            job = self.jobs.get(item.job_id) if item.job_id is not None else None
            if job is not None and job.state == JobState.RUNNING:
                live.append((item if job.path == item.path else replace(item, path=job.path), job))
        return live

    @contextmanager
    def _working_on(self, activity: Activity, names: list[str], job_ids: Iterable[int]) -> Iterator[None]:
        activity.current, activity.job_ids, activity.progress = describe_files(names), tuple(job_ids), 0.0
        try:
            yield
        finally:
            activity.current, activity.job_ids, activity.progress = None, (), None
            activity.heartbeat = time.monotonic()

    def _progress(self, activity: Activity, fraction: float) -> None:
        activity.progress = fraction
        activity.heartbeat = time.monotonic()
        if self._abandon.is_set():
            raise Cancelled()

    def _done(self, job: Job, item: pipeline.Prepared, result: JobResult) -> None:
        done = self.jobs.finish(job.id, result)
        details = done_details(result.language, result.media_duration, result.elapsed,
                               done.uncovered_seconds, reused=item.transcript is not None)
        job_log(log, "done", job.path, details, done.id)
        self._notify_owed()

    def _failed(self, job: Job, error: str, *, permanent: bool) -> None:
        updated = self.jobs.fail(job.id, error, permanent=permanent, max_attempts=self.config.max_attempts)
        if updated.state == JobState.PENDING:
            wait = max(updated.next_attempt_at - time.time(), 0)
            job_log(log, "retrying", job.path, f"in {wait:.0f} s: {error}", job.id,
                    level=logging.WARNING)
            return
        self._report_failure(job, error)

    def _report_failure(self, job: Job, error: str) -> None:
        """Log a job that is now failed and send the notification the queue owes for it."""
        job_log(log, "failed", job.path, error, job.id, level=logging.ERROR)
        self._notify_owed()

    def _notify_owed(self) -> None:
        """Hand the notifier each notification the queue owes that it has not been handed yet.

        The queue writes them in the transaction that ends a job and deletes them once delivered
        (Notifier's `settled`), so one a kill kept from its target goes out at the next start.
        """
        with self._notices_lock:
            try:
                owed = self.jobs.notices(after=self._notices_sent)
            except QueueError:
                return  # closed: shutting down
            if owed:
                self._notices_sent = owed[-1].id
        for notice in owed:
            self.notifier.send(self._event(notice))

    def _event(self, notice: Notice) -> Event:
        rules = self.config.folder_for(notice.path)  # None: its folder has left the config
        return Event(
            kind=notice.kind, path=notice.path, language=notice.language,
            media_duration=notice.media_duration, elapsed=notice.elapsed,
            model=rules.transcribe.model if rules else None, error=notice.error,
            urls=self._targets(rules) if rules else (), key=notice.id,
        )

    def _targets(self, rules: FolderRules) -> tuple[str, ...]:
        if rules.notify.replace:
            return rules.notify.urls
        return self.config.notify.urls + rules.notify.urls

    # ------------------------------------------------------------ systemd

    def _healthy(self) -> bool:
        now = time.monotonic()
        return all(now - w.activity.heartbeat < WEDGED_AFTER_SECONDS for w in list(self.workers.values()))

    def _status_text(self) -> str:
        counts = self.jobs.counts()
        queued = counts.get(JobState.PENDING, 0)
        busy = [(w.device, w.activity.current, w.activity.progress) for w in list(self.workers.values())]
        busy = [(device, current, progress) for device, current, progress in busy if current]
        if not busy:
            return status_line("idle", None, None, queued)
        if len(busy) == 1:
            return status_line("transcribing", busy[0][1], busy[0][2], queued)
        each = [f"{device}: {current}" + (f" {percent(progress)}" if progress is not None else "")
                for device, current, progress in busy]
        return status_line("transcribing", "; ".join(each), None, queued)


def release_freed_memory() -> None:
    """Ask glibc to return the heap memory that is free to the system (no-op on other C libraries).

    glibc keeps what a process frees for reuse: after one large batch an idle daemon would hold
    that peak for good (found by bench/soak.py: resident memory after a wave rose with the
    largest batch so far, never with the number of files).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _recovery_note(back: Recovered, max_attempts: int) -> str:
    """Given a job put back at start-up, return the details of its `requeued` line."""
    if back.cause == "waiting":
        return "left running by a crash or stop before the model began on it; attempt not counted"
    if back.cause == "crashed_alone":
        return (f"left running by a crash or stop while the model transcribed it alone (crash "
                f"{back.job.crashes} of {max_attempts}); transcribed alone again")
    others = back.together - 1
    company = f" with {others} other file{'s' if others != 1 else ''}" if others else ""
    return (f"left running by a crash or stop while the model transcribed it{company}; transcribed "
            "alone next, to see whether it is the cause; attempt not counted")


def _crash_if_asked(names: list[str]) -> None:
    """Abort the process if the test-only CRASH_ON_ENV names a file of the batch (see CRASH_ON_ENV)."""
    name = os.environ.get(CRASH_ON_ENV)
    if name and name in names:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file left behind
        os.abort()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "…"


def _join_all(threads: Iterable[threading.Thread | None], timeout: float) -> None:
    """Join the threads within `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
