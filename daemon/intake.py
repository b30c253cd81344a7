"""Intake: what the watcher reports and what scans find becomes jobs in the queue.

The way of a file, in the order the data flows:

1. noticed: by the watcher (daemon.watch: events, then the stability
   tracker) when it arrives, or by a scan (daemon.watch.walk) at start, after
   a reload, every rescan_minutes, and for `subwatch scan`;
2. cheap checks, from names, a stat and the folder listing: the name rules;
   for a scan, whether its job is unchanged and whether it already has
   subtitles; for an unknown extension, whether it is a non-empty regular file;
3. ffprobe, only for an extension that does not say whether it is media,
   through `daemon.media.probe` (the daemon's one runner). An arrival's probe
   runs on a thread of its folder's (`Prober`), never the watcher's
   dispatcher thread: a probe can take minutes on a slow share, and
   everything else keeps arriving meanwhile;
4. enqueued (`JobQueue.enqueue`), which wakes the daemon's loader. An arrival the queue cannot
   record for a passing reason (the database locked past its timeout, no descriptor left) is held
   and tried again with backoff until it is (daemon.arrivals.HeldArrivals), never dropped.

The intake also follows sources on disk: a deleted file's pending job goes, a
renamed one's job follows it, and a finished file's sidecars move with it. A
copy of content whose job is still pending or running waits for it, and is
enqueued again once that job is over (it then gets the stored transcript).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

from daemon import media, pipeline, subtitles
from daemon.arrivals import HeldArrivals, WaitingCopies, passing_trouble
from daemon.config import Config, FolderRules
from daemon.datatypes import JobState
from daemon.hooked import OUTSIDE, Hooked, hooked_file, rename_refused
from daemon.logs import job_log
from daemon.queue import EnqueueOutcome, JobQueue, QueueBusy, QueueError
from daemon.text import printable
from daemon.watch import Watcher, WatchSpec, name_verdict, shown
from daemon.watch.walk import scan as files_in

log = logging.getLogger("subwatch.intake")

_REMEMBERED_VERDICTS = 4_096
_REMEMBERED_VANISHED = 256


class ProbeVerdicts:
    """Whether files whose extension does not say are media, asked of ffprobe once per path, size and mtime.

    Remembered, so a rescan every few minutes does not run ffprobe again on
    every such file that was not media. Thread-safe.
    """

    def __init__(self, remembered: int = _REMEMBERED_VERDICTS) -> None:
        self._remembered = remembered
        self._lock = threading.Lock()
        self._verdicts: OrderedDict[tuple[str, int, int], bool] = OrderedDict()

    def is_media(self, path: Path) -> bool:
        """Given a file, return whether ffprobe finds an audio stream in it.

        False without asking for a file that is not a regular file (a FIFO would
        block the read forever) or is empty; False, not remembered, when ffprobe
        could not say (a timeout, not installed): it is asked again next time.
        """
        try:
            info = os.stat(path)
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            return False
        key = (os.fspath(path), info.st_size, info.st_mtime_ns)
        with self._lock:
            if key in self._verdicts:
                self._verdicts.move_to_end(key)
                return self._verdicts[key]
        try:
            media.probe(path)
            verdict = True
        except media.MediaGone:
            return False
        except media.MediaError as exc:
            if not exc.permanent:
                log.warning("%s: ffprobe could not say whether it is media (%s); not taken this time",
                            shown(path), exc)
                return False
            log.debug("%s: not taken: %s", shown(path), exc)
            verdict = False
        with self._lock:
            self._verdicts[key] = verdict
            while len(self._verdicts) > self._remembered:
                self._verdicts.popitem(last=False)
        return verdict


class Prober:
    """Probes arrivals off the watcher's thread: one thread per watched folder while it has files to
    probe, gone once they are done, so a hung share holds up only its own folder's unknown files.

    `take(path, folder)` is called, on that thread, for each file that is media; `finish()` once
    before the thread ends (the queue closes that thread's connection).
    """

    def __init__(self, verdicts: ProbeVerdicts, take: Callable[[Path, Path], object],
                 finish: Callable[[], None] = lambda: None) -> None:
        self._verdicts = verdicts
        self._take = take
        self._finish = finish
        self._lock = threading.Lock()
        self._waiting: dict[Path, deque[Path]] = {}  # by watched folder
        self._threads: dict[Path, threading.Thread] = {}
        self._probing: set[Path] = set()
        # Probed files that were gone by the time they could be enqueued, in case a rename is the
        # reason and the watcher passes it on only now.
        self._vanished: OrderedDict[Path, bool] = OrderedDict()
        self._stopping = threading.Event()

    def submit(self, path: Path, folder: Path) -> None:
        """Given a file with an unknown extension and its watched folder, probe it in the background."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._waiting.setdefault(folder, deque()).append(path)
            if folder not in self._threads:
                name = f"subwatch-probe:{folder.name}"
                thread = self._threads[folder] = threading.Thread(
                    target=self._drain, args=(folder,), name=name, daemon=True)
                thread.start()

    def lost(self, path: Path) -> bool:
        """Given the old name of a renamed file, return whether the rename may have cost it its job:
        it was waiting for its probe, being probed, or its probe just found it gone."""
        with self._lock:
            if self._vanished.pop(path, False):
                return True
            return path in self._probing or any(path in paths for paths in self._waiting.values())

    def stop(self, timeout: float = 2.0) -> None:
        """Probe nothing more; wait up to `timeout` s for probes under way (a hung one is left behind)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _drain(self, folder: Path) -> None:
        try:
            while (path := self._next(folder)) is not None:
                try:
                    if self._verdicts.is_media(path) and not self._stopping.is_set():
                        self._take(path, folder)
                except Exception:  # one bad file must not end its folder's probes
                    log.exception("error taking in %s; going on", shown(path))
                finally:
                    self._done(path)
        finally:
            self._finish()

    def _done(self, path: Path) -> None:
        gone = not os.path.lexists(path)
        with self._lock:
            self._probing.discard(path)
            if gone:
                self._vanished[path] = True
                while len(self._vanished) > _REMEMBERED_VANISHED:
                    self._vanished.popitem(last=False)

    def _next(self, folder: Path) -> Path | None:
        """Return the folder's next file to probe, or None (and forget the thread) when there is none."""
        with self._lock:
            paths = self._waiting.get(folder)
            if not paths or self._stopping.is_set():
                self._waiting.pop(folder, None)
                self._threads.pop(folder, None)
                return None
            path = paths.popleft()
            self._probing.add(path)
            return path


class Intake:
    """Turns arrivals, renames and deletions in the watched folders, and what scans find, into jobs.

    Threads: watcher events come on its dispatcher thread; arrivals to probe
    go on to the `Prober`; a backfill scan runs on a thread of its own; `scan`
    and `tick` run on their caller's. `wake()` is called whenever a job was
    queued (the daemon's loader waits on it).
    """

    def __init__(self, config: Config, jobs: JobQueue, wake: Callable[[], None] = lambda: None,
                 sidecars_moved: Callable[[int, list[Path]], None] = lambda job_id, paths: None) -> None:
        self._config = config
        self._jobs = jobs
        self._sidecars_moved = sidecars_moved  # a finished job's sidecars followed its video
        self._ledger = subtitles.SidecarLedger(jobs)  # which sidecars are subwatch's, to move them
        self._wake = wake
        self._verdicts = ProbeVerdicts()
        self._prober = Prober(self._verdicts, self._enqueue, finish=jobs.close_thread)
        self.watcher = Watcher(self._specs(), self._arrived, on_deleted=self._deleted, on_moved=self._moved)
        self._stopping = threading.Event()
        self._backfilling = threading.Lock()
        self._backfill_thread: threading.Thread | None = None
        self._last_scan = 0.0
        self._copies = WaitingCopies()  # seen while their content's job was pending or running
        self._held = HeldArrivals(self._record, finish=jobs.close_thread)  # the queue could not take them

    # ------------------------------------------------------------ lifecycle (the daemon's main thread)

    def start(self) -> None:
        """Watch the folders, then scan them in the background for what arrived while nobody watched."""
        self.watcher.start()
        self.start_backfill()

    def update(self, config: Config) -> None:
        """Given the config after a reload, watch its folders (others go on) and scan them again."""
        self._config = config
        self.watcher.update(self._specs())
        self.start_backfill()

    def tick(self) -> None:
        """Called every second or so: enqueue the copies whose twin is done; rescan when it is time.

        The watcher can miss events (inotify queue overflow, a share remounted
        without events): a scan every rescan_minutes catches whatever it missed.
        """
        for path, folder in self._copies.due(self._twin_busy):
            self._enqueue(path, folder)
        rescan = self._config.rescan_minutes * 60
        if rescan and time.monotonic() - self._last_scan >= rescan:
            self.start_backfill()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching, probing and scanning; return within a few seconds."""
        self._stopping.set()
        self.watcher.stop()
        self._prober.stop(timeout)
        self._held.stop(timeout)
        if self._backfill_thread is not None:
            self._backfill_thread.join(timeout)

    def _specs(self) -> list[WatchSpec]:
        return [rules.watch for rules in self._config.folders]

    # ------------------------------------------------------------ watcher events (its dispatcher thread)

    def _arrived(self, path: Path, spec: WatchSpec) -> None:
        verdict = name_verdict(path, spec)
        if verdict is None:
            self._prober.submit(path, spec.path)  # never on this thread: a probe can take minutes
        elif verdict:
            self._enqueue(path, spec.path)

    def _deleted(self, path: Path) -> None:
        # `path` may be a folder: everything under it went (a file being transcribed
        # is noticed by the transcriber, which drops its job when it finishes).
        gone = [path] + [j.path for j in self._jobs.jobs([JobState.PENDING]) if path in j.path.parents]
        for each in gone:
            job = self._jobs.drop(each)
            if job:
                job_log(log, "dropped", each, "deleted before its turn", job.id)

    def _moved(self, old: Path, new: Path) -> None:
        rules = self._config.folder_for(new)
        probing = rules is not None and self._prober.lost(old)
        if probing:
            self._prober.submit(new, rules.path)  # renamed while it waited for its probe
        waiting = self._copies.moved(old, new)
        held = self._held.moved(old, new)
        try:
            job = self._jobs.move(old, new, rules.path if rules else None)
        except QueueBusy:
            if held:
                return  # never recorded, the queue cannot be asked now: it is held under its new name
            raise
        if job is None and rules is not None and not (probing or waiting or held):
            # No job under the old name, and nothing here waits for it: a worker that found the old
            # name gone has just dropped its job (the rename outran this notice), or it never had
            # one. The file is here, so it is taken in under its new name as a new arrival is.
            self._arrived(new, rules.watch)
        elif job and rules is None:
            # Moved out of the watched folders: a worker holding it lets go.
            if self._jobs.drop(new, claimed=True) is not None:
                job_log(log, "dropped", new, "moved out of the watched folders", job.id)
        elif job and job.state == JobState.DONE:
            self._follow_move(old, new)

    def _follow_move(self, old: Path, new: Path) -> None:
        """A finished file was renamed or moved: its sidecars follow it."""
        job = self._jobs.find(new)
        if job is None:
            return
        rules = self._config.folder_for(old) or self._config.folder_for(new)  # the layout written in
        moved = self._ledger.follow(job.id, old, new, rules.subtitles.naming if rules else None)
        job_log(log, "moved", new, f"renamed from {old.name}; subtitles moved with it", job.id)
        if moved:
            self._sidecars_moved(job.id, moved)

    # ------------------------------------------------------------ webhooks (the HTTP server's threads)

    def hooked(self, path: Path) -> Hooked:
        """Given a file another program says is new (a path here), take it in as the watcher takes an
        arrival: settled, deduplicated, under its folder's rules (daemon.hooked.hooked_file)."""
        return hooked_file(self._config, self.watcher, path)

    def hooked_move(self, old: Path, new: Path) -> Hooked:
        """Given a rename another program reports (paths here), let the job and sidecars follow it as
        they follow a watched rename, if it happened here (daemon.hooked.rename_refused: else refused,
        nothing moved); a file the daemon does not know yet is taken in."""
        rules = self._config.folder_for(new)
        refused = rename_refused(self._config, old, new)
        if refused is not None or rules is None:
            return refused or OUTSIDE
        try:
            known = self._jobs.find(old) is not None
        finally:
            self._jobs.close_thread()  # a thread of the HTTP server's pool: keep no connection open
        if not known:
            return self.hooked(new)
        self.watcher.take_move(old, new, rules.watch)
        return Hooked("accepted", "")

    # ------------------------------------------------------------ scans

    def start_backfill(self) -> None:
        """Scan the folders on a thread of its own, unless a scan is already running."""
        if self._backfilling.acquire(blocking=False):
            thread = threading.Thread(target=self._backfill, name="backfill", daemon=True)
            self._backfill_thread = thread
            thread.start()
        self._last_scan = time.monotonic()

    def _backfill(self) -> None:
        try:
            self.scan()
        except Exception:  # a scan is repeated every rescan_minutes; one that fails must say why
            log.exception("scanning the watched folders failed")
        finally:
            self._jobs.close_thread()  # a scan every rescan_minutes: each would keep a connection open
            self._backfilling.release()

    def scan(self, under: Path | None = None, on_queued: Callable[[Path], None] | None = None) -> None:
        """Queue media already in the folders (or only at or `under` a path) that lacks subtitles.

        `on_queued(path)` is called for each file that got a job.
        """
        for rules in self._config.folders:
            if under is not None and not _overlaps(under, rules.path):
                continue
            considered, spec = 0, rules.watch
            for path in files_in(spec):
                if self._stopping.is_set():
                    return
                if under is not None and path != under and under not in path.parents:
                    continue
                if not _needs_work(self._jobs, self._verdicts, path, rules):
                    continue
                considered += 1
                outcome = self._enqueue(path, rules.path)
                if outcome is not None and outcome.queued and on_queued is not None:
                    on_queued(path)
            if considered:
                log.info("backfill: %d file(s) in %s considered", considered, rules.path)

    # ------------------------------------------------------------ enqueue

    def _enqueue(self, path: Path, folder: Path) -> EnqueueOutcome | None:
        """Given a media file and its watched folder, record it in the queue; return what was done,
        or None if nothing was (gone, unreadable, or held to be tried again: `HeldArrivals`)."""
        if len(self._held):
            # Behind the others, untried: while they cannot be recorded, one more try would only
            # wait out the database's busy timeout on this thread (the watcher's, most often).
            self._held.hold(path, folder)
            return None
        try:
            outcome = self._record(path, folder)
        except (QueueBusy, OSError) as exc:
            trouble = passing_trouble(exc)
            if trouble is None:
                raise
            self._held.hold(path, folder, trouble)
            return None
        return outcome

    def _record(self, path: Path, folder: Path) -> EnqueueOutcome | None:
        """As `_enqueue`, but raise what `passing_trouble` says may pass (the caller holds the file)."""
        try:
            outcome = self._jobs.enqueue(path, folder)
        except FileNotFoundError:
            return None  # gone before we could look: nothing to do
        except OSError as exc:
            if passing_trouble(exc) is not None:
                raise
            log.error("cannot queue %s: %s", shown(path), exc)
            return None
        except QueueError:
            if self._stopping.is_set():
                return None  # the queue closed under a late probe at shutdown
            raise
        if outcome.action == "moved" and outcome.previous_path:
            self._follow_move(outcome.previous_path, path)
        if outcome.action == "duplicate" and outcome.job.path != path:
            self._wait_for_twin(path, folder, outcome)
        if outcome.queued:
            copy = f"copy of {printable(os.fsdecode(outcome.copy_of))}" if outcome.copy_of else ""
            job_log(log, "queued", path, copy, outcome.job.id)
            self._wake()
        return outcome

    def _wait_for_twin(self, path: Path, folder: Path, outcome: EnqueueOutcome) -> None:
        """A copy of content whose job is pending or running elsewhere: enqueue it again once that
        job has finished, so it gets its own sidecars (from the transcript stored then)."""
        if self._copies.add(path, folder, outcome.job.id):
            twin = printable(os.fsdecode(outcome.job.path))
            job_log(log, "waiting", path, f"same content as {twin}, not done yet; queued once it is")

    def _twin_busy(self, job_id: int) -> bool:
        twin = self._jobs.get(job_id)
        return twin is not None and twin.state in (JobState.PENDING, JobState.RUNNING)


def _needs_work(jobs: JobQueue, verdicts: ProbeVerdicts, path: Path, rules: FolderRules) -> bool:
    """Given the queue, the probe verdicts, a file a scan found (its name not ruled out) and its folder's
    rules, return whether to enqueue it: the cheap checks first, then, only for an extension that does
    not say, ffprobe."""
    job = jobs.find(path)
    if job is not None:
        try:
            st = path.stat()
        except OSError:
            return False
        # Unchanged since we last saw it: skip without reading it for a fingerprint.
        if job.size == st.st_size and abs(job.mtime - st.st_mtime) < 1e-3:
            return False
    try:
        if subtitles.existing_subtitles(path, pipeline.output_language(rules)):
            return False
    except OSError as exc:
        log.warning("cannot look for subtitles beside %s: %s; not queued this time", shown(path), exc)
        return False
    return name_verdict(path, rules.watch) is True or verdicts.is_media(path)


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents
