"""Subtitle stage: cues from Whisper's words, their renderings, sidecar names and safe writes.

Raw Whisper segments make poor subtitles (80-character lines, 20-second cues,
text that stays up long after the speech). `build_cues` regroups the words into
cues that follow broadcast practice (Netflix's timed-text style guide is the
reference): at most two balanced lines of 42 columns, 0.8 to 7 seconds on
screen, at most 20 characters per second, a two-frame gap between cues, breaks
at punctuation and pauses. The renderers turn cues into SRT, WebVTT, plain text
and JSON; `sidecar_path` and `existing_subtitles` speak the file naming that
Jellyfin, Plex and Emby read; `write_sidecar` publishes a file atomically
without ever clobbering a subtitle the user put there.

This module imports nothing from the daemon but `daemon.datatypes`, and nothing
heavy (no whisper, no torch).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal

from daemon.datatypes import MEDIA_EXTENSIONS, Cue, Segment, Transcript, Word

__all__ = [
    "RENDERERS",
    "SUBTITLE_EXTENSIONS",
    "CueRules",
    "NamingRules",
    "Renderer",
    "build_cues",
    "existing_subtitles",
    "file_sha256",
    "language_tag",
    "render_json",
    "render_srt",
    "render_txt",
    "render_vtt",
    "sidecar_path",
    "write_sidecar",
]


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CueRules:
    """How cues are cut and timed; the defaults follow Netflix's English timed-text guide.

    Lengths are display columns: a CJK or Hangul character takes two, so 42
    columns hold 21 of them (Netflix asks 16 for Japanese and Chinese) and 20
    columns per second read as 10 characters per second (Netflix: 9 for
    Chinese, 12 for Korean). Combining marks take none.
    """

    max_line_chars: int = 42  # columns per line
    max_lines: int = 2
    min_duration: float = 0.8  # seconds on screen, when the next cue leaves room (Netflix: 5/6 s)
    max_duration: float = 7.0  # seconds on screen
    max_cps: float = 20.0  # reading speed: columns per second, spaces included
    min_gap: float = 0.08  # seconds between consecutive cues (two frames at 24 fps)
    # Seconds a cue stays after its last word ends; reading speed and
    # min_duration may extend it further into silence, never into the next cue.
    linger: float = 0.5

    def __post_init__(self) -> None:
        if self.max_line_chars < 1 or self.max_lines < 1:
            raise ValueError("max_line_chars and max_lines must be at least 1")
        if not 0 < self.min_duration <= self.max_duration:
            raise ValueError("need 0 < min_duration <= max_duration")
        if self.max_cps <= 0 or self.min_gap < 0 or self.linger < 0:
            raise ValueError("max_cps must be positive; min_gap and linger must not be negative")


LangCode = Literal["iso639-1", "iso639-2"]


@dataclass(frozen=True)
class NamingRules:
    """How sidecar files are named.

    `name_template`, when set, is a path relative to the video's folder with
    the placeholders {stem}, {lang}, {flags} (e.g. ".sdh.forced" or "") and
    {ext}, e.g. "Subs/{stem}.{lang}{flags}.{ext}". It must contain {ext} (or
    the formats would overwrite each other) and must stay inside the folder.
    """

    lang_code: LangCode = "iso639-1"
    sdh: bool = False
    forced: bool = False
    name_template: str | None = None

    def __post_init__(self) -> None:
        if self.lang_code not in ("iso639-1", "iso639-2"):
            raise ValueError(f"lang_code must be 'iso639-1' or 'iso639-2', not {self.lang_code!r}")
        if self.name_template is not None:
            _check_template(self.name_template)


# ---------------------------------------------------------------------------
# Scripts and widths
# ---------------------------------------------------------------------------

# Scripts written without spaces between words. CJK ideographs and kana can be
# broken between any two characters; the South-East Asian scripts cannot (a
# Thai word broken in two is a misspelling), so they are only cut by character
# when a run is too long for a line.
_CJK_RANGES = (
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x2FA1F),  # CJK extensions B to F, compatibility supplement
)
_CJK_PUNCTUATION_RANGES = ((0x3000, 0x303F), (0xFF00, 0xFF65))
_HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))
_SOUTHEAST_ASIAN_RANGES = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
)
_UNSPACED_LANGUAGES = frozenset({"ja", "zh", "yue", "th", "lo", "km", "my", "bo"})

# Thai and Lao vowels written before the consonant they follow in speech; a
# break right after one would strand it.
_LEADING_VOWELS = frozenset(chr(c) for c in (*range(0x0E40, 0x0E45), *range(0x0EC0, 0x0EC5)))

_SENTENCE_END = frozenset(".!?…。！？．؟")
_CLAUSE_END = frozenset(",;:—–、，；：،؛")
_PHRASE_END = _SENTENCE_END | _CLAUSE_END
# Punctuation that belongs to the preceding character and must never start a line.
_CLOSING = frozenset(".,!?;:…)]}»”’。、，．！？；：」』）】〉》〕］｝،؛؟")
_OPENING = frozenset("([{«“‘¿¡「『（【〈《〔［｛")
_QUOTES_AND_BRACKETS = "\"'”’»)]}」』）】〉》〕］｝"

# English words a line or cue should not end on ("the | house"), and words a
# new line reads well starting with. Other languages simply get no hint.
_WEAK_ENDINGS = frozenset(
    "a an the to of and or but in on at for with from by as my your his her its our their this that"
    " these those i we you he she they is are was were be not if so".split()
)
_GOOD_STARTS = frozenset("and but or because which who when where while if so then to that".split())


def _in_ranges(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in ranges)


def _is_cjk(ch: str) -> bool:
    return _in_ranges(ch, _CJK_RANGES)


def _is_hangul(ch: str) -> bool:
    return _in_ranges(ch, _HANGUL_RANGES)


def _is_southeast_asian(ch: str) -> bool:
    return _in_ranges(ch, _SOUTHEAST_ASIAN_RANGES)


def _is_unspaced(ch: str, hangul_unspaced: bool) -> bool:
    """Given a character, return True if it belongs to text written without spaces."""
    return (
        _is_cjk(ch)
        or _is_southeast_asian(ch)
        or _in_ranges(ch, _CJK_PUNCTUATION_RANGES)
        or (hangul_unspaced and _is_hangul(ch))
    )


@functools.lru_cache(maxsize=4096)
def _char_width(ch: str) -> int:
    """Given a character, return the columns it takes: 0 for marks, 2 for wide East Asian, else 1."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(_char_width(ch) for ch in text)


