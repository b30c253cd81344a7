"""Decoding loops: a line Whisper repeats many times in a row is kept once."""

from __future__ import annotations

from daemon.datatypes import Segment


def collapse_repeats(segments: list[Segment], max_repeats: int) -> list[Segment]:
    """Given segments in order, return them with each run of more than `max_repeats` equal lines kept once.

    Whisper stuck in a loop writes the same line again and again ("Thank
    you." twenty times); two in a row ("No. No.") are left alone.
    """
    result: list[Segment] = []
    run: list[Segment] = []
    for segment in [*segments, None]:
        if segment is not None and run and _same_line(segment.text, run[-1].text):
            run.append(segment)
            continue
        result += run if len(run) <= max_repeats else run[:1]
        run = [segment] if segment is not None else []
    return result


def _same_line(a: str, b: str) -> bool:
    def norm(text: str) -> str:
        return "".join(ch for ch in text.casefold() if ch.isalnum())

    return norm(a) == norm(b) and bool(norm(a))
