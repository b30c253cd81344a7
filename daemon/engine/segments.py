"""A window's segments: cut at timestamp pairs, then given their aligned words, as whisper.transcribe does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from daemon.datatypes import Segment, Word
from daemon.engine.jobs import SECONDS_PER_TOKEN

if TYPE_CHECKING:
    from whisper.tokenizer import Tokenizer

PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def split_segments(
    tokens: list[int], tokenizer: Tokenizer, duration: float
) -> list[tuple[Segment, list[int]]]:
    """Given one window's sampled tokens, return its segments and their text tokens.

    Cut at timestamp pairs as whisper does. Text after the last timestamp
    (whisper would decode it again in its next window; a chunk has no next
    window) becomes a segment ending with the chunk. Times are seconds from
    the window's start; segments without text are left out.
    """
    begin, eot = tokenizer.timestamp_begin, tokenizer.eot

    def time(token: int) -> float:
        return min((token - begin) * SECONDS_PER_TOKEN, duration)

    segments: list[tuple[Segment, list[int]]] = []
    start = 0.0
    text: list[int] = []
    opened = False
    for token in tokens:
        if token >= begin:
            if text:
                segments.append((Segment(start, max(time(token), start), tokenizer.decode(text)), text))
                text = []
                opened = False
            else:
                start, opened = time(token), True
        elif token < eot:
            if not text and not opened and segments:
                start = segments[-1][0].end
            text.append(token)
    if text:
        segments.append((Segment(start, max(duration, start), tokenizer.decode(text)), text))
    return [(segment, text) for segment, text in segments if segment.text.strip()]


def assign_words(segments: list[tuple[Segment, list[int]]], alignment: list[Any]) -> list[Segment]:
    """Given a window's segments and its word alignment, return the segments with their words.

    whisper.timing.add_word_timestamps: long words at sentence and segment
    boundaries are shortened and segment bounds follow their words.
    """
    import numpy as np
    from whisper.timing import merge_punctuations

    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) > 0 else 0.0
    longest = median * 2
    if len(durations) > 0:
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in ".。!！?？":
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in ".。!！?？":
                    alignment[i].start = alignment[i].end - longest
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    result, index, last_speech = [], 0, 0.0
    for segment, tokens in segments:
        saved, words = 0, []
        while index < len(alignment) and saved < len(tokens):
            timing = alignment[index]
            if timing.word:
                words.append(
                    [
                        timing.word,
                        round(float(timing.start), 2),
                        round(float(timing.end), 2),
                        float(timing.probability),
                    ]
                )
            saved += len(timing.tokens)
            index += 1
        start, end = segment.start, segment.end
        if words:
            first, second = words[0], words[1] if len(words) > 1 else None
            if first[2] - last_speech > median * 4 and (
                first[2] - first[1] > longest or (second is not None and second[2] - first[1] > longest * 2)
            ):
                if second is not None and second[2] - second[1] > longest:
                    boundary = max(second[2] / 2, second[2] - longest)
                    first[2] = second[1] = boundary
                first[1] = max(0.0, first[2] - longest)
            if start < first[2] and start - 0.5 > first[1]:
                first[1] = max(0.0, min(first[2] - median, start))
            else:
                start = first[1]
            if end > words[-1][1] and end + 0.5 < words[-1][2]:
                words[-1][2] = max(words[-1][1] + median, end)
            else:
                end = words[-1][2]
            last_speech = end
        result.append(Segment(start, end, segment.text, tuple(Word(w[1], w[2], w[0], w[3]) for w in words)))
    return result



def timed(segments: Iterable[Segment]) -> tuple[Segment, ...]:
    """Drop segments of no duration, as whisper.transcribe does: text timed at one instant is not speech."""
    return tuple(segment for segment in segments if segment.end > segment.start)