def _graphemes(text: str) -> list[str]:
    """Given text, return its user-perceived characters (base plus marks, joined emoji)."""
    clusters: list[str] = []
    for ch in text:
        joins = clusters and (
            _char_width(ch) == 0 or clusters[-1].endswith("\u200d") or clusters[-1][-1] in _LEADING_VOWELS
        )
        if joins:
            clusters[-1] += ch
        else:
            clusters.append(ch)
    return clusters


# ---------------------------------------------------------------------------
# Tokens: words (or characters) with times, the unit cues are built from
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    start: float
    end: float
    text: str  # no surrounding whitespace
    space_before: bool  # separated from the previous token by a space
    segment: int  # index of the segment it came from
    width: int


@dataclass(frozen=True)
class _Script:
    """How the transcript is written, as far as cutting it goes."""

    hangul_unspaced: bool  # Korean written without spaces: cut it by character like CJK


def _detect_script(segments: Sequence[Segment], language: str | None) -> _Script:
    """Given segments and an optional language code, return how their text is written.

    Korean normally puts spaces between words; only Hangul text without any
    (from `language` being a spaceless language, or seen in the text) is cut
    by character. Everything else follows from each character's script.
    """
    code = None if language is None else language.lower()
    if code == "ko":
        return _Script(hangul_unspaced=False)
    if code in _UNSPACED_LANGUAGES:
        return _Script(hangul_unspaced=True)
    letters = [ch for segment in segments for ch in segment.text if ch.isalpha()]
    hangul = sum(1 for ch in letters if _is_hangul(ch))
    inner_spaces = any(" " in segment.text.strip() for segment in segments)
    return _Script(hangul_unspaced=bool(letters) and hangul * 2 >= len(letters) and not inner_spaces)


