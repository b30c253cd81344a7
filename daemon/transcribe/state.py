"""What the stage carries for each file between its steps, and each decoded window."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.datatypes import Audio
from daemon.engine import ChunkDecoding
from daemon.transcribe.options import TranscribeOptions
from daemon.transcribe.vad import SpeechChunk


@dataclass
class File:
    """One item on its way through the stage."""

    audio: Audio
    options: TranscribeOptions
    chunks: list[SpeechChunk]
    faint: tuple[tuple[float, float], ...]  # where speech may be: what must end up with words
    language: str | None = None
    probability: float | None = None


@dataclass(frozen=True)
class Decoded:
    """One decoded window of a file; `retry` is the stretch a coverage round decoded it for, `replaces`
    the line a recheck read again with more confidence (its words there replace all others)."""

    chunk: SpeechChunk
    result: ChunkDecoding
    retry: tuple[float, float] | None = None
    replaces: tuple[float, float] | None = None


# A window to decode: (file index, the window, the uncovered stretch it retries or None).
Work = tuple[int, SpeechChunk, "tuple[float, float] | None"]
