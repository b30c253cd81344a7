"""The sidecar ledger: which sidecars and folders are subwatch's, on real files with a real queue, and
through a real `subwatch run` for a `name_template` with folders (made, moved, removed when empty)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.queue import JobQueue
from daemon.subtitles import NamingRules, SidecarFolderError, SidecarLedger, Unrecorded, moved_sidecar
from tests.harness import REPO, Daemon, status, write_config
from tests.media_factory import make_media
from tests.said import assert_says

# --- where a sidecar goes when its video is renamed -------------------------------------------------

FOLDER = Path("/media/Movies")


@pytest.mark.parametrize(
    ("template", "sidecar", "expected"),
    [
        (None, "Movie.en.srt", "Film.en.srt"),
        (None, "Movie.en.sdh.forced.vtt", "Film.en.sdh.forced.vtt"),
        ("Subs/{stem}.{lang}.{ext}", "Subs/Movie.en.srt", "Subs/Film.en.srt"),
        ("Subs/{stem}.{lang}{flags}.{ext}", "Subs/Movie.eng.sdh.srt", "Subs/Film.eng.sdh.srt"),
        ("{stem}/{stem}.{lang}.{ext}", "Movie/Movie.en.srt", "Film/Film.en.srt"),
        ("subs/{lang}/{stem}.{ext}", "subs/en/Movie.srt", "subs/en/Film.srt"),
        ("Subs/{lang}-{stem}.{ext}", "Subs/en-Movie.srt", "Subs/en-Film.srt"),  # the stem not first
        ("./{stem}.{lang}.{ext}", "Movie.en.srt", "Film.en.srt"),
        # A literal folder that starts like the stem is no stem: "Mov" renamed leaves "Movies" alone.
        ("Movies/{stem}.{lang}.{ext}", "Movies/Mov.en.srt", "Movies/Film.en.srt"),
        # Written under another layout than the folder's now: its folder stays, its name follows.
        ("Subs/{stem}.{lang}.{ext}", "Other/Movie.en.srt", "Other/Film.en.srt"),
    ],
)
def test_a_renamed_videos_sidecar_keeps_its_place_in_the_layout(template: str | None, sidecar: str,
                                                                   expected: str) -> None:
    stem = "Mov" if sidecar.startswith("Movies/") else "Movie"
    old, new = FOLDER / f"{stem}.mkv", FOLDER / "Film.mkv"

    assert moved_sidecar(FOLDER / sidecar, old, new, NamingRules(name_template=template)) == FOLDER / expected


def test_a_video_moved_to_another_folder_takes_its_layout_along() -> None:
    naming = NamingRules(name_template="Subs/{stem}.{lang}.{ext}")
    old, new = FOLDER / "Movie.mkv", Path("/media/Archive/Movie (1999).mkv")

    assert moved_sidecar(FOLDER / "Subs" / "Movie.en.srt", old, new, naming) == Path(
        "/media/Archive/Subs/Movie (1999).en.srt")
    assert moved_sidecar(Path("/elsewhere/Movie.en.srt"), old, new, naming) is None
    assert moved_sidecar(FOLDER / "Other.en.srt", old, new, naming) is None


# --- the ledger on real files and a real queue -------------------------------------------------------


@dataclass
class Shelf:
    folder: Path
    jobs: JobQueue
    ledger: SidecarLedger
    job_id: int


@pytest.fixture
def shelf(tmp_path: Path) -> Iterator[Shelf]:
    folder = tmp_path / "films"
    film = folder / "Movie.mkv"
    folder.mkdir()
    film.write_bytes(b"not really a film")
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    job = jobs.enqueue(film, folder).job
    yield Shelf(folder, jobs, SidecarLedger(jobs), job.id)
    jobs.close()


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_missing_template_folders_are_made_and_recorded(shelf: Shelf) -> None:
    target = shelf.folder / "Subs" / "en" / "Movie.srt"

    assert shelf.ledger.write(shelf.job_id, target, "1\n00:00:01,000 --> 00:00:02,000\nHello\n")

    assert tree(shelf.folder) == ["Movie.mkv", "Subs", "Subs/en", "Subs/en/Movie.srt"]
    assert target.read_text() == "1\n00:00:01,000 --> 00:00:02,000\nHello\n"
    assert shelf.ledger.owns(target)
    assert shelf.jobs.is_sidecar_folder(shelf.folder / "Subs") and shelf.jobs.is_sidecar_folder(target.parent)
    assert not shelf.jobs.is_sidecar_folder(shelf.folder)


def test_a_folder_that_cannot_be_made_is_a_lasting_error_naming_it(shelf: Shelf) -> None:
    (shelf.folder / "Subs").write_text("a file where the folder goes")
    target = shelf.folder / "Subs" / "Movie.en.srt"

    with pytest.raises(SidecarFolderError) as raised:
        shelf.ledger.write(shelf.job_id, target, "text")

    assert str(raised.value) == (
        f"cannot create the folder {shelf.folder / 'Subs'} for subtitles (a file has that name): make it "
        "a folder subwatch can write to, or change name_template; then `subwatch retry` the file")
    assert shelf.jobs.sidecars_of(shelf.job_id) == []  # nothing recorded for a file never written
    assert (shelf.folder / "Subs").read_text() == "a file where the folder goes"


def test_following_a_rename_moves_the_sidecars_and_removes_folders_left_empty(shelf: Shelf) -> None:
    naming = NamingRules(name_template="{stem}/{stem}.{lang}.{ext}")
    ours = shelf.folder / "Movie" / "Movie.en.srt"
    edited = ours.with_suffix(".vtt")
    shelf.ledger.write(shelf.job_id, ours, "ours")
    shelf.ledger.write(shelf.job_id, edited, "WEBVTT\n")
    edited.write_text("WEBVTT\n\nedited by hand\n")  # the user's now, but still this video's: it follows
    (shelf.folder / "Movie" / "notes.txt").write_text("the user's")
    (shelf.folder / "Movie.mkv").rename(shelf.folder / "Film.mkv")

    moved = shelf.ledger.follow(shelf.job_id, shelf.folder / "Movie.mkv", shelf.folder / "Film.mkv", naming)

    film = shelf.folder / "Film"
    assert moved == [film / "Film.en.srt", film / "Film.en.vtt"]
    assert tree(shelf.folder) == ["Film", "Film.mkv", "Film/Film.en.srt", "Film/Film.en.vtt", "Movie",
                                  "Movie/notes.txt"]  # not empty: stays
    assert (film / "Film.en.srt").read_text() == "ours"
    assert (film / "Film.en.vtt").read_text() == "WEBVTT\n\nedited by hand\n"
    assert shelf.ledger.owns(film / "Film.en.srt") and not shelf.ledger.owns(film / "Film.en.vtt")
    assert shelf.jobs.sidecars_of(shelf.job_id) == [film / "Film.en.srt", film / "Film.en.vtt"]

    # Renamed back: the folder made for "Film" is left empty and goes; "Movie" was made by subwatch
    # too and is used again.
    (shelf.folder / "Film.mkv").rename(shelf.folder / "Movie.mkv")
    shelf.ledger.follow(shelf.job_id, shelf.folder / "Film.mkv", shelf.folder / "Movie.mkv", naming)
    assert tree(shelf.folder) == ["Movie", "Movie.mkv", "Movie/Movie.en.srt", "Movie/Movie.en.vtt",
                                  "Movie/notes.txt"]


def test_forget_removes_subwatchs_folders_once_empty(shelf: Shelf) -> None:
    srt_path = shelf.folder / "Subs" / "Movie.en.srt"
    shelf.ledger.write(shelf.job_id, srt_path, "ours")
    srt_path.unlink()  # the user deleted the subtitles to have the film transcribed again

    assert shelf.ledger.forget(shelf.folder / "Movie.mkv")

    assert tree(shelf.folder) == ["Movie.mkv"]
    assert not shelf.jobs.is_sidecar_folder(shelf.folder / "Subs")
    assert not shelf.ledger.forget(shelf.folder / "Movie.mkv")  # no job any more


def test_subwatch_transcribe_writes_with_no_ledger(tmp_path: Path) -> None:
    target = tmp_path / "Subs" / "Movie.en.srt"

    assert Unrecorded().write(target, "first")  # its folder made, recorded nowhere
    assert not Unrecorded().owns(target) and not Unrecorded().write(target, "second")
    assert target.read_text() == "first"
    assert Unrecorded(overwrite=True).owns(target) and Unrecorded(overwrite=True).write(target, "third")
    assert target.read_text() == "third"


# --- through a real daemon ---------------------------------------------------------------------------

SETTLE = 1.0


@dataclass
class World:
    root: Path
    config: Path
    daemon: Daemon
    staging: Path

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {j["path"]: j for j in status(self.config)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_en_checkpoint: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("layouts")
    for name in ("subs", "bystem"):
        (root / name).mkdir()
    config = write_config(root / "config.yaml", f"""
        state_dir: {root / "state"}
        log_level: info
        defaults: {{model: {tiny_en_checkpoint}, beam_size: 1, device: cpu, settle_seconds: {SETTLE},
                    language: en}}
        folders:
          # The layout config.example.yaml shows.
          - path: {root / "subs"}
            name_template: "Subs/{{stem}}.{{lang}}.{{ext}}"
          - path: {root / "bystem"}
            name_template: "{{stem}}/{{stem}}.{{lang}}.{{ext}}"
    """)
    daemon = Daemon(config)
    daemon.wait_log("watching 2 folder(s)", timeout=120)
    yield World(root, config, daemon, tmp_path_factory.mktemp("staging"))
    assert daemon.stop() == 0, daemon.log()


def drop(world: World, words: str, target: Path) -> Path:
    """Move a new file saying `words` into a watched folder in one step, as a download client does."""
    source = make_media(world.staging / target.name, speech=words, seconds=4)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target.with_name(".incoming.part"))
    os.rename(target.with_name(".incoming.part"), target)
    return target


def settled(world: World, media: Path, timeout: float = 300.0) -> dict[str, Any]:
    """Wait until `media`'s job is done, failed or skipped, or has failed once (retrying); return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = world.jobs().get(str(media))
        if job and (job["state"] in ("done", "failed", "skipped") or job["error"]):
            return job
        time.sleep(0.3)
    raise AssertionError(f"{media} not settled within {timeout} s: {world.jobs().get(str(media))}")


