"""Notice media files that have finished arriving in watched folders, and only those.

The watcher does no work itself. Filesystem events (inotify, or polling where
inotify cannot see writes) feed a `StabilityTracker`; a file is reported once
no event has touched it for its folder's `settle_seconds` and its size and
mtime held still across that quiet window. Moves and deletions of files that
are not being tracked are passed on so the daemon can keep its queue in step.

Threads:
- one dispatcher thread ("subwatch-watch") runs every callback (`on_ready`,
  `on_deleted`, `on_moved`), one at a time, so the daemon can keep a single
  SQLite connection for them. It also re-stats files whose window ended and
  runs ffprobe for unknown extensions. No thread per file.
- per watched folder, one supervisor thread that starts a watchdog observer
  when the folder exists, notices when it is deleted, re-created or
  remounted, and starts again (reporting what is in it by the normal path).
- the observers' own threads, which only translate events and touch the
  tracker (a stat and a dict update each).
"""

from __future__ import annotations

import fnmatch
import functools
import heapq
import itertools
import logging
import os
import re
import stat
import subprocess
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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

logger = logging.getLogger("subwatch.watch")

MEDIA_EXTENSIONS = frozenset({
    # video
    "mkv", "mk3d", "mp4", "m4v", "avi", "mov", "qt", "wmv", "asf", "webm", "ts", "mts", "m2ts", "m2t",
    "mpg", "mpeg", "mpe", "vob", "flv", "f4v", "ogv", "ogm", "3gp", "3g2", "divx", "rm",
    "rmvb", "dv", "mxf", "wtv", "dvr-ms", "nut",
    # audio
    "mp3", "m4a", "m4b", "aac", "ac3", "eac3", "dts", "flac", "wav", "ogg", "oga", "opus", "wma", "aif",
    "aiff", "ape", "wv", "mka", "amr", "mp2", "caf", "spx",
})

NON_MEDIA_EXTENSIONS = frozenset({
    # subtitles and their indexes
    "srt", "vtt", "ass", "ssa", "sub", "idx", "sup", "smi", "sami", "lrc", "ttml", "dfxp", "usf",
    # metadata, artwork, text
    "nfo", "jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "heic", "svg", "txt", "json",
    "xml", "md", "pdf", "log", "ini", "cfg", "conf", "yaml", "yml", "csv", "html", "htm", "url", "lnk",
    "db", "sqlite", "cue", "m3u", "m3u8", "pls", "sh", "py", "js", "css",
    # downloads and archives
    "nzb", "torrent", "sfv", "md5", "sha1", "sha256", "par2", "rar", "zip", "7z", "tar", "gz", "xz",
    "bz2", "iso", "img", "exe",
    # disc structure files that are not streams themselves
    "ifo", "bup", "bdmv", "clpi", "mpls",
})

# Names a downloader or editor writes while a file is incomplete; the rename
# to the final name is what counts. Compared case-folded.
TEMP_SUFFIXES = (
    ".part", ".partial", ".tmp", ".temp", ".crdownload", ".!qb", ".!ut", ".download", ".filepart",
    ".aria2", ".inprogress",
)

# Folders whose content is never media to transcribe, wherever they appear
# (NAS thumbnails and recycle bins, sync tool state). Hidden folders (".*",
# which covers .stfolder and .Trash-1000) are skipped as well.
SYSTEM_FOLDERS = frozenset({
    "@eadir", "#recycle", "#snapshot", "@recycle", "@recently-snapshot", "$recycle.bin", "lost+found",
    "system volume information",
})

# Filesystems where inotify misses changes made by other machines or by the
# backing store, so the folder is polled instead. FUSE types are "fuse.<name>".
POLLED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "v9fs", "virtiofs", "vboxsf", "vmhgfs", "drvfs",
    "sshfs", "davfs", "ceph", "glusterfs", "afs", "ncpfs", "lustre", "gpfs", "beegfs", "fuse",
})

RECHECK_SECONDS = 2.0  # how often a missing or replaced folder is looked for again
PROBE_TIMEOUT = 60.0  # seconds ffprobe may take to read a header (a slow share)
_REMEMBERED_REPORTS = 10_000
_PROBE_CACHE_SIZE = 4_096

Signature = tuple[int, int]  # (size, mtime in ns) of a regular file
Identity = tuple[int, int]  # (st_dev, st_ino) of a watched folder: it changes on re-creation or remount