def _split_chunk(chunk: str, per_char: Callable[[str], bool]) -> list[str]:
    """Given a run of text without whitespace, return the pieces a line may break between.

    Characters for which `per_char` is true become pieces of their own; other
    runs (Latin words inside Japanese, digits) stay whole. Closing punctuation
    sticks to the piece before it and opening punctuation to the one after,
    so no line starts with "。" or ends with "「".
    """
    pieces: list[str] = []
    previous_cut = False
    for cluster in _graphemes(chunk):
        cut = per_char(cluster[0])
        if not pieces:
            pieces.append(cluster)
        elif cluster[0] in _CLOSING or all(ch in _OPENING for ch in pieces[-1]):
            pieces[-1] += cluster
            continue  # punctuation does not change whether the run is cuttable
        elif cut or previous_cut:
            pieces.append(cluster)
        else:
            pieces[-1] += cluster
        previous_cut = cut
    return pieces


def _pieces(text: str, script: _Script) -> list[tuple[str, bool]]:
    """Given text, return (piece, space_before) pairs: words, or characters of CJK text."""
    result: list[tuple[str, bool]] = []
    for match in re.finditer(r"\S+", text):
        spaced = match.start() > 0
        for i, piece in enumerate(_split_chunk(match.group(), lambda ch: _splits_per_char(ch, script))):
            result.append((piece, spaced and i == 0))
    return result


def _splits_per_char(ch: str, script: _Script) -> bool:
    return _is_cjk(ch) or (script.hangul_unspaced and _is_hangul(ch))


def _spread(pieces: Sequence[tuple[str, bool]], start: float, end: float, segment: int) -> list[_Token]:
    """Given pieces of text and a time span, return tokens sharing the span by width."""
    weights = [max(_width(text), 1) for text, _ in pieces]
    total = sum(weights)
    span = max(end - start, 0.0)
    tokens: list[_Token] = []
    done = 0
    for (text, spaced), weight in zip(pieces, weights, strict=True):
        t0 = start + span * done / total
        done += weight
        tokens.append(_Token(t0, start + span * done / total, text, spaced, segment, _width(text)))
    return tokens


def _word_tokens(word: Word, segment: int, rules: CueRules) -> list[_Token]:
    """Given a Whisper word, return it as one token (cut by character if unspaced and too long)."""
    text = " ".join(word.text.split())
    if not text:
        return []
    token = _Token(word.start, word.end, text, word.text[:1].isspace(), segment, _width(text))
    return _cut_long_token(token, rules)


def _segment_tokens(segment: Segment, index: int, script: _Script, rules: CueRules) -> list[_Token]:
    """Given a segment, return its tokens; without words, its text spread over its time."""
    if segment.words:
        return [t for word in segment.words for t in _word_tokens(word, index, rules)]
    pieces = _pieces(segment.text, script)
    tokens = _spread(pieces, segment.start, segment.end, index)
    # A run too long for any line is only cut when the script allows it.
    return [piece for token in tokens for piece in _cut_long_token(token, rules)]


def _cut_long_token(token: _Token, rules: CueRules) -> list[_Token]:
    """Given a token, return it, or its characters if it is unspaced text too wide for a line.

    A long word in a spaced language stays whole on a line of its own.
    """
    if token.width <= rules.max_line_chars or not any(_is_unspaced(ch, True) for ch in token.text):
        return [token]
    pieces = _split_chunk(token.text, lambda ch: _is_unspaced(ch, True))
    pairs = [(p, token.space_before and i == 0) for i, p in enumerate(pieces)]
    return _spread(pairs, token.start, token.end, token.segment)


def _joins_with_space(before: str, after: str, script: _Script) -> bool:
    """Given the texts either side of a segment boundary, return True if a space separates them.

    Decided by the characters, not by Whisper's leading space, so "。" and
    "次" never get one between them while "OK." and "Bye." do.
    """
    hangul = script.hangul_unspaced
    return not (_is_unspaced(before[-1], hangul) or _is_unspaced(after[0], hangul))


def _tokens(segments: Sequence[Segment], script: _Script, rules: CueRules) -> list[_Token]:
    """Given segments, return all their tokens in order, with times made non-decreasing."""
    tokens: list[_Token] = []
    for index, segment in enumerate(segments):
        own = _segment_tokens(segment, index, script, rules)
        if own and tokens:
            first = own[0]
            own[0] = replace(first, space_before=_joins_with_space(tokens[-1].text, first.text, script))
        tokens.extend(own)
    return _monotonic(tokens)


