"""The transcription stage on real media: speech detection, language vote, batching across files, timing."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from daemon import transcribe as stage
from daemon.datatypes import Audio, Segment, Transcript, Word
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
from daemon.transcribe.coverage import CoverageOptions
from daemon.transcribe.rounds import RETRY_ENCODER_PAD_S
from daemon.transcribe.vad import find_speech
from tests import speech
from tests.media_factory import lavfi_samples, make_media
from tests.said import speech_extent

RATE = 16000


@pytest.fixture(scope="module")
def model(base_ct2):  # noqa: ANN001, ANN201 - the real multilingual base, loaded once per session
    """The stage's model: base on the engine `auto` picks on a CPU (CTranslate2 float32, which gives
    the torch engine's tokens, tests/test_engine_ct2.py), several times faster than torch here."""
    return base_ct2


def decoded(path: Path) -> Audio:
    info = probe(path)
    return load_audio(path, info, choose_audio_stream(info))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def text_of(transcript: Transcript) -> str:
    return "".join(segment.text for segment in transcript.segments)


def words_in(transcript: Transcript, start: float, end: float) -> list[Word]:
    return [w for s in transcript.segments for w in s.words if w.end > start and w.start < end]


def assert_inside(transcript: Transcript, start: float = 0.0, end: float | None = None) -> None:
    end = transcript.duration if end is None else end
    assert transcript.segments, "speech gave no segments"
    for segment in transcript.segments:
        assert start <= segment.start <= segment.end <= end, segment
        assert segment.text.strip()
        for word in segment.words:
            assert start <= word.start <= word.end <= end, word


def test_real_speech_gives_its_words_timed_on_the_files_timeline(model) -> None:
    jfk = speech.load(speech.jfk())
    first, last = speech_extent(jfk)
    audio = Audio(np.concatenate([silence(3), jfk, silence(2)]), RATE)
    fractions: list[float] = []

    result = transcribe(audio, TranscribeOptions(model="base", language="en"), model, fractions.append)

    assert speech.word_error_rate([speech.JFK_TEXT], [text_of(result)], "en") <= 0.1, text_of(result)
    assert result.language == "en" and result.language_probability is None
    assert result.duration == pytest.approx(audio.duration)
    assert_inside(result, start=3.0 + first - 0.3, end=3.0 + last + 0.7)
    assert all(segment.words for segment in result.segments)
    words = [w for s in result.segments for w in s.words]
    assert words[0].start == pytest.approx(3.0 + first, abs=0.5)  # "And" where he starts to speak
    assert result.uncovered_seconds == 0.0 and 8.0 < result.speech_seconds < 12.0
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions) and fractions[0] < 1.0


def test_the_language_of_each_fleurs_clip_is_detected(model) -> None:
    clips = [speech.fleurs(language)[0] for language in speech.LANGUAGES]
    options = TranscribeOptions(model="base", language=None, beam_size=None)

    results = transcribe_many([(Audio(speech.load(clip), RATE), options) for clip in clips], model)

    assert [r.language for r in results] == list(speech.LANGUAGES)
    for clip, result in zip(clips, results, strict=True):
        assert result.language_probability > 0.5, (clip.path.name, result.language_probability)
        assert speech.word_error_rate([clip.text], [text_of(result)], clip.language) < 0.5, text_of(result)


def test_language_is_voted_by_windows_spread_through_the_file(model, monkeypatch) -> None:
    # ten English sentences 10 s apart: about 90 s of speech, packed into a few windows
    sentences = [speech.load(clip) for clip in speech.fleurs("en")]
    audio = Audio(np.concatenate([part for s in sentences for part in (s, silence(10))]), RATE)
    windows = len(find_speech(audio))
    voters: list[int] = []
    real = stage.language_probabilities

    def counting(model, features):  # noqa: ANN001, ANN202
        voters.append(len(features))
        return real(model, features)

    monkeypatch.setattr(stage, "language_probabilities", counting)
    options = TranscribeOptions(
        model="base", language=None, beam_size=None, temperatures=(0.0,), language_windows=5,
        coverage=CoverageOptions(max_rounds=0),  # this test is about the vote, not the words
    )

    result = transcribe(audio, options, model)

    assert 2 <= windows and voters == [min(windows, 5)]  # not only the first 30 s
    assert result.language == "en" and 0.5 < result.language_probability <= 1.0
    german = Audio(speech.load(speech.fleurs("de")[1]), RATE)
    translated = transcribe(german, replace(options, task="translate"), model)
    assert translated.language == "en" and translated.language_probability is None
    assert speech.normalise(text_of(translated), "en").isascii() and len(text_of(translated).split()) > 5


