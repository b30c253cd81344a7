"""Where each file's speech is (found for all files together), and which windows vote on its language."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from daemon.datatypes import Audio
from daemon.transcribe.options import TranscribeOptions
from daemon.transcribe.vad import SpeechChunk, SpeechMap, VadOptions, map_speech_many

log = logging.getLogger("subwatch.transcribe")  # one logger for the stage: its name is in journal lines


def speech_maps(items: Sequence[tuple[Audio, TranscribeOptions]]) -> list[SpeechMap]:
    """Return the speech map of each item's audio, finding speech in all files together."""
    maps: list[SpeechMap | None] = [None] * len(items)
    groups: dict[VadOptions, list[int]] = {}
    for index, (_, options) in enumerate(items):
        groups.setdefault(options.vad, []).append(index)
    for vad_options, indices in groups.items():
        found_all = map_speech_many([items[i][0] for i in indices], vad_options)
        for i, found in zip(indices, found_all, strict=True):
            maps[i] = found
            seconds = sum(c.duration for c in found.chunks)
            log.debug("%d speech chunk(s), %.1f of %.1f s", len(found.chunks), seconds, items[i][0].duration)
    return maps  # type: ignore[return-value]


def voter_chunks(chunks: list[SpeechChunk], count: int) -> list[int]:
    """Return indices of up to `count` chunks spread through the file: the wordiest of each stretch.

    A film's first 30 s are often music or a studio logo; chunks from its
    whole length outvote one odd stretch.
    """
    count = max(1, min(count, len(chunks)))
    bounds = [round(i * len(chunks) / count) for i in range(count + 1)]
    return [
        max(range(lo, hi), key=lambda i: speech_seconds(chunks[i]))
        for lo, hi in zip(bounds, bounds[1:], strict=False)
        if hi > lo
    ]


def speech_seconds(chunk: SpeechChunk) -> float:
    return sum(end - start for start, end in chunk.regions) or chunk.duration
