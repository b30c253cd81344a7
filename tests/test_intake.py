"""Tests for daemon.intake: real watchdog observers on tmp folders, a real SQLite queue, real ffprobe
(behind a spy that records what it is asked and can hold a probe), and a real `subwatch scan`.

What is asserted is states and order (which job exists while a probe is held), never how long
anything took; waits are only generous upper bounds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.intake import Intake, ProbeVerdicts
from daemon.queue import JobQueue
from tests.ffprobe_spy import FfprobeSpy
from tests.harness import REPO, wait_until, write_config
from tests.media_factory import make_media


@pytest.fixture
def spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FfprobeSpy]:
    spy = FfprobeSpy(tmp_path / "spy").install(monkeypatch)
    yield spy
    spy.release()  # a failed test must not leave a probe held


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A real one-second video with audio, outside the watched folders."""
    return make_media(tmp_path / "staging" / "clip.mkv", seconds=1.0)


def other_clip(tmp_path: Path, seconds: float) -> Path:
    """Another real video with audio: other content, so the queue does not take it for a copy."""
    return make_media(tmp_path / "staging" / f"clip {seconds:g} s.mkv", seconds=seconds)


Start = Callable[..., tuple[Intake, JobQueue]]


@pytest.fixture
def start_intake(tmp_path: Path) -> Iterator[Start]:
    """Start an Intake's watcher on the given folders (created here) with its own queue; stopped after
    the test."""
    started: list[tuple[Intake, JobQueue]] = []

    def start(*folders: Path, language: str = "en") -> tuple[Intake, JobQueue]:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        listed = "".join(f"\n  - path: {folder}" for folder in folders)
        config = load_config(write_config(tmp_path / "config.yaml", f"""
state_dir: {tmp_path / "state"}
defaults: {{settle_seconds: 0.2, language: {language}}}
folders:{listed}
"""))
        queue = JobQueue(config.db_path)
        intake = Intake(config, queue)
        intake.watcher.start()  # events only: no start-up scan to race the test's files
        started.append((intake, queue))
        return intake, queue

    yield start
    for intake, queue in started:
        intake.stop()
        queue.close()


def queued(queue: JobQueue, path: Path) -> bool:
    return queue.find(path) is not None


# ---------------------------------------------------------------- probing off the watcher's thread


def test_a_hanging_probe_holds_up_no_other_files_intake(
        tmp_path: Path, start_intake: Start, spy: FfprobeSpy, clip: Path) -> None:
    slow, quick = tmp_path / "slow", tmp_path / "quick"
    _, queue = start_intake(slow, quick)
    shutil.copy(clip, slow / "held.weird")  # an extension that does not say: ffprobe must decide
    assert wait_until(spy.held.exists)

    shutil.copy(other_clip(tmp_path, 2), quick / "film.mkv")
    shutil.copy(other_clip(tmp_path, 3), slow / "beside it.mkv")
    assert wait_until(lambda: queued(queue, quick / "film.mkv") and queued(queue, slow / "beside it.mkv"))
    assert not spy.released.exists() and not queued(queue, slow / "held.weird")  # still being probed

    spy.release()
    assert wait_until(lambda: queued(queue, slow / "held.weird"))
    assert spy.asked() == ["held.weird"]  # the known extensions were taken on their names


def test_a_file_renamed_while_its_probe_is_held_is_queued_under_its_new_name(
        tmp_path: Path, start_intake: Start, spy: FfprobeSpy, clip: Path) -> None:
    inbox = tmp_path / "inbox"
    _, queue = start_intake(inbox)
    shutil.copy(clip, inbox / "held.weird")
    assert wait_until(spy.held.exists)
    (inbox / "held.weird").rename(inbox / "Renamed.weird")
    time.sleep(0.5)  # the watcher passes the rename on while the probe is still held
    spy.release()
    assert wait_until(lambda: queued(queue, inbox / "Renamed.weird"))
    assert not queued(queue, inbox / "held.weird")
    assert [job.path for job in queue.jobs()] == [inbox / "Renamed.weird"]


