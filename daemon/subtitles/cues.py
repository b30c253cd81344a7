"""Cues from tokens: Whisper's words regrouped the way broadcast subtitles are cut and timed.

Raw Whisper segments make poor subtitles (80-character lines, 20-second cues,
text that stays up long after the speech). `build_cues` regroups the words into
cues that follow broadcast practice (Netflix's timed-text style guide is the
reference): at most two balanced lines of 42 columns, 0.8 to 7 seconds on
screen, at most 20 characters per second, a two-frame gap between cues, breaks
at punctuation and pauses. A sentence's end followed by a pause of 0.3 s or more
always ends a cue, so the next sentence (often another speaker) is never read
before it is said; two short lines of dialogue that must share a cue are set
on two lines, each after a dash. Loops (a sentence said again and again) are
kept once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from daemon.datatypes import Cue, Segment
from daemon.loops import collapse_repeats
from daemon.subtitles.rules import CueRules
from daemon.subtitles.script import (
    _CLAUSE_END,
    _CLOSING,
    _GOOD_STARTS,
    _PHRASE_END,
    _QUOTES_AND_BRACKETS,
    _WEAK_ENDINGS,
    _is_abbreviation,
    _width,
    ends_sentence,
)
from daemon.subtitles.tokens import _detect_script, _Token, _tokens

# ---------------------------------------------------------------------------
# Hallucinated loops
# ---------------------------------------------------------------------------


def _sentences(tokens: Sequence[_Token]) -> list[list[_Token]]:
    """Given tokens, return them grouped in sentences (ended by punctuation or a segment's end)."""
    units: list[list[_Token]] = []
    for i, token in enumerate(tokens):
        if not units or ends_sentence(tokens[i - 1].text) or tokens[i - 1].segment != token.segment:
            units.append([])
        units[-1].append(token)
    return units


def _without_loops(tokens: Sequence[_Token]) -> list[_Token]:
    """Given tokens, return them with runs of a repeated sentence collapsed to its first copy
    (daemon.loops: the transcribe stage's rule, applied here inside segments too)."""
    units = collapse_repeats(_sentences(tokens), text=lambda unit: "".join(t.text for t in unit))
    return [token for unit in units for token in unit]


# ---------------------------------------------------------------------------
# Grouping tokens into cues
# ---------------------------------------------------------------------------

# A silence this long always ends a cue: text left up through it would hang
# over nobody speaking.
_HARD_PAUSE = 1.0
# Gaps shorter than this between cues are closed to min_gap, so the text does
# not flicker off and on (Netflix's "chaining" rule).
_CHAIN_GAP = 0.5
# A sentence's end followed by a silence this long always ends a cue: the
# next sentence (often another speaker) must not be read before it is said.
_SENTENCE_PAUSE = 0.3
# What starts each line of a cue shared by two short lines of dialogue.
_DIALOGUE_DASH = "- "
# The shortest a cue is shown when the next one follows too closely for
# min_duration; the next cue then starts a little after its first word.
_MIN_FLASH = 0.25


def _stripped_tail(text: str) -> str:
    return text.rstrip(_QUOTES_AND_BRACKETS)


def _break_cost(left: _Token, right: _Token) -> float:
    """Given the tokens either side of a possible break, return how bad breaking there reads (0 best)."""
    if right.text[0] in _CLOSING:
        return 10.0
    tail = _stripped_tail(left.text)
    if ends_sentence(left.text):
        cost = 0.0
    elif tail and tail[-1] in _CLAUSE_END:
        cost = 0.3
    else:
        cost = 1.0
        if left.text.casefold() in _WEAK_ENDINGS or _is_abbreviation(tail):
            cost += 0.6  # "the | house", "Mr. | Smith"
        if right.text.casefold() in _GOOD_STARTS:
            cost -= 0.4
        right_tail = _stripped_tail(right.text)
        if right_tail and right_tail[-1] in _PHRASE_END:
            cost += 0.5  # would leave a phrase's last word dangling: "going | on."
    pause = right.start - left.end
    if pause >= 0.5:
        cost = min(cost, 0.2)
    elif pause >= 0.25:
        cost = min(cost, 0.5)
    if right.segment != left.segment:
        cost = min(cost, 0.4)
    return cost


def _hard_break(left: _Token, right: _Token) -> bool:
    """Given two consecutive tokens, return True if no cue may hold both: a long silence,
    or a sentence's end and a pause of _SENTENCE_PAUSE or more (across segments too)."""
    if right.text[0] in _CLOSING:
        return False  # punctuation stays with the word it closes
    pause = right.start - left.end
    return pause >= _HARD_PAUSE or (pause >= _SENTENCE_PAUSE and ends_sentence(left.text))


def _chunks(tokens: Sequence[_Token]) -> Iterator[tuple[int, int]]:
    """Given tokens, yield (start, stop) index ranges separated by hard breaks; cues never span them."""
    start = 0
    for i in range(1, len(tokens)):
        if _hard_break(tokens[i - 1], tokens[i]):
            yield start, i
            start = i
    if tokens:
        yield start, len(tokens)


@dataclass(frozen=True)
class _Run:
    """All tokens of a transcript, with what cutting them needs worked out once."""

    tokens: tuple[_Token, ...]
    prefix: tuple[int, ...]  # prefix[k]: columns of tokens[:k] set on one line
    breaks: tuple[float, ...]  # breaks[k]: cost of a break before tokens[k] (k >= 1)

    def width(self, a: int, b: int) -> int:
        """Given a range of tokens, return the columns tokens[a:b] take on one line."""
        return self.prefix[b] - self.prefix[a] - (1 if self.tokens[a].space_before else 0)

    def text(self, a: int, b: int) -> str:
        """Given a range of tokens, return tokens[a:b] as one line of text."""
        parts = [self.tokens[a].text]
        parts.extend((" " if t.space_before else "") + t.text for t in self.tokens[a + 1 : b])
        return "".join(parts)


def _run(tokens: Sequence[_Token]) -> _Run:
    prefix = [0]
    for token in tokens:
        prefix.append(prefix[-1] + token.width + (1 if token.space_before else 0))
    breaks = [0.0] + [_break_cost(tokens[k - 1], tokens[k]) for k in range(1, len(tokens))]
    return _Run(tuple(tokens), tuple(prefix), tuple(breaks))


@dataclass(frozen=True)
class _Plan:
    """How one cue's tokens are set in lines."""

    cost: float
    cuts: tuple[int, ...]  # indices of the tokens that start the second, third... line


def _plan_lines(run: _Run, i: int, j: int, count: int, rules: CueRules) -> _Plan:
    """Given cue tokens[i:j] that need `count` lines, return the best way to break them.

    Lines are balanced in width, broken after punctuation or at pauses rather
    than after "the", and a word is never left alone on a line when another
    break would do. A word wider than a line is set alone on its own line.
    """
    if count == 1:
        return _Plan(0.0, ())
    limit = rules.max_line_chars
    ideal = run.width(i, j) / count

    def line_cost(a: int, b: int, previous: int | None) -> float:
        width = run.width(a, b)
        if width > limit and b - a > 1:
            return math.inf
        cost = 4.0 * ((width - ideal) / limit) ** 2
        if b - a == 1 and j - i > count and run.tokens[a].width <= limit:
            cost += 5.0  # a word stranded on its own line
        if previous is not None:
            cost += run.breaks[a]
            cost += 0.05 if width < run.width(previous, a) else 0.0  # prefer a bottom-heavy pyramid
        return cost

    # levels[k][b] = (cost, start of line k) for the best setting of tokens[i:b] on k lines
    levels: list[dict[int, tuple[float, int]]] = [{i: (0.0, i)}]
    for k in range(1, count + 1):
        ends = [j] if k == count else range(i + k, j - (count - k) + 1)
        level: dict[int, tuple[float, int]] = {}
        for b in ends:
            for a, (base, previous) in levels[-1].items():
                if a < b:
                    cost = base + line_cost(a, b, previous if k > 1 else None)
                    if cost < level.get(b, (math.inf, 0))[0]:
                        level[b] = (cost, a)
        levels.append({b: entry for b, entry in level.items() if entry[0] < math.inf})
    if j not in levels[-1]:
        return _Plan(math.inf, ())
    cuts: list[int] = []
    b = j
    for k in range(count, 1, -1):
        b = levels[k][b][1]
        cuts.append(b)
    return _Plan(levels[-1][j][0], tuple(reversed(cuts)))


def _cue_cost(run: _Run, i: int, j: int, chunk: tuple[int, int], width: int, rules: CueRules,
              media: float | None) -> float:
    """Given a candidate cue tokens[i:j] of `width` columns, return its cost (lower is better)."""
    cost = 1.0  # every cue costs something, so full cues win over many small ones
    if j < chunk[1]:
        cost += 1.5 * run.breaks[j]
    if j - i == 1 and chunk[1] - chunk[0] > 1:
        cost += 1.0  # a lone word flashing by
    capacity = rules.max_line_chars * rules.max_lines
    cost += 0.4 * max(0.0, 1.0 - width / (0.5 * capacity))
    following = run.tokens[j].start if j < len(run.tokens) else media
    window = math.inf if following is None else following - rules.min_gap - run.tokens[i].start
    shown = min(rules.max_duration, window)
    needed = max(rules.min_duration, width / rules.max_cps)
    if shown < needed:
        cost += 4.0 * (needed - shown) / needed  # too fast to read, or too short to see
    return cost


def _group_chunk(run: _Run, chunk: tuple[int, int], rules: CueRules,
                 media: float | None) -> list[tuple[int, int, int]]:
    """Given a chunk of tokens, return its cues as (start, stop, line count), chosen at least cost."""
    lo, hi = chunk
    best: list[tuple[float, int, int]] = [(math.inf, 0, 0)] * (hi - lo + 1)  # (cost, start, lines)
    best[0] = (0.0, lo, 0)
    for i in range(lo, hi):
        base = best[i - lo][0]
        if base == math.inf:
            continue
        # Fill lines greedily while the cue grows: that gives the fewest lines it needs.
        lines, line_start, last_end, sentences = 1, i, run.tokens[i].end, 0
        for j in range(i + 1, hi + 1):
            last_end = max(last_end, run.tokens[j - 1].end)
            if j > i + 1:
                sentences += ends_sentence(run.tokens[j - 2].text)
                if run.width(line_start, j) > rules.max_line_chars:
                    lines, line_start = lines + 1, j - 1
                if lines > rules.max_lines or last_end - run.tokens[i].start > rules.max_duration:
                    break
            width = run.width(i, j)
            cost = base + _cue_cost(run, i, j, chunk, width, rules, media)
            # Two sentences share a cue well; more read like a list (often several speakers).
            cost += 0.8 * max(0, sentences - 1)
            if lines > 1:
                cost += _plan_lines(run, i, j, lines, rules).cost
            if cost < best[j - lo][0]:
                best[j - lo] = (cost, i, lines)
    cues: list[tuple[int, int, int]] = []
    j = hi
    while j > lo:
        _, i, lines = best[j - lo]
        cues.append((i, j, lines))
        j = i
    return cues[::-1]


def _said_too_fast(run: _Run, a: int, b: int, rules: CueRules) -> bool:
    """Given tokens[a:b], return True if they are said in less time than reading them alone needs."""
    span = max(t.end for t in run.tokens[a:b]) - run.tokens[a].start
    return span < max(rules.min_duration, run.width(a, b) / rules.max_cps)


def _dialogue_lines(run: _Run, i: int, j: int, rules: CueRules) -> tuple[str, str] | None:
    """Given cue tokens[i:j], return its two sentences as dashed lines if it is a short exchange, else None.

    A short exchange is exactly two sentences from different segments (Whisper
    starts a segment at a turn of speech; one segment is taken as one speaker),
    less than _SENTENCE_PAUSE apart, each of two words or more, each said too
    fast to be read as a cue of its own, each fitting one line with its dash,
    and rules allowing two lines. Broadcast subtitles set such a pair as
    "- Are you coming?" over "- In a minute.".
    """
    ends = [k for k in range(i + 1, j) if ends_sentence(run.tokens[k - 1].text)]
    if rules.max_lines < 2 or len(ends) != 1 or not ends_sentence(run.tokens[j - 1].text):
        return None
    k = ends[0]
    left, right = run.tokens[k - 1], run.tokens[k]
    if left.segment == right.segment or right.start - left.end >= _SENTENCE_PAUSE:
        return None
    room = rules.max_line_chars - _width(_DIALOGUE_DASH)
    for a, b in ((i, k), (k, j)):
        if b - a < 2 or run.width(a, b) > room or not _said_too_fast(run, a, b, rules):
            return None
    return _DIALOGUE_DASH + run.text(i, k), _DIALOGUE_DASH + run.text(k, j)


def _cue_lines(run: _Run, i: int, j: int, count: int, rules: CueRules) -> tuple[str, ...]:
    """Given a cue's token range and line count, return its lines of text (a short exchange dashed)."""
    dialogue = _dialogue_lines(run, i, j, rules)
    if dialogue is not None:
        return dialogue
    plan = _plan_lines(run, i, j, count, rules)
    cuts = plan.cuts if plan.cost < math.inf else ()
    bounds = [i, *cuts, j]
    return tuple(run.text(a, b) for a, b in zip(bounds, bounds[1:], strict=False))



# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _cue_end(start: int, speech_end: int, width: int, next_start: int | None, rules: CueRules) -> int:
    """Given a cue's start, its last word's end and the next cue's start (ms), return its end (ms)."""
    reading = math.ceil(width / rules.max_cps * 1000)
    target = max(speech_end + _ms(rules.linger), start + _ms(rules.min_duration), start + reading)
    end = min(target, start + _ms(rules.max_duration))
    if next_start is not None:
        limit = next_start - _ms(rules.min_gap)
        if limit - end < _ms(_CHAIN_GAP):
            end = min(limit, start + _ms(rules.max_duration))
        end = max(end, start + _ms(_MIN_FLASH))
    return end


def _timed_cues(run: _Run, ranges: Sequence[tuple[int, int, int]], rules: CueRules,
                media: float | None) -> list[Cue]:
    """Given cue token ranges in order, return the cues timed to the speech and to each other."""
    media_ms = None if media is None else _ms(media)
    cues: list[Cue] = []
    previous_end: int | None = None
    for k, (i, j, count) in enumerate(ranges):
        start = max(_ms(run.tokens[i].start), 0)
        if previous_end is not None:
            start = max(start, previous_end + _ms(rules.min_gap))
        if media_ms is not None and start >= media_ms:
            break
        next_start = _ms(run.tokens[ranges[k + 1][0]].start) if k + 1 < len(ranges) else None
        lines = _cue_lines(run, i, j, count, rules)
        speech_end = _ms(max(t.end for t in run.tokens[i:j]))
        end = _cue_end(start, speech_end, sum(_width(line) for line in lines), next_start, rules)
        if media_ms is not None:
            end = min(end, media_ms)
        if end > start:
            cues.append(Cue(start / 1000, end / 1000, lines))
            previous_end = end
    return cues


def build_cues(
    segments: Sequence[Segment],
    rules: CueRules,
    media_duration: float | None = None,
    language: str | None = None,
) -> list[Cue]:
    """Given Whisper segments, return subtitle cues that follow `rules`.

    Cues start when their first word starts and end shortly after their last
    word (`rules.linger`), later if reading speed or min_duration needs it and
    the silence allows, never into the next cue. Segments without word timings
    share their segment's time by text width. No cue holds a sentence's end
    and the next word when 0.3 s or more of silence separates them; a cue of
    two short sentences from different segments is set as dashed dialogue. Text written without spaces
    (Japanese, Chinese, Thai...) is recognised by its characters, cut by
    character and never given spaces; `language` (a Whisper code) only settles
    whether Hangul without spaces is cut like CJK ("ko" keeps it in words,
    otherwise the text decides). Repeated-line loops are kept once. With
    `media_duration` (seconds; None or 0 = unknown), nothing is shown past the
    end of the media: text that starts there is dropped and cues are cut at
    the end.
    """
    media = media_duration if media_duration is not None and media_duration > 0 else None
    script = _detect_script(segments, language)
    tokens = _without_loops(_tokens(segments, script, rules))
    if media is not None:
        tokens = [replace(t, end=min(t.end, media)) for t in tokens if t.start < media]
    run = _run(tokens)
    ranges = [cue for chunk in _chunks(tokens) for cue in _group_chunk(run, chunk, rules, media)]
    return _timed_cues(run, ranges, rules, media)

