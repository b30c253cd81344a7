"""Beam search: whisper's BeamSearchDecoder, its update step over a batch's beam slots and its finalize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from daemon.engine.batch import Batch, Slot


def beam_update(
    b: Batch, rows: slice | torch.Tensor, logprobs: torch.Tensor, chosen: torch.Tensor, slots: Sequence[Slot]
) -> None:
    """whisper's BeamSearchDecoder.update for the beam slots among `slots`; others append `chosen`.

    Each beam slot keeps its `group` best continuations (its rows take the
    state of the rows they continue) and collects finished sequences.
    """
    import numpy as np
    import torch

    g, eot, device = b.group, b.eot, b.device
    top_lp, top_tok = logprobs.topk(g + 1, dim=-1)
    top_lp, top_tok = top_lp.cpu().numpy(), top_tok.cpu().numpy()
    sums = b.sum_logprob[rows].cpu().numpy()
    new_tokens = chosen.clone()
    sources = torch.arange(len(chosen), device=device)
    new_sums = b.sum_logprob[rows].clone()
    for i, slot in enumerate(slots):
        if not slot.beam:
            continue
        assert slot.history is not None and slot.finished is not None
        scores: dict[tuple[int, ...], float] = {}
        origin: dict[tuple[int, ...], int] = {}
        for j in range(g):
            idx = i * g + j
            prefix = slot.history[j]
            for lp, token in zip(top_lp[idx], top_tok[idx], strict=True):
                sequence = (*prefix, int(token))
                scores[sequence] = float(np.float32(sums[idx]) + np.float32(lp))
                origin[sequence] = j
        kept, finished = [], {}
        for sequence in sorted(scores, key=scores.get, reverse=True):  # type: ignore[arg-type]
            if sequence[-1] == eot:
                finished[sequence] = scores[sequence]
            else:
                kept.append(sequence)
                if len(kept) == g:
                    break
        for sequence in sorted(finished, key=finished.get, reverse=True):  # type: ignore[arg-type]
            if len(slot.finished) >= round(g * slot.job.config.patience):
                break
            slot.finished[sequence] = finished[sequence]
        slot.history = [list(seq) for seq in kept]
        for j, sequence in enumerate(kept):
            new_tokens[i * g + j] = sequence[-1]
            sources[i * g + j] = i * g + origin[sequence]
            new_sums[i * g + j] = scores[sequence]
    row_ids = torch.arange(b.rows, device=device)[rows] if isinstance(rows, slice) else rows
    moved = sources != torch.arange(len(chosen), device=device)
    if bool(moved.any()):
        b.reorder_rows(row_ids[moved], row_ids[sources[moved]])
    beam_rows = torch.tensor([slot.beam for slot in slots for _ in range(g)], device=device)
    # non-beam rows add their own log probability; beam rows carry their candidate's score
    current = logprobs.gather(1, new_tokens[:, None])[:, 0]
    live = ~b.done[rows]
    b.sum_logprob[rows] = torch.where(beam_rows, new_sums, b.sum_logprob[rows] + current * live)
    live = live | beam_rows
    b.append(rows, torch.where(live, new_tokens, eot), live)


def beam_candidates(b: Batch, index: int) -> tuple[list[list[int]], list[float]]:
    """whisper's BeamSearchDecoder.finalize for slot `index`: its finished sequences, topped up with its
    live beams; return the sequences (without end-of-text) and their summed log probabilities."""
    import numpy as np

    g, eot = b.group, b.eot
    slot = b.slots[index]
    assert slot.finished is not None and slot.history is not None
    finished = dict(slot.finished)
    if len(finished) < g:
        sums = np.array(b.sum_logprob[index * g : index * g + g].tolist(), dtype=np.float32)
        for j in list(np.argsort(sums))[::-1]:
            finished[(*slot.history[j], eot)] = float(sums[j])
            if len(finished) >= g:
                break
    candidates = [list(seq[: seq.index(eot)]) if eot in seq else list(seq) for seq in finished]
    return candidates, list(finished.values())
