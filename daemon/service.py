"""The daemon: intake → queue → transcriber pool → outcomes, with systemd, signals and reloads around them.

Threads, and why each exists:
- the intake's threads (daemon.intake: the watcher's, probes of unknown
  extensions, scans) only record arrivals in the queue, so a long
  transcription never delays noticing files;
- the transcriber pool's (daemon.transcribers): the loader, which decodes
  audio ahead of the model, and one worker per configured device, which
  transcribes batches; each job's ending (done, failed, released, dropped,
  and the notification owed) goes through daemon.outcomes;
- the notifier's delivery thread (daemon.notify), which also tells the media
  servers of new sidecars (daemon.mediaservers);
- with an `http:` section, the HTTP server's (daemon.http: uvicorn and its
  pool), whose hooks hand files to the intake as the watcher does, and whose status page,
  /api and /metrics read the queue and act on it (retry, forget, rescan);
- the main thread owns signals (handlers only set flags), reloads, the
  systemd status line, idle-model unloading, and the intake's tick (copies
  that waited for their twin's job to finish, periodic rescans).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from daemon import subtitles
from daemon.config import Config, ConfigError, HttpRules, load_config
from daemon.datatypes import JobState
from daemon.decoders import Death, Decoder, DecoderPool, Settings
from daemon.intake import Intake
from daemon.leases import LeaseKeeper
from daemon.logs import job_log
from daemon.mediaservers import MediaServers
from daemon.notify import Notifier
from daemon.outcomes import Outcomes
from daemon.queue import JobQueue, QueueError, Recovered
from daemon.sdnotify import SystemdNotifier, WatchdogLoop, percent, status_line
from daemon.serving import Serving
from daemon.text import printable
from daemon.transcribers import Transcribers

if TYPE_CHECKING:
    from daemon.http import HttpServer
    from daemon.http.bazarr import RequestSide

log = logging.getLogger("subwatch")

# On SIGTERM the running batch gets this long to finish before it is returned to the queue;
# with the joins after it this stays inside the unit's TimeoutStopSec=30.
STOP_GRACE_SECONDS = 12.0
WEDGED_AFTER_SECONDS = 3600.0  # a transcriber silent this long stops the watchdog pings
class Service:
    """Runs subwatch until SIGTERM/SIGINT; SIGHUP reloads the config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.jobs = open_queue(config)
        self._wake = threading.Event()  # new work for the loader
        self.leases = LeaseKeeper(self.jobs, self._reaped, self._worker_devices)
        self.serving = Serving(self.jobs.serve)  # which folders' jobs this node claims
        self.ledger = subtitles.SidecarLedger(self.jobs)
        self._stopping = threading.Event()
        settings = Settings(config.models_dir, config.unload_after_seconds, config.gpu_memory_limit,
                            config.engine, config.log_level)
        self.models = DecoderPool(settings, self._stopping, on_death=self._decoder_died)
        self.notifier = Notifier(config.notify, settled=self.jobs.notices_settled)
        self.systemd = SystemdNotifier()
        self.media_servers = MediaServers(lambda: self.config.media_servers, self.jobs, self.notifier)
        self.intake = Intake(config, self.jobs, wake=self._wake.set,
                             sidecars_moved=self.media_servers.sidecars_changed)
        self._reload_requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self.outcomes = Outcomes(self.jobs, self.ledger, self.notifier, lambda: self.config, self._wake.set,
                                 sidecars_written=self.media_servers.sidecars_changed)
        self.http: HttpServer | None = None  # made in run(), when the config has an `http:` section
        self.pool = Transcribers(lambda: self.config, self.jobs, self.ledger, self.models, self.notifier,
                                 self.outcomes, self._wake, self._stopping, self._start_thread)
        self.workers = self.pool.workers  # by device; the pool adds to it
        self._prefetch = self.pool.prefetch
        self._abandon = self.pool.abandon  # stop grace expired: drop the running transcription
        self._worked = False  # a batch ran since the freed memory was last given back

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Run until asked to stop; return the process exit code."""
        self._install_signal_handlers()
        if not self._bind_http():
            return 1
        create_folders(self.config)
        self.serving.update(self.config)
        clear_work_dir(self.config.work_dir)
        self.notifier.start()
        self._recover()
        self.leases.start()  # this node's leases renewed, other nodes' lapsed ones put back
        self.outcomes.notify_owed()  # what a killed daemon left unsent, and failures found just now
        self.media_servers.tell_owed()  # what a stopped daemon had not told the media servers yet
        self.intake.start()  # the watcher, then a scan for what arrived while nobody watched
        if self.http is not None:
            self.http.start()  # after the intake: the hooks hand it files
        self._start_thread("loader", self._loader_loop)
        self._start_workers()
        self.leases.beat_soon()  # the status shows this node's workers from now on
        self.systemd.ready()
        watchdog = WatchdogLoop(self.systemd, self._healthy)
        watchdog.start()
        log.info("watching %d folder(s); queue at %s", len(self.config.folders), self.config.queue_shown)
        while not self._stopping.wait(1.0):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            self._release_memory_when_idle()
            self.serving.refresh()
            try:
                self.intake.tick()
                self.systemd.status(self._status_text())
            except QueueError:  # the database is away: said once by the lease keeper, tried each second
                self.systemd.status("waiting for the job database")
        watchdog.stop()
        self._shutdown()
        return 0

    def _bind_http(self) -> bool:
        """With an `http:` section, make the server and take its port; return False (logged) if the
        port cannot be had, so that a misconfigured listener stops the start instead of going unseen."""
        rules = self.config.http
        if rules is None:
            return True
        from daemon.http import DaemonView, HttpContext, HttpServer, build_app  # only with an `http:` section

        view = DaemonView(jobs=self.jobs, ledger=self.ledger, models=self.models, wake=self._wake.set,
                          activities=lambda: [(w.device, w.activity) for w in list(self.workers.values())])
        requests = self._request_side()
        context = HttpContext(config=lambda: self.config, healthy=self._healthy, intake=self.intake,
                              daemon=view, requests_healthy=requests.healthy,
                              database_ok=lambda: not self.leases.failing)
        self.http = HttpServer(build_app(context, requests.routes()), rules)
        try:
            self.http.bind()
        except OSError as exc:
            log.error("cannot listen on %s (http.listen in %s): %s", rules.listen, self.config.source, exc)
            return False
        return True

    def _request_side(self) -> RequestSide:
        """Return Bazarr's /asr and /detect-language, answered by this daemon's own workers (their lane
        comes before the backlog), with the config in force (its path_map and limits follow reloads)."""
        from daemon.asr import AsrService, rules_in
        from daemon.http.bazarr import RequestSide

        asr = AsrService(self.pool.asr, rules_in(lambda: self.config), self.jobs)
        return RequestSide(asr, lambda: self.config, self.config.work_dir)

    def _release_memory_when_idle(self) -> None:
        """Once the work in hand is done, give back to the system the memory its batches freed."""
        busy = self.pool.busy()
        if busy:
            self._worked = True
        elif self._worked:
            self._worked = False
            release_freed_memory()

    def _recover(self) -> None:
        """Put back the jobs the last daemon left running (see JobQueue.recover_running), each with its
        journal line; the daemon's death charges no file. A job killed while its sidecars were
        written may have left a temp file beside them: it goes."""
        recovered = self.jobs.recover_running()
        folders = {f for back in recovered for f in self.ledger.folders_of(back.job.id, back.job.path)}
        for folder in sorted(folders):
            for temp in subtitles.remove_stale_temps(folder):
                log.info("removed %s, left by a daemon killed while it wrote subtitles", printable(str(temp)))
        for back in recovered:
            job_log(log, "requeued", back.job.path, _recovery_note(back), back.job.id)

    def _install_signal_handlers(self) -> None:
        # Handlers only set flags: the main loop acts on them outside signal context.
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self._reload_requested.set())

    def _worker_devices(self) -> list[str]:
        """The devices this node's transcribers run on (the heartbeat records them for the status)."""
        return [device for device, worker in list(self.workers.items()) if worker.usable]

    def _reaped(self) -> None:
        """A gone node's jobs came back or its sends were taken over: wake the loader, and send what
        that node owed."""
        self._wake.set()
        self.outcomes.notify_owed()
        self.media_servers.tell_owed()

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
        if self.http is not None:
            self.http.stop()  # no new hooks while the intake stops
        self.intake.stop()
        workers = [w for w in self.workers.values() if w.thread is not None]
        _join_all([w.thread for w in workers], STOP_GRACE_SECONDS)
        if any(w.thread.is_alive() for w in workers):
            self._abandon.set()  # progress callbacks raise Cancelled; the batches go back to pending
            self.models.kill()  # and a child that reports no progress (loading, hung) is ended
            _join_all([w.thread for w in workers], 5.0)
        for worker in workers:
            job_ids, current = worker.activity.job_ids, worker.activity.current
            if worker.thread.is_alive() and job_ids:
                # Stuck inside the model with no progress callback: give the jobs back
                # ourselves; the caller ends the process without waiting for the thread.
                log.info("%s did not finish in time", current)
                for job_id in job_ids:
                    self.outcomes.release(job_id, "stopping: returned to the queue")
        for thread in self._threads:
            thread.join(2.0)
        self.pool.release_prefetched()
        self.models.close()
        self.notifier.stop(timeout=5.0)
        self.leases.stop()
        try:
            self.jobs.nodes.stopped(self.jobs.node)
        except QueueError as exc:  # the database is away: the node shows as gone once its beat is old
            log.warning("cannot record this node's stop: %s", exc)
        self.jobs.close()
        log.info("stopped")

    def _loader_loop(self) -> None:
        self.pool.loader_loop()

    def _decoder_died(self, decoder: Decoder, death: Death) -> None:
        """Keep a decoder child's death where `subwatch status` and the status page read it."""
        state = decoder.state()
        # On a shared queue every node has its own `cpu` or `cuda:0`: the record names the node too.
        name = state.name if self.config.database is None else f"{state.name} on {self.jobs.node}"
        self.jobs.decoders.record(name, state.pid, state.restarts, death.cause, death.at)

    def _start_workers(self) -> None:
        self.pool.start_workers()

    # ------------------------------------------------------------ reload (SIGHUP)

    def reload(self) -> bool:
        """Re-read the config; keep the old one if the new one is broken. Return True if applied."""
        self.systemd.reloading()
        try:
            new = as_bound(self.http, load_config(self.config.source))
        except ConfigError as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            self.systemd.ready()
            return False
        self.config = new
        self.serving.update(new)
        self.models.set_memory_limit(new.gpu_memory_limit)
        self._start_workers()  # for devices the new config adds
        self.leases.beat_soon()
        self.intake.update(new)
        self.notifier.update(new.notify)
        log.info("reloaded %s: watching %d folder(s)", new.source, len(new.folders))
        self.systemd.ready()
        return True

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


