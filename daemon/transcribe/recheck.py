"""A second look at the lines the model was unsure of: each decoded again alone, the surer reading kept.

A window packs several lines of speech back to back, and what comes before a line
in its window can lead Whisper astray on it: in the long test file base wrote
"As white pollution in their heyday would not the kind of problem" for a line it
reads word for word when the line starts its own window. Such a reading shows in
the model's own confidence: every line of that file read with a mean word
log-probability under -0.25 was misread, and no line above it was. Those lines
alone are decoded again, each in a window of its own, and the reading with the
higher mean word log-probability is kept, so a recheck can only replace words
with words the model is surer of. Lines read with confidence cost nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from daemon.datatypes import Word
from daemon.transcribe import coverage
from daemon.transcribe.placement import placed
from daemon.transcribe.state import Decoded, File, Work
from daemon.transcribe.vad import SpeechChunk

Interval = tuple[float, float]


def recheck_round(files: list[File], decoded: list[list[Decoded]]) -> list[Work]:
    """Return a window for each line of each file that the first round read with little confidence.

    A line that already had a window to itself is not decoded again: the same
    audio alone would read the same.
    """
    work: list[Work] = []
    for f, file in enumerate(files):
        options = file.options.recheck
        if options.below_logprob is None:
            continue
        words = words_of(file, decoded[f])
        speech = coverage.merge(file.faint)
        for chunk in file.chunks:
            for line in _lines(chunk, options.join_s):
                if chunk.spans == (line,):
                    continue
                mine = _inside(words, line)
                if len(mine) >= options.min_words and mean_logprob(mine) < options.below_logprob:
                    window = _padded(line, speech, options.pad_s, file.audio.duration)
                    regions = tuple(r for r in chunk.regions if coverage.inside(r, line))
                    work.append((f, SpeechChunk((window,), regions or (line,)), window))
    return work


def better(file: File, earlier: Sequence[Word], work: Work, again: Decoded) -> Decoded | None:
    """Return the recheck of a line as a replacement when it reads the line with clearly more
    confidence than the earlier rounds' words (`words_of` them, placed once per file) did (by
    RecheckOptions.min_gain); None keeps the earlier reading."""
    _, _, line = work
    assert line is not None
    if again.result.silent:
        return None
    new = _inside(words_of(file, [again]), line)
    old = _inside(earlier, line)
    if not new or mean_logprob(new) < mean_logprob(old) + file.options.recheck.min_gain:
        return None
    return Decoded(again.chunk, again.result, replaces=line)


def mean_logprob(words: Sequence[Word]) -> float:
    """The mean log-probability of `words` (-inf for none)."""
    if not words:
        return -math.inf
    return sum(math.log(max(w.probability, 1e-6)) for w in words) / len(words)


def _lines(chunk: SpeechChunk, join_s: float) -> list[Interval]:
    """The chunk's speech regions, those closer than `join_s` joined, each within its span."""
    lines: list[list[float]] = []
    for start, end in chunk.regions:
        if lines and start - lines[-1][1] < join_s and _same_span(chunk, lines[-1][0], end):
            lines[-1][1] = max(lines[-1][1], end)
        else:
            lines.append([start, end])
    return [(a, b) for a, b in lines]


def _padded(line: Interval, speech: Sequence[Interval], pad: float, duration: float) -> Interval:
    """The line widened by `pad` either side, stopping short of any other speech and the file's ends."""
    start, end = max(line[0] - pad, 0.0), min(line[1] + pad, duration)
    for a, b in speech:
        if b <= line[0] or a >= line[1]:  # speech outside the line bounds its window
            if b <= line[0]:
                start = max(start, b)
            else:
                end = min(end, a)
    return start, end


def _same_span(chunk: SpeechChunk, a: float, b: float) -> bool:
    return any(start <= a and b <= end for start, end in chunk.spans)


def words_of(file: File, decoded: list[Decoded]) -> list[Word]:
    """Every word of `decoded` placed on the file's timeline."""
    return [w for segment in placed(file, decoded) for w in segment.words]


def _inside(words: Sequence[Word], line: Interval) -> list[Word]:
    return [w for w in words if coverage.inside((w.start, w.end), line)]
