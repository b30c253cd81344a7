"""One watched folder: a supervisor thread that keeps a watchdog observer running on it.

The observer is inotify, or a poller (with `walk.PollLister`) where the
filesystem or the spec asks for one. Its events are translated back under the
configured path and handed on; the supervisor notices when the folder is
deleted, re-created or remounted and starts again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from daemon.watch.filesystems import Identity, folder_identity, needs_polling
from daemon.watch.rules import WatchSpec, shown
from daemon.watch.walk import PollLister

logger = logging.getLogger("subwatch.watch")

# (spec, identity of the folder the observer watched, event type, path, destination, is a folder)
FileEventSink = Callable[[WatchSpec, Identity, str, Path, "Path | None", bool], None]
BackfillSink = Callable[[WatchSpec, threading.Event], None]


class _Relay(FileSystemEventHandler):
    """Hands a folder's watchdog events to it; an error is logged and never ends the observer thread."""

    def __init__(self, folder: Folder, identity: Identity) -> None:
        self._folder = folder
        self._identity = identity

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._folder.handle(event, self._identity)
        except Exception:
            logger.exception("error handling %s %s; going on", event.event_type, shown(event.src_path))


class Folder:
    """One watched folder: a supervisor thread that keeps a watchdog observer running on it.

    The observer watches the folder's real path; event paths are translated
    back under `spec.path`, so reports use the name the config gave.
    """

    def __init__(self, spec: WatchSpec, on_event: FileEventSink, on_back: BackfillSink,
                 recheck_seconds: float) -> None:
        self.spec = spec
        self._on_event = on_event
        self._on_back = on_back
        self._recheck = recheck_seconds
        self._stopped = threading.Event()
        self._poke = threading.Event()
        self.looked = threading.Event()  # set once the first attempt to watch is over
        self._observer: BaseObserver | None = None
        self._identity: Identity | None = None
        self._outage_logged = False  # one warning per outage, not one per recheck
        self._real_root = os.path.realpath(spec.path)
        name = f"subwatch-folder:{spec.path.name}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._poke.set()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the supervisor to end; return whether it did."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_watching(self) -> bool:
        """Return whether an observer is running on the folder now."""
        return self._observer_alive()

    def handle(self, event: FileSystemEvent, identity: Identity) -> None:
        """Given a watchdog event from the observer started on `identity`, pass it on under `spec.path`."""
        if self._stopped.is_set() or identity != self._identity:
            return  # a stopped or replaced observer's last events
        kind = event.event_type
        if kind not in (EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED, EVENT_TYPE_ATTRIB,
                        EVENT_TYPE_MOVED, EVENT_TYPE_DELETED):
            return  # opened / closed without writing: readers, such as our own transcriber
        src = self._to_spec_path(event.src_path)
        if src is None:
            return
        if event.is_directory:
            if kind == EVENT_TYPE_DELETED and src == self.spec.path:
                self._poke.set()  # the folder itself went: look now, not at the next recheck
            elif kind == EVENT_TYPE_DELETED:
                self._on_event(self.spec, identity, kind, src, None, True)
            return  # files in created or moved folders get events of their own
        dest = self._to_spec_path(event.dest_path) if kind == EVENT_TYPE_MOVED else None
        if kind == EVENT_TYPE_MOVED and dest is None:
            kind = EVENT_TYPE_DELETED
        self._on_event(self.spec, identity, kind, src, dest, False)

    def _to_spec_path(self, raw: str | bytes) -> Path | None:
        text = os.fsdecode(raw)
        root = self._real_root
        if text == root:
            return self.spec.path
        prefix = root if root.endswith(os.sep) else root + os.sep
        return self.spec.path / text[len(prefix):] if text.startswith(prefix) else None

    def _run(self) -> None:
        first_look = True
        while not self._stopped.is_set():
            try:
                self._look(first_look)
            except Exception:  # whatever watchdog raises, the folder is looked at again next time
                logger.exception("error watching %s; trying again in %g s",
                                 shown(self.spec.path), self._recheck)
            first_look = False
            self.looked.set()
            self._poke.wait(self._recheck)
            self._poke.clear()
        try:
            self._close_observer()
        except Exception:
            logger.exception("error stopping the watch on %s", shown(self.spec.path))

    def _look(self, first_look: bool) -> None:
        """Check that the folder is still the one watched; (re)start the observer when it is there.

        A missing or unwatchable folder is logged once per outage. When the
        folder appears or comes back (not on the first look: the daemon's own
        scan covers that), what is in it is tracked as if it had just arrived.
        """
        identity = folder_identity(self.spec.path)
        if self._observer is not None and (identity != self._identity or not self._observer_alive()):
            logger.warning("watched folder %s went away or changed (deleted, re-created or remounted); "
                           "watching it again when it is there", shown(self.spec.path))
            self._outage_logged = True
            self._close_observer()
        if self._observer is not None:
            return
        if identity is None:
            if not self._outage_logged:
                logger.warning("watched folder %s does not exist or is not a folder; "
                               "looking again every %g s", shown(self.spec.path), self._recheck)
                self._outage_logged = True
            return
        try:
            self._open_observer(identity)
        except OSError as exc:
            if not self._outage_logged:
                logger.warning("cannot watch %s: %s; trying again every %g s",
                               shown(self.spec.path), exc.strerror or exc, self._recheck)
                self._outage_logged = True
            return
        if self._outage_logged:
            logger.info("watched folder %s is back", shown(self.spec.path))
            self._outage_logged = False
        if not first_look:
            self._on_back(self.spec, self._stopped)

    def _observer_alive(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in list(observer.emitters))

    def _open_observer(self, identity: Identity) -> None:
        """Given the folder's identity now, start an observer on it. Raise OSError if it cannot be watched."""
        # Both are set before the observer starts: its first events are translated and checked with them.
        self._real_root = os.path.realpath(self.spec.path)
        self._identity = identity
        try:
            observer, poll = self._start_any_observer(identity)
        except BaseException:
            self._identity = None
            raise
        self._observer = observer
        how = f"polling every {self.spec.poll_interval:g} s" if poll else "inotify"
        logger.info("watching %s (%s, settle %g s)", shown(self.spec.path), how, self.spec.settle_seconds)

    def _start_any_observer(self, identity: Identity) -> tuple[BaseObserver, bool]:
        """Return a started observer and whether it polls: as the spec or filesystem asks, else polling."""
        poll = self.spec.poll if self.spec.poll is not None else needs_polling(self._real_root)
        try:
            return self._start_observer(poll, identity), poll
        except OSError as exc:
            if poll or self.spec.poll is False:
                raise
            # Running out of inotify watches or instances must not leave the folder unwatched.
            logger.warning("cannot use inotify on %s (%s); polling it instead", shown(self.spec.path), exc)
            return self._start_observer(True, identity), True

    def _start_observer(self, poll: bool, identity: Identity) -> BaseObserver:
        observer: BaseObserver
        if poll:
            observer = PollingObserverVFS(os.stat, PollLister(self._real_root),
                                          polling_interval=self.spec.poll_interval)
        else:
            observer = Observer()
        try:
            observer.schedule(_Relay(self, identity), self._real_root, recursive=self.spec.recursive)
            observer.start()
        except BaseException:
            observer.stop()  # the inotify observer has a reader thread running from construction
            raise
        return observer

    def _close_observer(self) -> None:
        observer, self._observer, self._identity = self._observer, None, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=2.0)

