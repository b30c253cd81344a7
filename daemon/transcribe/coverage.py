"""Coverage: which detected speech no decoded word covers, and the windows that decode it again.

Whisper sometimes ends a window early, or skips an utterance inside it: the
words it returned cover only part of the speech the window held, and nothing
ever decodes the rest. Speech detection says where speech may be (its faint
map, see vad.SpeechMap), so the gap is visible: speech that no word (give or
take `margin_s`) covers, in stretches of at least `min_seconds`, is decoded
again in a window of its own that starts just before it, never before the
words ahead of it stopped (whisper's seek, for gaps in the middle too), until
every such stretch has words or its window has been tried.

Pure functions on (start, end) seconds of the file's timeline; the
transcription stage calls them between decoding rounds.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Interval = tuple[float, float]


@dataclass(frozen=True)
class CoverageOptions:
    """When speech counts as covered, and how hard subwatch tries to cover the rest.

    min_seconds: uncovered speech shorter than this is a breath or a word's tail
        the aligner cut short, not a missed line (1.0).
    margin_s: a word covers this much either side of its aligned time; word
        edges from cross-attention are a few tenths of a second loose (0.5).
    max_rounds: decoding rounds after the first; each decodes the stretches
        still uncovered, alone (3).
    reach_back_s: a retry window starts up to this long before its stretch, at
        the end of the last word before it (1.0): enough for an onset silero
        heard late, short enough that music before the speech stays out (with
        6 s of music in front of it, base wrote "The cabis piece changed its
        color" for "The cabbage juice changes color").
    reach_forward_s: and ends up to this long after it, at the next word (0.5).
    max_no_speech_prob, min_avg_logprob: what a retried window's decoding must
        show to be kept (0.5, -1.0). Whisper's own rule drops text only when
        both are bad; a window the first pass found nothing in needs both to be
        good, or Whisper's "Thank you." over a speaker's trailing breath gets in.
    """

    min_seconds: float = 1.0
    margin_s: float = 0.5
    max_rounds: int = 3
    reach_back_s: float = 1.0
    reach_forward_s: float = 0.5
    max_no_speech_prob: float = 0.5
    min_avg_logprob: float = -1.0


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Given intervals in any order, return their union as sorted, disjoint intervals."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def subtract(intervals: Sequence[Interval], holes: Sequence[Interval]) -> list[Interval]:
    """Given sorted disjoint intervals and sorted disjoint holes, return what of the intervals is left."""
    left: list[Interval] = []
    h = 0
    for start, end in intervals:
        while h < len(holes) and holes[h][1] <= start:
            h += 1
        cursor, k = start, h
        while k < len(holes) and holes[k][0] < end:
            if holes[k][0] > cursor:
                left.append((cursor, holes[k][0]))
            cursor = max(cursor, holes[k][1])
            k += 1
        if cursor < end:
            left.append((cursor, end))
    return left


def total(intervals: Iterable[Interval]) -> float:
    return sum(end - start for start, end in intervals)


def uncovered(
    speech: Sequence[Interval], words: Iterable[Interval], options: CoverageOptions
) -> list[Interval]:
    """Given the file's speech regions and its words' times, return the stretches of speech no word covers.

    Only stretches of at least `min_seconds` count; shorter ones are pauses
    inside speech or a word the aligner timed short.
    """
    covered = merge((start - options.margin_s, end + options.margin_s) for start, end in words)
    left = subtract(merge(speech), covered)
    return [(start, end) for start, end in left if end - start >= options.min_seconds]


def retry_window(stretch: Interval, words: Sequence[Interval], options: CoverageOptions) -> Interval:
    """Given an uncovered stretch and the file's word times (sorted), return the window to decode it in.

    It reaches back to where the last word before the stretch ended (at most
    `reach_back_s`) and on to where the next word starts (at most
    `reach_forward_s`), so the model hears the speech from its real start and
    every word it returns there is new.
    """
    before = [end for _, end in words if end <= stretch[0]]
    after = [start for start, _ in words if start >= stretch[1]]
    start = max(max(before, default=0.0), stretch[0] - options.reach_back_s)
    end = min(min(after, default=stretch[1] + options.reach_forward_s), stretch[1] + options.reach_forward_s)
    return start, max(end, stretch[1])


def confident(result: Any, options: CoverageOptions) -> bool:
    """True if a retried window's decoding (engine.ChunkDecoding) is speech by both of Whisper's measures."""
    return (
        result.no_speech_prob <= options.max_no_speech_prob and result.avg_logprob >= options.min_avg_logprob
    )


def untried(windows: Sequence[Interval], tried: Sequence[Interval]) -> list[Interval]:
    """Return the windows not decoded before (the same window again would give the same nothing)."""
    return [
        window
        for window in windows
        if not any(abs(window[0] - a) <= 0.05 and abs(window[1] - b) <= 0.05 for a, b in tried)
    ]


def split_long(stretch: Interval, max_seconds: float) -> list[Interval]:
    """Cut a stretch into equal pieces of at most `max_seconds` (Whisper's window is 30 s)."""
    start, end = stretch
    pieces = max(1, -int(-(end - start) // max_seconds))
    step = (end - start) / pieces
    return [(start + i * step, start + (i + 1) * step if i < pieces - 1 else end) for i in range(pieces)]


def inside(word: Interval, window: Interval) -> bool:
    """True if the word's middle lies in the window."""
    middle = (word[0] + word[1]) / 2
    return window[0] <= middle <= window[1]


def snap(word: Interval, speech: Sequence[Interval], ends: Sequence[float] | None = None) -> Interval:
    """Given a word's time and the sorted, disjoint speech regions, return the word with an edge
    that lies outside speech moved onto the edge of the speech it overlaps.

    The aligner stretches a window's first word back over whatever came before
    it (silence, music), so a cue would appear a second before anyone speaks.
    A word wholly outside speech is left as it is: the aligner, not silero, heard it.
    `ends` (the regions' ends, for bisect) may be passed in when snapping many words.
    """
    start, end = word
    first, last = under(word, speech, ends)
    if last == first:
        return word
    return max(start, speech[first][0]), min(end, speech[last - 1][1])


def under(word: Interval, speech: Sequence[Interval], ends: Sequence[float] | None = None) -> tuple[int, int]:
    """Given a word's time and the sorted, disjoint speech regions, return the indices (first, last)
    of the regions it overlaps: speech[first:last], empty when the word lies outside speech.
    `ends` (the regions' ends, for bisect) may be passed in when looking up many words."""
    start, end = word
    ends = ends if ends is not None else [b for _, b in speech]
    first = bisect.bisect_right(ends, start)  # the first region ending after the word starts
    last = first
    while last < len(speech) and speech[last][0] < end:
        last += 1
    return first, last