@dataclass(frozen=True)
class WatchSpec:
    """One watched folder and its rules.

    `poll` None chooses by filesystem (network and FUSE mounts are polled).
    `include`/`exclude` are globs matched case-insensitively against the path
    relative to `path`, and against the same with a leading "/" so that
    "*/Extras/*" also catches an Extras folder at the top. An empty `include`
    takes every media file.
    """

    path: Path
    recursive: bool = True
    poll: bool | None = None
    poll_interval: float = 30.0
    settle_seconds: float = 10.0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.settle_seconds < 0:
            raise ValueError(f"{self.path}: settle_seconds must be >= 0, not {self.settle_seconds}")
        if self.poll_interval <= 0:
            raise ValueError(f"{self.path}: poll_interval must be > 0, not {self.poll_interval}")


# ---------------------------------------------------------------- names


def _shown(path: str | os.PathLike[str]) -> str:
    """Given a path, return it fit for one log line (control characters and undecodable bytes escaped)."""
    text = os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return text.translate(_CONTROL_ESCAPES)


_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in range(32)}


def _is_ignored_folder_name(name: str) -> bool:
    """Given one folder name, return whether nothing below it is ever reported."""
    folded = name.casefold()
    return folded.startswith(".") or folded in SYSTEM_FOLDERS


def _is_ignored_file_name(name: str) -> bool:
    """Given a file name, return whether it is hidden, an office lock or a download still in progress."""
    folded = name.casefold()
    return folded.startswith((".", "~$")) or folded.endswith(TEMP_SUFFIXES)


def _extension(name: str) -> str:
    """Given a file name, return its last extension, case-folded and without the dot ("" if none)."""
    stem, dot, ext = name.rpartition(".")
    return ext.casefold() if dot and stem else ""


@functools.lru_cache(maxsize=256)
def _glob_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """Given glob patterns, return one case-insensitive regex matching any of them."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE)


def _matches_any(patterns: tuple[str, ...], relative: str) -> bool:
    regex = _glob_regex(patterns)
    return bool(regex.match(relative) or regex.match("/" + relative))


def _relative(path: Path, root: Path) -> str | None:
    """Given a path and a watched folder, return the path relative to it ("a/b.mkv"), or None if outside."""
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        return None
    return None if relative in ("", ".") else relative


def _is_ignored_folder(path: Path, spec: WatchSpec) -> bool:
    """Given a folder under `spec.path`, return whether it is outside it, ignored or in an ignored one."""
    relative = _relative(path, spec.path)
    return relative is None or any(_is_ignored_folder_name(part) for part in relative.split("/"))


def _name_verdict(path: Path, spec: WatchSpec) -> bool | None:
    """Given a file path under `spec.path`, return True if its name makes it a media candidate, False if
    the name rules it out, or None if only its content can tell (an unknown extension). Reads no disk.
    """
    relative = _relative(path, spec.path)
    if relative is None:
        return False
    *folders, name = relative.split("/")
    if any(_is_ignored_folder_name(folder) for folder in folders) or _is_ignored_file_name(name):
        return False
    extension = _extension(name)
    if extension in NON_MEDIA_EXTENSIONS:
        return False
    if spec.include and not _matches_any(spec.include, relative):
        return False
    if spec.exclude and _matches_any(spec.exclude, relative):
        return False
    return True if extension in MEDIA_EXTENSIONS else None


def is_candidate(path: Path, spec: WatchSpec) -> bool:
    """Given a file under `spec.path`, return whether it is media this folder's rules take.

    Names decide where they can (hidden, temporary, system folders, known
    extensions, include/exclude); an unknown extension is decided by ffprobe.
    """
    verdict = _name_verdict(path, spec)
    return probe_is_media(path) if verdict is None else verdict


# ---------------------------------------------------------------- ffprobe

_probe_lock = threading.Lock()
_probe_cache: OrderedDict[tuple[str, int, int], bool] = OrderedDict()


def probe_is_media(path: Path) -> bool:
    """Given a file, return whether ffprobe finds an audio stream in it.

    The answer is cached per path, size and mtime. Return False, uncached, if
    the file is not a readable regular file or ffprobe could not be run.
    """
    try:
        info = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False  # a FIFO would block ffprobe forever
    key = (os.fspath(path), info.st_size, info.st_mtime_ns)
    with _probe_lock:
        if key in _probe_cache:
            _probe_cache.move_to_end(key)
            return _probe_cache[key]
    answer = _ffprobe_has_audio(path)
    if answer is None:
        return False
    with _probe_lock:
        _probe_cache[key] = answer
        while len(_probe_cache) > _PROBE_CACHE_SIZE:
            _probe_cache.popitem(last=False)
    return answer


def _ffprobe_has_audio(path: Path) -> bool | None:
    """Given a file, return whether ffprobe lists an audio stream, or None if ffprobe could not say."""
    # An absolute path never starts with "-" or looks like "proto:...", so ffprobe reads it as a file.
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=index",
           "-of", "csv=p=0", os.path.abspath(path)]
    logger.debug("probing %s", _shown(path))
    try:
        done = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=PROBE_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        logger.warning("%s: ffprobe took more than %g s; not taken this time", _shown(path), PROBE_TIMEOUT)
        return None
    except OSError as exc:
        logger.error("cannot run ffprobe (%s); files with unknown extensions are skipped", exc)
        return None
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip()[-300:]
        logger.debug("%s: not media for ffprobe: %s", _shown(path), reason)
        return False
    return bool(done.stdout.strip())


# ---------------------------------------------------------------- filesystems


def _unescape_mount_field(field: str) -> str:
    """Given a mountinfo field, return it with the kernel's octal escapes (\\040 for space) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """Given the text of /proc/self/mountinfo, return (mount point, filesystem type) pairs in file order."""
    mounts = []
    for line in text.splitlines():
        before, separator, after = line.partition(" - ")
        fields, rest = before.split(), after.split()
        if separator and len(fields) >= 5 and rest:
            mounts.append((_unescape_mount_field(fields[4]), rest[0]))
    return mounts


