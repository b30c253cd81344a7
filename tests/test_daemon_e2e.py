"""The spine end to end: a real `subwatch run` process, real folders, real media, real Apprise.

One daemon serves the scenarios of this module in separate folders, so torch
and the models load once; the restart test starts its own. The models are real
Whisper weights, and every transcribed file is checked for what it says and
when: greedy tiny.en where the test is about the plumbing, base with beam
search where it is about the words, the language or the timing.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import srt
import webvtt

from tests import speech
from tests.harness import Daemon, NotificationSink, status, wait_for_state, write_config
from tests.media_factory import duration_of, lavfi_samples, make_media
from tests.said import (
    assert_cues_on_speech,
    assert_says,
    media_speech,
    placed_speech,
    srt_cues,
    text_of,
    vtt_seconds,
    word_error_rate,
)

SETTLE = 1.5


@pytest.fixture(scope="module")
def sink() -> Iterator[NotificationSink]:
    server = NotificationSink()
    yield server
    server.close()


@pytest.fixture(scope="module")
def world(  # noqa: ANN201
    tmp_path_factory: pytest.TempPathFactory, tiny_en_checkpoint: Path, base_checkpoint: Path,
    sink: NotificationSink,
):
    root = tmp_path_factory.mktemp("e2e")
    for name in ("movies", "languages", "speeches", "nomodel", "badmodel"):
        (root / name).mkdir()
    # A Hugging Face folder in the old format (pytorch_model.bin): neither kind subwatch reads.
    (root / "old-hf-model").mkdir()
    (root / "old-hf-model" / "config.json").write_text('{"model_type": "whisper"}')
    (root / "old-hf-model" / "pytorch_model.bin").write_bytes(b"")
    config = write_config(root / "config.yaml", f"""
        state_dir: {root / "state"}
        log_level: info
        defaults:
          # Plumbing: the fastest real model, greedy.
          model: {tiny_en_checkpoint}
          beam_size: 1
          device: cpu
          settle_seconds: {SETTLE}
          language: en
        notify:
          # The second target refuses connections: delivery to it must never stall the jobs.
          urls: ["{sink.url}", "json://127.0.0.1:9/"]
          burst: 50
        folders:
          - path: {root / "movies"}
          # Words, languages and timing: multilingual base with the default beam search.
          - path: {root / "languages"}
            model: {base_checkpoint}
            beam_size: 5
            language: auto
          - path: {root / "speeches"}
            model: {base_checkpoint}
            beam_size: 5
          - path: {root / "nomodel"}
            model: {root / "missing" / "model.pt"}
          - path: {root / "badmodel"}
            model: ./old-hf-model
    """)
    daemon = Daemon(config)
    daemon.wait_log("watching 5 folder(s)", timeout=120)
    yield root, config, daemon
    assert daemon.stop() == 0, daemon.log()


def slow_copy(source: Path, target: Path, chunks: int = 6, pause: float = SETTLE / 2) -> float:
    """Copy `source` to `target` in chunks with pauses shorter than the settle time; return the end time."""
    data = source.read_bytes()
    step = len(data) // chunks + 1
    with open(target, "wb") as out:
        for start in range(0, len(data), step):
            out.write(data[start:start + step])
            out.flush()
            time.sleep(pause)
    return time.time()


def parse_srt(path: Path) -> list[srt.Subtitle]:
    return list(srt.parse(path.read_text(encoding="utf-8")))


def assert_cues_valid(srt_path: Path, vtt_path: Path, media_duration: float) -> list[srt.Subtitle]:
    """Both sidecars parse with independent parsers, agree, and every cue lies inside the media."""
    cues = parse_srt(srt_path)
    assert cues, f"{srt_path} has no cues"
    vtt = list(webvtt.read(str(vtt_path)))
    assert vtt_path.read_text(encoding="utf-8").startswith("WEBVTT")
    assert len(vtt) == len(cues)
    previous_end = 0.0
    for cue, vcue in zip(cues, vtt, strict=True):
        start, end = cue.start.total_seconds(), cue.end.total_seconds()
        assert 0 <= start < end <= media_duration + 0.001, (start, end, media_duration)
        assert start >= previous_end - 1e-6
        previous_end = end
        assert cue.content.strip()
        assert (vtt_seconds(vcue.start), vtt_seconds(vcue.end)) == pytest.approx((start, end), abs=0.0015)
        assert vcue.text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">") == cue.content
    return cues


def test_slow_copy_is_taken_once_after_it_finishes(world, sink: NotificationSink, tmp_path: Path) -> None:  # noqa: ANN001
    root, config, _ = world
    speech_text = "Good morning. The copy is slow today."
    source = make_media(tmp_path / "Movie (2009).mkv", speech=speech_text, seconds=6)
    finished = slow_copy(source, root / "movies" / "Movie (2009).mkv")
    job = wait_for_state(config, "Movie (2009).mkv", {"done", "failed"})
    assert job["state"] == "done", job
    assert job["created_at"] >= finished + SETTLE - 0.3, "queued before the copy had settled"
    assert job["attempts"] == 1 and job["language"] == "en"
    srt_path = root / "movies" / "Movie (2009).en.srt"
    vtt_path = root / "movies" / "Movie (2009).en.vtt"
    assert sorted(job["outputs"]) == sorted([str(srt_path), str(vtt_path)])
    assert_cues_valid(srt_path, vtt_path, duration_of(source))
    assert_says(srt_path, "good morning", "the copy is slow")
    assert_cues_on_speech(srt_cues(srt_path), [media_speech(source)])
    note = sink.wait_for(lambda m: "Movie (2009)" in m.get("title", ""))
    assert note["title"] == "Subtitles ready: Movie (2009)"
    assert "Movie (2009).mkv" in note["message"] and "English (en)" in note["message"]
    assert "0:06" in note["message"]  # the media's duration
    time.sleep(SETTLE + 0.5)
    assert [m["title"] for m in sink.messages()].count("Subtitles ready: Movie (2009)") == 1


# One FLEURS clip per language, with words of its reference transcript that base gets right.
LANGUAGE_CLIPS = {
    "de": ("fleurs-de-005", "mkv", ["sediment", "lebensräume für wildtiere"]),
    "es": ("fleurs-es-006", "mkv", ["luchadores", "homenaje"]),
    "fr": ("fleurs-fr-005", "ogg", ["perdu le contrôle de sa voiture"]),
    "pt": ("fleurs-pt-002", "ogg", ["perdeu o controle do carro"]),
    "en": ("fleurs-en-004", "mkv", ["they have feathers and can fly"]),
}


def test_detected_language_names_the_sidecars(world, testdata: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Under `language: auto` each file's language is detected on its own, also when files
    dropped together are transcribed in one batch."""
    root, config, _ = world
    folder = root / "languages"
    staged = {}
    for language, (stem, suffix, _) in LANGUAGE_CLIPS.items():
        clip = testdata / "speech" / "fleurs" / f"{stem}.ogg"
        # Audio-only Ogg as published, or inside a video container.
        staged[language] = (shutil.copy(clip, tmp_path / f"{stem}.ogg") if suffix == "ogg"
                            else make_media(tmp_path / f"{stem}.mkv", audio_from=clip))
    for source in staged.values():
        shutil.copy(source, folder / source.name)
    for language, source in staged.items():
        job = wait_for_state(config, source.name, {"done", "failed"})
        assert job["state"] == "done", job
        assert job["language"] == language, (source.name, job)
        srt_path = folder / f"{source.stem}.{language}.srt"
        assert [Path(p) for p in job["outputs"]] == [srt_path, srt_path.with_suffix(".vtt")]
        assert_cues_valid(srt_path, srt_path.with_suffix(".vtt"), duration_of(source))
        assert_says(srt_path, *LANGUAGE_CLIPS[language][2])
        reference = speech.fleurs(language)[int(source.stem[-3:])].text
        assert word_error_rate(reference, srt_path, language) <= 0.35, text_of(srt_path)
    sidecars = sorted(p.name for p in folder.iterdir() if p.suffix in (".srt", ".vtt"))
    assert len(sidecars) == 2 * len(LANGUAGE_CLIPS), sidecars


