"""Tests for daemon.watch: real watchdog observers on tmp folders, real files.

Settle times are short (0.3-0.8 s). Times are compared with time.monotonic(),
the clock the tracker uses. Lower bounds ("not before the last write plus the
settle time") are exact; upper bounds are only generous waits.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from watchdog.utils.dirsnapshot import DirectorySnapshot

from daemon.watch import (
    StabilityTracker,
    Watcher,
    WatchSpec,
    filesystem_type,
    filesystem_type_in,
    is_polled_filesystem,
    name_verdict,
    parse_mountinfo,
    scan,
)
from daemon.watch import folder as watch_folder
from daemon.watch.walk import PollLister
from tests.ffprobe_spy import FfprobeSpy
from tests.harness import wait_until
from tests.media_factory import make_media

WAIT = 15.0  # the most any test waits for a report that should come


class Recorder:
    """Collects what the watcher reports, with the time and thread of each call."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.ready: list[tuple[float, Path]] = []
        self.deleted: list[Path] = []
        self.moved: list[tuple[Path, Path]] = []
        self.threads: set[str] = set()

    def on_ready(self, path: Path, spec: WatchSpec) -> None:
        self._record(lambda: self.ready.append((time.monotonic(), path)))

    def on_deleted(self, path: Path) -> None:
        self._record(lambda: self.deleted.append(path))

    def on_moved(self, old: Path, new: Path) -> None:
        self._record(lambda: self.moved.append((old, new)))

    def _record(self, append: Callable[[], None]) -> None:
        with self._cond:
            append()
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def ready_paths(self) -> list[Path]:
        with self._cond:
            return [path for _, path in self.ready]

    def wait_for(self, predicate: Callable[[Recorder], bool], timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)


Start = Callable[..., tuple[Watcher, Recorder]]


@pytest.fixture
def start_watcher() -> Iterator[Start]:
    """Start a Watcher wired to a fresh Recorder; every one started is stopped after the test."""
    started: list[Watcher] = []

    def start(specs: list[WatchSpec], *, moves: bool = True, **kwargs: float) -> tuple[Watcher, Recorder]:
        recorder = Recorder()
        watcher = Watcher(specs, recorder.on_ready, recorder.on_deleted,
                          recorder.on_moved if moves else None, **kwargs)
        watcher.start()
        started.append(watcher)
        return watcher, recorder

    yield start
    for watcher in started:
        watcher.stop()


def write_slowly(path: Path, chunks: int, pause: float, size: int = 32 * 1024) -> float:
    """Append `chunks` chunks to `path`, pausing between them; return the time the last write began."""
    last_write = 0.0
    with path.open("ab") as out:
        for i in range(chunks):
            last_write = time.monotonic()
            out.write(os.urandom(size))
            out.flush()
            if i < chunks - 1:
                time.sleep(pause)
    return last_write


# ---------------------------------------------------------------- names and rules


@pytest.mark.parametrize(("relative", "expected"), [
    ("Movie (2009).mkv", True),
    ("Show/Season 1/S01E01.MKV", True),
    ("Album/01 Song.flac", True),
    ("podcast.opus", True),
    (".hidden.mkv", False),
    ("._Movie.mkv", False),  # macOS AppleDouble
    ("~$draft.mp4", False),
    ("Movie.mkv.part", False),
    ("Movie.mkv.!qB", False),
    ("Movie.mp4.crdownload", False),
    ("Movie.mkv.tmp", False),
    ("Movie.srt", False),
    ("Movie.en.vtt", False),
    ("Movie.ass", False),
    ("movie.nfo", False),
    ("poster.JPG", False),
    ("@eaDir/Movie.mkv", False),
    ("Show/@eaDir/S01E01.mkv", False),
    (".stfolder/x.mkv", False),
    ("#recycle/old.mkv", False),
    ("$RECYCLE.BIN/S-1-5/old.mkv", False),
    ("lost+found/#1234.mkv", False),
    (".Trash-1000/files/old.mkv", False),
])
def test_name_rules_take_media_and_skip_hidden_temporary_system_and_sidecar_files(
        tmp_path: Path, relative: str, expected: bool) -> None:
    assert name_verdict(tmp_path / relative, WatchSpec(tmp_path)) is expected