def test_only_speech_is_decoded(model) -> None:
    jfk = speech.load(speech.jfk())
    audio = Audio(np.concatenate([silence(10), jfk, tone(10)]), RATE)
    options = TranscribeOptions(model="base", language="en", beam_size=None)

    result = transcribe(audio, options, model)

    assert_inside(result, start=10.0, end=21.3)  # nothing over the silence or the tone
    assert speech.word_error_rate([speech.JFK_TEXT], [text_of(result)], "en") <= 0.1
    assert transcribe(Audio(np.concatenate([silence(3), tone(5)]), RATE), options, model).segments == ()


def test_no_text_over_noise_or_music_and_cue_edges_near_the_speech(model) -> None:
    jfk, other = speech.load(speech.jfk()), speech.load(speech.fleurs("en")[3])
    music = "aevalsrc='0.2*sin(2*PI*261.6*t)*(1+0.5*sin(4*PI*t))+0.2*sin(2*PI*329.6*t)+0.15*sin(2*PI*392*t)'"
    parts = [
        lavfi_samples("anoisesrc=color=pink:amplitude=0.3:sample_rate=16000", 5), jfk,
        lavfi_samples(f"{music}:s=16000", 6), silence(3), other,
        lavfi_samples("anoisesrc=color=brown:amplitude=0.5:sample_rate=16000", 4),
    ]
    audio = Audio(np.concatenate(parts), RATE)
    starts = np.cumsum([0] + [len(p) / RATE for p in parts])
    spoken = [(starts[1], jfk, speech.JFK_TEXT), (starts[4], other, speech.fleurs("en")[3].text)]

    result = transcribe(audio, TranscribeOptions(model="base", language="en"), model)

    stretches = []
    for offset, samples, text in spoken:
        first, last = speech_extent(samples)
        stretch = (offset + first - 0.3, offset + last + 0.7)
        stretches.append(stretch)
        said = "".join(w.text for w in words_in(result, *stretch))
        assert speech.word_error_rate([text], [said], "en") <= 0.2, said
    for word in (w for s in result.segments for w in s.words):
        assert any(a <= word.start <= word.end <= b for a, b in stretches), word  # not over noise, music


def test_every_utterance_of_a_long_file_gets_its_words_as_well_read_as_alone(model, tmp_path: Path) -> None:
    # 15 utterances 1 s apart share Whisper's windows: the model ends some windows early and skips
    # utterances inside others (4 of these 15 had no words before the coverage rounds), and what
    # comes before a line in its window led it astray on two ("two fold of genetic variation, didn't
    # expect" for "two pools of genetic variation hidden and expressed") before the rechecks
    clips = speech.clips("en")
    placed = speech.long_file(tmp_path / "long.wav", clips, repeat=1)
    audio = Audio(speech.load(speech.Clip(tmp_path / "long.wav", "en", "")), RATE)
    options = TranscribeOptions(model="base", language="en", beam_size=None)

    result = transcribe(audio, options, model)
    alone = transcribe_many([(Audio(speech.load(clip), RATE), options) for clip in clips], model)

    by_clip = {clip.path: text_of(t) for clip, t in zip(clips, alone, strict=True)}
    for p in placed:
        said = "".join(w.text for w in words_in(result, p.start, p.end))
        assert said.strip(), f"no words for {p.clip.path.name} at {p.start:.1f}-{p.end:.1f} s"
        alone_said = by_clip[p.clip.path]
        wrong, wrong_alone = (speech.word_error_rate([p.clip.text], [t], "en") for t in (said, alone_said))
        assert wrong <= 0.5 and wrong <= wrong_alone + 0.15, (p.clip.path.name, said, alone_said)
    reference = [" ".join(p.clip.text for p in placed)]
    everything = speech.word_error_rate(reference, [text_of(result)], "en")
    everything_alone = speech.word_error_rate([c.text for c in clips], [text_of(t) for t in alone], "en")
    assert everything <= 1.2 * everything_alone + 0.01, (everything, everything_alone)
    assert result.uncovered_seconds <= 1.0 and result.speech_seconds > 100


