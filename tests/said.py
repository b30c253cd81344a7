"""What written subtitles say, and when, checked against what was spoken.

Text is compared after `normalise`: lower case, no punctuation; accented letters
stay as they are. Where speech is in a file is measured from its samples
(`speech_extent`), independently of subwatch's own speech detection.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import srt

from tests.speech import SAMPLE_RATE, Placed, load
from tests.speech import word_error_rate as speech_word_error_rate

# Whisper's timing target of issue #10: a cue starts at most this long before the first
# word of its speech and ends at most this long after the last.
EARLY = 0.3
LATE = 0.7


@dataclass(frozen=True)
class Said:
    """One cue of a written sidecar: its time on the media's timeline and its text."""

    start: float
    end: float
    text: str


def normalise(text: str) -> str:
    """Lower-case `text`, drop punctuation (apostrophes and hyphens become spaces), join whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).split())


def srt_cues(path: Path) -> list[Said]:
    return [Said(c.start.total_seconds(), c.end.total_seconds(), c.content.replace("\n", " "))
            for c in srt.parse(path.read_text(encoding="utf-8"))]


def vtt_cues(path: Path) -> list[Said]:
    import webvtt

    return [Said(vtt_seconds(c.start), vtt_seconds(c.end), c.text.replace("\n", " "))
            for c in webvtt.read(str(path))]


def vtt_seconds(stamp: str) -> float:
    """webvtt-py's *_in_seconds are whole seconds; read its HH:MM:SS.mmm text instead."""
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def text_of(cues: Iterable[Said] | Path) -> str:
    """Return the normalised text of `cues` (or of an .srt/.vtt file's cues), in order."""
    if isinstance(cues, Path):
        cues = vtt_cues(cues) if cues.suffix == ".vtt" else srt_cues(cues)
    return normalise(" ".join(c.text for c in cues))


def word_error_rate(reference: str, cues: Iterable[Said] | Path, language: str = "en") -> float:
    """Return the word error rate of the cues' text against `reference`, normalised by whisper's
    normalisers as bench/accuracy.py does (speech.word_error_rate)."""
    if isinstance(cues, Path):
        cues = vtt_cues(cues) if cues.suffix == ".vtt" else srt_cues(cues)
    return speech_word_error_rate([reference], [" ".join(c.text for c in cues)], language)


def assert_says(cues: Iterable[Said] | Path, *phrases: str) -> None:
    """Each phrase, normalised, occurs word for word in the cues' text."""
    text = text_of(cues)
    missing = [p for p in phrases if f" {normalise(p)} " not in f" {text} "]
    assert not missing, f"subtitles say {text!r}; missing {missing}"


def speech_extent(samples, below_peak_db: float = 30.0, frame: float = 0.01) -> tuple[float, float]:  # noqa: ANN001
    """Given 16 kHz samples of one utterance, return (first, last) second its speech is heard.

    Speech is where the RMS of 10 ms frames is within `below_peak_db` of the loudest frame.
    """
    import numpy as np

    size = round(frame * SAMPLE_RATE)
    count = len(samples) // size
    frames = np.asarray(samples[: count * size], dtype=np.float64).reshape(count, size)
    level = 10 * np.log10((frames**2).mean(axis=1) + 1e-20)
    loud = np.flatnonzero(level > level.max() - below_peak_db)
    return loud[0] * frame, (loud[-1] + 1) * frame


def media_speech(path: Path) -> tuple[float, float]:
    """Return where the speech is in a media file whose audio is speech padded with digital silence."""
    import whisper

    return speech_extent(whisper.load_audio(str(path)))


def placed_speech(placed: Sequence[Placed]) -> list[tuple[float, float]]:
    """Given clips placed in a longer recording, return where each one's speech is in it."""
    stretches = []
    for clip in placed:
        first, last = speech_extent(load(clip.clip))
        stretches.append((clip.start + first, clip.start + last))
    return stretches


def assert_cues_on_speech(
    cues: Sequence[Said], stretches: Sequence[tuple[float, float]], late: float = LATE
) -> list[list[Said]]:
    """Every cue lies on one stretch of speech: from EARLY before its start to `late` after its end.

    Return the cues of each stretch; each stretch has at least one.
    """
    on: list[list[Said]] = [[] for _ in stretches]
    for cue in cues:
        homes = [i for i, (start, end) in enumerate(stretches)
                 if cue.start >= start - EARLY and cue.end <= end + late]
        assert homes, f"cue {cue} is not on the speech {list(stretches)} (-{EARLY} s, +{late} s)"
        on[homes[0]].append(cue)
    for stretch, its in zip(stretches, on, strict=True):
        assert its, f"no cue on the speech at {stretch}: {list(cues)}"
    return on