def _is_under(path: str, mount_point: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def filesystem_type_in(mountinfo: str, path: str | os.PathLike[str]) -> str:
    """Given mountinfo text and an absolute, resolved path, return the type of the filesystem holding it.

    The mount with the longest mount point that contains the path wins; of
    equal ones the later, which is mounted on top. Return "unknown" if none.
    """
    target = os.fspath(path)
    found, found_length = "unknown", -1
    for mount_point, fstype in parse_mountinfo(mountinfo):
        if _is_under(target, mount_point) and len(mount_point) >= found_length:
            found, found_length = fstype, len(mount_point)
    return found


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """Given a path, return the type of the filesystem it is on ("ext4", "nfs4", "fuse.sshfs", ...).

    Return "unknown" where /proc/self/mountinfo cannot be read (not Linux).
    """
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return "unknown"
    return filesystem_type_in(text, os.path.realpath(path))


def is_polled_filesystem(fstype: str) -> bool:
    """Given a filesystem type, return whether inotify misses changes on it (network, FUSE, VM shares)."""
    return fstype in POLLED_FILESYSTEMS or fstype.startswith("fuse.")


def needs_polling(path: str | os.PathLike[str]) -> bool:
    """Given a folder, return whether it must be polled because inotify cannot see writes there."""
    return is_polled_filesystem(filesystem_type(path))


# ---------------------------------------------------------------- scanning


def _walk(spec: WatchSpec) -> Iterator[tuple[Path, bool | None]]:
    """Given a watched folder, yield (file, name verdict) for each file its names do not rule out.

    Symlinks are followed; a folder already visited (same st_dev, st_ino) is
    not entered again, which refuses loops. Unreadable folders are logged and
    skipped. Never raises OSError.
    """
    try:
        root_info = os.stat(spec.path)
    except OSError as exc:
        logger.warning("cannot scan %s: %s", _shown(spec.path), exc.strerror or exc)
        return
    visited = {(root_info.st_dev, root_info.st_ino)}
    pending = [spec.path]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            logger.warning("cannot read folder %s: %s; skipped", _shown(folder), exc.strerror or exc)
            continue
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows symlinks
                if is_dir:
                    if not spec.recursive or _is_ignored_folder_name(entry.name):
                        continue
                    info = entry.stat()
                    key = (info.st_dev, info.st_ino)
                    if key in visited:
                        logger.info("not entering %s again (symlink loop or second link)", _shown(path))
                        continue
                    visited.add(key)
                    subfolders.append(path)
                elif entry.is_file():  # broken symlinks, sockets and FIFOs are not
                    verdict = _name_verdict(path, spec)
                    if verdict is not False:
                        yield path, verdict
            except OSError as exc:
                logger.warning("cannot look at %s: %s; skipped", _shown(path), exc.strerror or exc)
        pending.extend(reversed(subfolders))


def scan(spec: WatchSpec) -> Iterator[Path]:
    """Given a watched folder, yield the media files in it now (for a backfill), in name order per folder.

    Applies the same rules as the watcher (ignored names and folders,
    include/exclude, ffprobe for unknown extensions). Does not wait for files
    to settle. Never raises OSError: unreadable folders are logged and skipped.
    """
    for path, verdict in _walk(spec):
        if verdict or (verdict is None and probe_is_media(path)):
            yield path


# ---------------------------------------------------------------- stability


def _signature(path: Path) -> Signature | None:
    """Given a path, return (size, mtime_ns) of the regular file there, or None if there is none now."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_size, info.st_mtime_ns


def _depth(spec: WatchSpec) -> int:
    return len(spec.path.parts)


@dataclass(eq=False)
class _Tracked:
    path: Path
    spec: WatchSpec
    signature: Signature
    last_event: float
    version: int = 0  # bumped on every touch and move, so a check made meanwhile is known to be stale


class StabilityTracker:
    """Files that are arriving, each ready once left alone for its folder's `settle_seconds`.

    A file is ready when no event has touched it for `settle_seconds` and its
    size and mtime are the same at both ends of that quiet window: the file is
    re-stat'ed when the window ends and, if it changed (a copy still going
    without events, as between polls), the window starts again. An empty file
    that stays empty is reported too: the daemon says why it cannot be used.

    One heap entry per file keeps `due()` cheap with thousands of files.
    Thread-safe: events may touch from any thread while one thread calls `due()`.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Path, _Tracked] = {}
        self._heap: list[tuple[float, int, _Tracked]] = []
        self._order = itertools.count()
        # Size and mtime of recently reported files: a late event (the next
        # poll, a close after a long pause) for an unchanged file is not news.
        self._reported: OrderedDict[Path, Signature] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return path in self._entries

    def touch(self, path: Path, spec: WatchSpec, *, force: bool = False) -> bool:
        """Given an event on `path`, start its quiet window again and return True if it was not tracked.

        A path that is not a regular file now is not taken. An untracked file
        whose size and mtime are those it had when it was reported is left
        alone unless `force`. Of two folders that both contain the file, the
        deeper one's spec is kept.
        """
        signature = _signature(path)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(path)
            if signature is None:
                # Gone already (the event was queued before a delete). A tracked entry stays, so the
                # delete event that follows finds it tracked; the end of its window drops it anyway.
                return False
            if entry is not None:
                entry.signature, entry.last_event = signature, now
                entry.version += 1
                if _depth(spec) > _depth(entry.spec):
                    entry.spec = spec
                return False
            if not force and self._reported.get(path) == signature:
                return False
            entry = _Tracked(path, spec, signature, now)
            self._entries[path] = entry
            self._schedule(entry, now + spec.settle_seconds)
            return True

    def forget(self, path: Path) -> bool:
        """Given a path that is gone, stop tracking it; return True if it was being tracked."""
        with self._lock:
            self._reported.pop(path, None)
            return self._entries.pop(path, None) is not None

    def move(self, old: Path, new: Path) -> bool:
        """Given a rename, carry the tracking of `old` over to `new` and return True if `old` was tracked.

        The moved file's quiet window starts again. An untracked file keeps
        its memory of having been reported under the new name.
        """
        signature = _signature(new)
        now = self._clock()
        with self._lock:
            remembered = self._reported.pop(old, None)
            self._reported.pop(new, None)
            entry = self._entries.pop(old, None)
            if entry is None:
                if remembered is not None:
                    self._reported[new] = remembered
                return False
            self._entries.pop(new, None)  # a tracked file the rename replaced; its heap slot goes stale
            entry.path, entry.last_event = new, now
            entry.signature = signature or entry.signature  # gone again already: the window's end drops it
            entry.version += 1
            self._entries[new] = entry
            return True

    def replace_spec(self, old: WatchSpec, new: WatchSpec | None) -> None:
        """Given a folder spec replaced by a config reload, move its files to `new` (or drop them if None)."""
        with self._lock:
            for path, entry in list(self._entries.items()):
                if entry.spec == old:
                    if new is None:
                        del self._entries[path]
                    else:
                        entry.spec = new

    def seconds_to_next(self) -> float | None:
        """Return how long until the next window may end (0 if one already has), or None if none is open."""
        with self._lock:
            if not self._heap:
                return None
            return max(0.0, self._heap[0][0] - self._clock())

    def due(self) -> list[tuple[Path, WatchSpec]]:
        """Return the files whose quiet window ended with size and mtime unchanged, and stop tracking them.

        Files that changed start a new window; files that vanished are
        dropped silently. The stat calls happen outside the lock.
        """
        now = self._clock()
        with self._lock:
            checks = []
            while self._heap and self._heap[0][0] <= now:
                _, _, entry = heapq.heappop(self._heap)
                if self._entries.get(entry.path) is not entry:
                    continue  # forgotten, or replaced by a rename
                quiet_until = entry.last_event + entry.spec.settle_seconds
                if quiet_until > now:
                    self._schedule(entry, quiet_until)  # touched since: the window moved on
                else:
                    checks.append((entry, entry.version, entry.path))
        results = [(entry, version, _signature(path)) for entry, version, path in checks]
        now = self._clock()
        ready = []
        with self._lock:
            for entry, version, signature in results:
                if self._entries.get(entry.path) is not entry:
                    continue
                if entry.version != version:
                    self._schedule(entry, entry.last_event + entry.spec.settle_seconds)
                elif signature is None:
                    del self._entries[entry.path]  # vanished while settling
                elif signature != entry.signature:
                    entry.signature, entry.last_event = signature, now
                    self._schedule(entry, now + entry.spec.settle_seconds)
                else:
                    del self._entries[entry.path]
                    self._remember(entry.path, signature)
                    ready.append((entry.path, entry.spec))
        return ready

    def _schedule(self, entry: _Tracked, when: float) -> None:
        heapq.heappush(self._heap, (when, next(self._order), entry))

    def _remember(self, path: Path, signature: Signature) -> None:
        self._reported[path] = signature
        self._reported.move_to_end(path)
        while len(self._reported) > _REMEMBERED_REPORTS:
            self._reported.popitem(last=False)


