"""The batch: every chunk in flight, as slots of rows, with each row's decoding state as tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.engine.decoder import KVCache
from daemon.engine.jobs import Job

if TYPE_CHECKING:
    import torch
    from whisper.model import Whisper
    from whisper.tokenizer import Tokenizer


@dataclass
class Slot:
    """One chunk occupying `group` consecutive rows of the batch."""

    job: Job
    pos: int = 0  # position the next fed token takes (equal for all rows of the slot)
    no_speech_prob: float = math.nan
    beam: bool = False
    finished: dict[tuple[int, ...], float] | None = None  # beam search: completed sequences
    history: list[list[int]] | None = None  # beam search: sampled tokens per row
    settled: bool = False  # its result has been handed out


class Batch:
    """The tensors of every chunk in flight; rows [0, len(slots) * group) are in use.

    A row's state is what whisper's logit rules and ranking read: its tokens so
    far, their summed log probability, whether it is done, and its timestamp
    state (`append` keeps it). Keys and values are in `cache`.
    """

    def __init__(self, model: Whisper, capacity: int, group: int, tokenizer: Tokenizer) -> None:
        import torch

        device = model.device
        rows = capacity * group
        self.capacity, self.group, self.length = capacity, group, model.dims.n_text_ctx
        self.device = device
        self.eot, self.ts_begin = tokenizer.eot, tokenizer.timestamp_begin
        self.cache = KVCache(model, capacity, group)

        def zeros(dtype: torch.dtype, *shape: int) -> torch.Tensor:
            return torch.zeros(rows, *shape, device=device, dtype=dtype)

        self.last = zeros(torch.long)  # last token, fed at the next step
        self.pos = zeros(torch.long)
        self.n_sampled = zeros(torch.long)
        self.max_new = zeros(torch.long)
        self.sum_logprob = zeros(torch.float32)
        self.done = zeros(torch.bool)
        self.temperature = zeros(torch.float32)
        self.timestamps = zeros(torch.bool)  # whisper's timestamp rules apply to this row
        self.max_initial = zeros(torch.long)  # highest first timestamp token allowed
        self.config = zeros(torch.long)
        self.last_ts = zeros(torch.bool)  # last sampled token is a timestamp
        self.penult_ts = zeros(torch.bool)  # second-last is a timestamp, or fewer than two sampled
        self.ts_last = zeros(torch.long)  # last timestamp token sampled, -1 if none
        self.out = zeros(torch.long, self.length + 1)  # sampled tokens
        self.slots: list[Slot] = []

    @property
    def rows(self) -> int:
        return len(self.slots) * self.group

    def start(self, index: int, job: Job, prompt_length: int, no_speech_prob: float) -> None:
        """(Re)start slot `index` on `job`, whose prompt of `prompt_length` tokens is in the cache."""
        g, config = self.group, job.config
        slot = self.slots[index] = Slot(job, pos=prompt_length)
        slot.no_speech_prob = no_speech_prob
        slot.beam = config.beam is not None and job.temperature == 0
        if slot.beam:
            slot.finished, slot.history = {}, [[] for _ in range(g)]
        r = slice(index * g, index * g + g)
        self.pos[r] = prompt_length
        self.n_sampled[r] = 0
        self.max_new[r] = min(config.sample_len, self.length + 1 - prompt_length)
        self.sum_logprob[r] = 0.0
        self.done[r] = False
        self.temperature[r] = job.temperature
        self.timestamps[r] = config.timestamps
        self.max_initial[r] = (
            self.ts_begin + config.max_initial if config.max_initial is not None else 1 << 30
        )
        self.config[r] = config.row
        self.last_ts[r] = False
        self.penult_ts[r] = True
        self.ts_last[r] = -1

    def append(self, rows: slice | torch.Tensor, chosen: torch.Tensor, live: torch.Tensor) -> None:
        """Append the chosen tokens to `rows` (those `live`), keeping their timestamp state and `done`."""
        import torch

        n_sampled = self.n_sampled[rows]
        row_ids = torch.arange(self.rows, device=self.device)[rows] if isinstance(rows, slice) else rows
        self.out[row_ids, n_sampled.clamp(max=self.length)] = chosen
        is_ts = chosen >= self.ts_begin
        last_ts = self.last_ts[rows]
        self.penult_ts[rows] = torch.where(live, (n_sampled == 0) | last_ts, self.penult_ts[rows])
        self.last_ts[rows] = torch.where(live, is_ts, last_ts)
        self.ts_last[rows] = torch.where(live & is_ts, chosen, self.ts_last[rows])
        n_sampled = n_sampled + live
        self.n_sampled[rows] = n_sampled
        finished = (chosen == self.eot) | (n_sampled >= self.max_new[rows])
        self.done[rows] = self.done[rows] | (live & finished)
        self.last[rows] = chosen

    def move_slot(self, source: int, target: int) -> None:
        """Copy slot `source`'s state into slot `target` (to close a gap left by a finished chunk)."""
        g = self.group
        src, dst = slice(source * g, source * g + g), slice(target * g, target * g + g)
        self.cache.move_slot(source, target)
        for t in (
            self.last,
            self.pos,
            self.n_sampled,
            self.max_new,
            self.sum_logprob,
            self.done,
            self.temperature,
            self.timestamps,
            self.max_initial,
            self.config,
            self.last_ts,
            self.penult_ts,
            self.ts_last,
            self.out,
        ):
            t[dst] = t[src]
        self.slots[target] = self.slots[source]

    def reorder_rows(self, rows: torch.Tensor, sources: torch.Tensor) -> None:
        """Give `rows` the state of `sources` (beam search keeping its best continuations)."""
        self.cache.reorder_rows(rows, sources)
        for t in (self.n_sampled, self.sum_logprob, self.last_ts, self.penult_ts, self.ts_last, self.out):
            t[rows] = t[sources]
