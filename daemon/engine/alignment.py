"""Word timings: whisper's find_alignment, from the cross-attention of its alignment heads over the
keys and values still cached for finished chunks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.engine.jobs import N_FRAMES, SECONDS_PER_TOKEN, ChunkDecoding

if TYPE_CHECKING:
    import torch
    from whisper.tokenizer import Tokenizer

    from daemon.engine.batch import Batch
    from daemon.engine.decoder import Decoder


def align(
    decoder: Decoder, b: Batch, slots: list[int], results: list[ChunkDecoding], alignment_heads: torch.Tensor
) -> list[list[Any]]:
    """Given settled slots and their results, return each one's word timings (whisper's WordTiming).

    Every slot's aligned sequence runs through the decoder together, with
    attention on whisper's manual path so that the heads' scores can be read.
    """
    import torch

    eot = b.eot
    heads = alignment_heads.indices().T.tolist()
    capture: dict[int, list[int]] = {}
    for layer, head in heads:
        capture.setdefault(layer, []).append(head)
    sequences, prefixes = [], []
    for index, result in zip(slots, results, strict=True):
        job = b.slots[index].job
        tokenizer = job.config.tokenizer
        sot = list(job.start_tokens()[job.config.sot_index :])[: len(tokenizer.sot_sequence)]
        text = [t for t in result.tokens if t < eot]
        sequences.append([*sot, tokenizer.no_timestamps, *text, eot])
        prefixes.append(len(sot))
    width = max(map(len, sequences))
    tokens = torch.tensor([s + [eot] * (width - len(s)) for s in sequences], device=decoder.device)
    slot_index = torch.tensor(slots, device=decoder.device)
    hidden, scores = decoder.forward(b.cache, tokens, slot_index, capture=capture)
    logits = decoder.logits(hidden)
    timings = []
    for n, (index, result) in enumerate(zip(slots, results, strict=True)):
        job = b.slots[index].job
        text = [t for t in result.tokens if t < eot]
        qk = torch.cat([scores[layer][n : n + 1, capture[layer].index(head)] for layer, head in heads])
        timings.append(
            word_timings(
                job.config.tokenizer,
                text,
                qk[:, : len(sequences[n])],
                logits[n, prefixes[n] : len(sequences[n])],
                prefixes[n],
                min(N_FRAMES, round(job.request.duration * 100)),
            )
        )
    return timings


def word_timings(
    tokenizer: Tokenizer,
    text_tokens: list[int],
    qk: torch.Tensor,
    logits: torch.Tensor,
    prefix: int,
    num_frames: int,
    medfilt_width: int = 7,
) -> list[Any]:
    """The second half of whisper.timing.find_alignment, given one chunk's alignment-head scores.

    qk: (heads, tokens, 1500) cross-attention scores over the aligned sequence;
    logits: the decoder's logits from <|notimestamps|> on (each predicts the next token).
    """
    import numpy as np
    import torch
    from whisper.timing import dtw, median_filter

    probs = logits[: len(text_tokens), : tokenizer.eot].float().softmax(dim=-1).cpu()
    token_probs = probs[np.arange(len(text_tokens)), text_tokens].tolist()
    weights = qk[:, :, : num_frames // 2].float().cpu().softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std, medfilt_width)
    matrix = weights.mean(dim=0)[prefix:-1]
    text_indices, time_indices = dtw(-matrix)
    return words_from_path(tokenizer, text_tokens, text_indices, time_indices, token_probs)


def words_from_path(
    tokenizer: Tokenizer,
    text_tokens: list[int],
    text_indices: Any,
    time_indices: Any,
    token_probs: list[float],
) -> list[Any]:
    """The end of whisper's find_alignment: given the DTW path between text tokens and encoder positions
    (and each token's probability), return the WordTimings, a word starting where its first token's path
    jumps in.

    Both engines end here: the torch engine's path comes from whisper's dtw, CTranslate2's from its align.
    """
    import numpy as np
    from whisper.timing import WordTiming

    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = np.asarray(time_indices)[jumps] * SECONDS_PER_TOKEN
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    probabilities = [np.mean(token_probs[i:j]) for i, j in zip(boundaries[:-1], boundaries[1:], strict=True)]
    return [
        WordTiming(word, tokens, start, end, probability)
        for word, tokens, start, end, probability in zip(
            words, word_tokens, starts, ends, probabilities, strict=False
        )
    ]
