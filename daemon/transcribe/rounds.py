"""The windows of each round and what the engine is asked for them.

The first round decodes every speech window; each coverage round decodes again
the speech that no word covers yet, in windows not tried before.
"""

from __future__ import annotations

import logging
import math
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

# A retry window (a recheck's line, a coverage round's stretch) holds a few seconds of speech, and
# a 30 s encoder pass costs the same however little it holds: the CTranslate2 engine encodes a
# retry's speech and this much silence after it, in whole seconds. Measured on the long file
# (bench/RESULTS.md, issue #22): 5 s keeps its words; first-round windows stay 30 s, as encoding
# short clips short cost Portuguese 2.6 points of WER.
RETRY_ENCODER_PAD_S = 5.0


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


def chunk_request(
    model: Whisper, file: File, chunk: SpeechChunk, features: Any, retry: bool = False
) -> ChunkRequest:
    """Return the engine request for one chunk: its audio (or encoding) and the folder's wording;
    a retry's encoder reads its speech and RETRY_ENCODER_PAD_S of silence, not 30 s."""
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
        encoder_seconds=math.ceil(chunk.duration + RETRY_ENCODER_PAD_S) if retry else None,
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