def as_bound(http: HttpServer | None, new: Config) -> Config:
    """Given the running listener (None if none) and a config just read, return the config with its
    `http` section as that listener serves it: the socket bound at start stays (a new listen address
    applies at the next start), and the key, path_map and limits come from the new file. Raise
    ConfigError if that would leave a socket other machines reach without a key."""
    if http is None:
        if new.http is not None:
            log.warning("an http section was added; restart subwatch to start listening")
        return new
    bound = http.rules
    rules = replace(new.http or HttpRules(), host=bound.host, port=bound.port)
    if rules.api_key is None and not rules.loopback:
        raise ConfigError(new.source, [
            f"at 'http.api_key': required while subwatch listens on {bound.listen}, which other "
            "machines reach; keep the key, or change http.listen and restart"])
    if new.http is None or new.http.listen != bound.listen:
        log.warning("http.listen changed or was removed; subwatch keeps listening on %s until it is "
                    "restarted (the rest of the http section applies now)", bound.listen)
    return replace(new, http=rules)


def open_queue(config: Config) -> JobQueue:
    """Open the config's job queue as this node, holding its name (JobQueue.hold_node), claiming
    only its folders' jobs. Raise QueueError, the queue closed again, if it cannot be."""
    jobs = JobQueue(config.queue_at, node=config.node.name, lease_seconds=config.node.lease_seconds,
                    paths=config.queue_paths)
    try:
        jobs.hold_node()
    except QueueError:
        jobs.close()
        raise
    # A shared queue's jobs wait until `Serving` has looked at which folders this host can serve.
    jobs.serve(None if config.database is None else [])
    return jobs