@pytest.mark.parametrize(("relative", "expected"), [
    ("Movie/Movie.mkv", True),
    ("Movie/Movie.MP4", True),
    ("Movie/movie-SAMPLE.mkv", False),
    ("Sample/movie.mkv", False),
    ("Movie/Extras/Behind the scenes.mkv", False),
    ("Extras/top level.mkv", False),  # "*/Extras/*" also covers an Extras folder at the top
    ("Movie/Movie-Trailer.MP4", False),
    ("Album/song.mp3", False),  # not in include
    ("Movie/Movie.srt", False),  # include never widens past media
])
def test_include_and_exclude_globs_match_the_relative_path_case_insensitively(
        tmp_path: Path, relative: str, expected: bool) -> None:
    spec = WatchSpec(tmp_path, include=("*.mkv", "*.mp4"), exclude=("*sample*", "*/Extras/*", "*-trailer.*"))
    assert name_verdict(tmp_path / relative, spec) is expected


def test_a_path_outside_the_folder_is_no_candidate(tmp_path: Path) -> None:
    assert name_verdict(tmp_path / "elsewhere" / "x.mkv", WatchSpec(tmp_path / "media")) is False


@pytest.mark.parametrize("name", ["clip.weird", "recording.dat", "no extension"])
def test_an_unknown_extension_is_left_for_ffprobe_to_decide(tmp_path: Path, name: str) -> None:
    # daemon.intake asks ffprobe (tests/test_intake.py); the names alone cannot tell.
    assert name_verdict(tmp_path / name, WatchSpec(tmp_path)) is None
    assert name_verdict(tmp_path / name, WatchSpec(tmp_path, include=("*.mkv",))) is False


# ---------------------------------------------------------------- filesystems

MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:40 / /mnt/nas rw,relatime shared:5 - nfs4 server:/export rw,vers=4.2
31 22 0:41 / /mnt/win rw,relatime - cifs //host/media rw,vers=3.1.1
32 22 0:42 / /mnt/ssh rw,nosuid,nodev shared:7 - fuse.sshfs user@host:/media rw
33 30 8:17 / /mnt/nas/local rw - ext4 /dev/sdb1 rw
34 22 8:33 / /mnt/My\040Disk rw - ntfs3 /dev/sdc1 rw
35 22 8:49 / /mnt/nasty rw - xfs /dev/sdd1 rw
36 22 0:50 / /mnt/stack rw - ext4 /dev/sde1 rw
37 36 0:51 / /mnt/stack rw - nfs server:/stack rw
"""


@pytest.mark.parametrize(("path", "expected"), [
    ("/mnt/nas", "nfs4"),
    ("/mnt/nas/TV/Show/S01E01.mkv", "nfs4"),
    ("/mnt/nas/local/film.mkv", "ext4"),  # the longest mount point wins
    ("/mnt/nasty/film.mkv", "xfs"),  # /mnt/nas is not a prefix of /mnt/nasty
    ("/mnt/win/film.mkv", "cifs"),
    ("/mnt/ssh/film.mkv", "fuse.sshfs"),
    ("/mnt/My Disk/film.mkv", "ntfs3"),  # \040 in mountinfo is a space
    ("/mnt/stack/film.mkv", "nfs"),  # mounted on top of the ext4 one
    ("/home/user/film.mkv", "ext4"),
])
def test_filesystem_type_uses_the_longest_mount_point_prefix(path: str, expected: str) -> None:
    assert filesystem_type_in(MOUNTINFO, path) == expected


def test_mountinfo_parser_reads_mount_points_and_types() -> None:
    mounts = parse_mountinfo(MOUNTINFO + "garbage line\n")
    assert mounts[0] == ("/", "ext4")
    assert ("/mnt/My Disk", "ntfs3") in mounts
    assert len(mounts) == 9
    assert filesystem_type_in("", "/x") == "unknown"


@pytest.mark.parametrize(("fstype", "polled"), [
    ("nfs", True), ("nfs4", True), ("cifs", True), ("smb3", True), ("fuse.sshfs", True),
    ("fuse.rclone", True), ("fuse.mergerfs", True), ("9p", True),
    ("ext4", False), ("xfs", False), ("btrfs", False), ("zfs", False), ("tmpfs", False),
    ("overlay", False), ("fuseblk", False),
])
def test_network_and_fuse_filesystems_are_polled(fstype: str, polled: bool) -> None:
    assert is_polled_filesystem(fstype) is polled


def test_filesystem_type_of_a_real_folder_agrees_with_findmnt(tmp_path: Path) -> None:
    findmnt = shutil.which("findmnt")
    if findmnt is None:
        pytest.skip("findmnt not installed")
    expected = subprocess.run([findmnt, "-no", "FSTYPE", "-T", str(tmp_path)], capture_output=True,
                              text=True, check=True).stdout.strip()
    assert filesystem_type(tmp_path) == expected


# ---------------------------------------------------------------- stability tracker (injected clock)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_tracker_reports_after_a_quiet_window_with_unchanged_size(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(clock)
    spec = WatchSpec(tmp_path, settle_seconds=10)
    film = tmp_path / "film.mkv"
    film.write_bytes(b"x" * 100)

    assert tracker.touch(film, spec) is True
    clock.advance(9.9)
    assert tracker.due() == []
    assert tracker.touch(film, spec) is False  # an event: the window starts again
    clock.advance(9.9)
    assert tracker.due() == []
    with film.open("ab") as out:  # a write nobody told us about (as between two polls)
        out.write(b"more")
    clock.advance(0.2)
    assert tracker.due() == []  # the re-stat at the window's end saw it grow
    assert len(tracker) == 1
    clock.advance(9.9)
    assert tracker.due() == []
    clock.advance(0.2)
    assert tracker.due() == [(film, spec)]
    assert len(tracker) == 0


def test_tracker_restarts_the_window_when_only_mtime_changed(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(clock)
    spec = WatchSpec(tmp_path, settle_seconds=5)
    film = tmp_path / "film.mkv"
    film.write_bytes(b"x" * 100)
    tracker.touch(film, spec)
    os.utime(film, (1_000_000, 1_000_000))  # same size, rewritten in place
    clock.advance(5)
    assert tracker.due() == []
    clock.advance(5)
    assert tracker.due() == [(film, spec)]


def test_tracker_drops_vanished_files_silently_and_reports_empty_ones(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(clock)
    spec = WatchSpec(tmp_path, settle_seconds=1)
    gone, empty = tmp_path / "gone.mkv", tmp_path / "empty.mkv"
    gone.write_bytes(b"x")
    empty.touch()
    tracker.touch(gone, spec)
    tracker.touch(empty, spec)
    gone.unlink()
    clock.advance(2)
    assert tracker.due() == [(empty, spec)]  # the daemon fails it with a clear reason
    assert len(tracker) == 0
    assert tracker.touch(tmp_path / "never-there.mkv", spec) is False


def test_tracker_moves_tracking_to_the_new_name_and_restarts_its_window(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(clock)
    spec = WatchSpec(tmp_path, settle_seconds=10)
    old, new = tmp_path / "download.mkv", tmp_path / "Movie (2009).mkv"
    old.write_bytes(b"x" * 10)
    tracker.touch(old, spec)
    clock.advance(8)
    old.rename(new)
    assert tracker.move(old, new) is True
    clock.advance(8)
    assert tracker.due() == []
    clock.advance(2.1)
    assert tracker.due() == [(new, spec)]


def test_tracker_ignores_late_events_for_a_reported_unchanged_file_unless_forced(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(clock)
    spec = WatchSpec(tmp_path, settle_seconds=1)
    film = tmp_path / "film.mkv"
    film.write_bytes(b"x" * 10)
    tracker.touch(film, spec)
    clock.advance(1)
    assert tracker.due() == [(film, spec)]
    assert tracker.touch(film, spec) is False  # e.g. the next poll noticing the last write
    assert tracker.touch(film, spec, force=True) is True  # a folder that came back is reported again
    tracker.forget(film)
    with film.open("ab") as out:
        out.write(b"changed")
    assert tracker.touch(film, spec) is True  # a real change is news


def test_tracker_keeps_a_thousand_files_in_one_heap(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(clock)
    spec = WatchSpec(tmp_path, settle_seconds=3)
    files = []
    for i in range(1000):
        path = tmp_path / f"{i:04}.mp3"
        path.write_bytes(b"x")
        files.append(path)
        tracker.touch(path, spec)
        clock.advance(0.001)
    for path in files[::2]:
        tracker.touch(path, spec)  # half of them get another event
    clock.advance(2.999)
    first = tracker.due()
    assert {p for p, _ in first} == set(files[1::2])
    clock.advance(3)
    assert {p for p, _ in tracker.due()} == set(files[::2])
    assert len(tracker) == 0


# ---------------------------------------------------------------- scan


def test_scan_follows_symlinks_once_refuses_loops_and_skips_ignored(tmp_path: Path) -> None:
    root, other = tmp_path / "media", tmp_path / "other"
    (root / "sub").mkdir(parents=True)
    (root / "@eaDir").mkdir()
    other.mkdir()
    for relative in ["a.mkv", "b.srt", ".hidden.mkv", "@eaDir/thumb.mkv", "sub/c.mp4", "d.mkv.part"]:
        (root / relative).write_bytes(b"x")
    (other / "d.mkv").write_bytes(b"x")
    (root / "sub" / "loop").symlink_to(root)
    (root / "sub" / "self").symlink_to(".")
    (root / "linked").symlink_to(other)
    (root / "e.mkv").symlink_to(other / "d.mkv")
    (root / "broken.mkv").symlink_to(tmp_path / "nowhere.mkv")

    found = list(scan(WatchSpec(root)))
    assert sorted(found) == sorted([root / "a.mkv", root / "sub" / "c.mp4", root / "linked" / "d.mkv",
                                    root / "e.mkv"])
    assert sorted(scan(WatchSpec(root, recursive=False))) == [root / "a.mkv", root / "e.mkv"]


def test_scan_logs_an_unreadable_subfolder_and_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "locked").mkdir()
    (tmp_path / "open").mkdir()
    (tmp_path / "locked" / "x.mkv").write_bytes(b"x")
    (tmp_path / "open" / "y.mkv").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> object:
        if Path(path) == tmp_path / "locked":  # root may read anything, so deny it here
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="subwatch.watch"):
        found = list(scan(WatchSpec(tmp_path)))
    assert found == [tmp_path / "open" / "y.mkv"]
    assert any("locked" in r.getMessage() and "Permission denied" in r.getMessage() for r in caplog.records)


def test_scan_of_a_missing_folder_yields_nothing(tmp_path: Path) -> None:
    assert list(scan(WatchSpec(tmp_path / "not-mounted"))) == []


def test_the_poller_lists_what_a_scan_finds(tmp_path: Path) -> None:
    # One way to walk a folder: watchdog's polling snapshots list through the same lister as a scan.
    root, other = tmp_path / "media", tmp_path / "other"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "@eaDir").mkdir()
    other.mkdir()
    for relative in ["a.mkv", "b.srt", ".hidden.mkv", "@eaDir/thumb.mkv", "sub/c.mp4", "sub/deeper/d.weird",
                     "e.mkv.part", "poster.jpg"]:
        (root / relative).write_bytes(b"x")
    (other / "f.mkv").write_bytes(b"x")
    (root / "sub" / "loop").symlink_to(root)
    (root / "linked").symlink_to(other)
    (root / "again").symlink_to(other)  # a second link to a folder already listed

    for _ in range(2):  # every snapshot is a walk of its own
        snapshot = DirectorySnapshot(str(root), listdir=PollLister(str(root)))
        files = sorted(Path(p) for p in snapshot.paths if not os.path.isdir(p))
        assert files == sorted(scan(WatchSpec(root)))
    assert files == sorted([root / "a.mkv", root / "again" / "f.mkv", root / "sub" / "c.mp4",
                            root / "sub" / "deeper" / "d.weird"])


# ---------------------------------------------------------------- watcher: arrivals


def test_slow_copy_is_reported_once_and_only_after_its_last_write(
        tmp_path: Path, start_watcher: Start) -> None:
    settle = 0.8
    _, recorder = start_watcher([WatchSpec(tmp_path, settle_seconds=settle)])
    film = tmp_path / "Movie (2009).mkv"
    last_write = 0.0
    for _ in range(10):  # ten writes over ~2.7 s, pausing settle/2 or less in between
        last_write = write_slowly(film, chunks=1, pause=0)
        assert recorder.ready == [], "reported in the middle of the copy"
        time.sleep(0.3)

    assert recorder.wait_for(lambda r: len(r.ready) >= 1)
    time.sleep(settle)
    assert recorder.ready_paths() == [film]
    assert recorder.ready[0][0] >= last_write + settle
    assert recorder.threads == {"subwatch-watch"}


def test_polled_copy_growing_between_polls_is_not_taken_midway(tmp_path: Path, start_watcher: Start) -> None:
    # Events come once a second (the poll), far apart compared with the 0.4 s settle
    # time; only the size check at the end of each quiet window sees the copy go on.
    settle, interval = 0.4, 1.0
    spec = WatchSpec(tmp_path, poll=True, poll_interval=interval, settle_seconds=settle)
    _, recorder = start_watcher([spec])
    film = tmp_path / "Show S01E01.mkv"
    last_write = write_slowly(film, chunks=25, pause=0.1)
    assert recorder.ready == [], "reported in the middle of the copy"

    assert recorder.wait_for(lambda r: len(r.ready) >= 1)
    time.sleep(1.3 * interval)  # the next poll still see the last writes; that is no new arrival
    assert recorder.ready_paths() == [film]
    assert recorder.ready[0][0] >= last_write + settle


def test_a_file_that_changes_after_being_reported_is_reported_again(
        tmp_path: Path, start_watcher: Start) -> None:
    # A copy that pauses for longer than the settle time cannot be told from a
    # finished one; what the watcher promises is a second report when it goes on.
    settle = 0.3
    _, recorder = start_watcher([WatchSpec(tmp_path, settle_seconds=settle)])
    film = tmp_path / "paused.mkv"
    write_slowly(film, chunks=2, pause=0.05)
    assert recorder.wait_for(lambda r: len(r.ready) == 1)
    last_write = write_slowly(film, chunks=2, pause=0.05)
    assert recorder.wait_for(lambda r: len(r.ready) == 2)
    assert recorder.ready_paths() == [film, film]
    assert recorder.ready[1][0] >= last_write + settle


def test_downloads_renamed_from_temporary_names_are_reported_once_under_the_final_name(
        tmp_path: Path, start_watcher: Start) -> None:
    settle = 0.3
    _, recorder = start_watcher([WatchSpec(tmp_path, settle_seconds=settle)])
    finals = [tmp_path / "a.mkv", tmp_path / "b.mkv", tmp_path / "c.mp4", tmp_path / "d.mkv"]
    temps = [tmp_path / "a.mkv.part", tmp_path / "b.mkv.!qB", tmp_path / "c.mp4.crdownload",
             tmp_path / "d.mkv.tmp"]
    for temp in temps:
        write_slowly(temp, chunks=3, pause=0.05)
    time.sleep(3 * settle)  # the temporary files have long settled, and are still not news
    assert recorder.ready == []

    for temp, final in zip(temps, finals, strict=True):
        temp.rename(final)
    assert recorder.wait_for(lambda r: len(r.ready) >= 4)
    time.sleep(2 * settle)
    assert sorted(recorder.ready_paths()) == finals
    assert recorder.moved == [] and recorder.deleted == []


def test_ignored_and_excluded_files_are_never_reported(tmp_path: Path, start_watcher: Start) -> None:
    settle = 0.3
    spec = WatchSpec(tmp_path, settle_seconds=settle, exclude=("*sample*", "*/Extras/*"))
    _, recorder = start_watcher([spec])
    for folder in ["@eaDir", "#recycle", ".stfolder", "Movie/Extras", "$RECYCLE.BIN"]:
        (tmp_path / folder).mkdir(parents=True)
    time.sleep(0.2)  # new folders get their inotify watches
    ignored = [".hidden.mkv", "._Movie.mkv", "~$lock.mkv", "Movie/Movie.srt", "Movie/Movie.nfo",
               "@eaDir/Movie.mkv", "#recycle/old.mkv", ".stfolder/x.mkv", "Movie/Extras/bts.mkv",
               "Movie/movie-sample.mkv", "$RECYCLE.BIN/old.mkv"]
    for relative in ignored:
        (tmp_path / relative).write_bytes(b"x" * 100)
    (tmp_path / "Movie" / "Movie.mkv").write_bytes(b"x" * 100)

    assert recorder.wait_for(lambda r: len(r.ready) >= 1)
    time.sleep(2 * settle)
    assert recorder.ready_paths() == [tmp_path / "Movie" / "Movie.mkv"]


def test_unknown_extensions_are_reported_without_running_ffprobe(
        tmp_path: Path, start_watcher: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    # Whether they are media is for daemon.intake to find out, off the watcher's thread
    # (tests/test_intake.py); here, nothing blocks the dispatcher.
    spy = FfprobeSpy(tmp_path / "spy").install(monkeypatch)
    staging, root = tmp_path / "staging", tmp_path / "media"
    root.mkdir()
    media = make_media(staging / "clip.mkv", seconds=1.0)
    text = staging / "notes.weird"
    text.write_text("plain text\n" * 100)
    _, recorder = start_watcher([WatchSpec(root, settle_seconds=0.3)])
    shutil.copy(media, root / "clip.weird")
    shutil.copy(text, root / "notes.weird")
    assert recorder.wait_for(lambda r: len(r.ready) >= 2)
    time.sleep(0.8)
    assert sorted(recorder.ready_paths()) == [root / "clip.weird", root / "notes.weird"]
    assert spy.asked() == []


def test_awkward_names_are_reported_exactly(tmp_path: Path, start_watcher: Start) -> None:
    _, recorder = start_watcher([WatchSpec(tmp_path, settle_seconds=0.3)])
    names = ["with space.mkv", "quote's \"double\".mkv", "new\nline.mkv", "x" * 246 + ".mkv"]
    for name in names:
        (tmp_path / name).write_bytes(b"x" * 100)
    raw = os.path.join(os.fsencode(tmp_path), b"latin1-caf\xe9.mkv")  # not valid UTF-8
    with open(raw, "wb") as out:
        out.write(b"x" * 100)
    expected = sorted([tmp_path / name for name in names] + [Path(os.fsdecode(raw))])

    assert recorder.wait_for(lambda r: len(r.ready) >= len(expected))
    assert sorted(recorder.ready_paths()) == expected
    assert sorted(scan(WatchSpec(tmp_path))) == expected
    assert all(path.exists() for path in recorder.ready_paths())


def test_poll_true_reports_without_the_native_observer(
        tmp_path: Path, start_watcher: Start, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def no_inotify() -> None:
        raise AssertionError("the native observer must not be used with poll=True")

    monkeypatch.setattr(watch_folder, "Observer", no_inotify)
    with caplog.at_level(logging.INFO, logger="subwatch.watch"):
        _, recorder = start_watcher([WatchSpec(tmp_path, poll=True, poll_interval=0.3, settle_seconds=0.3)])
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "film.mkv").write_bytes(b"x" * 100)
        assert recorder.wait_for(lambda r: len(r.ready) >= 1)
    assert recorder.ready_paths() == [tmp_path / "sub" / "film.mkv"]
    assert any("polling every 0.3 s" in r.getMessage() for r in caplog.records)


def test_polling_refuses_a_symlink_loop(tmp_path: Path, start_watcher: Start) -> None:
    (tmp_path / "loop").symlink_to(tmp_path)
    _, recorder = start_watcher([WatchSpec(tmp_path, poll=True, poll_interval=0.2, settle_seconds=0.2)])
    (tmp_path / "film.mkv").write_bytes(b"x" * 100)
    assert recorder.wait_for(lambda r: len(r.ready) >= 1)
    time.sleep(0.8)
    assert recorder.ready_paths() == [tmp_path / "film.mkv"]


def test_two_thousand_files_at_once_are_all_reported_without_a_thread_each(
        tmp_path: Path, start_watcher: Start) -> None:
    watcher, recorder = start_watcher([WatchSpec(tmp_path, settle_seconds=0.5)])
    baseline = threading.active_count()
    expected = set()
    most_threads = baseline
    for i in range(2000):
        path = tmp_path / f"clip {i:04}.mp3"
        path.write_bytes(b"x" * 512)
        expected.add(path)
        if i % 100 == 0:
            most_threads = max(most_threads, threading.active_count())
    assert wait_until(lambda: watcher.pending() > 0 or len(recorder.ready) > 0)
    most_threads = max(most_threads, threading.active_count())

    assert recorder.wait_for(lambda r: len(r.ready) >= 2000, timeout=40)
    time.sleep(0.5)
    assert len(recorder.ready) == 2000
    assert set(recorder.ready_paths()) == expected
    assert most_threads <= baseline + 2
    assert watcher.pending() == 0


# ---------------------------------------------------------------- watcher: moves and deletions


def test_a_done_file_renamed_or_deleted_is_passed_on_not_reported_again(
        tmp_path: Path, start_watcher: Start) -> None:
    settle = 0.3
    _, recorder = start_watcher([WatchSpec(tmp_path, settle_seconds=settle, exclude=("*/Extras/*",))])
    (tmp_path / "Show" / "Extras").mkdir(parents=True)
    time.sleep(0.2)
    done, other = tmp_path / "Show" / "ep1.mkv", tmp_path / "Show" / "ep2.mkv"
    done.write_bytes(b"x" * 100)
    other.write_bytes(b"x" * 100)
    assert recorder.wait_for(lambda r: len(r.ready) == 2)

    renamed = tmp_path / "Show" / "Show - S01E01.mkv"
    done.rename(renamed)
    assert recorder.wait_for(lambda r: r.moved == [(done, renamed)])
    hidden_away = tmp_path / "Show" / "Extras" / "Show - S01E01.mkv"
    renamed.rename(hidden_away)  # into a folder the rules exclude: gone as far as the queue knows
    other.unlink()
    assert recorder.wait_for(lambda r: r.deleted == [renamed, other])
    time.sleep(2 * settle)
    assert len(recorder.ready) == 2
    assert recorder.threads == {"subwatch-watch"}


def test_without_on_moved_a_renamed_done_file_is_reported_under_its_new_name(
        tmp_path: Path, start_watcher: Start) -> None:
    _, recorder = start_watcher([WatchSpec(tmp_path, settle_seconds=0.3)], moves=False)
    old, new = tmp_path / "old.mkv", tmp_path / "new.mkv"
    old.write_bytes(b"x" * 100)
    assert recorder.wait_for(lambda r: len(r.ready) == 1)
    old.rename(new)
    assert recorder.wait_for(lambda r: len(r.ready) == 2)
    assert recorder.ready_paths() == [old, new]


def test_a_file_renamed_while_settling_is_reported_once_under_its_new_name(
        tmp_path: Path, start_watcher: Start) -> None:
    settle = 0.5
    _, recorder = start_watcher([WatchSpec(tmp_path, settle_seconds=settle)])
    first, final = tmp_path / "download.mkv", tmp_path / "Movie (2009).mkv"
    write_slowly(first, chunks=2, pause=0.05)
    time.sleep(settle / 2)
    renamed_at = time.monotonic()
    first.rename(final)
    assert recorder.wait_for(lambda r: len(r.ready) >= 1)
    time.sleep(settle)
    assert recorder.ready_paths() == [final]
    assert recorder.ready[0][0] >= renamed_at + settle  # the move restarted the window
    assert recorder.moved == [] and recorder.deleted == []


def test_a_file_deleted_while_settling_is_dropped_silently(tmp_path: Path, start_watcher: Start) -> None:
    watcher, recorder = start_watcher([WatchSpec(tmp_path, settle_seconds=0.4)])
    brief = tmp_path / "brief.mkv"
    brief.write_bytes(b"x" * 100)
    assert wait_until(lambda: watcher.pending() == 1)
    brief.unlink()
    assert wait_until(lambda: watcher.pending() == 0)
    time.sleep(0.8)
    assert recorder.ready == [] and recorder.deleted == []


# ---------------------------------------------------------------- watcher: folders coming and going


def test_a_folder_missing_at_start_is_watched_once_it_appears(
        tmp_path: Path, start_watcher: Start, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "nas" / "media"
    with caplog.at_level(logging.WARNING, logger="subwatch.watch"):
        watcher, recorder = start_watcher([WatchSpec(root, settle_seconds=0.3)], recheck_seconds=0.2)
        time.sleep(1.0)  # several rechecks
        root.mkdir(parents=True)
        early = root / "copied before the watch started.mkv"
        early.write_bytes(b"x" * 100)
        assert wait_until(lambda: watcher.watching() == [root])
        late = root / "late.mkv"
        late.write_bytes(b"x" * 100)
        assert recorder.wait_for(lambda r: len(r.ready) >= 2)
    assert sorted(recorder.ready_paths()) == sorted([early, late])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(root) in warnings[0]


def test_a_folder_deleted_and_recreated_is_watched_again(tmp_path: Path, start_watcher: Start) -> None:
    root = tmp_path / "media"
    root.mkdir()
    watcher, recorder = start_watcher([WatchSpec(root, settle_seconds=0.3)], recheck_seconds=0.2)
    first = root / "first.mkv"
    first.write_bytes(b"x" * 100)
    assert recorder.wait_for(lambda r: r.ready_paths() == [first])

    shutil.rmtree(root)
    root.mkdir()
    second = root / "second.mkv"
    second.write_bytes(b"x" * 100)
    assert recorder.wait_for(lambda r: second in r.ready_paths())
    assert wait_until(lambda: watcher.watching() == [root])
    third = root / "third.mkv"
    third.write_bytes(b"x" * 100)
    assert recorder.wait_for(lambda r: third in r.ready_paths())
    time.sleep(0.6)
    assert recorder.ready_paths() == [first, second, third]


def test_a_folder_whose_mount_changes_underneath_reports_what_is_there_now(
        tmp_path: Path, start_watcher: Start, caplog: pytest.LogCaptureFixture) -> None:
    # A remount shows as the same path becoming another folder (new st_dev/st_ino);
    # swapping a symlink does the same without needing mount rights.
    disk1, disk2, root = tmp_path / "disk1", tmp_path / "disk2", tmp_path / "media"
    disk1.mkdir()
    disk2.mkdir()
    (disk2 / "already there.mkv").write_bytes(b"x" * 100)
    root.symlink_to(disk1)
    watcher, recorder = start_watcher([WatchSpec(root, settle_seconds=0.3)], recheck_seconds=0.2)
    with caplog.at_level(logging.WARNING, logger="subwatch.watch"):
        swap = tmp_path / "swap"
        swap.symlink_to(disk2)
        swap.replace(root)
        assert recorder.wait_for(lambda r: len(r.ready) >= 1)
    assert recorder.ready_paths() == [root / "already there.mkv"]
    assert any(str(root) in r.getMessage() for r in caplog.records)
    (disk2 / "new.mkv").write_bytes(b"x" * 100)
    assert recorder.wait_for(lambda r: len(r.ready) >= 2)
    assert recorder.ready_paths()[1] == root / "new.mkv"  # reported under the configured path


def test_an_unmounted_share_is_not_reported_as_deleted_files(
        tmp_path: Path, start_watcher: Start, caplog: pytest.LogCaptureFixture) -> None:
    # Unmounting leaves the empty mount point behind; a poller sees every file vanish.
    root, away = tmp_path / "share", tmp_path / "server side"
    root.mkdir()
    films = [root / "one.mkv", root / "two.mkv"]
    _, recorder = start_watcher([WatchSpec(root, poll=True, poll_interval=0.2, settle_seconds=0.2)],
                                recheck_seconds=5.0)  # the deletions reach us before the supervisor looks
    for film in films:
        film.write_bytes(b"x" * 100)
    assert recorder.wait_for(lambda r: len(r.ready) == 2)

    with caplog.at_level(logging.WARNING, logger="subwatch.watch"):
        root.rename(away)
        root.mkdir()
        assert wait_until(lambda: any("not passed on" in r.getMessage() for r in caplog.records))
    assert recorder.deleted == []
    (root / "three.mkv").write_bytes(b"x" * 100)  # and the empty mount point is watched in its place
    assert recorder.wait_for(lambda r: len(r.ready) == 3, timeout=10)


def test_update_adds_and_removes_folders_without_restarting_the_others(
        tmp_path: Path, start_watcher: Start) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    spec_a, spec_b = WatchSpec(a, settle_seconds=0.3), WatchSpec(b, settle_seconds=0.3)
    watcher, recorder = start_watcher([spec_a])
    watcher.update([spec_a, spec_b])
    assert wait_until(lambda: sorted(watcher.watching()) == [a, b])
    (b / "one.mkv").write_bytes(b"x")
    assert recorder.wait_for(lambda r: r.ready_paths() == [b / "one.mkv"])

    watcher.update([spec_b, replace(spec_b, path=b)])  # a duplicate is watched once
    assert wait_until(lambda: watcher.watching() == [b])
    (a / "ignored now.mkv").write_bytes(b"x")
    (b / "two.mkv").write_bytes(b"x")
    assert recorder.wait_for(lambda r: len(r.ready) >= 2)
    time.sleep(0.6)
    assert recorder.ready_paths() == [b / "one.mkv", b / "two.mkv"]


def test_stop_returns_promptly_with_every_kind_of_folder(tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "polled").mkdir()
    specs = [WatchSpec(tmp_path / "local"), WatchSpec(tmp_path / "polled", poll=True, poll_interval=30),
             WatchSpec(tmp_path / "missing")]
    before = threading.active_count()
    watcher = Watcher(specs, lambda path, spec: None)
    watcher.start()
    (tmp_path / "local" / "settling.mkv").write_bytes(b"x")  # a file still settling (10 s)
    time.sleep(0.3)
    began = time.monotonic()
    watcher.stop()
    assert time.monotonic() - began < 5.0
    assert wait_until(lambda: threading.active_count() <= before, timeout=3)
