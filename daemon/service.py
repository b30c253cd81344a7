"""The daemon: watcher → queue → workers, with systemd, signals and notifications around them.

Threads, and why each exists:
- the watcher's threads only record arrivals in the queue (milliseconds), so a
  long transcription never delays noticing files;
- the loader claims jobs and decodes their audio with ffmpeg (CPU) a little
  ahead of the model, so the GPU never waits for ffmpeg;
- the transcriber runs the model and writes sidecars;
- the main thread owns signals (handlers only set flags), reloads, the
  systemd status line and idle-model unloading.
"""

from __future__ import annotations

import logging
import queue as stdqueue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon import media, pipeline, subtitles
from daemon.config import Config, ConfigError, FolderRules, load_config
from daemon.datatypes import Job, JobResult, JobState
from daemon.logs import done_details, job_log
from daemon.notify import Event, Notifier, NotifyRules
from daemon.queue import JobQueue
from daemon.sdnotify import SystemdNotifier, WatchdogLoop, status_line
from daemon.transcribe import DeviceUnavailable, ModelNotFound, ModelStore, resolve_device, transcribe
from daemon.watch import Watcher, WatchSpec

log = logging.getLogger("subwatch")

PREFETCH = 2  # decoded files waiting for the model: enough to hide ffmpeg, little RAM
# On SIGTERM the running job gets this long to finish before it is returned to the queue;
# with the joins after it this stays inside the unit's TimeoutStopSec=30.
STOP_GRACE_SECONDS = 12.0
WEDGED_AFTER_SECONDS = 3600.0  # a transcriber silent this long stops the watchdog pings


class Cancelled(Exception):
    """Raised inside a progress callback to abandon a transcription at shutdown."""


@dataclass
class Activity:
    """What the transcriber is doing, for the systemd status line and the watchdog."""

    current: str | None = None
    job_id: int | None = None
    progress: float | None = None
    heartbeat: float = 0.0


def watch_spec(rules: FolderRules) -> WatchSpec:
    return WatchSpec(
        path=rules.path, recursive=rules.recursive, poll=rules.poll, poll_interval=rules.poll_interval,
        settle_seconds=rules.settle_seconds, include=rules.include, exclude=rules.exclude,
    )


def notify_rules(config: Config) -> NotifyRules:
    return NotifyRules(
        urls=config.notify.urls, on=config.notify.on, burst=config.notify.burst,
        window_seconds=config.notify.window_seconds,
    )


