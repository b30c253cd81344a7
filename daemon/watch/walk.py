"""What is in a watched folder now: the one way subwatch lists folders.

`FolderLister` lists one folder at a time. A scan (`scan`, for the daemon's
backfill and `subwatch scan`) walks with it depth first; the polling
observer (`PollLister`) calls it for each folder of its snapshots. So both
skip the same folders and names, follow symlinks the same way and refuse the
same loops.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from daemon.watch.filesystems import Identity, folder_identity
from daemon.watch.rules import WatchSpec, is_ignored_folder_name, may_be_media_name, name_verdict, shown

logger = logging.getLogger("subwatch.watch")


class FolderLister:
    """Lists folders one at a time, leaving out what can never hold or be media.

    Ignored folders (hidden, NAS thumbnails, recycle bins) and names that
    cannot be media are left out without a stat. Symlinks are followed; a
    folder already listed since `begin` (same st_dev, st_ino) is left out,
    which refuses loops. An unreadable subfolder lists as empty; each trouble
    is logged once per lister, so a poller does not repeat it every poll.
    """

    def __init__(self) -> None:
        self._visited: set[Identity] = set()
        self._told: set[str] = set()

    def begin(self, root: str) -> None:
        """Given the folder a walk starts at, forget the folders of the last walk."""
        identity = folder_identity(root)
        self._visited = {identity} if identity else set()

    def entries(self, folder: str, *, root: bool = False) -> list[os.DirEntry[str]]:
        """Given a folder, return its entries that may matter, in name order.

        Raise OSError if `root` and it cannot be read: what a failing root
        means (an unmounted share, a deleted folder) is the caller's to decide.
        """
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            if root:
                raise
            self._tell(logging.WARNING, folder, "cannot read folder %s: %s; skipped", exc)
            return []
        return [entry for entry in entries if self._keeps(entry)]

    def _keeps(self, entry: os.DirEntry[str]) -> bool:
        try:
            if not entry.is_dir():  # follows symlinks
                return may_be_media_name(entry.name)
            if is_ignored_folder_name(entry.name):
                return False
            info = entry.stat()
        except OSError as exc:
            self._tell(logging.WARNING, entry.path, "cannot look at %s: %s; skipped", exc)
            return False
        key = (info.st_dev, info.st_ino)
        if key in self._visited:
            self._tell(logging.INFO, entry.path, "not entering %s again (symlink loop or second link)")
            return False
        self._visited.add(key)
        return True

    def _tell(self, level: int, path: str, message: str, exc: OSError | None = None) -> None:
        if path in self._told:
            return
        self._told.add(path)
        reason = (exc.strerror or str(exc),) if exc is not None else ()
        logger.log(level, message, shown(path), *reason)


def scan(spec: WatchSpec) -> Iterator[Path]:
    """Given a watched folder, yield the files in it now whose names do not rule them out, in name
    order per folder, depth first.

    Applies the watcher's rules (ignored names and folders, include/exclude).
    A file with an unknown extension is yielded too: whether it is media is
    for ffprobe to say, which the intake asks. Does not wait for files to
    settle. Never raises OSError: unreadable folders are logged and skipped.
    """
    lister = FolderLister()
    lister.begin(os.fspath(spec.path))
    pending = [spec.path]
    while pending:
        folder = pending.pop()
        try:
            entries = lister.entries(os.fspath(folder), root=folder is spec.path)
        except OSError as exc:
            logger.warning("cannot scan %s: %s", shown(folder), exc.strerror or exc)
            return
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir():
                    if spec.recursive:
                        subfolders.append(path)
                elif entry.is_file() and name_verdict(path, spec) is not False:  # no FIFOs, sockets
                    yield path
            except OSError as exc:
                logger.warning("cannot look at %s: %s; skipped", shown(entry.path), exc.strerror or exc)
        pending.extend(reversed(subfolders))


class PollLister:
    """The directory lister a polling observer uses for one folder: a new walk at each snapshot."""

    def __init__(self, root: str) -> None:
        self._root = root
        self._lister = FolderLister()

    def __call__(self, folder: str | None) -> list[os.DirEntry[str]]:
        folder = os.fspath(folder or ".")
        if folder == self._root:  # a new snapshot starts at the root
            self._lister.begin(folder)
        return self._lister.entries(folder, root=folder == self._root)
