"""The transcription stage on real media: speech detection, language vote, batching across files, timing."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from daemon import transcribe as stage
from daemon.datatypes import Audio, Segment, Transcript
from daemon.media import choose_audio_stream, load_audio, probe
from daemon.transcribe import (
    DeviceUnavailable,
    ModelNotFound,
    ModelStore,
    TranscribeOptions,
    collapse_repeats,
    load_model,
    resolve_device,
    transcribe,
    transcribe_many,
)
from daemon.vad import find_speech
from tests.media_factory import make_media

RATE = 16000


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path):  # noqa: ANN201
    return load_model(str(tiny_checkpoint), tiny_checkpoint.parent, "cpu")


def decoded(path: Path) -> Audio:
    info = probe(path)
    return load_audio(path, info, choose_audio_stream(info))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def assert_inside(transcript: Transcript, start: float = 0.0, end: float | None = None) -> None:
    end = transcript.duration if end is None else end
    assert transcript.segments, "speech gave no segments"
    for segment in transcript.segments:
        assert start <= segment.start <= segment.end <= end, segment
        assert segment.text.strip()
        for word in segment.words:
            assert start <= word.start <= word.end <= end, word


def test_media_with_speech_gives_timed_segments_and_words(model, tmp_path: Path) -> None:
    media = make_media(tmp_path / "Movie.mkv", speech="Hello there. The copy is slow today.", seconds=6)
    audio = decoded(media)
    fractions: list[float] = []

    result = transcribe(audio, TranscribeOptions(model="test", language="en"), model, fractions.append)

    assert result.language == "en" and result.language_probability is None
    assert result.duration == pytest.approx(audio.duration)
    assert_inside(result)
    assert all(segment.words for segment in result.segments)
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions) and fractions[0] < 1.0


def test_language_is_voted_by_windows_spread_through_the_file(model, testdata: Path, monkeypatch) -> None:
    # ten English sentences 10 s apart: about 90 s of speech, packed into a few windows
    fleurs = testdata / "speech" / "fleurs"
    sentences = [decoded(fleurs / f"fleurs-en-00{i}.ogg").samples for i in range(10)]
    audio = Audio(np.concatenate([part for s in sentences for part in (s, silence(10))]), RATE)
    windows = len(find_speech(audio))
    voters: list[int] = []
    real = stage.language_probabilities

    def counting(model, features):  # noqa: ANN001, ANN202
        voters.append(len(features))
        return real(model, features)

    monkeypatch.setattr(stage, "language_probabilities", counting)
    options = TranscribeOptions(model="test", language=None, temperatures=(0.0,), language_windows=5)

    result = transcribe(audio, options, model)

    assert 2 <= windows and voters == [min(windows, 5)]  # not only the first 30 s
    assert result.language and len(result.language) in (2, 3)
    assert 0.0 < result.language_probability <= 1.0
    translated = transcribe(audio, replace(options, task="translate"), model)
    assert translated.language == "en" and translated.language_probability is None


def test_only_speech_is_decoded(model, tmp_path: Path, testdata: Path) -> None:
    jfk = decoded(testdata / "speech" / "jfk.flac").samples  # 11 s, speech from ~0.3 s to ~10.6 s
    audio = Audio(np.concatenate([silence(10), jfk, tone(10)]), RATE)
    options = TranscribeOptions(model="test", language="en", temperatures=(0.0,))

    result = transcribe(audio, options, model)

    assert_inside(result, start=10.0, end=21.3)  # nothing over the silence or the tone
    assert transcribe(Audio(np.concatenate([silence(3), tone(5)]), RATE), options, model).segments == ()


def test_times_from_a_packed_window_land_in_its_own_stretches(model, testdata: Path) -> None:
    # two sentences 40 s apart share one window; nothing may be timed in the gap between them
    clip = decoded(testdata / "speech" / "fleurs" / "fleurs-en-001.ogg").samples  # 8.8 s
    audio = Audio(np.concatenate([silence(5), clip, silence(40), clip, silence(5)]), RATE)
    options = TranscribeOptions(model="test", language="en", temperatures=(0.0,))
    [window] = find_speech(audio)
    assert len(window.spans) == 2

    result = transcribe(audio, options, model)

    def in_a_span(t: float) -> bool:
        return any(start <= t <= end for start, end in window.spans)

    times = [
        t for s in result.segments for t in (s.start, s.end, *(x for w in s.words for x in (w.start, w.end)))
    ]
    assert times and all(in_a_span(t) for t in times)


def test_many_files_in_one_batch_give_what_each_gives_alone(model, tmp_path: Path, monkeypatch) -> None:
    files = [
        (
            make_media(tmp_path / "a.mkv", speech="One small file.", seconds=3),
            TranscribeOptions("test", "en"),
        ),
        (
            make_media(tmp_path / "b.mp4", speech="Another one here, a little longer.", seconds=5),
            TranscribeOptions("test", "de", prompt="Zürich, Grüezi"),
        ),
        (
            make_media(tmp_path / "c.webm", speech="And the third.", seconds=2),
            TranscribeOptions("test", "en", word_timestamps=False),
        ),
    ]
    # greedy only: retries at a temperature above 0 sample tokens at random
    items = [(decoded(path), replace(options, temperatures=(0.0,))) for path, options in files]
    calls: list[list] = []
    real = stage.transcribe_chunks

    def spying(model, chunk_requests, options, on_done):  # noqa: ANN001, ANN202
        calls.append(list(chunk_requests))
        return real(model, chunk_requests, options, on_done=on_done)

    monkeypatch.setattr(stage, "transcribe_chunks", spying)
    fractions: list[float] = []

    together = transcribe_many(items, model, fractions.append)

    assert len(calls) == 1 and {r.options.language for r in calls[0]} == {"en", "de"}  # one shared batch
    assert all(r.options.prompt == "Zürich, Grüezi" for r in calls[0] if r.options.language == "de")
    assert fractions[-1] == 1.0
    alone = [transcribe(audio, options, model) for audio, options in items]
    for a, b in zip(together, alone, strict=True):
        assert (a.language, a.duration, len(a.segments)) == (b.language, b.duration, len(b.segments))
        for x, y in zip(a.segments, b.segments, strict=True):
            assert (x.start, x.end, x.text) == (y.start, y.end, y.text)
            assert [(w.start, w.end, w.text) for w in x.words] == [(w.start, w.end, w.text) for w in y.words]
            # word alignment of padded sequences in a batch rounds differently in the last bits
            assert [w.probability for w in x.words] == pytest.approx(
                [w.probability for w in y.words], rel=1e-5
            )
    for result in together:
        assert_inside(result)
    assert not together[2].segments[0].words and together[0].segments[0].words


def test_a_progress_callback_can_abandon_the_work(model, tmp_path: Path) -> None:
    audio = decoded(make_media(tmp_path / "a.mkv", speech="Stop me if you can.", seconds=3))

    class Cancelled(Exception):
        pass

    def cancel(fraction: float) -> None:
        if fraction > 0.02:
            raise Cancelled

    with pytest.raises(Cancelled):
        transcribe(audio, TranscribeOptions("test", "en", temperatures=(0.0,)), model, cancel)


def test_empty_audio_and_other_rates(model) -> None:
    empty = transcribe(Audio(np.zeros(0, np.float32), RATE), TranscribeOptions("test", "fr"), model)
    assert empty == Transcript((), "fr", None, 0.0)
    with pytest.raises(ValueError, match="16000 Hz"):
        transcribe(Audio(np.zeros(44100, np.float32), 44100), TranscribeOptions("test", "en"), model)


def test_loops_of_one_line_are_kept_once() -> None:
    def line(text: str, t: float) -> Segment:
        return Segment(t, t + 1, text)

    loop = [line(" Thank you.", t) for t in range(5)]
    said_twice = [line(" No.", 10), line(" no", 11)]
    segments = [line(" Hello.", -1), *loop, *said_twice, line(" Bye.", 12)]

    kept = collapse_repeats(segments, max_repeats=2)

    assert [(s.start, s.text) for s in kept] == [
        (-1, " Hello."),
        (0, " Thank you."),
        (10, " No."),
        (11, " no"),
        (12, " Bye."),
    ]


def test_devices(caplog, monkeypatch) -> None:
    monkeypatch.setattr(stage, "_warned_cpu", [])
    with caplog.at_level(logging.WARNING, logger="subwatch.transcribe"):
        assert resolve_device("auto") == "cpu"
        assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    assert [r.message for r in caplog.records if "no CUDA GPU" in r.message] == [
        "device auto: PyTorch sees no CUDA GPU; transcribing on the CPU, which is much slower"
    ]  # once, not per job
    with pytest.raises(DeviceUnavailable, match="set device: auto"):
        resolve_device("cuda")


def test_model_store_loads_once_and_unloads_idle(tiny_checkpoint: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path, unload_after_seconds=60)
    first = store.get(str(tiny_checkpoint), "cpu")
    assert store.get(str(tiny_checkpoint), "cpu") is first
    assert store.unload_idle() == []
    assert store.unload_idle(now=1e12) == [str(tiny_checkpoint)]
    with pytest.raises(ModelNotFound, match="does not exist"):
        store.get(str(tmp_path / "missing.pt"), "cpu")
    with pytest.raises(ModelNotFound, match="unknown model 'huge'"):
        load_model("huge", tmp_path, "cpu")