def _monotonic(tokens: Sequence[_Token]) -> list[_Token]:
    """Given tokens, return them with starts never going back and ends never before starts."""
    result: list[_Token] = []
    floor = 0.0
    for token in tokens:
        start = max(token.start, floor)
        result.append(replace(token, start=start, end=max(token.end, start)))
        floor = start
    return result


# ---------------------------------------------------------------------------
# Hallucinated loops
# ---------------------------------------------------------------------------

# Whisper's decoder sometimes loops, emitting the same sentence over and over
# (typically over music or silence). Three identical sentences in a row are
# taken as such a loop and kept once; two are kept, since people do say
# "No. No." The cost: a real "Go! Go! Go!" also becomes "Go!".
_LOOP_REPEATS = 3


def _sentences(tokens: Sequence[_Token]) -> list[list[_Token]]:
    """Given tokens, return them grouped in sentences (ended by punctuation or a segment's end)."""
    units: list[list[_Token]] = []
    for i, token in enumerate(tokens):
        if not units or _ends_sentence(tokens[i - 1].text) or tokens[i - 1].segment != token.segment:
            units.append([])
        units[-1].append(token)
    return units


def _sentence_key(unit: Sequence[_Token]) -> str:
    text = "".join(t.text for t in unit)
    letters = "".join(ch for ch in text.casefold() if ch.isalnum())
    return letters or text


def _without_loops(tokens: Sequence[_Token]) -> list[_Token]:
    """Given tokens, return them with runs of a repeated sentence collapsed to its first copy."""
    units = _sentences(tokens)
    kept: list[_Token] = []
    i = 0
    while i < len(units):
        key = _sentence_key(units[i])
        j = i + 1
        while j < len(units) and _sentence_key(units[j]) == key:
            j += 1
        for unit in units[i : i + 1] if j - i >= _LOOP_REPEATS else units[i:j]:
            kept.extend(unit)
        i = j
    return kept


# ---------------------------------------------------------------------------
# Grouping tokens into cues
# ---------------------------------------------------------------------------

# A silence this long always ends a cue: text left up through it would hang
# over nobody speaking.
_HARD_PAUSE = 1.0
# Gaps shorter than this between cues are closed to min_gap, so the text does
# not flicker off and on (Netflix's "chaining" rule).
_CHAIN_GAP = 0.5
# The shortest a cue is shown when the next one follows too closely for
# min_duration; the next cue then starts a little after its first word.
_MIN_FLASH = 0.25


def _stripped_tail(text: str) -> str:
    return text.rstrip(_QUOTES_AND_BRACKETS)


def _ends_sentence(text: str) -> bool:
    tail = _stripped_tail(text)
    return bool(tail) and tail[-1] in _SENTENCE_END


def _break_cost(left: _Token, right: _Token) -> float:
    """Given the tokens either side of a possible break, return how bad breaking there reads (0 best)."""
    if right.text[0] in _CLOSING:
        return 10.0
    tail = _stripped_tail(left.text)
    if tail and tail[-1] in _SENTENCE_END:
        cost = 0.0
    elif tail and tail[-1] in _CLAUSE_END:
        cost = 0.3
    else:
        cost = 1.0
        if left.text.casefold() in _WEAK_ENDINGS:
            cost += 0.6
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


def _chunks(tokens: Sequence[_Token]) -> Iterator[tuple[int, int]]:
    """Given tokens, yield (start, stop) index ranges separated by long silences."""
    start = 0
    for i in range(1, len(tokens)):
        if tokens[i].start - tokens[i - 1].end >= _HARD_PAUSE and tokens[i].text[0] not in _CLOSING:
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
                sentences += _ends_sentence(run.tokens[j - 2].text)
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


def _cue_lines(run: _Run, i: int, j: int, count: int, rules: CueRules) -> tuple[str, ...]:
    """Given a cue's token range and line count, return its lines of text."""
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
    share their segment's time by text width. Text written without spaces
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


# ---------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------


