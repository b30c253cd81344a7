"""Stored transcripts through a real `subwatch run` with the real tiny.en model: copies of finished
content get their own subtitles without decoding, and `subwatch rewrite` lays them out anew.

The `nogpu` folder's only device is a GPU that is not there: a file there can get subtitles
only from a stored transcript, since transcribing it would fail the job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import srt

from tests.harness import REPO, Daemon, status, wait_for_state, write_config
from tests.media_factory import duration_of, make_media
from tests.test_daemon_e2e import assert_cues_valid

SETTLE = 0.5


@dataclass
class World:
    root: Path
    config: Path
    daemon: Daemon
    staging: Path

    def job(self, path: Path) -> dict:
        """Wait for the job of `path` to end; return it (as `subwatch status --json` shows it)."""
        tail = f"{path.parent.name}/{path.name}"
        job = wait_for_state(self.config, tail, {"done", "failed", "skipped"})
        assert job["path"] == str(path)
        return job

    def done_line(self, path: Path) -> str:
        [line] = [ln for ln in self.daemon.log().splitlines() if f" done  {path.name}  " in ln]
        return line


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_en_checkpoint: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("transcripts")
    for name in ("movies", "library", "nogpu"):
        (root / name).mkdir()
    config = write_config(root / "config.yaml", f"""
        state_dir: {root / "state"}
        log_level: info
        defaults: {{model: {tiny_en_checkpoint}, device: cpu, settle_seconds: {SETTLE}, language: en,
                    beam_size: 1}}
        folders:
          - path: {root / "movies"}
          - path: {root / "library"}
          - path: {root / "nogpu"}
            device: cuda:99
    """)
    daemon = Daemon(config)
    daemon.wait_log("watching 3 folder(s)", timeout=120)
    yield World(root, config, daemon, tmp_path_factory.mktemp("staging"))
    assert daemon.stop() == 0, daemon.log()


def drop(source: Path, target: Path) -> Path:
    """Move a finished file into a watched folder in one step, as a download client does."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    shutil.copy(source, part)
    os.rename(part, target)
    return target


def subs(media: Path, ext: str = "srt") -> Path:
    return media.with_name(f"{media.stem}.en.{ext}")


def cue_lines(path: Path) -> list[list[str]]:
    return [cue.content.split("\n") for cue in srt.parse(path.read_text(encoding="utf-8"))]


def assert_done(world: World, media: Path, seconds: float) -> dict:
    job = world.job(media)
    assert job["state"] == "done" and job["attempts"] == 1, job
    assert job["outputs"] == [str(subs(media)), str(subs(media, "vtt"))]
    assert_cues_valid(subs(media), subs(media, "vtt"), seconds)
    return job


def test_a_copy_and_a_hard_link_are_written_from_the_stored_transcript(world: World) -> None:
    source = make_media(world.staging / "Film.mkv", speech="The quick brown fox jumps over the lazy dog.",
                        seconds=5)
    original = drop(source, world.root / "movies" / "Film (2009).mkv")
    first = assert_done(world, original, duration_of(source))
    assert "lazy dog" in subs(original).read_text().lower()  # the real model heard it
    assert first["speech_seconds"] is not None and 0 <= first["uncovered_seconds"] <= first["speech_seconds"]
    assert "stored transcript" not in world.done_line(original)

    copy = drop(source, world.root / "nogpu" / "Copy of Film.mkv")
    link = world.root / "nogpu" / "Linked" / "Linked Film.mkv"
    link.parent.mkdir()
    os.link(original, link)
    for media in (copy, link):
        job = assert_done(world, media, duration_of(source))
        assert job["id"] != first["id"] and job["language"] == "en"
        # The same cues at the same times: written from the transcript of the original.
        assert subs(media).read_bytes() == subs(original).read_bytes()
        assert subs(media, "vtt").read_bytes() == subs(original, "vtt").read_bytes()
        assert (job["speech_seconds"], job["uncovered_seconds"]) == (
            first["speech_seconds"], first["uncovered_seconds"])
        assert world.done_line(media).endswith("from the stored transcript (no decoding)")
        assert f"queued  {media.name}  copy of {original}" in world.daemon.log()
    assert "cuda:99" not in world.daemon.log()  # no transcriber was ever asked for them
    assert subs(original).exists() and subs(original, "vtt").exists()  # the original keeps its own


def test_a_copy_that_arrives_while_its_twin_is_transcribed_follows_it(world: World) -> None:
    source = make_media(world.staging / "Twins.mkv", speech="Two copies of this film arrive together.",
                        seconds=4)
    one, other = world.root / "movies" / "Twin One.mkv", world.root / "library" / "Twin Other.mkv"
    for target in (one, other):
        shutil.copy(source, target.with_name(f".{target.name}.part"))
    for target in (one, other):  # settled together: the second is seen while the first is in the works
        os.rename(target.with_name(f".{target.name}.part"), target)
    jobs = {media: assert_done(world, media, duration_of(source)) for media in (one, other)}
    log = world.daemon.log()
    waited = [media for media in (one, other) if f"waiting  {media.name}  same content as " in log]
    assert len(waited) == 1, log
    [copy] = waited
    [twin] = [media for media in (one, other) if media != copy]
    assert f"waiting  {copy.name}  same content as {twin}, not done yet" in log
    assert f"queued  {copy.name}  copy of {twin}" in log
    assert world.done_line(copy).endswith("from the stored transcript (no decoding)")
    assert "stored transcript" not in world.done_line(twin)
    assert subs(copy).read_bytes() == subs(twin).read_bytes()
    assert jobs[copy]["created_at"] >= jobs[twin]["updated_at"] - 1e-3  # its job began after the twin's ended


def test_rewrite_lays_out_a_finished_file_anew_without_the_model(world: World) -> None:
    source = make_media(world.staging / "Layout.mkv",
                        speech="Subtitles can be laid out again with shorter lines and no model at all.",
                        seconds=7)
    film = drop(source, world.root / "movies" / "Layout.mkv")
    assert_done(world, film, duration_of(source))
    before = cue_lines(subs(film))
    assert max(len(line) for cue in before for line in cue) > 20

    # The same state, a new layout: short lines, SubRip only; and a model that is not there.
    narrow = write_config(world.root / "narrow.yaml", f"""
        state_dir: {world.root / "state"}
        defaults: {{model: {world.root / "no-such-model.pt"}, device: cuda:99, language: en, beam_size: 1}}
        folders:
          - path: {world.root / "movies"}
            max_line_chars: 20
            formats: [srt]
    """)
    done = subprocess.run([sys.executable, "-m", "daemon", "rewrite", str(film), "--config", str(narrow)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{film}: rewrote Layout.en.srt; removed Layout.en.vtt (no longer in the layout)\n"
    after = cue_lines(subs(film))
    assert max(len(line) for cue in after for line in cue) <= 20
    assert [w for cue in after for line in cue for w in line.split()] == [
        w for cue in before for line in cue for w in line.split()]  # the same words, laid out anew
    assert not subs(film, "vtt").exists()
    [job] = [j for j in status(world.config) if j["path"] == str(film)]
    assert job["state"] == "done" and job["outputs"] == [str(subs(film))]
