"""Choosing each row's next token: greedy, sampled at the row's temperature, or by beam search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from daemon.engine.beam import beam_update

if TYPE_CHECKING:
    import torch

    from daemon.engine.batch import Batch, Slot
    from daemon.engine.rules import LogitRules


def choose(
    b: Batch, rules: LogitRules, rows: slice | torch.Tensor, logits: torch.Tensor, slots: Sequence[Slot]
) -> None:
    """Apply whisper's logit rules to `logits` (one row per batch row in `rows`, the rows of `slots`)
    and append the chosen tokens."""
    import torch

    rules.apply(b, rows, logits, any(slot.job.config.timestamps for slot in slots))
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logits.argmax(dim=-1)
    sampling = [i for i, slot in enumerate(slots) if slot.job.temperature > 0]
    if sampling:
        g = b.group
        idx = torch.tensor([i * g + j for i in sampling for j in range(g)], device=b.device)
        temperature = b.temperature[rows][idx][:, None]
        chosen[idx] = torch.distributions.Categorical(logits=logits[idx] / temperature).sample()
    if any(slot.beam for slot in slots):
        beam_update(b, rows, logprobs, chosen, slots)
        return
    current = logprobs.gather(1, chosen[:, None])[:, 0]
    live = ~b.done[rows]
    b.sum_logprob[rows] += current * live
    chosen = torch.where(live, chosen, b.eot)
    b.append(rows, chosen, live)