def test_times_from_a_packed_window_land_in_its_own_stretches(model, testdata: Path) -> None:
    # two sentences 40 s apart share one window; nothing may be timed in the gap between them
    clip = decoded(testdata / "speech" / "fleurs" / "fleurs-en-001.ogg").samples  # 8.8 s
    audio = Audio(np.concatenate([silence(5), clip, silence(40), clip, silence(5)]), RATE)
    options = TranscribeOptions(model="base", language="en", beam_size=None, temperatures=(0.0,))
    [window] = find_speech(audio)
    assert len(window.spans) == 2

    result = transcribe(audio, options, model)

    def in_a_span(t: float) -> bool:
        return any(start <= t <= end for start, end in window.spans)

    times = [
        t for s in result.segments for t in (s.start, s.end, *(x for w in s.words for x in (w.start, w.end)))
    ]
    assert times and all(in_a_span(t) for t in times)


def test_many_files_in_one_batch_give_what_each_gives_alone(base_model, monkeypatch) -> None:
    # the torch engine, which batches windows of several files into one decode on a GPU
    model = base_model
    files = [
        (speech.jfk(), TranscribeOptions("base", "en")),
        (speech.fleurs("de")[0], TranscribeOptions("base", "de", prompt="Zürich, Grüezi")),
        (speech.fleurs("en")[3], TranscribeOptions("base", "en", word_timestamps=False)),
    ]
    # greedy only: retries at a temperature above 0 sample tokens at random
    items = [
        (Audio(speech.load(clip), RATE), replace(options, beam_size=None, temperatures=(0.0,)))
        for clip, options in files
    ]
    calls: list[list] = []
    real = stage.transcribe_chunks

    def spying(model, chunk_requests, options, on_done):  # noqa: ANN001, ANN202
        calls.append(list(chunk_requests))
        return real(model, chunk_requests, options, on_done=on_done)

    monkeypatch.setattr(stage, "transcribe_chunks", spying)
    fractions: list[float] = []

    together = transcribe_many(items, model, fractions.append)

    first = calls[0]  # the first round: every file's windows in one shared batch
    assert len(first) == 3 and {r.options.language for r in first} == {"en", "de"}
    # the first round's windows are encoded whole; a retry's speech and RETRY_ENCODER_PAD_S of silence
    assert all(r.encoder_seconds is None for r in first)
    retries = [r for call in calls[1:] for r in call]
    assert all(r.encoder_seconds == math.ceil(r.duration + RETRY_ENCODER_PAD_S) for r in retries)
    assert all(r.options.prompt == "Zürich, Grüezi" for r in first if r.options.language == "de")
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
    for (clip, _), result in zip(files, together, strict=True):
        assert_inside(result)
        # greedy base: German "Hongkong", "Kowloon" and "gegenüberliegenden" cost it a third
        assert speech.word_error_rate([clip.text], [text_of(result)], clip.language) <= 0.4, text_of(result)
    assert not together[2].segments[0].words and together[0].segments[0].words


def test_a_progress_callback_can_abandon_the_work(model, tmp_path: Path) -> None:
    audio = decoded(make_media(tmp_path / "a.mkv", speech="Stop me if you can.", seconds=3))  # from a file

    class Cancelled(Exception):
        pass

    def cancel(fraction: float) -> None:
        if fraction > 0.02:
            raise Cancelled

    with pytest.raises(Cancelled):
        transcribe(audio, TranscribeOptions("base", "en", temperatures=(0.0,)), model, cancel)


def test_empty_audio_and_other_rates(model) -> None:
    empty = transcribe(Audio(np.zeros(0, np.float32), RATE), TranscribeOptions("base", "fr"), model)
    assert empty == Transcript((), "fr", None, 0.0)
    with pytest.raises(ValueError, match="16000 Hz"):
        transcribe(Audio(np.zeros(44100, np.float32), 44100), TranscribeOptions("base", "en"), model)


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
