"""A settled slot's result: its best sequence ranked as whisper ranks it, and whisper's quality guards."""

from __future__ import annotations

from typing import TYPE_CHECKING

from daemon.engine.beam import beam_candidates
from daemon.engine.jobs import ChunkDecoding, EngineOptions

if TYPE_CHECKING:
    from daemon.engine.batch import Batch


def best_result(b: Batch, index: int) -> ChunkDecoding:
    """Return the best sequence of settled slot `index`, as whisper's DecodingTask.run would."""
    import torch
    from whisper.decoding import MaximumLikelihoodRanker
    from whisper.utils import compression_ratio

    g, eot = b.group, b.eot
    slot = b.slots[index]
    job, tokenizer = slot.job, slot.job.config.tokenizer
    if slot.beam:
        candidates, sums = beam_candidates(b, index)
    else:
        r = slice(index * g, index * g + g)
        counts = b.n_sampled[r].tolist()
        out = b.out[r, : max(counts)].tolist()
        candidates = [seq[:n] for seq, n in zip(out, counts, strict=True)]
        candidates = [seq[: seq.index(eot)] if eot in seq else seq for seq in candidates]
        sums = b.sum_logprob[r].tolist()
    ranker = MaximumLikelihoodRanker(job.config.options.length_penalty)
    best = (
        int(ranker.rank([[torch.tensor(c) for c in candidates]], [sums])[0]) if len(candidates) > 1 else 0
    )
    tokens, total = candidates[best], sums[best]
    text = tokenizer.decode(tokens).strip()
    language = job.language or job.config.options.language or "en"
    return ChunkDecoding(
        tokens=tuple(tokens),
        text=text,
        language=language,
        language_probs=job.language_probs,
        avg_logprob=total / (len(tokens) + 1),
        no_speech_prob=slot.no_speech_prob,
        temperature=job.temperature,
        compression_ratio=compression_ratio(text),
    )


def needs_retry(o: EngineOptions, result: ChunkDecoding) -> bool:
    """whisper's fallback rule: too repetitive or too unlikely, unless it is silence."""
    if o.no_speech_threshold is not None and o.logprob_threshold is not None:
        if result.no_speech_prob > o.no_speech_threshold and result.avg_logprob < o.logprob_threshold:
            return False
    if o.compression_ratio_threshold is not None and result.compression_ratio > o.compression_ratio_threshold:
        return True
    return o.logprob_threshold is not None and result.avg_logprob < o.logprob_threshold


def is_silence(o: EngineOptions, result: ChunkDecoding) -> bool:
    """whisper's skip rule (likely no speech and not decoded confidently), and ours: failed at every
    temperature (the result still needs a retry once there is none left) and not surely speech."""
    if o.no_speech_threshold is None:
        return False
    if result.no_speech_prob > o.no_speech_threshold:
        if o.logprob_threshold is None or result.avg_logprob <= o.logprob_threshold:
            return True
    return result.no_speech_prob > o.failed_no_speech_threshold and needs_retry(o, result)
