"""whisper.decode's contract on the batched engine, the reference call of the engine tests.

The daemon only calls `engine.transcribe_chunks` (quality guards, fallback,
segments); the tests compare the engine with `whisper.decode`, which decodes
each window once at its own options' temperature and returns no segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from whisper.decoding import DecodingOptions
from whisper.model import Whisper

from daemon.engine import ChunkDecoding, ChunkRequest, EngineOptions, transcribe_chunks


def decode(
    model: Whisper,
    mel: torch.Tensor,
    options: DecodingOptions | Sequence[DecodingOptions],
    batch_size: int | None = None,
) -> list[ChunkDecoding]:
    """Given (n, n_mels, 3000) log-mels and options (one for all or one per window), decode each window.

    The same as `whisper.decode(model, mel[i], options[i])` for every i, in
    batches: one pass per temperature (no guards, so no fallback), no segments.
    """
    per_window = [options] * len(mel) if isinstance(options, DecodingOptions) else list(options)
    by_temperature: dict[float, list[int]] = {}
    for index, window_options in enumerate(per_window):
        by_temperature.setdefault(window_options.temperature, []).append(index)
    results: list[ChunkDecoding | None] = [None] * len(per_window)
    for temperature, indices in by_temperature.items():
        one_pass = EngineOptions(
            temperatures=(temperature,),
            compression_ratio_threshold=None,
            logprob_threshold=None,
            no_speech_threshold=None,
            batch_size=batch_size,
        )
        requests = [ChunkRequest(per_window[i], mel=mel[i]) for i in indices]
        for index, result in zip(indices, transcribe_chunks(model, requests, one_pass), strict=True):
            results[index] = replace(result, segments=())
    return results  # type: ignore[return-value]