def wait_for_files(folder: Path, names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while tree(folder) != names:
        assert time.monotonic() < deadline, tree(folder)
        time.sleep(0.2)


def test_template_folder_is_made_and_a_rename_keeps_the_layout(world: World) -> None:
    library = world.root / "subs" / "Library"
    movie = drop(world, "Good morning. The copy is slow today.", library / "Movie.mkv")

    job = settled(world, movie)

    assert (job["state"], job["attempts"], job["error"]) == ("done", 1, None), job
    srt_path, vtt_path = library / "Subs" / "Movie.en.srt", library / "Subs" / "Movie.en.vtt"
    assert sorted(job["outputs"]) == [str(srt_path), str(vtt_path)]
    assert tree(library) == ["Movie.mkv", "Subs", "Subs/Movie.en.srt", "Subs/Movie.en.vtt"]
    assert_says(srt_path, "good morning", "the copy is slow")
    assert_says(vtt_path, "good morning", "the copy is slow")
    written = {p.name.replace("Movie", "Film"): p.read_bytes() for p in (srt_path, vtt_path)}

    # Renamed after it was done: its sidecars follow it inside Subs/, not beside the video.
    film = library / "Film.mkv"
    os.rename(movie, film)
    wait_for_files(library, ["Film.mkv", "Subs", "Subs/Film.en.srt", "Subs/Film.en.vtt"])
    assert {p.name: p.read_bytes() for p in (library / "Subs").iterdir()} == written
    job = world.jobs()[str(film)]
    assert job["state"] == "done" and job["attempts"] == 1
    assert sorted(job["outputs"]) == [str(library / "Subs" / f"Film.en.{ext}") for ext in ("srt", "vtt")]


def test_a_renamed_videos_own_folder_is_renamed_and_forget_tidies_up(world: World) -> None:
    folder = world.root / "bystem"
    concert = drop(world, "First cut of the film.", folder / "Concert.mkv")
    job = settled(world, concert)
    assert (job["state"], job["attempts"]) == ("done", 1), job
    assert tree(folder) == ["Concert", "Concert.mkv", "Concert/Concert.en.srt", "Concert/Concert.en.vtt"]
    assert_says(folder / "Concert" / "Concert.en.srt", "first cut", "film")

    recital = folder / "Recital.mkv"
    os.rename(concert, recital)
    # The folder subwatch made for the old name goes once its sidecars have moved out.
    wait_for_files(folder, ["Recital", "Recital.mkv", "Recital/Recital.en.srt", "Recital/Recital.en.vtt"])
    assert_says(folder / "Recital" / "Recital.en.srt", "first cut", "film")

    # The user deletes the subtitles and forgets the file, to have it transcribed anew later.
    for sidecar in (folder / "Recital").iterdir():
        sidecar.unlink()
    forget = [sys.executable, "-m", "daemon", "forget", str(recital), "--config", str(world.config)]
    done = subprocess.run(forget, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, f"forgot {recital}\n"), done.stderr
    assert tree(folder) == ["Recital.mkv"]


def test_a_folder_that_cannot_be_made_fails_the_job_at_once_saying_what_to_do(world: World) -> None:
    shelf = world.root / "subs" / "Blocked"
    shelf.mkdir()
    (shelf / "Subs").write_text("a file where the template wants a folder")
    clip = drop(world, "Nowhere to put the subtitles.", shelf / "Clip.mkv")

    job = settled(world, clip)

    assert (job["state"], job["attempts"]) == ("failed", 1), job
    assert job["error"] == (
        f"cannot create the folder {shelf / 'Subs'} for subtitles (a file has that name): make it a folder "
        "subwatch can write to, or change name_template; then `subwatch retry` the file")
    assert tree(shelf) == ["Clip.mkv", "Subs"]
    assert world.daemon.process.poll() is None