# ---------------------------------------------------------------- one folder


def _folder_identity(path: Path) -> Identity | None:
    """Given a folder path, return (st_dev, st_ino) of the folder there now, or None if there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


class _PollLister:
    """The directory lister the polling observer uses for one folder.

    Leaves out ignored folders and names (no stat for a NAS's @eaDir
    thumbnails), refuses symlink loops by (st_dev, st_ino), and lists an
    unreadable subfolder as empty, so one bad folder does not stop the poll.
    """

    def __init__(self, root: str) -> None:
        self._root = root
        self._visited: set[Identity] = set()
        self._complained: set[str] = set()

    def __call__(self, folder: str | None) -> list[os.DirEntry[str]]:
        folder = os.fspath(folder or ".")
        if folder == self._root:  # a new snapshot starts at the root
            identity = _folder_identity(Path(folder))
            self._visited = {identity} if identity else set()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            if folder == self._root:
                raise  # the emitter decides what a failing root means
            if folder not in self._complained:
                self._complained.add(folder)
                logger.warning("cannot read folder %s: %s; skipped", _shown(folder), exc.strerror or exc)
            return []
        return [entry for entry in entries if self._keeps(entry)]

    def _keeps(self, entry: os.DirEntry[str]) -> bool:
        try:
            if entry.is_dir():
                if _is_ignored_folder_name(entry.name):
                    return False
                info = entry.stat()
                key = (info.st_dev, info.st_ino)
                if key in self._visited:
                    return False
                self._visited.add(key)
                return True
        except OSError:
            return False
        return not _is_ignored_file_name(entry.name) and _extension(entry.name) not in NON_MEDIA_EXTENSIONS


class _Relay(FileSystemEventHandler):
    """Hands a folder's watchdog events to it; an error is logged and never ends the observer thread."""

    def __init__(self, folder: _Folder, identity: Identity) -> None:
        self._folder = folder
        self._identity = identity

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._folder.handle(event, self._identity)
        except Exception:
            logger.exception("error handling %s %s; going on", event.event_type, _shown(event.src_path))


