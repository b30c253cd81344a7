"""Speech detection on real recorded speech: chunks cover the talking, never silence or tone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from daemon.datatypes import Audio
from daemon.media import choose_audio_stream, load_audio, probe
from daemon.transcribe.coverage import CoverageOptions
from daemon.transcribe.vad import (
    SpeechChunk,
    VadOptions,
    find_speech,
    find_speech_many,
    group_regions,
    level_gains,
    map_speech_many,
)
from tests import speech
from tests.media_factory import lavfi_samples
from tests.said import speech_extent

RATE = 16000


def decode(path: Path) -> np.ndarray:
    """Return `path` as 16 kHz mono float32 samples, decoded by the media stage itself."""
    info = probe(path)
    return load_audio(path, info, choose_audio_stream(info)).samples


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_speech_between_silence_and_tone_is_the_only_chunk(testdata: Path) -> None:
    jfk = decode(testdata / "speech" / "jfk.flac")  # 11 s, speech from ~0.3 s to ~10.6 s
    audio = Audio(np.concatenate([silence(10), jfk, tone(10)]), RATE)

    chunks = find_speech(audio)

    assert len(chunks) == 1
    assert 10.0 <= chunks[0].start <= 10.6  # "And so my fellow Americans" starts 0.3 s into the clip
    assert 20.0 <= chunks[0].end <= 21.3  # "...for your country" ends before the tone at 21 s
    assert all(start < end for start, end in chunks[0].regions)


def test_each_fleurs_sentence_is_found_the_gaps_cut_out_and_windows_filled(testdata: Path) -> None:
    clips = [decode(testdata / "speech" / "fleurs" / f"fleurs-en-00{i}.ogg") for i in range(6)]
    pieces, sentences, t = [], [], 0.0
    for clip in clips:
        pieces += [clip, silence(5)]
        sentences.append((t, t + len(clip) / RATE))
        t += len(clip) / RATE + 5
    audio = Audio(np.concatenate(pieces), RATE)

    chunks = find_speech(audio)

    spans = [span for chunk in chunks for span in chunk.spans]
    assert len(spans) == len(sentences)  # 5 s pauses are cut out; no sentence is lost
    for (start, end), (clip_start, clip_end) in zip(spans, sentences, strict=True):
        assert clip_start - 0.3 <= start and end <= clip_end + 0.3
        assert end - start >= 0.6 * (clip_end - clip_start)  # most of the sentence is speech
    assert all(chunk.duration <= 30.0 for chunk in chunks)
    assert len(chunks) == 2  # 44 s of speech packed into 2 windows, not 6 mostly empty ones
    window = chunks[0].samples(audio)
    assert len(window) == pytest.approx(chunks[0].duration * RATE, abs=len(chunks[0].spans))


def test_long_speech_is_cut_into_windows_of_at_most_30_seconds(testdata: Path) -> None:
    # JFK four times over: 44 s of talking with only breaths between sentences
    audio = Audio(np.tile(decode(testdata / "speech" / "jfk.flac"), 4), RATE)

    chunks = find_speech(audio)

    assert len(chunks) >= 2
    assert all(chunk.duration <= 30.0 for chunk in chunks)
    spans = [span for chunk in chunks for span in chunk.spans]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert sum(chunk.duration for chunk in chunks) >= 0.8 * audio.duration


def test_silence_and_tone_alone_have_no_speech() -> None:
    assert find_speech(Audio(np.concatenate([silence(5), tone(20, 1000.0)]), RATE)) == []
    assert find_speech(Audio(silence(0), RATE)) == []


def test_regions_join_across_short_pauses_and_pack_into_windows() -> None:
    options = VadOptions(max_chunk_s=30.0, max_merge_gap_s=3.0)
    regions = [(0.0, 5.0), (6.0, 12.0), (14.0, 28.0), (29.0, 35.0), (45.0, 50.0), (80.0, 90.0)]

    chunks = group_regions(regions, options)

    assert [c.spans for c in chunks] == [((0.0, 28.0),), ((29.0, 35.0), (45.0, 50.0), (80.0, 90.0))]
    assert chunks[0].regions == ((0.0, 5.0), (6.0, 12.0), (14.0, 28.0))
    assert chunks[1].duration == 21.0
    unpacked = group_regions(regions, VadOptions(pack=False))
    assert [c.spans for c in unpacked] == [((0.0, 28.0),), ((29.0, 35.0),), ((45.0, 50.0),), ((80.0, 90.0),)]


def test_window_times_map_back_to_the_file_in_one_place() -> None:
    chunk = SpeechChunk(((12.5, 20.0), (40.0, 45.0)))  # 7.5 s, then 5 s from later in the file
    samples = np.arange(60 * RATE, dtype=np.float32)

    assert chunk.to_timeline(0.0) == 12.5
    assert chunk.to_timeline(3.25) == 15.75
    assert chunk.to_timeline(7.5) == 40.0  # the second span starts 7.5 s into the window
    assert chunk.to_timeline(9.0) == 41.5
    assert chunk.to_timeline(29.9) == 45.0  # past the window's audio is padding: clamp
    assert chunk.to_timeline(-1.0) == 12.5
    window = chunk.samples(Audio(samples, RATE))
    assert len(window) == 12.5 * RATE
    assert window[0] == 12.5 * RATE and window[round(7.5 * RATE)] == 40.0 * RATE


def test_other_sample_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="16000 Hz"):
        find_speech(Audio(np.zeros(44100, np.float32), 44100))


def test_loading_silero_keeps_torch_threads() -> None:
    # silero_vad sets torch to one thread when first imported; that would halve Whisper on CPU.
    script = (
        "import torch; torch.set_num_threads(3)\n"
        "from daemon.transcribe.vad import _silero_model; _silero_model()\n"
        "print(torch.get_num_threads())"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["python", "-c", script], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


def test_several_files_are_scored_together_with_the_same_findings(testdata: Path) -> None:
    jfk = decode(testdata / "speech" / "jfk.flac")
    files = [
        Audio(np.concatenate([silence(10), jfk, tone(10)]), RATE),
        Audio(silence(0), RATE),
        Audio(np.concatenate([tone(4), silence(2), jfk]), RATE),
    ]

    found = find_speech_many(files)

    assert [len(chunks) for chunks in found] == [1, 0, 1]
    assert 10.0 <= found[0][0].start <= 10.6 and found[0][0].end <= 21.3
    assert 6.0 <= found[2][0].start <= 6.6 and found[2][0].end <= 17.01


def missed(found: list[tuple[float, float]], truth: list[tuple[float, float]]) -> float:
    from daemon.transcribe.coverage import merge, subtract, total

    return total(subtract(merge(truth), merge(found)))


def test_quiet_speakers_are_heard_from_their_first_words(tmp_path: Path) -> None:
    # FLEURS speakers recorded at peaks near -40 dBFS, 1 s apart: silero alone heard one of them
    # 4.7 s into her sentence and missed 16 s of speech in all
    placed = speech.long_file(tmp_path / "long.wav", speech.clips("en"), repeat=1)
    audio = Audio(speech.load(speech.Clip(tmp_path / "long.wav", "en", "")), RATE)
    bounds = [speech_extent(speech.load(p.clip)) for p in placed]
    truth = [(p.start + a, p.start + b) for p, (a, b) in zip(placed, bounds, strict=True)]
    light_pollution = next(p for p in placed if p.clip.path.name == "fleurs-en-009.ogg")

    levelled, as_is = map_speech_many([audio])[0], map_speech_many([audio], VadOptions(level_window_s=0))[0]

    regions = [r for chunk in levelled.chunks for r in chunk.regions]
    # levelled, silero hears 7.5 s more of these 110 s of speech (20.6 s missed as they are)
    assert missed(regions, truth) <= missed([r for c in as_is.chunks for r in c.regions], truth) - 5.0
    # "As light pollution in their heyday…": heard within a second of her first word, to her last
    assert missed(regions, [(light_pollution.start + 1.0, light_pollution.end - 1.5)]) < 0.1
    assert missed(list(levelled.faint), truth) <= missed(regions, truth)  # the faint map hears more


def test_levelling_hears_no_speech_in_noise_or_music() -> None:
    music = "aevalsrc='0.2*sin(2*PI*261.6*t)*(1+0.5*sin(4*PI*t))+0.2*sin(2*PI*329.6*t)+0.15*sin(2*PI*392*t)'"
    sources = [
        lavfi_samples("anoisesrc=color=pink:amplitude=0.1:sample_rate=16000", 20),
        lavfi_samples("anoisesrc=color=pink:amplitude=0.001:sample_rate=16000", 20),  # a quiet room, -60 dB
        lavfi_samples("anoisesrc=color=brown:amplitude=0.01:sample_rate=16000", 20),
        lavfi_samples(f"{music}:s=16000", 20),
        lavfi_samples(f"{music}:s=16000", 20) * 0.01,
        tone(20, 50.0) * 0.03,  # mains hum
    ]

    maps = map_speech_many([Audio(samples, RATE) for samples in sources])

    assert [m.chunks for m in maps] == [()] * len(sources)
    # at most a blip at an onset, shorter than any stretch the coverage rounds would decode
    assert all(sum(b - a for a, b in m.faint) < CoverageOptions().min_seconds for m in maps), maps


def test_level_gains_lift_quiet_stretches_and_leave_silence_below_the_floor() -> None:
    quiet, loud = 0.002 * tone(5), 0.5 * tone(5)
    samples = np.concatenate([silence(5), quiet, silence(5), loud])

    gains = level_gains(samples, window_s=3.0)
    frame = 320

    def rms(a: float, b: float) -> float:
        piece = samples[round(a * RATE) : round(b * RATE)]
        g = np.repeat(gains, frame)[round(a * RATE) : round(b * RATE)]
        return float(np.sqrt(np.mean((piece * g) ** 2)))

    assert rms(6, 9) == pytest.approx(0.05, rel=0.2)  # the quiet tone brought to the target
    assert rms(16, 19) == pytest.approx(0.05, rel=0.2)  # the loud one brought down to it
    assert rms(1, 3) == 0.0  # digital silence stays silent
    assert len(gains) == -(-len(samples) // frame)
    assert (level_gains(samples, window_s=0) == 1.0).all()
