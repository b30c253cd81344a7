"""The watcher: every folder's events, through the stability tracker, to the daemon's callbacks.

Threads:
- one dispatcher thread ("subwatch-watch") runs every callback (`on_ready`,
  `on_deleted`, `on_moved`), one at a time, so the daemon can keep a single
  SQLite connection for them. It also re-stats files whose window ended. It
  never runs ffprobe: a file with an unknown extension is reported like any
  other, and the receiver decides (daemon.intake probes it on its own thread).
- per watched folder, one supervisor thread (`folder.Folder`).
- the observers' own threads, which only translate events and touch the
  tracker (a stat and a dict update each).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from watchdog.events import EVENT_TYPE_ATTRIB, EVENT_TYPE_DELETED, EVENT_TYPE_MOVED

from daemon.watch.filesystems import Identity, folder_identity
from daemon.watch.folder import Folder
from daemon.watch.rules import WatchSpec, is_ignored_folder, name_verdict, shown
from daemon.watch.stability import StabilityTracker
from daemon.watch.walk import scan

logger = logging.getLogger("subwatch.watch")

RECHECK_SECONDS = 2.0  # how often a missing or replaced folder is looked for again

# (kind, spec, path, destination, identity of the folder the event came from)
_Notice = tuple[str, WatchSpec, Path, "Path | None", Identity]


def _unique(specs: Sequence[WatchSpec]) -> tuple[WatchSpec, ...]:
    return tuple(dict.fromkeys(specs))


class Watcher:
    """Reports files once they have finished arriving in the watched folders.

    `on_ready(path, spec)` is called once per arrival (again if the file
    changes later) of a file whose name does not rule it out; one with an
    unknown extension (`rules.name_verdict` None) may still not be media,
    which is for the receiver to find out, off this thread. `on_deleted(path)`
    and `on_moved(old, new)` are called for media files the watcher is not
    tracking (done ones, or ones there before it started); `path` in
    `on_deleted` may be a folder, meaning everything under it went. Without
    `on_moved`, a renamed file is reported through `on_ready` under its new
    name. All callbacks run on the watcher's one dispatcher thread; an
    exception in one is logged and the watcher goes on. Deletions are not
    passed on while their folder is unavailable, so an unmounted share does
    not look like an emptied one.
    """

    def __init__(
        self,
        specs: Sequence[WatchSpec],
        on_ready: Callable[[Path, WatchSpec], None],
        on_deleted: Callable[[Path], None] | None = None,
        on_moved: Callable[[Path, Path], None] | None = None,
        *,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self._specs = _unique(specs)
        self._on_ready = on_ready
        self._on_deleted = on_deleted
        self._on_moved = on_moved
        self._recheck = recheck_seconds
        self._tracker = StabilityTracker()
        self._lock = threading.Lock()
        self._folders: dict[WatchSpec, Folder] = {}
        self._notices: deque[_Notice] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._dispatcher: threading.Thread | None = None
        self._extra_specs: dict[Path, WatchSpec] = {}  # rules of files taken from outside the folders

    def start(self, timeout: float = 5.0) -> None:
        """Start watching every folder; return once each has had its first look (at most `timeout` s).

        Files already there are not reported: call `walk.scan` after `start` for a
        backfill, so that nothing arriving in between is missed. A folder that
        is missing now is looked for again every `recheck_seconds`.
        """
        if self._dispatcher is not None and self._dispatcher.is_alive():
            return
        self._stopping.clear()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="subwatch-watch", daemon=True)
        self._dispatcher.start()
        with self._lock:
            folders = [self._open_folder(spec) for spec in self._specs]
        deadline = time.monotonic() + timeout
        for folder in folders:
            # A hung network mount must not hold up the daemon's start; it is retried in the background.
            folder.looked.wait(max(0.0, deadline - time.monotonic()))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and return within about `timeout` seconds.

        A thread stuck in a hung mount is left behind (daemon threads die
        with the process) and logged.
        """
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        with self._lock:
            folders = list(self._folders.values())
            self._folders.clear()
        for folder in folders:
            folder.stop()
        stuck = [f.spec.path for f in folders if not f.join(max(0.0, deadline - time.monotonic()))]
        if self._dispatcher is not None:
            self._dispatcher.join(max(0.0, deadline - time.monotonic()))
            if self._dispatcher.is_alive():
                logger.warning("watcher dispatcher still busy after %g s; left behind", timeout)
        if stuck:
            logger.warning("still stopping watches on %s after %g s; left behind",
                           ", ".join(shown(p) for p in stuck), timeout)

    def update(self, specs: Sequence[WatchSpec]) -> None:
        """Given the folders after a config reload, start new ones and stop removed ones; others go on.

        A folder whose rules changed is restarted with its files still being
        tracked, now under the new rules.
        """
        new = _unique(specs)
        with self._lock:
            old, self._specs = self._specs, new
            running = self._dispatcher is not None and not self._stopping.is_set()
            added = [spec for spec in new if spec not in old]
            removed = [spec for spec in old if spec not in new]
            if running:
                for spec in added:
                    self._open_folder(spec)
                for spec in removed:
                    folder = self._folders.pop(spec, None)
                    if folder is not None:
                        folder.stop()  # it ends in its own thread; update() does not wait
        for spec in removed:
            self._tracker.replace_spec(spec, next((n for n in added if n.path == spec.path), None))

    def take(self, path: Path, spec: WatchSpec) -> None:
        """Given a file another program says has arrived (a webhook) and the folder rules it falls
        under, track it as if an event had touched it: it is reported once it has settled. `spec`
        need not be a watched folder's (a file outside them all takes the defaults')."""
        with self._lock:
            if spec not in self._specs:
                self._extra_specs[spec.path] = spec
        self._arrived(spec, path, force=True)

    def take_move(self, old: Path, new: Path, spec: WatchSpec) -> None:
        """Given a rename another program reports (a webhook), pass it on as a watched one would be."""
        self._notify(("moved", spec, old, new, None))

    def watching(self) -> list[Path]:
        """Return the folders that have a running observer now (missing or broken ones are left out)."""
        with self._lock:
            folders = list(self._folders.values())
        return [folder.spec.path for folder in folders if folder.is_watching()]

    def pending(self) -> int:
        """Return how many files are being tracked as not yet settled."""
        return len(self._tracker)

    # -- event side (observer and supervisor threads)

    def _open_folder(self, spec: WatchSpec) -> Folder:
        folder = Folder(spec, self._file_event, self._backfill, self._recheck)
        self._folders[spec] = folder
        folder.start()
        return folder

    def _file_event(self, spec: WatchSpec, identity: Identity, kind: str, src: Path, dest: Path | None,
                    is_dir: bool) -> None:
        if kind == EVENT_TYPE_DELETED and is_dir:
            if not is_ignored_folder(src, spec):
                self._notify(("deleted", spec, src, None, identity))
        elif kind == EVENT_TYPE_DELETED:
            self._deleted(spec, identity, src)
        elif kind == EVENT_TYPE_MOVED and dest is not None:
            self._moved(spec, identity, src, dest)
        elif kind == EVENT_TYPE_ATTRIB:
            if src in self._tracker:  # chmod or utime at the end of a copy; alone it is no arrival
                self._arrived(spec, src)
        else:
            self._arrived(spec, src)

    def _arrived(self, spec: WatchSpec, path: Path, *, force: bool = False) -> None:
        if name_verdict(path, spec) is not False and self._tracker.touch(path, spec, force=force):
            self._wake.set()

    def _deleted(self, spec: WatchSpec, identity: Identity, path: Path) -> None:
        if self._tracker.forget(path):
            return  # vanished while settling: never reported, so nothing to tell
        if name_verdict(path, spec) is not False:
            self._notify(("deleted", spec, path, None, identity))

    def _moved(self, spec: WatchSpec, identity: Identity, src: Path, dest: Path) -> None:
        dest_taken = name_verdict(dest, spec) is not False
        if self._tracker.move(src, dest):
            if not dest_taken:
                self._tracker.forget(dest)
            return
        if name_verdict(src, spec) is False:
            self._arrived(spec, dest)  # "x.mkv.part" -> "x.mkv": the finished download arrives
        elif not dest_taken:  # renamed to something not taken (a sample, a .bak): gone for the queue
            self._notify(("deleted", spec, src, None, identity))
        elif self._on_moved is not None:
            self._notify(("moved", spec, src, dest, identity))
        else:
            self._arrived(spec, dest, force=True)  # nobody to tell about the rename: report the new name

    def _notify(self, notice: _Notice) -> None:
        self._notices.append(notice)
        self._wake.set()

    def _backfill(self, spec: WatchSpec, stopped: threading.Event) -> None:
        """Given a folder that appeared or came back, track every file in it as if it had just arrived."""
        count = 0
        for path in scan(spec):
            if stopped.is_set():
                return
            count += self._tracker.touch(path, spec, force=True)
        self._wake.set()
        logger.info("%s: %d file(s) found after it appeared; reporting them once settled",
                    shown(spec.path), count)

    # -- dispatcher thread

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self._deliver_notices()
                self._deliver_ready()
            except Exception:  # one bad file must not end the watcher
                logger.exception("watcher dispatcher error; going on")
            wait = self._tracker.seconds_to_next()
            self._wake.wait(1.0 if wait is None else min(wait, 1.0))

    def _deliver_notices(self) -> None:
        withheld = pass_on(self._notices, self._on_moved, self._on_deleted, self._call, self._stopping)
        for root, count in withheld.items():
            logger.warning("%s is unavailable or was replaced; %d deletion(s) under it not passed on",
                           shown(root), count)

    def _deliver_ready(self) -> None:
        for path, tracked_spec in self._tracker.due():
            if self._stopping.is_set():
                return
            spec = self._current_spec(tracked_spec)
            if spec is None:
                continue
            if name_verdict(path, spec) is not False:  # the rules may have been reloaded meanwhile
                logger.debug("ready %s", shown(path))
                self._call(self._on_ready, path, spec)

    def _current_spec(self, spec: WatchSpec) -> WatchSpec | None:
        """Given the spec a file was tracked under, return the active spec for its folder, or None."""
        with self._lock:
            if spec in self._specs:
                return spec
            found = next((s for s in self._specs if s.path == spec.path), None)
            return found or self._extra_specs.get(spec.path)

    def _call(self, callback: Callable[..., None], path: Path, *rest: Path | WatchSpec) -> None:
        try:
            callback(path, *rest)
        except Exception:
            name = getattr(callback, "__name__", "callback")
            logger.exception("%s failed for %s; going on", name, shown(path))


def pass_on(notices: deque[_Notice], on_moved: Callable[[Path, Path], None] | None,
            on_deleted: Callable[[Path], None] | None, call: Callable[..., None],
            stopping: threading.Event) -> dict[Path, int]:
    """Pass the queued folder events on to the callbacks (through `call`, which logs their errors);
    return the deletions withheld, per watched folder.

    An unmounted share reads as an empty folder to a poller (and a vanished sshfs as an error),
    which would look like every file being deleted. A deletion is passed on only while the folder
    is still the one the event came from.
    """
    intact: dict[tuple[Path, Identity], bool] = {}
    withheld: dict[Path, int] = {}
    while notices and not stopping.is_set():
        kind, spec, path, dest, identity = notices.popleft()
        if kind == "moved" and on_moved is not None and dest is not None:
            call(on_moved, path, dest)
            continue
        if on_deleted is None:
            continue
        key = (spec.path, identity)
        if key not in intact:
            intact[key] = folder_identity(spec.path) == identity
        if intact[key]:
            call(on_deleted, path)
        else:
            withheld[spec.path] = withheld.get(spec.path, 0) + 1
    return withheld