class Service:
    """Runs subwatch until SIGTERM/SIGINT; SIGHUP reloads the config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.jobs = JobQueue(config.db_path)
        self.models = ModelStore(config.models_dir, config.unload_after_seconds)
        self.notifier = Notifier(notify_rules(config))
        self.systemd = SystemdNotifier()
        self.activity = Activity(heartbeat=time.monotonic())
        self.watcher = Watcher(
            [watch_spec(f) for f in config.folders], self._on_ready,
            on_deleted=self._on_deleted, on_moved=self._on_moved,
        )
        self._prepared: stdqueue.Queue[pipeline.Prepared] = stdqueue.Queue(maxsize=PREFETCH)
        self._wake = threading.Event()  # new work for the loader
        self._stopping = threading.Event()
        self._abandon = threading.Event()  # stop grace expired: drop the running transcription
        self._reload_requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self._backfilling = threading.Lock()
        self._last_scan = 0.0

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Run until asked to stop; return the process exit code."""
        self._install_signal_handlers()
        self._create_folders()
        for job in self.jobs.recover_running(self.config.max_attempts):
            job_log(log, "requeued", job.path, "left running by a crash or stop; queued again", job.id)
        self.notifier.start()
        self.watcher.start()
        self._start_thread("loader", self._loader_loop)
        self._start_thread("transcriber", self._transcriber_loop)
        self._start_backfill()
        self.systemd.ready()
        watchdog = WatchdogLoop(self.systemd, self._healthy)
        watchdog.start()
        log.info("watching %d folder(s); queue at %s", len(self.config.folders), self.config.db_path)
        while not self._stopping.wait(1.0):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            if self.activity.current is None:  # never drop the model a job is using
                self.models.unload_idle()
            self.systemd.status(self._status_text())
            # The watcher can miss events (inotify queue overflow, a share remounted
            # without events): a periodic scan catches whatever it missed.
            rescan = self.config.rescan_minutes * 60
            if rescan and time.monotonic() - self._last_scan >= rescan:
                self._start_backfill()
        watchdog.stop()
        self._shutdown()
        return 0

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

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _shutdown(self) -> None:
        self.systemd.stopping()
        log.info("stopping")
        self.watcher.stop()
        transcriber = next(t for t in self._threads if t.name == "transcriber")
        transcriber.join(STOP_GRACE_SECONDS)
        if transcriber.is_alive():
            self._abandon.set()  # the progress callback raises Cancelled; the job goes back to pending
            transcriber.join(5.0)
        if transcriber.is_alive() and self.activity.job_id is not None:
            # Stuck inside the model with no progress callback: give the job back
            # ourselves; the caller ends the process without waiting for the thread.
            self.jobs.release(self.activity.job_id)
            log.info("returned %s to the queue", self.activity.current)
        for thread in self._threads:
            thread.join(2.0)
        self._release_prefetched()
        self.notifier.stop(timeout=5.0)
        self.jobs.close()
        log.info("stopped")

    def _release_prefetched(self) -> None:
        while True:
            try:
                item = self._prepared.get_nowait()
            except stdqueue.Empty:
                return
            job = self.jobs.find(item.path)
            if job and job.state == JobState.RUNNING:
                self.jobs.release(job.id)

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
        self.watcher.update([watch_spec(f) for f in new.folders])
        self.notifier.update(notify_rules(new))
        self._start_backfill()
        log.info("reloaded %s: watching %d folder(s)", new.source, len(new.folders))
        self.systemd.ready()
        return True

    # ------------------------------------------------------------ intake (watcher threads)

    def _on_ready(self, path: Path, spec: WatchSpec) -> None:
        self._enqueue(path, spec.path)

    def _enqueue(self, path: Path, folder: Path) -> None:
        try:
            outcome = self.jobs.enqueue(path, folder)
        except FileNotFoundError:
            return  # gone before we could look: nothing to do
        except OSError as exc:
            log.error("cannot queue %s: %s", path, exc)
            return
        if outcome.action == "moved" and outcome.previous_path:
            self._follow_move(outcome.previous_path, path)
        if outcome.queued:
            job_log(log, "queued", path, "", outcome.job.id)
            self._wake.set()

    def _on_deleted(self, path: Path) -> None:
        # `path` may be a folder: everything under it went (a file being transcribed
        # is noticed by the transcriber, which drops its job when it finishes).
        gone = [path] + [j.path for j in self.jobs.jobs([JobState.PENDING]) if path in j.path.parents]
        for each in gone:
            job = self.jobs.drop(each)
            if job:
                job_log(log, "dropped", each, "deleted before its turn", job.id)

    def _on_moved(self, old: Path, new: Path) -> None:
        rules = self.config.folder_for(new)
        job = self.jobs.move(old, new, rules.path if rules else None)
        if job and rules is None:
            self.jobs.drop(new)
        elif job and job.state == JobState.DONE:
            self._follow_move(old, new)

    def _follow_move(self, old: Path, new: Path) -> None:
        """A finished file was renamed or moved: its sidecars follow it."""
        job = self.jobs.find(new)
        if job is None:
            return
        for sidecar in self.jobs.sidecars_of(job.id):
            target = new.parent / (new.stem + sidecar.name[len(old.stem):]) if sidecar.name.startswith(
                old.stem) else None
            if target is None or target.exists() or not sidecar.exists():
                continue
            sidecar.rename(target)
            self.jobs.move_sidecar(sidecar, target)
        job_log(log, "moved", new, f"renamed from {old.name}; subtitles moved with it", job.id)

    def _start_backfill(self) -> None:
        """Scan the folders in the background, unless a scan is already running."""
        if self._backfilling.acquire(blocking=False):
            self._start_thread("backfill", self._backfill)
        self._last_scan = time.monotonic()

    def _backfill(self) -> None:
        try:
            self._scan_folders()
        finally:
            self._backfilling.release()

    def _scan_folders(self) -> None:
        """Queue media already in the folders that lacks subtitles (at start, after reload, periodically)."""
        for rules in self.config.folders:
            if self._stopping.is_set():
                return
            queued = 0
            for path in self.watcher.scan(watch_spec(rules)):
                if self._stopping.is_set():
                    return
                if self._needs_work(path, rules):
                    self._enqueue(path, rules.path)
                    queued += 1
            if queued:
                log.info("backfill: %d file(s) in %s considered", queued, rules.path)

    def _needs_work(self, path: Path, rules: FolderRules) -> bool:
        job = self.jobs.find(path)
        if job is not None:
            try:
                st = path.stat()
            except OSError:
                return False
            # Unchanged since we last saw it: skip without reading it for a fingerprint.
            if job.size == st.st_size and abs(job.mtime - st.st_mtime) < 1e-3:
                return False
        return not subtitles.existing_subtitles(path, pipeline.output_language(rules))

    # ------------------------------------------------------------ loader thread

    def _loader_loop(self) -> None:
        while not self._stopping.is_set():
            job = self.jobs.claim()
            if job is None:
                self._wait_for_work()
                continue
            prepared = self._prepare(job)
            if prepared is not None and not self._hand_over(prepared):
                self.jobs.release(job.id)

    def _hand_over(self, prepared: pipeline.Prepared) -> bool:
        """Wait for room among the PREFETCH decoded files; False if the daemon stops first."""
        while not self._stopping.is_set():
            try:
                self._prepared.put(prepared, timeout=0.5)
                return True
            except stdqueue.Full:
                continue
        return False

    def _wait_for_work(self) -> None:
        wakeup = self.jobs.next_wakeup()
        timeout = 5.0 if wakeup is None else min(max(wakeup - time.time(), 0.05), 5.0)
        self._wake.wait(timeout)
        self._wake.clear()

    def _prepare(self, job: Job) -> pipeline.Prepared | None:
        rules = self.config.folder_for(job.path)
        if rules is None:
            self.jobs.skip(job.id, "no longer inside a watched folder")
            return None
        job_log(log, "started", job.path, f"attempt {job.attempts}", job.id)
        try:
            return pipeline.prepare(job.path, rules, self._owned)
        except pipeline.Skip as exc:
            self.jobs.skip(job.id, str(exc))
            job_log(log, "skipped", job.path, str(exc), job.id)
        except media.MediaGone:
            self.jobs.drop(job.path, claimed=True)
            job_log(log, "dropped", job.path, "gone before it was read; dropped", job.id)
        except media.MediaError as exc:
            self._failed(job, str(exc), permanent=exc.permanent, rules=rules)
        except Exception as exc:  # a bug must cost one job, never the loader thread
            log.exception("unexpected error preparing %s", job.path)
            self._failed(job, f"internal error: {exc}", permanent=False, rules=rules)
        return None

    # ------------------------------------------------------------ transcriber thread

    def _transcriber_loop(self) -> None:
        # Checked before each file: at shutdown only the file in hand is finished.
        while not self._stopping.is_set():
            self.activity.heartbeat = time.monotonic()
            try:
                item = self._prepared.get(timeout=0.5)
            except stdqueue.Empty:
                continue
            self._transcribe_one(item)

    def _transcribe_one(self, item: pipeline.Prepared) -> None:
        job = self.jobs.find(item.path)
        if job is None or job.state != JobState.RUNNING:
            return  # forgotten or dropped while it waited
        self.activity.current, self.activity.job_id, self.activity.progress = item.path.name, job.id, 0.0
        try:
            model = self.models.get(item.rules.model, resolve_device(item.rules.device))
            transcript = transcribe(item.audio, pipeline.options_for(item.rules), model, self._progress)
            result = pipeline.complete(item, transcript, self._owned)
        except Cancelled:
            self.jobs.release(job.id)
            job_log(log, "released", item.path, "stopping: returned to the queue", job.id)
            return
        except (ModelNotFound, DeviceUnavailable) as exc:
            self._failed(job, str(exc), permanent=True, rules=item.rules)
            return
        except media.MediaGone:
            self.jobs.drop(item.path, claimed=True)
            job_log(log, "dropped", item.path, "deleted while it was transcribed; dropped", job.id)
            return
        except Exception as exc:  # out of memory, disk full, bugs: retried with backoff
            log.debug("transcription of %s failed", item.path, exc_info=True)
            self._failed(job, _one_line(exc), permanent=False, rules=item.rules)
            return
        finally:
            self.activity.current, self.activity.job_id, self.activity.progress = None, None, None
        self._done(job, item, result)

    def _progress(self, fraction: float) -> None:
        self.activity.progress = fraction
        self.activity.heartbeat = time.monotonic()
        if self._abandon.is_set():
            raise Cancelled()

    def _done(self, job: Job, item: pipeline.Prepared, result: JobResult) -> None:
        for output in result.outputs:
            self.jobs.record_sidecar(output, subtitles.file_sha256(output), job.id)
        done = self.jobs.finish(job.id, result)
        details = done_details(result.language, result.media_duration, result.elapsed)
        job_log(log, "done", job.path, details, done.id)
        self.notifier.send(Event(
            kind="done", path=job.path, language=result.language, media_duration=result.media_duration,
            elapsed=result.elapsed, model=item.rules.model, error=None, urls=self._targets(item.rules),
        ))

    def _failed(self, job: Job, error: str, *, permanent: bool, rules: FolderRules) -> None:
        updated = self.jobs.fail(job.id, error, permanent=permanent, max_attempts=self.config.max_attempts)
        if updated.state == JobState.PENDING:
            wait = max(updated.next_attempt_at - time.time(), 0)
            job_log(log, "retrying", job.path, f"in {wait:.0f} s: {error}", job.id,
                    level=logging.WARNING)
            return
        job_log(log, "failed", job.path, error, job.id, level=logging.ERROR)
        self.notifier.send(Event(
            kind="failed", path=job.path, language=None, media_duration=None, elapsed=None,
            model=rules.model, error=error, urls=self._targets(rules),
        ))

    def _targets(self, rules: FolderRules) -> tuple[str, ...]:
        if rules.notify.replace:
            return rules.notify.urls
        return self.config.notify.urls + rules.notify.urls

    def _owned(self, path: Path) -> bool:
        """True if `path` is a sidecar subwatch wrote and nobody has edited since."""
        recorded = self.jobs.sidecar_hash(path)
        return recorded is not None and path.exists() and subtitles.file_sha256(path) == recorded

    # ------------------------------------------------------------ systemd

    def _healthy(self) -> bool:
        return time.monotonic() - self.activity.heartbeat < WEDGED_AFTER_SECONDS

    def _status_text(self) -> str:
        counts = self.jobs.counts()
        queued = counts.get(JobState.PENDING, 0)
        state = "transcribing" if self.activity.current else "idle"
        return status_line(state, self.activity.current, self.activity.progress, queued)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "…"

