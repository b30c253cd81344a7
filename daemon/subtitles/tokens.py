"""Tokens: words (or characters) with times, the unit cues are built from.

Whisper's words become tokens; a segment without word timings shares its time
among its words by width; text written without spaces (CJK) is cut by
character, and a run too long for any line where the script allows it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from daemon.datatypes import Segment, Word
from daemon.subtitles.script import (
    _CLOSING,
    _OPENING,
    _UNSPACED_LANGUAGES,
    _graphemes,
    _is_cjk,
    _is_hangul,
    _is_unspaced,
    _width,
)

if TYPE_CHECKING:
    from daemon.subtitles.rules import CueRules


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

