"""A file with no speech at all gets no sidecars (#20): an empty .srt/.vtt is listed by media servers
as an empty subtitle track. Through a real `subwatch run` with the real tiny.en model, a file of
silence and one of quiet pink noise end done with the note "no speech found", one notification each
says so, a copy is answered from the stored transcript the same way, and `subwatch rewrite` and
`subwatch transcribe` write nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.notify import Event, format_digest, format_done
from tests.harness import DaemonWorld, running_world, status_cli, subwatch, wait_for_state

SETTLE = 0.5
NOTE = "no speech found"
SOURCES = {"silence": "anullsrc=r=16000:cl=mono", "noise": "anoisesrc=c=pink:a=0.003:r=16000"}


def quiet_media(path: Path, source: str, seconds: float = 20.0) -> Path:
    """Write `seconds` of an ffmpeg lavfi audio source as a Matroska file with one FLAC stream."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source,
                    "-t", str(seconds), "-c:a", "flac", str(path)], check=True, timeout=60)
    return path


def subtitles_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.suffix in (".srt", ".vtt"))


class World(DaemonWorld):
    def done(self, path: Path) -> dict:
        job = wait_for_state(self.config, f"{path.parent.name}/{path.name}", {"done", "failed", "skipped"})
        assert job["path"] == str(path)
        return job

    def done_line(self, path: Path) -> str:
        [line] = [ln for ln in self.daemon.log().splitlines() if f" done  {path.name}  " in ln]
        return line

    def told(self, path: Path) -> list[dict]:
        """Return the notifications that name `path`'s file."""
        return [m for m in self.sink.messages() if path.stem in m.get("title", "")]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_en_checkpoint: Path) -> Iterator[World]:
    def config(root: Path, sink_url: str) -> str:
        return f"""
            state_dir: {root / "state"}
            log_level: info
            defaults: {{model: {tiny_en_checkpoint}, device: cpu, settle_seconds: {SETTLE}, language: en,
                        beam_size: 1}}
            notify: {{urls: ["{sink_url}"], burst: 50}}
            folders:
              - path: {root / "movies"}
              # No GPU there: a file in it can be done only from a stored transcript.
              - path: {root / "nogpu"}
                device: cuda:99
        """

    with running_world(tmp_path_factory, "nospeech", ["movies", "nogpu"], config, World) as world:
        yield world


def drop(source: Path, target: Path) -> Path:
    """Move a finished file into a watched folder in one step, as a download client does."""
    part = target.with_name(f".{target.name}.part")
    shutil.copy(source, part)
    os.rename(part, target)
    return target


@pytest.fixture(scope="module")
def finished(world: World) -> dict[str, Path]:
    """The silent and the noisy file, dropped into the watched folder together and done."""
    dropped = {}
    for kind, source in SOURCES.items():
        made = quiet_media(world.staging / f"{kind}.mkv", source)
        dropped[kind] = drop(made, world.root / "movies" / f"{kind.title()} (2009).mkv")
    for media in dropped.values():
        world.done(media)
    return dropped


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_a_file_without_speech_is_done_with_a_note_and_no_sidecars(
    world: World, finished: dict[str, Path], kind: str,
) -> None:
    media = finished[kind]
    job = world.done(media)
    assert job["state"] == "done" and job["attempts"] == 1, job
    assert job["note"] == NOTE and job["error"] is None and job["outputs"] == []
    assert not [name for name in subtitles_in(media.parent) if name.startswith(media.stem)]
    assert world.done_line(media).endswith(f"done  {media.name}  {NOTE} (0:00:20 of audio)")
    # What a script reads (`subwatch status --json`, the same JSON as /api/jobs) and a person reads.
    [shown] = [j for j in status_cli(world.config) if j["path"] == str(media)]
    assert shown["state"] == "done" and shown["note"] == NOTE and shown["error"] is None
    assert shown["media_servers"] == []  # nothing written, so no media server is told
    text = subwatch("status", "--config", str(world.config))
    assert text.returncode == 0 and f"{media}  — {NOTE}" in text.stdout, text.stdout
    # One notification, and it does not say "Subtitles ready".
    told = world.sink.wait_for(lambda m: media.stem in m.get("title", ""))
    assert told["title"] == f"No speech found: {media.stem}"
    assert "No speech found; no subtitles were written" in told["message"]
    assert len(world.told(media)) == 1


def test_a_copy_is_answered_from_the_stored_transcript_with_no_sidecars(
    world: World, finished: dict[str, Path],
) -> None:
    copy = drop(finished["silence"], world.root / "nogpu" / "Copy of Silence.mkv")
    job = world.done(copy)
    assert job["state"] == "done" and job["note"] == NOTE and job["outputs"] == [], job
    reused = f"{NOTE} (0:00:20 of audio)  from the stored transcript (no decoding)"
    assert world.done_line(copy).endswith(reused)
    assert f"queued  {copy.name}  copy of {finished['silence']}" in world.daemon.log()
    assert "cuda:99" not in world.daemon.log()  # no transcriber was asked for it
    assert subtitles_in(copy.parent) == []
    told = world.sink.wait_for(lambda m: copy.stem in m.get("title", ""))
    assert told["title"] == f"No speech found: {copy.stem}" and len(world.told(copy)) == 1


def test_rewrite_of_a_job_without_speech_writes_nothing(world: World, finished: dict[str, Path]) -> None:
    media = finished["silence"]
    done = subwatch("rewrite", str(media), "--config", str(world.config))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{media}: {NOTE}; nothing to write\n"
    assert not [name for name in subtitles_in(media.parent) if name.startswith(media.stem)]
    [job] = [j for j in status_cli(world.config) if j["path"] == str(media)]
    assert job["state"] == "done" and job["note"] == NOTE and job["outputs"] == []


def test_transcribe_writes_nothing_for_a_file_without_speech(
    tmp_path: Path, tiny_en_checkpoint: Path,
) -> None:
    media = quiet_media(tmp_path / "Quiet.mkv", SOURCES["silence"])
    # The user's own SubRip is there (no WebVTT, so the file is not skipped): it stays as it is.
    mine = tmp_path / "Quiet.en.srt"
    mine.write_text("1\n00:00:01,000 --> 00:00:02,000\nmine\n")
    done = subwatch("transcribe", str(media), "--model", str(tiny_en_checkpoint), "--language", "en",
                    "--beam-size", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert f"Quiet.mkv: {NOTE} in 0:00:20; no subtitles written" in done.stderr
    assert subtitles_in(tmp_path) == ["Quiet.en.srt"] and mine.read_text().endswith("mine\n")


def test_the_done_message_and_the_digest_say_no_speech() -> None:
    quiet = Event("done", Path("/m/Quiet (2009).mkv"), language="en", media_duration=20.0, elapsed=2.0,
                  note=NOTE)
    spoken = Event("done", Path("/m/Talk (2009).mkv"), language="en", media_duration=20.0, elapsed=2.0)
    title, body = format_done(quiet)
    assert title == "No speech found: Quiet (2009)"
    assert body.splitlines()[:2] == ["Quiet (2009).mkv", "No speech found; no subtitles were written"]
    assert format_done(spoken)[0] == "Subtitles ready: Talk (2009)"
    title, body = format_digest([quiet, spoken])
    assert title == "Subtitles: 2 files done"
    assert body == f"Done:\n- Quiet (2009).mkv: {NOTE}\n- Talk (2009).mkv"
