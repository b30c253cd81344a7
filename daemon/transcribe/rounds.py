"""The windows of each round and what the engine is asked for them.

The first round decodes every speech window; each coverage round decodes again
the speech that no word covers yet, in windows not tried before.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from daemon.engine import ChunkRequest, EngineOptions
from daemon.transcribe import coverage
from daemon.transcribe.options import TranscribeOptions
from daemon.transcribe.placement import uncovered, word_times
from daemon.transcribe.state import Decoded, File, Work
from daemon.transcribe.vad import SpeechChunk

if TYPE_CHECKING:
    from whisper.model import Whisper

log = logging.getLogger("subwatch.transcribe")  # one logger for the stage: its name is in journal lines


def coverage_round(
    files: list[File], decoded: list[list[Decoded]], tried: list[list[tuple[float, float]]]
) -> list[Work]:
    """Return the windows of the next coverage round: each file's uncovered speech, in windows not tried.

    Each window starts where the words before its stretch stopped (see
    coverage.retry_window) and is decoded alone, so the model meets that speech
    at the window's start, with nothing before it to end the window on.
    """
    work: list[Work] = []
    for f, file in enumerate(files):
        if not file.options.coverage.max_rounds:
            continue
        words = word_times(file, decoded[f])
        stretches = uncovered(file, words)
        windows = coverage.merge(coverage.retry_window(s, words, file.options.coverage) for s in stretches)
        windows = coverage.untried(windows, tried[f])
        for window in windows:
            tried[f].append(window)
            for piece in coverage.split_long(window, file.options.vad.max_chunk_s):
                work.append((f, SpeechChunk((piece,), (piece,)), piece))
        if windows:
            log.debug("no words over %.1f s of speech in %d stretch(es); decoding %s again",
                      coverage.total(stretches), len(stretches),
                      ", ".join(f"{a:.1f}-{b:.1f}" for a, b in windows[:8]))
    return work


def chunk_request(model: Whisper, file: File, chunk: SpeechChunk, features: Any) -> ChunkRequest:
    """Return the engine request for one chunk: its audio (or encoding) and the folder's wording."""
    from whisper.decoding import DecodingOptions

    options = file.options
    decoding = DecodingOptions(
        task=options.task,
        language=file.language,
        prompt=options.prompt,  # every chunk gets it, as <|startofprev|> text
        beam_size=options.beam_size,
        fp16=model.device.type == "cuda",
    )
    return ChunkRequest(
        decoding,
        samples=None if features is not None else chunk.samples(file.audio),
        features=features,
        duration=min(chunk.duration, 30.0),
        word_timestamps=options.word_timestamps,
    )


def engine_options_for(o: TranscribeOptions, memory_limit: int | None) -> EngineOptions:
    """The engine's share of a folder's options (its quality guards and batch size), and the model's
    card's memory limit."""
    return EngineOptions(
        temperatures=o.temperatures,
        compression_ratio_threshold=o.compression_ratio_threshold,
        logprob_threshold=o.logprob_threshold,
        no_speech_threshold=o.no_speech_threshold,
        batch_size=o.batch_size,
        memory_limit=memory_limit,
    )