# (spec, identity of the folder the observer watched, event type, path, destination, is a folder)
FileEventSink = Callable[[WatchSpec, Identity, str, Path, "Path | None", bool], None]
BackfillSink = Callable[[WatchSpec, threading.Event], None]


class _Folder:
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
                                 _shown(self.spec.path), self._recheck)
            first_look = False
            self.looked.set()
            self._poke.wait(self._recheck)
            self._poke.clear()
        try:
            self._close_observer()
        except Exception:
            logger.exception("error stopping the watch on %s", _shown(self.spec.path))

    def _look(self, first_look: bool) -> None:
        """Check that the folder is still the one watched; (re)start the observer when it is there.

        A missing or unwatchable folder is logged once per outage. When the
        folder appears or comes back (not on the first look: the daemon's own
        scan covers that), what is in it is tracked as if it had just arrived.
        """
        identity = _folder_identity(self.spec.path)
        if self._observer is not None and (identity != self._identity or not self._observer_alive()):
            logger.warning("watched folder %s went away or changed (deleted, re-created or remounted); "
                           "watching it again when it is there", _shown(self.spec.path))
            self._outage_logged = True
            self._close_observer()
        if self._observer is not None:
            return
        if identity is None:
            if not self._outage_logged:
                logger.warning("watched folder %s does not exist or is not a folder; "
                               "looking again every %g s", _shown(self.spec.path), self._recheck)
                self._outage_logged = True
            return
        try:
            self._open_observer(identity)
        except OSError as exc:
            if not self._outage_logged:
                logger.warning("cannot watch %s: %s; trying again every %g s",
                               _shown(self.spec.path), exc.strerror or exc, self._recheck)
                self._outage_logged = True
            return
        if self._outage_logged:
            logger.info("watched folder %s is back", _shown(self.spec.path))
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
        logger.info("watching %s (%s, settle %g s)", _shown(self.spec.path), how, self.spec.settle_seconds)

    def _start_any_observer(self, identity: Identity) -> tuple[BaseObserver, bool]:
        """Return a started observer and whether it polls: as the spec or filesystem asks, else polling."""
        poll = self.spec.poll if self.spec.poll is not None else needs_polling(self._real_root)
        try:
            return self._start_observer(poll, identity), poll
        except OSError as exc:
            if poll or self.spec.poll is False:
                raise
            # Running out of inotify watches or instances must not leave the folder unwatched.
            logger.warning("cannot use inotify on %s (%s); polling it instead", _shown(self.spec.path), exc)
            return self._start_observer(True, identity), True

    def _start_observer(self, poll: bool, identity: Identity) -> BaseObserver:
        observer: BaseObserver
        if poll:
            observer = PollingObserverVFS(os.stat, _PollLister(self._real_root),
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


# ---------------------------------------------------------------- the watcher

# (kind, spec, path, destination, identity of the folder the event came from)
_Notice = tuple[str, WatchSpec, Path, "Path | None", Identity]


def _unique(specs: Sequence[WatchSpec]) -> tuple[WatchSpec, ...]:
    return tuple(dict.fromkeys(specs))


class Watcher:
    """Reports media files once they have finished arriving in the watched folders.

    `on_ready(path, spec)` is called once per arrival (again if the file
    changes later). `on_deleted(path)` and `on_moved(old, new)` are called for
    media files the watcher is not tracking (done ones, or ones there before
    it started); `path` in `on_deleted` may be a folder, meaning everything
    under it went. Without `on_moved`, a renamed file is reported through
    `on_ready` under its new name. All callbacks run on the watcher's one
    dispatcher thread; an exception in one is logged and the watcher goes on.
    Deletions are not passed on while their folder is unavailable, so an
    unmounted share does not look like an emptied one.
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
        self._folders: dict[WatchSpec, _Folder] = {}
        self._notices: deque[_Notice] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._dispatcher: threading.Thread | None = None

    def start(self, timeout: float = 5.0) -> None:
        """Start watching every folder; return once each has had its first look (at most `timeout` s).

        Files already there are not reported: call `scan` after `start` for a
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
                           ", ".join(_shown(p) for p in stuck), timeout)

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

    def watching(self) -> list[Path]:
        """Return the folders that have a running observer now (missing or broken ones are left out)."""
        with self._lock:
            folders = list(self._folders.values())
        return [folder.spec.path for folder in folders if folder.is_watching()]

    def pending(self) -> int:
        """Return how many files are being tracked as not yet settled."""
        return len(self._tracker)

    def scan(self, spec: WatchSpec) -> Iterator[Path]:
        """Given a watched folder, yield the media files in it now; see the module-level `scan`."""
        return scan(spec)

    # -- event side (observer and supervisor threads)

    def _open_folder(self, spec: WatchSpec) -> _Folder:
        folder = _Folder(spec, self._file_event, self._backfill, self._recheck)
        self._folders[spec] = folder
        folder.start()
        return folder

    def _file_event(self, spec: WatchSpec, identity: Identity, kind: str, src: Path, dest: Path | None,
                    is_dir: bool) -> None:
        if kind == EVENT_TYPE_DELETED and is_dir:
            if not _is_ignored_folder(src, spec):
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
        if _name_verdict(path, spec) is not False and self._tracker.touch(path, spec, force=force):
            self._wake.set()

    def _deleted(self, spec: WatchSpec, identity: Identity, path: Path) -> None:
        if self._tracker.forget(path):
            return  # vanished while settling: never reported, so nothing to tell
        if _name_verdict(path, spec) is not False:
            self._notify(("deleted", spec, path, None, identity))

    def _moved(self, spec: WatchSpec, identity: Identity, src: Path, dest: Path) -> None:
        dest_taken = _name_verdict(dest, spec) is not False
        if self._tracker.move(src, dest):
            if not dest_taken:
                self._tracker.forget(dest)
            return
        if _name_verdict(src, spec) is False:
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
        for path, _verdict in _walk(spec):
            if stopped.is_set():
                return
            count += self._tracker.touch(path, spec, force=True)
        self._wake.set()
        logger.info("%s: %d file(s) found after it appeared; reporting them once settled",
                    _shown(spec.path), count)

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
        # An unmounted share reads as an empty folder to a poller (and a vanished sshfs as an
        # error), which would look like every file being deleted. A deletion is passed on only
        # while the folder is still the one the event came from.
        intact: dict[tuple[Path, Identity], bool] = {}
        withheld: dict[Path, int] = {}
        while self._notices and not self._stopping.is_set():
            kind, spec, path, dest, identity = self._notices.popleft()
            if kind == "moved" and self._on_moved is not None and dest is not None:
                self._call(self._on_moved, path, dest)
                continue
            if self._on_deleted is None:
                continue
            key = (spec.path, identity)
            if key not in intact:
                intact[key] = _folder_identity(spec.path) == identity
            if intact[key]:
                self._call(self._on_deleted, path)
            else:
                withheld[spec.path] = withheld.get(spec.path, 0) + 1
        for root, count in withheld.items():
            logger.warning("%s is unavailable or was replaced; %d deletion(s) under it not passed on",
                           _shown(root), count)

    def _deliver_ready(self) -> None:
        for path, tracked_spec in self._tracker.due():
            if self._stopping.is_set():
                return
            spec = self._current_spec(tracked_spec)
            if spec is None:
                continue
            verdict = _name_verdict(path, spec)  # the rules may have been reloaded meanwhile
            if verdict is None and not probe_is_media(path):
                logger.debug("%s: no audio stream; not taken", _shown(path))
                continue
            if verdict is not False:
                logger.debug("ready %s", _shown(path))
                self._call(self._on_ready, path, spec)

    def _current_spec(self, spec: WatchSpec) -> WatchSpec | None:
        """Given the spec a file was tracked under, return the active spec for its folder, or None."""
        with self._lock:
            if spec in self._specs:
                return spec
            return next((s for s in self._specs if s.path == spec.path), None)

    def _call(self, callback: Callable[..., None], path: Path, *rest: Path | WatchSpec) -> None:
        try:
            callback(path, *rest)
        except Exception:
            name = getattr(callback, "__name__", "callback")
            logger.exception("%s failed for %s; going on", name, _shown(path))


__all__ = [
    "MEDIA_EXTENSIONS",
    "NON_MEDIA_EXTENSIONS",
    "PROBE_TIMEOUT",
    "RECHECK_SECONDS",
    "StabilityTracker",
    "WatchSpec",
    "Watcher",
    "filesystem_type",
    "filesystem_type_in",
    "is_candidate",
    "is_polled_filesystem",
    "needs_polling",
    "parse_mountinfo",
    "probe_is_media",
    "scan",
]

