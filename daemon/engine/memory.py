"""How many chunks fit at once: the batch size from a GPU's free memory, within the byte limit passed in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from daemon.engine.jobs import N_FRAMES, EngineOptions

if TYPE_CHECKING:
    import torch
    from whisper.model import Whisper


def pick_batch_size(model: Whisper, group: int, options: EngineOptions) -> int:
    """Return how many chunks to decode at once: options.batch_size, or what GPU memory holds.

    On a GPU that is free memory, within options.memory_limit (see memory_available).
    """
    if options.batch_size:
        return max(1, options.batch_size)
    if model.device.type != "cuda":
        return 16
    dims = model.dims
    size = 2  # bytes per fp16 value
    per_chunk = (
        2 * dims.n_text_layer * dims.n_audio_ctx * dims.n_text_state * size  # cross-attention keys, values
        + group * 2 * dims.n_text_layer * dims.n_text_ctx * dims.n_text_state * size  # self-attention cache
        + group * dims.n_vocab * 4 * 6  # fp32 logits, log-probabilities and masks of one step
        + dims.n_mels * N_FRAMES * 4
    )
    # the encoder's activations for one admission batch, with headroom
    workspace = options.encoder_batch_size * dims.n_audio_ctx * dims.n_audio_state * size * 24
    fits = int((memory_available(model.device, options.memory_limit) * 0.85 - workspace) // per_chunk)
    return max(1, min(options.max_batch_size, fits))


def cuda_index(device: torch.device | str) -> int:
    """Given a CUDA device (`cuda`, `cuda:1`), return its index (`cuda` is the current device)."""
    import torch

    device = torch.device(device)
    return torch.cuda.current_device() if device.index is None else device.index


def memory_available(device: torch.device | str, limit: int | None) -> int:
    """Given a CUDA device and the bytes this process may use there (None: no limit), return how many
    bytes decoding may still allocate on it: free, and within the limit."""
    import torch

    index = cuda_index(device)
    free, _ = torch.cuda.mem_get_info(index)
    return usable_memory(free, limit, torch.cuda.memory_allocated(index))


def usable_memory(free: int, limit: int | None, allocated: int) -> int:
    """Given a card's free bytes, this process's limit there (None: none) and the bytes it holds, return
    the bytes it may still allocate: min(free, limit - allocated), never below 0."""
    if limit is None:
        return max(0, free)
    return max(0, min(free, limit - allocated))
