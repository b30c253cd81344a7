"""Coverage: which detected speech no decoded word covers, and the windows that decode it again.

Whisper sometimes ends a window early, or skips an utterance inside it: the
words it returned cover only part of the speech the window held, and nothing
ever decodes the rest. Speech detection says where speech is, so the gap is
visible: speech that no word (give or take `margin_s`) covers, in stretches
of at least `min_seconds`, is decoded again in windows of its own, from where
the words stopped, until every such stretch has words or has been tried alone.

Pure functions on (start, end) seconds of the file's timeline; the
transcription stage calls them between decoding rounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
    """

    min_seconds: float = 1.0
    margin_s: float = 0.5
    max_rounds: int = 3


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


def untried(stretches: Sequence[Interval], tried: Sequence[Interval]) -> list[Interval]:
    """Return the stretches worth decoding again: those not (nearly) equal to one already decoded alone.

    A stretch inside a tried one and at least 80 % of its length is the same
    audio again; decoding it once more would give the same nothing. A smaller
    remainder (the words stopped part way) is new: it starts where they stopped.
    """
    def seen(stretch: Interval) -> bool:
        length = stretch[1] - stretch[0]
        return any(
            a - 0.05 <= stretch[0] and stretch[1] <= b + 0.05 and length >= 0.8 * (b - a) for a, b in tried
        )

    return [stretch for stretch in stretches if not seen(stretch)]


def split_long(stretch: Interval, max_seconds: float) -> list[Interval]:
    """Cut a stretch into equal pieces of at most `max_seconds` (Whisper's window is 30 s)."""
    start, end = stretch
    pieces = max(1, -int(-(end - start) // max_seconds))
    step = (end - start) / pieces
    return [(start + i * step, start + (i + 1) * step if i < pieces - 1 else end) for i in range(pieces)]


def inside(word: Interval, stretch: Interval, slack: float = 0.2) -> bool:
    """True if the word's middle lies in the stretch (with `slack` seconds either side)."""
    middle = (word[0] + word[1]) / 2
    return stretch[0] - slack <= middle <= stretch[1] + slack
