"""One file through prepare → complete with a real queue: who owns a sidecar across a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
import srt

from daemon import pipeline, subtitles
from daemon.config import load_config
from daemon.datatypes import Segment, Transcript, Word
from daemon.queue import JobQueue
from tests.media_factory import make_media


def transcript(text: str, language: str = "en") -> Transcript:
    words = text.split()
    step = 2.0 / len(words)
    timed = tuple(Word(0.5 + i * step, 0.5 + (i + 0.9) * step, f" {w}", 0.9) for i, w in enumerate(words))
    return Transcript((Segment(timed[0].start, timed[-1].end, f" {text}", timed),), language, None, 3.0)


@pytest.fixture
def world(tmp_path: Path):  # noqa: ANN201
    folder = tmp_path / "films"
    film = make_media(folder / "Film.mkv", seconds=3)
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path}\ndefaults: {{language: en}}\nfolders: [{{path: {folder}}}]\n")
    rules = load_config(config).folder_for(film)
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    job = jobs.enqueue(film, folder).job
    jobs.claim()

    ledger = subtitles.SidecarLedger(jobs)
    yield film, rules, ledger.owns, ledger.for_job(job.id)
    jobs.close()


def cue_text(path: Path) -> list[str]:
    return [cue.content for cue in srt.parse(path.read_text(encoding="utf-8"))]


def test_sidecar_written_just_before_a_crash_is_still_ours(world) -> None:  # noqa: ANN001
    film, rules, owned, sidecars = world
    prepared = pipeline.prepare(film, rules, owned)
    # Killed after the sidecars were written but before the job was marked done:
    first = pipeline.complete(prepared, transcript("first words here"), sidecars)
    srt_path = film.with_name("Film.en.srt")
    assert first.outputs == (srt_path, srt_path.with_suffix(".vtt")) and first.kept == ()
    assert owned(srt_path) and owned(srt_path.with_suffix(".vtt"))
    # ... so the redo after the restart replaces them instead of keeping them as the user's.
    again = pipeline.prepare(film, rules, owned)  # not skipped as "already has en subtitles"
    redo = pipeline.complete(again, transcript("second words now"), sidecars)
    assert redo.outputs == first.outputs and redo.kept == ()
    assert cue_text(srt_path) == ["second words now"]


def test_users_edit_of_our_sidecar_is_kept(world) -> None:  # noqa: ANN001
    film, rules, owned, sidecars = world
    pipeline.complete(pipeline.prepare(film, rules, owned), transcript("ours at first"), sidecars)
    srt_path = film.with_name("Film.en.srt")
    srt_path.write_text("1\n00:00:01,000 --> 00:00:02,000\nfixed by hand\n", encoding="utf-8")
    again = pipeline.prepare(film, rules, owned)
    result = pipeline.complete(again, transcript("new take"), sidecars)
    assert result.kept == (srt_path,) and result.outputs == (srt_path.with_suffix(".vtt"),)
    assert cue_text(srt_path) == ["fixed by hand"]
    assert "new take" in srt_path.with_suffix(".vtt").read_text(encoding="utf-8")  # ours: replaced


def test_a_stored_transcript_is_written_without_decoding(world) -> None:  # noqa: ANN001
    film, rules, owned, sidecars = world
    said = transcript("the same words in both libraries")
    decoded = pipeline.prepare(film, rules, owned)
    first = pipeline.complete(decoded, said, sidecars)
    assert first.transcript == said and first.transcript_key == rules.transcript_key
    written = {p.name: p.read_bytes() for p in first.outputs}

    copy = film.with_name("Film copy.mkv")
    copy.write_bytes(film.read_bytes())
    stored = pipeline.prepare(copy, rules, owned, stored=said)
    assert stored.audio is None and stored.transcript == said  # probed only
    assert stored.info.duration == decoded.info.duration
    again = pipeline.complete(stored, said, sidecars)
    assert [p.name for p in again.outputs] == ["Film copy.en.srt", "Film copy.en.vtt"]
    assert {p.name.replace(" copy", ""): p.read_bytes() for p in again.outputs} == written  # same cues
    assert again.media_duration == first.media_duration


def test_a_stored_transcript_still_skips_a_file_with_the_users_subtitles(world) -> None:  # noqa: ANN001
    film, rules, owned, _ = world
    for ext in ("srt", "vtt"):
        film.with_name(f"Film.en.{ext}").write_text("mine\n")
    with pytest.raises(pipeline.Skip, match="already has en subtitles"):
        pipeline.prepare(film, rules, owned, stored=transcript("words"))
