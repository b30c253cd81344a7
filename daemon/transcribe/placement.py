"""Decoded windows onto a file's timeline: words placed, snapped onto speech, and the Transcript.

A coverage retry keeps only its new words; the speech no word covers is what the
next coverage round decodes again and what the transcript reports as uncovered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from daemon.datatypes import Segment, Transcript, Word
from daemon.loops import collapse_repeats
from daemon.subtitles.script import ends_sentence
from daemon.transcribe import coverage
from daemon.transcribe.state import Decoded, File
from daemon.transcribe.vad import SpeechChunk


def word_times(file: File, decoded: list[Decoded]) -> list[tuple[float, float]]:
    """Return the (start, end) of every decoded word on the file's timeline (segments without words
    count whole), in time order."""
    timed = [(t.start, t.end) for segment in placed(file, decoded) for t in (segment.words or (segment,))]
    return sorted(timed)


def uncovered(file: File, words: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the file's stretches of possible speech that none of its words covers (see
    transcribe.coverage)."""
    return coverage.uncovered(file.faint, words, file.options.coverage)


def transcript_of(file: File, decoded: list[Decoded]) -> Transcript:
    """Put a file's decoded windows onto its timeline and return its Transcript."""
    segments = collapse_repeats(placed(file, decoded), file.options.max_repeated_lines)
    speech = coverage.merge(region for chunk in file.chunks for region in chunk.regions)
    left = uncovered(file, word_times(file, decoded))
    language = "en" if file.options.task == "translate" else (file.language or "en")
    probability = None if file.options.task == "translate" else file.probability
    return Transcript(
        tuple(segments), language, probability, file.audio.duration,
        speech_seconds=round(coverage.total(speech), 2), uncovered_seconds=round(coverage.total(left), 2),
    )


def placed(file: File, decoded: list[Decoded]) -> list[Segment]:
    """Return the segments of all decoded windows on the file's timeline, in time order.

    A coverage retry keeps only the words inside its window (by their middle):
    the window lies between words of earlier rounds, so every one of them is new.
    A recheck that won its line keeps its words there, and every other window loses its own.
    """
    duration = file.audio.duration
    replaced = [item.replaces for item in decoded if item.replaces is not None]
    segments: list[Segment] = []
    for item in decoded:
        if item.result.silent or (item.retry and not coverage.confident(item.result, file.options.coverage)):
            continue
        placed = [_on_timeline(segment, item.chunk, duration) for segment in item.result.segments]
        keep = item.retry or item.replaces
        if keep is not None:
            placed = [s for s in (_within(segment, keep) for segment in placed) if s is not None]
        else:
            placed = [part for segment in placed for part in _outside(segment, replaced)]
        segments += placed
    ends = [end for _, end in file.faint]
    segments = [_snapped(segment, file.faint, ends) for segment in segments]
    return sorted(segments, key=lambda segment: (segment.start, segment.end))


def _snapped(segment: Segment, speech: Sequence[tuple[float, float]], ends: list[float]) -> Segment:
    """Return the segment with word edges that stick out of speech moved onto it (see coverage.snap);
    a segment bounded by its words stays bounded by them."""
    if not segment.words:
        return segment
    words = []
    for index, word in enumerate(segment.words):
        starts = ends_sentence(segment.words[index - 1].text) if index else word.text.strip()[:1].isupper()
        start, end = _one_stretch(word, speech, ends, starts)
        start, end = coverage.snap((start, end), speech, ends)
        words.append(word if (start, end) == (word.start, word.end) else replace(word, start=start, end=end))
    was_first, was_last = segment.words[0], segment.words[-1]
    start = words[0].start if segment.start <= was_first.start else max(segment.start, words[0].start)
    end = words[-1].end if segment.end >= was_last.end else min(segment.end, words[-1].end)
    return Segment(start, max(start, end), segment.text, tuple(words))


def _one_stretch(
    word: Word, speech: Sequence[tuple[float, float]], ends: list[float], starts_sentence: bool
) -> tuple[float, float]:
    """Return the word's times cut to one stretch of speech when the aligner stretched it over a pause
    between two (base ran "longer" on to the next sentence's "for", and "that." on to "The", so one
    cue held both sentences across a second of silence).

    As whisper shortens long words: a sentence's last word keeps the stretch it starts in, a
    sentence's first word the one it ends in; any other word the stretch holding most of it.
    """
    first, last = coverage.under((word.start, word.end), speech, ends)
    if last - first < 2:
        return word.start, word.end
    held = speech[first:last]
    if ends_sentence(word.text):
        stretch = held[0]
    elif starts_sentence:
        stretch = held[-1]
    else:
        stretch = max(held, key=lambda r: min(word.end, r[1]) - max(word.start, r[0]))
    return max(word.start, stretch[0]), min(word.end, stretch[1])


def _within(segment: Segment, window: tuple[float, float]) -> Segment | None:
    """Return the part of a segment inside `window` (by its words' middles), or None if nothing is."""
    if not segment.words:
        return segment if coverage.inside((segment.start, segment.end), window) else None
    words = tuple(w for w in segment.words if coverage.inside((w.start, w.end), window))
    if not words:
        return None
    if len(words) == len(segment.words):
        return segment
    return Segment(words[0].start, words[-1].end, "".join(w.text for w in words), words)


def _outside(segment: Segment, lines: Sequence[tuple[float, float]]) -> list[Segment]:
    """Return the parts of a segment outside every line in `lines` (by its words' middles): the words
    before a line, and those after it, each part a segment of its own."""
    if not lines:
        return [segment]
    if not segment.words:
        inner = any(coverage.inside((segment.start, segment.end), line) for line in lines)
        return [] if inner else [segment]
    parts: list[list[Word]] = [[]]
    for word in segment.words:
        if any(coverage.inside((word.start, word.end), line) for line in lines):
            if parts[-1]:
                parts.append([])
        else:
            parts[-1].append(word)
    if len(parts) == 1 and len(parts[0]) == len(segment.words):
        return [segment]
    return [Segment(p[0].start, p[-1].end, "".join(w.text for w in p), tuple(p)) for p in parts if p]


def _on_timeline(segment: Segment, chunk: SpeechChunk, duration: float) -> Segment:
    """Map a chunk-relative segment and its words onto the file's timeline, within [0, duration]."""

    def at(t: float) -> float:
        return min(max(chunk.to_timeline(t), 0.0), duration)

    words = []
    for word in segment.words:
        start, end = (min(max(t, 0.0), duration) for t in chunk.interval_to_timeline(word.start, word.end))
        words.append(Word(start, max(start, end), word.text, word.probability))
    start = at(segment.start)
    return Segment(start, max(start, at(segment.end)), segment.text, tuple(words))