def _timestamp(seconds: float, separator: str) -> str:
    """Given seconds, return HH:MM:SS<sep>mmm, rounded to the millisecond (never 1000 ms)."""
    total = max(0, _ms(seconds))
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def render_srt(cues: Sequence[Cue]) -> str:
    """Given cues, return them as SubRip text: numbered from 1, a blank line between cues."""
    blocks = [
        f"{n}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n" + "\n".join(c.lines) + "\n"
        for n, c in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(cues: Sequence[Cue]) -> str:
    """Given cues, return them as a WebVTT file with the text escaped."""
    blocks = [
        f"\n{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n"
        + "\n".join(_vtt_escape(line) for line in c.lines)
        + "\n"
        for c in cues
    ]
    return "WEBVTT\n" + "".join(blocks)


def _cue_text(cue: Cue) -> str:
    """Given a cue, return its lines as one line, with no space added inside unspaced text."""
    text = cue.lines[0] if cue.lines else ""
    for line in cue.lines[1:]:
        glue = "" if _is_unspaced(text[-1], True) and _is_unspaced(line[0], True) else " "
        text += glue + line
    return text


def render_txt(cues: Sequence[Cue]) -> str:
    """Given cues, return plain text: one cue per line, no times."""
    return "".join(_cue_text(c) + "\n" for c in cues)


def _seconds(value: float) -> float:
    return round(value, 3)


def render_json(transcript: Transcript, cues: Sequence[Cue]) -> str:
    """Given a transcript and its cues, return JSON with the language, segments, words and cues."""
    document = {
        "language": transcript.language,
        "language_probability": transcript.language_probability,
        "duration": _seconds(transcript.duration),
        "segments": [
            {
                "start": _seconds(s.start),
                "end": _seconds(s.end),
                "text": s.text,
                "words": [
                    {"start": _seconds(w.start), "end": _seconds(w.end), "text": w.text,
                     "probability": round(w.probability, 4)}
                    for w in s.words
                ],
            }
            for s in transcript.segments
        ],
        "cues": [{"start": _seconds(c.start), "end": _seconds(c.end), "lines": list(c.lines)} for c in cues],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


Renderer = Callable[[Sequence[Cue], Transcript], str]


def _srt_renderer(cues: Sequence[Cue], transcript: Transcript) -> str:
    return render_srt(cues)


def _vtt_renderer(cues: Sequence[Cue], transcript: Transcript) -> str:
    return render_vtt(cues)


def _txt_renderer(cues: Sequence[Cue], transcript: Transcript) -> str:
    return render_txt(cues)


def _json_renderer(cues: Sequence[Cue], transcript: Transcript) -> str:
    return render_json(transcript, cues)


# Output format name (also the file extension) -> renderer taking (cues, transcript).
RENDERERS: Mapping[str, Renderer] = MappingProxyType(
    {"srt": _srt_renderer, "vtt": _vtt_renderer, "txt": _txt_renderer, "json": _json_renderer}
)


# ---------------------------------------------------------------------------
# Languages and sidecar names
# ---------------------------------------------------------------------------

# Every Whisper language code -> (tag for iso639-1 naming, ISO 639-2/B, ISO
# 639-2/T, English names). Plex documents ISO 639-1 or 639-2/B in file names;
# Jellyfin's language table (iso6392.txt) lists the B code first and accepts
# B, T, 639-1 and the English name, so the B code ("ger", "fre", "chi") is the
# one both servers read. Three codes need a choice:
#   jw  -> jv / jav: Whisper's "jw" is an old non-standard code for Javanese.
#   haw -> haw: Hawaiian has no 639-1 code; both servers read the 3-letter one.
#   yue -> zh / chi: ISO 639-2 has no code for Cantonese (it is under the
#          Chinese macrolanguage); "yue" alone shows as an unknown language.
_LANGUAGE_ROWS = """
en en eng eng english | zh zh chi zho chinese,mandarin | de de ger deu german
es es spa spa spanish,castilian | ru ru rus rus russian | ko ko kor kor korean
fr fr fre fra french | ja ja jpn jpn japanese | pt pt por por portuguese
tr tr tur tur turkish | pl pl pol pol polish | ca ca cat cat catalan,valencian
nl nl dut nld dutch,flemish | ar ar ara ara arabic | sv sv swe swe swedish
it it ita ita italian | id id ind ind indonesian | hi hi hin hin hindi
fi fi fin fin finnish | vi vi vie vie vietnamese | he he heb heb hebrew
uk uk ukr ukr ukrainian | el el gre ell greek | ms ms may msa malay
cs cs cze ces czech | ro ro rum ron romanian,moldavian,moldovan | da da dan dan danish
hu hu hun hun hungarian | ta ta tam tam tamil | no no nor nor norwegian
th th tha tha thai | ur ur urd urd urdu | hr hr hrv hrv croatian
bg bg bul bul bulgarian | lt lt lit lit lithuanian | la la lat lat latin
mi mi mao mri maori | ml ml mal mal malayalam | cy cy wel cym welsh
sk sk slo slk slovak | te te tel tel telugu | fa fa per fas persian,farsi
lv lv lav lav latvian | bn bn ben ben bengali | sr sr srp srp serbian
az az aze aze azerbaijani | sl sl slv slv slovenian | kn kn kan kan kannada
et et est est estonian | mk mk mac mkd macedonian | br br bre bre breton
eu eu baq eus basque | is is ice isl icelandic | hy hy arm hye armenian
ne ne nep nep nepali | mn mn mon mon mongolian | bs bs bos bos bosnian
kk kk kaz kaz kazakh | sq sq alb sqi albanian | sw sw swa swa swahili
gl gl glg glg galician | mr mr mar mar marathi | pa pa pan pan punjabi,panjabi
si si sin sin sinhala,sinhalese | km km khm khm khmer | sn sn sna sna shona
yo yo yor yor yoruba | so so som som somali | af af afr afr afrikaans
oc oc oci oci occitan | ka ka geo kat georgian | be be bel bel belarusian
tg tg tgk tgk tajik | sd sd snd snd sindhi | gu gu guj guj gujarati
am am amh amh amharic | yi yi yid yid yiddish | lo lo lao lao lao
uz uz uzb uzb uzbek | fo fo fao fao faroese | ht ht hat hat haitian_creole,haitian
ps ps pus pus pashto,pushto | tk tk tuk tuk turkmen | nn nn nno nno nynorsk
mt mt mlt mlt maltese | sa sa san san sanskrit | lb lb ltz ltz luxembourgish,letzeburgesch
my my bur mya myanmar,burmese | bo bo tib bod tibetan | tl tl tgl tgl tagalog
mg mg mlg mlg malagasy | as as asm asm assamese | tt tt tat tat tatar
haw haw haw haw hawaiian | ln ln lin lin lingala | ha ha hau hau hausa
ba ba bak bak bashkir | jw jv jav jav javanese | su su sun sun sundanese
yue zh chi zho cantonese
"""

# Other spellings seen in file names, mapped to the Whisper code.
_EXTRA_ALIASES = {"nb": "no", "nob": "no", "bokmal": "no", "fil": "tl", "filipino": "tl", "iw": "he",
                  "scc": "sr", "pob": "pt"}


@dataclass(frozen=True)
class _Language:
    code: str  # Whisper's code
    iso1: str  # what iso639-1 naming writes
    iso2b: str
    iso2t: str
    names: tuple[str, ...]


def _parse_languages(rows: str) -> dict[str, _Language]:
    table: dict[str, _Language] = {}
    for row in rows.replace("\n", "|").split("|"):
        if row.strip():
            code, iso1, iso2b, iso2t, names = row.split()
            spelled = tuple(name.replace("_", " ") for name in names.split(","))
            table[code] = _Language(code, iso1, iso2b, iso2t, spelled)
    return table


_LANGUAGES = _parse_languages(_LANGUAGE_ROWS)


def _alias_table() -> dict[str, str]:
    aliases: dict[str, str] = {}
    # yue last-wins would claim "zh"/"chi"; it only adds its own spellings.
    for lang in _LANGUAGES.values():
        spellings = (lang.code, *lang.names) if lang.code == "yue" else (
            lang.code, lang.iso1, lang.iso2b, lang.iso2t, *lang.names)
        for spelling in spellings:
            aliases.setdefault(spelling, lang.code)
    return {**aliases, **_EXTRA_ALIASES}


_ALIASES = _alias_table()


def _whisper_code(language: str) -> str | None:
    """Given a language code or English name (any case, region ignored), return Whisper's code."""
    key = language.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    base = re.split(r"[-_]", key, maxsplit=1)[0]  # "pt-BR", "en_US", "zh-Hant"
    return _ALIASES.get(base)


def language_tag(language: str, lang_code: LangCode = "iso639-1") -> str:
    """Given a language (Whisper code, ISO 639 code or English name), return its file-name tag.

    Raise ValueError if the language is unknown.
    """
    code = _whisper_code(language)
    if code is None:
        raise ValueError(f"unknown language {language!r}: expected a Whisper language code such as 'en'")
    lang = _LANGUAGES[code]
    return lang.iso2b if lang_code == "iso639-2" else lang.iso1


def _check_relative(rendered: str, template: str) -> PurePosixPath:
    """Given a rendered template, return it as a relative path; raise ValueError if it leaves the folder."""
    path = PurePosixPath(rendered)
    if not rendered or path.is_absolute() or ".." in path.parts or rendered.endswith("/"):
        raise ValueError(
            f"name_template {template!r} must name a file inside the video's folder "
            f"(relative, no '..'), got {rendered!r}"
        )
    return path


def _check_template(template: str) -> None:
    """Given a name template, return None if usable; raise ValueError saying what is wrong."""
    try:
        sample = template.format(stem="Movie", lang="en", flags=".sdh", ext="srt")
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"name_template {template!r} is not valid ({exc!r}); the placeholders are {{stem}}, {{lang}}, "
            "{flags} and {ext}"
        ) from exc
    if "{ext}" not in template:
        raise ValueError(f"name_template {template!r} must contain {{ext}}, or formats overwrite each other")
    _check_relative(sample, template)


def sidecar_path(source: Path, language: str, fmt: str, naming: NamingRules) -> Path:
    """Given a video, a language and a format, return the sidecar's path.

    Without a template: beside the video, "Movie (2009).en.srt", with flags
    as Jellyfin and Plex read them: "Movie (2009).en.sdh.srt",
    "Movie (2009).en.forced.srt". Raise ValueError if the language or format is
    unknown, or if the template leads outside the video's folder or onto the
    video itself.
    """
    ext = fmt.lower().lstrip(".")
    if not re.fullmatch(r"[a-z0-9]+", ext):
        raise ValueError(f"bad subtitle format {fmt!r}")
    lang = language_tag(language, naming.lang_code)
    flags = (".sdh" if naming.sdh else "") + (".forced" if naming.forced else "")
    if naming.name_template is None:
        return source.with_name(f"{source.stem}.{lang}{flags}.{ext}")
    _check_template(naming.name_template)
    rendered = naming.name_template.format(stem=source.stem, lang=lang, flags=flags, ext=ext)
    path = source.parent / _check_relative(rendered, naming.name_template)
    if path == source:
        raise ValueError(f"name_template {naming.name_template!r} names the video itself: {source}")
    return path


# ---------------------------------------------------------------------------
# Existing sidecars
# ---------------------------------------------------------------------------

SUBTITLE_EXTENSIONS = frozenset({".srt", ".vtt", ".ass", ".ssa", ".sub", ".idx", ".smi", ".sup"})
# Flags Jellyfin and Plex read between the language and the extension.
_FLAGS = frozenset({"default", "forced", "foreign", "sdh", "cc", "hi"})
# Media files that may share a folder (and a name prefix) with the video: their
# sidecars are theirs, not ours ("Movie.mkv" vs "Movie.Extended.mkv").
# Disc images count too: a player shows sidecars for them, though subwatch never transcribes one.
_MEDIA_EXTENSIONS = frozenset(f".{extension}" for extension in MEDIA_EXTENSIONS | {"iso"})


def _sidecar_language(tags: Sequence[str]) -> str | None:
    """Given the dot-separated tags between a video's name and a sidecar's extension, return its language.

    The last tag that names a language wins (as in Jellyfin). "hi" is Hindi
    alone but the hearing-impaired flag after another language ("en.hi").
    """
    for i in range(len(tags) - 1, -1, -1):
        tag = tags[i].lower()
        if tag in _FLAGS and (tag != "hi" or any(_whisper_code(t) for t in tags[:i])):
            continue
        code = _whisper_code(tag)
        if code is not None:
            return code
    return None


def _same_language(a: str, b: str) -> bool:
    return a == b or _LANGUAGES[a].iso2b == _LANGUAGES[b].iso2b  # zh and yue are both "chi"


def existing_subtitles(source: Path, language: str | None) -> list[Path]:
    """Given a video, return the subtitle sidecars beside it that a media server shows for `language`.

    A sidecar is "<video stem>[.tags].<subtitle ext>" (stem and extension
    compared without case). One without a language tag counts for every
    language; `language=None` returns every sidecar of the video. Raise
    ValueError if `language` is unknown, OSError if the folder cannot be read.
    """
    wanted = None if language is None else _whisper_code(language)
    if language is not None and wanted is None:
        raise ValueError(f"unknown language {language!r}")
    stem = source.stem.casefold()
    entries = [p for p in source.parent.iterdir() if not p.name.startswith(".")]
    # Longer names of other media here, e.g. "movie.extended" beside "movie".
    others = [p.stem.casefold() for p in entries
              if p.suffix.lower() in _MEDIA_EXTENSIONS and p.stem.casefold().startswith(stem + ".")]
    found: list[Path] = []
    for path in entries:
        if path.suffix.lower() not in SUBTITLE_EXTENSIONS or not path.is_file():
            continue
        base = path.name[: -len(path.suffix)]
        folded = base.casefold()
        if folded != stem and not folded.startswith(stem + "."):
            continue
        if any(folded == other or folded.startswith(other + ".") for other in others):
            continue
        found_language = _sidecar_language(base[len(stem) + 1 :].split(".")) if folded != stem else None
        if wanted is None or found_language is None or _same_language(found_language, wanted):
            found.append(path)
    return sorted(found)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

# errnos with which os.link says "this filesystem has no hard links" (FAT,
# exFAT, some SMB and FUSE mounts), as opposed to a real failure.
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
)