def test_jfk_in_a_video_says_the_sentence(world, testdata: Path, tmp_path: Path) -> None:  # noqa: ANN001
    root, config, _ = world
    clip = speech.jfk()
    source = make_media(tmp_path / "Inaugural Address (1961).mkv", audio_from=clip.path)
    shutil.copy(source, root / "speeches" / source.name)
    job = wait_for_state(config, source.name, {"done", "failed"})
    assert job["state"] == "done" and job["language"] == "en", job
    srt_path = root / "speeches" / "Inaugural Address (1961).en.srt"
    vtt_path = srt_path.with_suffix(".vtt")
    assert_cues_valid(srt_path, vtt_path, duration_of(source))
    assert word_error_rate(clip.text, srt_path) <= 0.1, text_of(srt_path)
    assert text_of(vtt_path) == text_of(srt_path)
    assert_says(srt_path, "fellow americans", "ask not what your country can do for you")
    assert_cues_on_speech(srt_cues(srt_path), [media_speech(source)])


# Sounds that are not speech, as a film has them between lines: 16 kHz lavfi sources.
PINK_NOISE = "anoisesrc=color=pink:amplitude=0.05:sample_rate=16000:seed=1"
BROWN_NOISE = "anoisesrc=color=brown:amplitude=0.1:sample_rate=16000:seed=2"
MUSIC = ("aevalsrc=0.08*sin(2*PI*(220+4*sin(2*PI*5*t))*t)"  # a minor chord, with vibrato
         "+0.06*sin(2*PI*(261.6+5*sin(2*PI*5*t))*t)+0.05*sin(2*PI*(329.6+6*sin(2*PI*5.5*t))*t):s=16000")