def test_a_file_renamed_after_its_job_was_dropped_is_queued_under_its_new_name(
        tmp_path: Path, start_intake: Start, clip: Path) -> None:
    # A worker that finds its file gone drops the job; the watcher's notice of the rename that took
    # the file away can come after that (Sonarr renames right after import). The file must not be
    # lost: it gets a job under its new name.
    inbox = tmp_path / "inbox"
    _, queue = start_intake(inbox)
    old, new = inbox / "Show.S01E01.WEB.mkv", inbox / "Show - S01E01.mkv"
    shutil.copy(clip, old)
    assert wait_until(lambda: queued(queue, old))
    assert queue.drop(old) is not None  # as the worker does, before the rename's notice
    old.rename(new)
    assert wait_until(lambda: queued(queue, new))
    assert [(job.path, job.state.value) for job in queue.jobs()] == [(new, "pending")]


def test_arrivals_with_unknown_extensions_are_queued_only_when_ffprobe_finds_audio(
        tmp_path: Path, start_intake: Start, spy: FfprobeSpy, clip: Path) -> None:
    inbox = tmp_path / "inbox"
    _, queue = start_intake(inbox)
    staging = tmp_path / "staging"
    (staging / "notes.weird").write_text("plain text\n" * 100)
    make_media(staging / "silent.mkv", seconds=1.0, audio=False)
    (staging / "empty.weird").write_bytes(b"")
    for source, name in [(clip, "clip.weird"), (staging / "notes.weird", "notes.weird"),
                         (staging / "silent.mkv", "silent.weird"), (staging / "empty.weird", "empty.weird")]:
        shutil.copy(source, inbox / name)
    assert wait_until(lambda: queued(queue, inbox / "clip.weird"))
    assert wait_until(lambda: sorted(spy.asked()) == ["clip.weird", "notes.weird", "silent.weird"])
    time.sleep(0.5)
    assert [job.path for job in queue.jobs()] == [inbox / "clip.weird"]  # an empty file is not asked about


def test_unknown_extension_is_decided_by_ffprobe_and_remembered_per_mtime(
        tmp_path: Path, spy: FfprobeSpy, clip: Path) -> None:
    media = shutil.copy(clip, tmp_path / "clip.weird")
    silent = make_media(tmp_path / "silent.mkv", seconds=1.0, audio=False).rename(tmp_path / "silent.weird")
    text = tmp_path / "notes.weird"
    text.write_text("not a video at all\n" * 50)
    verdicts = ProbeVerdicts()

    assert verdicts.is_media(Path(media)) is True
    assert verdicts.is_media(text) is False
    assert verdicts.is_media(silent) is False  # video without audio: nothing to transcribe
    assert len(spy.asked()) == 3

    assert verdicts.is_media(Path(media)) is True
    assert verdicts.is_media(text) is False
    assert len(spy.asked()) == 3  # remembered
    later = Path(media).stat().st_mtime + 5
    os.utime(media, (later, later))
    assert verdicts.is_media(Path(media)) is True
    assert len(spy.asked()) == 4  # a new mtime is asked again


def test_what_cannot_be_read_as_a_file_is_not_probed(tmp_path: Path, spy: FfprobeSpy) -> None:
    fifo = tmp_path / "pipe.weird"
    os.mkfifo(fifo)  # opening it to read would block until a writer came
    (tmp_path / "empty.weird").write_bytes(b"")
    verdicts = ProbeVerdicts()
    assert verdicts.is_media(fifo) is False
    assert verdicts.is_media(tmp_path / "empty.weird") is False
    assert verdicts.is_media(tmp_path / "missing.weird") is False
    assert spy.asked() == []


# ---------------------------------------------------------------- scans: cheap checks before any probe


def test_scan_probes_no_file_that_has_subtitles_or_an_unchanged_job(
        tmp_path: Path, spy: FfprobeSpy, clip: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(clip, media / "subbed.weird")
    (media / "subbed.en.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nHello\n")
    shutil.copy(clip, media / "fresh.weird")
    (media / "empty.weird").write_bytes(b"")
    config = write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        defaults: {{language: en}}
        folders: [{{path: {media}}}]
    """)

    def scan() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon", "scan", "--config", str(config)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    first = scan()
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"queued {media / 'fresh.weird'}\n"
    assert spy.asked() == ["fresh.weird"]  # not the subtitled one, nor the empty one
    again = scan()  # a new process: nothing remembered but the queue
    assert again.returncode == 0 and again.stdout == "", again.stderr
    assert spy.asked() == ["fresh.weird"]  # its job is unchanged: not probed again