def file_sha256(path: Path) -> str:
    """Given a file, return the hex SHA-256 of its bytes. Raise OSError if it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _new_file_mode() -> int:
    """Return the mode a new file gets under this process's umask (mkstemp makes 0600 files).

    The media server usually runs as another user and must be able to read the
    sidecar. The umask is read from /proc, since os.umask() would have to
    change it for every thread to read it.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    return 0o644


def _fsync_folder(folder: Path) -> None:
    # Makes the new name durable; some filesystems cannot open or sync a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# A sidecar is written to ".subwatch-<pid>-<random>.tmp" beside it first: the pid tells whose it is.
TEMP_PREFIX = ".subwatch-"
_TEMP_NAME = re.compile(r"\.subwatch-(\d+)-[a-z0-9_]+\.tmp")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Given a folder, delete the sidecar temp files in it whose writer is no longer running (a
    process killed mid-write leaves one) and return them. One of this process counts as stale too:
    call it before this process writes any sidecar there. Files that cannot be read or deleted are
    left as they are."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            found = _TEMP_NAME.fullmatch(entry.name)
            if found is None or (int(found[1]) != os.getpid() and _running(int(found[1]))):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process
        return True
    return True


def _publish_new(tmp: str, path: Path) -> bool:
    """Given a finished temp file, give it the name `path` if nothing has it; return False if taken.

    The temp name may remain (as a second link); the caller removes it.
    """
    try:
        os.link(tmp, path)  # fails if the name exists, however recent
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(path):  # no hard links: check, then rename (a small race remains)
            return False
        os.replace(tmp, path)
    return True


def write_sidecar(path: Path, text: str, may_replace: Callable[[Path], bool]) -> bool:
    """Given a sidecar path and its text, write it atomically and return True if it was written.

    The text goes to a hidden temp file in the same folder (media servers skip
    it), is synced, then published: under a new name without clobbering a file
    that appeared meanwhile, over an existing file only if `may_replace(path)`
    says so (the caller knows which sidecars it wrote). Return False, leaving
    the existing file untouched, otherwise. The temp file never outlives the
    call, unless the process dies during it (see `remove_stale_temps`). Raise
    OSError naming `path` if the folder cannot be written.
    """
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            mode = os.stat(path).st_mode & 0o7777  # a replaced file keeps its permissions
        except FileNotFoundError:
            mode = _new_file_mode()
        os.chmod(tmp, mode)
        if _publish_new(tmp, path):
            written = True
        elif may_replace(path):
            os.replace(tmp, path)
            written = True
        else:
            written = False
        if written:
            _fsync_folder(folder)
        return written
    finally:
        # Whatever happened: the temp link after os.link, the unused file, or
        # the half-written one after an error. Gone already after os.replace.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
