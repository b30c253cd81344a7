"""The model cast for decoding, and the way in: log-mel spectrograms, the encoder, language probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from daemon.engine.jobs import N_SAMPLES, ChunkRequest

if TYPE_CHECKING:
    import numpy as np
    import torch
    from whisper.model import Whisper


def compute_dtype(model: Whisper) -> torch.dtype:
    """Return the dtype decoding runs in: fp16 on a GPU, fp32 on the CPU."""
    import torch

    return torch.float16 if model.device.type == "cuda" else torch.float32


def prepare_model(model: Whisper) -> Whisper:
    """Given a loaded model, cast it for decoding once and return it.

    On a GPU the linear, convolution and embedding weights become fp16 in place
    (whisper's layers otherwise cast every weight on every call); layer norms
    stay fp32, as whisper computes them. whisper's own functions still work on
    the result with fp16 input. On the CPU nothing changes.
    """
    import torch
    from torch import nn

    from daemon.engine.kinds import is_ct2

    if is_ct2(model) or model.device.type != "cuda" or getattr(model, "_subwatch_fp16", False):
        return model
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Embedding):
            module.half()
    model.decoder.positional_embedding.data = model.decoder.positional_embedding.data.half()
    model._subwatch_fp16 = True  # type: ignore[attr-defined]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return model


def log_mel(samples: Sequence[np.ndarray], n_mels: int, device: torch.device | str) -> torch.Tensor:
    """Given up to 30 s of 16 kHz samples per chunk, return their (n, n_mels, 3000) log-mel spectrograms.

    The same values as whisper's log_mel_spectrogram on each chunk padded to 30 s,
    computed for all chunks at once on `device`.
    """
    import numpy as np
    import torch
    from whisper.audio import HOP_LENGTH, N_FFT, mel_filters

    batch = np.zeros((len(samples), N_SAMPLES), dtype=np.float32)
    for row, chunk in enumerate(samples):
        piece = np.asarray(chunk, dtype=np.float32)[:N_SAMPLES]
        batch[row, : len(piece)] = piece
    audio = torch.from_numpy(batch).to(device)
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    log_spec = torch.clamp(mel_filters(audio.device, n_mels) @ magnitudes, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


def encode(model: Whisper, mel: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Given (n, n_mels, 3000) log-mels, return the encoder's (n, 1500, n_state) output, in batches."""
    import torch

    from daemon.engine.kinds import is_ct2

    if is_ct2(model):
        return model.encode(mel)  # type: ignore[attr-defined]
    dtype = compute_dtype(model)
    with torch.inference_mode():
        parts = [
            model.encoder(mel[i : i + batch_size].to(model.device, dtype))
            for i in range(0, len(mel), batch_size)
        ]
    return torch.cat(parts)


def encode_requests(model: Whisper, requests: Sequence[ChunkRequest], batch_size: int) -> torch.Tensor:
    """Given requests, return the encoder output of each one's window, (n, 1500, n_state).

    A request's own features are used as they are; the others are encoded in
    batches of `batch_size`, from their log-mel or else from their samples.
    """
    import torch

    device, dtype = model.device, compute_dtype(model)
    features: list[torch.Tensor | None] = [
        None if request.features is None else request.features.to(device, dtype) for request in requests
    ]
    todo = [i for i, f in enumerate(features) if f is None]
    for start in range(0, len(todo), batch_size):
        part = [requests[i] for i in todo[start : start + batch_size]]
        mels = [None if r.mel is None else torch.as_tensor(r.mel).to(device) for r in part]
        missing = [n for n, m in enumerate(mels) if m is None]
        if missing:
            computed = log_mel([_samples(part[n]) for n in missing], model.dims.n_mels, device)
            for n, mel in zip(missing, computed, strict=True):
                mels[n] = mel
        encoded = model.encoder(torch.stack(mels).to(dtype))  # type: ignore[arg-type]
        for offset, i in enumerate(todo[start : start + batch_size]):
            features[i] = encoded[offset]
    return torch.stack(features)  # type: ignore[arg-type]


def _samples(request: ChunkRequest) -> Any:
    if request.samples is None:
        raise ValueError("a ChunkRequest needs samples, mel or features")
    return request.samples


def language_probabilities(model: Whisper, features: torch.Tensor) -> list[dict[str, float]]:
    """Given encoder outputs, return each window's probability for every language Whisper knows."""
    import torch
    from whisper.decoding import detect_language
    from whisper.tokenizer import get_tokenizer

    from daemon.engine.kinds import is_ct2

    if is_ct2(model):
        return model.language_probabilities(features)  # type: ignore[attr-defined]
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
    with torch.inference_mode():
        _, probs = detect_language(model, features, tokenizer)
    return probs


def vote_language(distributions: Sequence[dict[str, float]], weights: Sequence[float]) -> tuple[str, float]:
    """Given language distributions of several windows and their weights, return (language, probability).

    Each window votes with its whole distribution, weighted (by seconds of
    speech): one confused window cannot outvote the rest, and the probability
    returned is the weighted mean of the winner's probability.
    """
    total: dict[str, float] = {}
    for dist, weight in zip(distributions, weights, strict=True):
        for code, p in dist.items():
            total[code] = total.get(code, 0.0) + weight * p
    winner = max(total, key=total.get)  # type: ignore[arg-type]
    return winner, total[winner] / max(sum(weights), 1e-9)