def clear_work_dir(work: Path) -> None:
    """Make the folder where decoded audio and uploads wait, and empty it: what is there was left
    by a daemon that died while a request was uploaded (decoded audio has no name to leave)."""
    work.mkdir(parents=True, exist_ok=True)
    for left in work.glob("upload-*"):
        left.unlink(missing_ok=True)


def create_folders(config: Config) -> None:
    """Make each watched folder that is missing and asks for it (create_if_missing)."""
    for rules in config.folders:
        if rules.create_if_missing and not rules.path.exists():
            try:
                rules.path.mkdir(parents=True)
                log.info("created watched folder %s", rules.path)
            except OSError as exc:
                log.error("cannot create watched folder %s: %s", rules.path, exc)


def _recovery_note(back: Recovered) -> str:
    """Given a job put back at start-up, return the details of its `requeued` line."""
    if back.cause == "waiting":
        return "left running by a crash or stop before the model began on it; attempt not counted"
    others = back.together - 1
    company = f" with {others} other file{'s' if others != 1 else ''}" if others else ""
    return (f"left running by a crash or stop while the model transcribed it{company}; transcribed "
            "alone next; attempt not counted, and no crash: the daemon's death is no evidence against it")


def _join_all(threads: Iterable[threading.Thread | None], timeout: float) -> None:
    """Join the threads within `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