def test_no_cue_over_noise_music_or_silence(world, testdata: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Every cue lies on speech, its edges near the words; each utterance is said in its own cues."""
    import numpy as np

    root, config, _ = world
    clips = {c.path.stem: c for c in speech.librispeech()}
    placed = speech.mixed_file(tmp_path / "mixed.wav", [
        lavfi_samples(PINK_NOISE, 5.0),
        clips["1089-134691-0001"],
        lavfi_samples(MUSIC, 6.0),
        np.zeros(3 * speech.SAMPLE_RATE, np.float32),
        clips["1089-134686-0001"],
        lavfi_samples(BROWN_NOISE, 4.0),
    ])
    source = make_media(tmp_path / "Between the Lines.mkv", audio_from=tmp_path / "mixed.wav")
    shutil.copy(source, root / "speeches" / source.name)
    job = wait_for_state(config, source.name, {"done", "failed"})
    assert job["state"] == "done", job
    srt_path = root / "speeches" / "Between the Lines.en.srt"
    assert_cues_valid(srt_path, srt_path.with_suffix(".vtt"), duration_of(source))
    stretches = placed_speech(placed)
    for clip, cues in zip(placed, assert_cues_on_speech(srt_cues(srt_path), stretches), strict=True):
        assert word_error_rate(clip.clip.text, cues) <= 0.2, (clip.clip.text, cues)


def test_users_subtitle_is_never_overwritten(world, tmp_path: Path) -> None:  # noqa: ANN001
    root, config, _ = world
    folder = root / "movies" / "Mine"
    folder.mkdir()
    mine = "1\n00:00:01,000 --> 00:00:02,000\nMy own words\n"
    (folder / "Home Video.en.srt").write_text(mine)
    (folder / "Home Video.en.vtt").write_text("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nMy own words\n")
    shutil.copy(make_media(tmp_path / "Home Video.mkv", speech="Happy birthday.", seconds=3),
                folder / "Home Video.mkv")
    job = wait_for_state(config, "Home Video.mkv", {"done", "failed", "skipped"})
    assert job["state"] == "skipped" and "already has en subtitles" in job["error"], job
    assert (folder / "Home Video.en.srt").read_text() == mine
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_missing_model_fails_the_job_with_where_it_looked(world, sink, tmp_path: Path) -> None:  # noqa: ANN001
    root, config, daemon = world
    source = make_media(tmp_path / "x.mkv", speech="Where is the model?", seconds=3)
    shutil.copy(source, root / "nomodel" / "x.mkv")
    job = wait_for_state(config, "x.mkv", {"done", "failed"})
    assert job["state"] == "failed"
    missing = root / "missing" / "model.pt"
    assert job["error"].startswith(f"model file {missing} does not exist; set `model:` to"), job
    note = sink.wait_for(lambda m: m.get("title") == "Subtitles failed: x")
    assert f"model file {missing} does not exist" in note["message"]
    assert daemon.process.poll() is None


def test_bad_model_folder_fails_the_job_naming_what_it_expected(world, sink, tmp_path: Path) -> None:  # noqa: ANN001
    root, config, daemon = world
    source = make_media(tmp_path / "y.mkv", speech="Which model is this?", seconds=3)
    shutil.copy(source, root / "badmodel" / "y.mkv")
    job = wait_for_state(config, "y.mkv", {"done", "failed"})
    assert job["state"] == "failed"
    folder = root / "old-hf-model"  # written relative to the config, named in full
    assert job["error"] == (
        f"model folder {folder} holds no Whisper model: expected model.bin and config.json (a faster-whisper "
        "/ CTranslate2 model), or config.json and model.safetensors (a Hugging Face transformers Whisper "
        "model); point `model:` at such a folder, a .pt checkpoint or a Whisper name"
    ), job
    assert job["attempts"] == 1
    note = sink.wait_for(lambda m: m.get("title") == "Subtitles failed: y")
    assert f"model folder {folder}" in note["message"]
    # nothing was converted from it (the other folders' models are, for the CPU engine)
    assert not list((root / "state" / "models").glob("converted/*old-hf-model*"))  # nor a partial one
    assert daemon.process.poll() is None


def test_restart_does_no_double_work(tmp_path: Path, tiny_en_checkpoint: Path, spawn) -> None:  # noqa: ANN001
    sink = NotificationSink()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        defaults: {{model: {tiny_en_checkpoint}, beam_size: 1, device: cpu, settle_seconds: 0.5,
                    language: en}}
        notify: {{urls: ["{sink.url}"]}}
        folders: [{{path: {inbox}}}]
    """)
    # Present before the first start: picked up by backfill.
    make_media(inbox / "Before.mkv", speech="I was here first.", seconds=3)
    first = spawn(config)
    wait_for_state(config, "Before.mkv", {"done"})
    srt_path = inbox / "Before.en.srt"
    assert_says(srt_path, "i was here first")
    assert_cues_on_speech(srt_cues(srt_path), [media_speech(inbox / "Before.mkv")])
    written = srt_path.stat().st_mtime_ns
    assert first.stop(signal.SIGTERM) == 0
    assert "stopped" in first.log()

    second = spawn(config)
    second.wait_log("watching 1 folder(s)")
    make_media(inbox / "After.mkv", speech="And I came later.", seconds=3)
    wait_for_state(config, "After.mkv", {"done"})
    assert_says(inbox / "After.en.srt", "i came later")
    assert_cues_on_speech(srt_cues(inbox / "After.en.srt"), [media_speech(inbox / "After.mkv")])
    assert second.stop(signal.SIGINT) == 0
    jobs = {Path(j["path"]).name: j for j in status(config)}
    assert jobs["Before.mkv"]["attempts"] == 1 and jobs["Before.mkv"]["state"] == "done"
    assert srt_path.stat().st_mtime_ns == written
    titles = [m["title"] for m in sink.messages()]
    assert titles.count("Subtitles ready: Before") == 1 and titles.count("Subtitles ready: After") == 1
    sink.close()
