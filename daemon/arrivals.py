"""Arrivals that wait to be enqueued again (daemon.intake holds them here).

- `WaitingCopies`: a copy of content whose job is pending or running at another path waits for
  that job to be over, then is enqueued again (it gets its own sidecars from the stored transcript).
- `HeldArrivals`: an arrival the queue could not record because of a passing trouble (the database
  locked or busy past its timeout, no file descriptor left to open it or the file, the disk full)
  is held and tried again with a growing pause, on a thread of its own, until it is recorded. It is
  never dropped: before, such a file waited for the next rescan, an hour later by default.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from daemon.queue import QueueBusy
from daemon.watch import shown

log = logging.getLogger("subwatch.intake")

FIRST_PAUSE_S = 0.5  # the first try again; doubled after each failure
MAX_PAUSE_S = 60.0  # the longest pause between tries while the trouble lasts
_PASSING_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EAGAIN,
                             errno.EINTR, errno.EBUSY})


def passing_trouble(exc: BaseException) -> str | None:
    """Given an error from recording an arrival in the queue, return what kind of passing trouble it
    is ("database is locked", "Too many open files"), or None if trying again cannot help."""
    if isinstance(exc, QueueBusy):  # locked, busy, cannot open the file, disk full, server gone
        return str(exc) or "the job database cannot be used now"
    if isinstance(exc, OSError) and exc.errno in _PASSING_ERRNOS:
        return exc.strerror or errno.errorcode.get(exc.errno or 0, "an OS error")
    return None


class WaitingCopies:
    """Copies waiting for their twin's job: path -> (watched folder, that job's id). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[Path, tuple[Path, int]] = {}

    def add(self, path: Path, folder: Path, twin_id: int) -> bool:
        """Given a copy, its folder and the job it waits for, keep it; return False if it already waits."""
        with self._lock:
            if path in self._waiting:
                return False
            self._waiting[path] = (folder, twin_id)
            return True

    def moved(self, old: Path, new: Path) -> bool:
        """Given a rename, let a waiting copy wait under its new name; return whether one waited."""
        with self._lock:
            if old not in self._waiting:
                return False
            self._waiting[new] = self._waiting.pop(old)
            return True

    def due(self, busy: Callable[[int], bool]) -> list[tuple[Path, Path]]:
        """Given whether a job id is still pending or running, return (and stop keeping) the copies
        whose twin's job is over, with their folders."""
        with self._lock:
            waiting = list(self._waiting.items())
        due = [(path, folder) for path, (folder, twin_id) in waiting if not busy(twin_id)]
        with self._lock:
            for path, _ in due:
                self._waiting.pop(path, None)
        return due


class HeldArrivals:
    """Arrivals the queue could not record yet, tried again in turn on a thread of their own.

    `record(path, folder)` is the intake's way into the queue; it raises the same kind of error
    again while the trouble lasts (`passing_trouble`). One warning is logged per kind of trouble
    while it lasts, not one per try or per file, and one line once every held arrival is recorded.
    The thread is there only while something is held; `finish()` is called before it ends.
    """

    def __init__(self, record: Callable[[Path, Path], object], finish: Callable[[], None] = lambda: None,
                 *, first_pause: float = FIRST_PAUSE_S, max_pause: float = MAX_PAUSE_S) -> None:
        self._record = record
        self._finish = finish
        self._first_pause = first_pause
        self._max_pause = max_pause
        self._lock = threading.Lock()
        self._held: OrderedDict[Path, Path] = OrderedDict()  # path -> its watched folder
        self._troubles: set[str] = set()  # the kinds logged since the last time nothing was held
        self._recorded = 0  # held arrivals recorded since then
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # set at stop: no pause to wait out
        self._stopping = threading.Event()

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def hold(self, path: Path, folder: Path, trouble: str | None = None) -> None:
        """Given an arrival the queue could not record, its watched folder and why (`passing_trouble`;
        None: not tried, as others are held), keep it and try again until it is recorded."""
        with self._lock:
            if self._stopping.is_set():
                return  # the daemon stops: the next start's scan finds the file
            self._held[path] = folder
            new_trouble = trouble is not None and trouble not in self._troubles
            if trouble is not None:
                self._troubles.add(trouble)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="subwatch-held", daemon=True)
                self._thread.start()
        if new_trouble:
            log.warning("cannot record %s in the job queue (%s); it and any other arrival meanwhile are "
                        "kept and tried again, at most %g s apart, until the queue takes them",
                        shown(path), trouble, self._max_pause)

    def moved(self, old: Path, new: Path) -> bool:
        """Given a rename, hold a held arrival under its new name; return whether one was held."""
        with self._lock:
            if old not in self._held:
                return False
            self._held[new] = self._held.pop(old)
            return True

    def stop(self, timeout: float = 2.0) -> None:
        """Try no more; wait up to `timeout` s for a try under way. What is still held is said once."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            thread, left = self._thread, len(self._held)
        if thread is not None:
            thread.join(timeout)
        if left:
            log.warning("%d arrival(s) not recorded in the job queue at stop; the next start's scan "
                        "takes them", left)

    def _run(self) -> None:
        pause = self._first_pause
        try:
            while (item := self._next()) is not None:
                if self._try(*item):
                    pause = self._first_pause
                    continue
                self._wake.wait(pause)
                pause = min(pause * 2, self._max_pause)
        finally:
            self._finish()

    def _next(self) -> tuple[Path, Path] | None:
        """Return the held arrival whose turn it is, or None when none is left or it is time to stop
        (the thread ends then: a later `hold` starts another)."""
        with self._lock:
            if self._held and not self._stopping.is_set():
                return next(iter(self._held.items()))
            self._thread = None
            if not self._held and self._recorded:
                log.info("the job queue records arrivals again: %d held arrival(s) recorded", self._recorded)
            if not self._held:
                self._troubles.clear()
                self._recorded = 0
            return None

    def _try(self, path: Path, folder: Path) -> bool:
        """Given a held arrival, record it; return False if the trouble goes on (it stays held)."""
        recorded = False
        try:
            self._record(path, folder)
            recorded = True
        except Exception as exc:  # noqa: BLE001 - sorted just below
            trouble = passing_trouble(exc)
            if trouble is not None:
                self.hold(path, folder, trouble)  # logs a kind of trouble not seen before
                with self._lock:
                    if path in self._held:  # the others' turn first: this one may be the only one stuck
                        self._held.move_to_end(path)
                return False
            log.exception("cannot record %s in the job queue; the next rescan tries again", shown(path))
        with self._lock:
            if self._held.get(path) == folder:
                self._held.pop(path)
            self._recorded += recorded
        return True
