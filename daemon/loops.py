"""Whisper's decoding loops: when a line said again and again is a loop, kept once.

Whisper's decoder sometimes loops, emitting the same line over and over
(typically over music or silence: "Thank you." twenty times). Both the
transcribe stage (whole segments) and the subtitle stage (sentences inside
segments) drop such loops with this one rule, so a stored transcript and the
cues built from it agree on what a loop is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, TypeVar

__all__ = ["MAX_REPEATS", "collapse_repeats", "line_key"]

T = TypeVar("T")

# A line said twice in a row is speech ("No. No."); three times or more is taken as a loop
# and kept once. The cost: a real "Go! Go! Go!" also becomes "Go!".
MAX_REPEATS = 2

_text: Callable[[Any], str] = attrgetter("text")


def line_key(text: str) -> str:
    """Given a line, return what two lines must share to count as the same: their letters and
    digits, case folded ("No." and "no" match); a line with none ("♪", "...") as written."""
    letters = "".join(ch for ch in text.casefold() if ch.isalnum())
    return letters or "".join(text.split())


def collapse_repeats(items: Sequence[T], max_repeats: int = MAX_REPEATS,
                     text: Callable[[T], str] = _text) -> list[T]:
    """Given lines in order (segments, or anything `text` reads a line from), return them with each
    run of more than `max_repeats` equal lines (see `line_key`) kept once, as its first line."""
    result: list[T] = []
    i = 0
    while i < len(items):
        key = line_key(text(items[i]))
        j = i + 1
        while j < len(items) and line_key(text(items[j])) == key:
            j += 1
        result.extend(items[i : i + 1] if j - i > max_repeats else items[i:j])
        i = j
    return result
