"""whisper's logit rules (SuppressBlank, SuppressTokens, ApplyTimestampRules) as masks over all rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from daemon.engine.jobs import Config

if TYPE_CHECKING:
    import torch

    from daemon.engine.batch import Batch


class LogitRules:
    """The suppression masks of a pass's configs (one row each), and the rules applied with them."""

    def __init__(self, configs: Sequence[Config], n_vocab: int, device: torch.device) -> None:
        import torch

        tokenizer = configs[0].tokenizer
        self.eot, self.ts_begin = tokenizer.eot, tokenizer.timestamp_begin
        self.no_ts = tokenizer.no_timestamps
        self.vocab = torch.arange(n_vocab, device=device)
        self.suppress = torch.zeros(len(configs), n_vocab, dtype=torch.bool, device=device)
        self.blank = torch.zeros(len(configs), n_vocab, dtype=torch.bool, device=device)
        for row, config in enumerate(configs):
            config.row = row
            self.suppress[row, list(config.suppress)] = True
            if config.options.suppress_blank:
                self.blank[row, tokenizer.encode(" ") + [tokenizer.eot]] = True

    def apply(self, b: Batch, rows: slice | torch.Tensor, logits: torch.Tensor, timestamps_on: bool) -> None:
        """Mask `logits` (one row per batch row in `rows`) in place by each row's rules and state.

        timestamps_on: whether any of these rows has timestamp rules; if none
        has, they are skipped.
        """
        import torch

        vocab = self.vocab
        first = b.n_sampled[rows] == 0
        config = b.config[rows]
        mask = self.suppress[config] | (first[:, None] & self.blank[config])
        timestamps = b.timestamps[rows]
        if timestamps_on:
            last_ts, penult_ts, ts_last = b.last_ts[rows], b.penult_ts[rows], b.ts_last[rows]
            is_ts_token = vocab >= self.ts_begin
            bound = torch.where(last_ts & ~penult_ts, ts_last, ts_last + 1)
            rule = (
                (vocab == self.no_ts)
                | ((last_ts & penult_ts)[:, None] & is_ts_token)  # a pair closed: text (or EOT) next
                | ((last_ts & ~penult_ts)[:, None] & (vocab < self.eot))  # a lone timestamp: no text
                | ((ts_last >= 0)[:, None] & is_ts_token & (vocab < bound[:, None]))  # never go back
                | (first[:, None] & (~is_ts_token | (vocab > b.max_initial[rows][:, None])))  # start early
            )
            mask |= timestamps[:, None] & rule
        logits.masked_fill_(mask, -math.inf)
        if timestamps_on:
            # when timestamps together are likelier than any text token, sample a timestamp
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            ts_logprob = logprobs[:, self.ts_begin :].logsumexp(dim=-1)
            text_max = logprobs[:, : self.ts_begin].max(dim=-1).values
            force = timestamps & (ts_logprob > text_max)
            logits.masked_fill_(force[:, None] & (vocab < self.ts_begin), -math.inf)
