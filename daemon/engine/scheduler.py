"""The scheduler: requests become jobs, jobs flow through a batch of fixed capacity (continuous
batching), and failing windows are decoded again hotter."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from daemon.engine.alignment import align
from daemon.engine.batch import Batch, Slot
from daemon.engine.choosing import choose
from daemon.engine.decoder import Decoder
from daemon.engine.encoder import encode_requests, prepare_model
from daemon.engine.jobs import ChunkDecoding, ChunkRequest, EngineOptions, Job, make_jobs
from daemon.engine.memory import pick_batch_size
from daemon.engine.results import best_result, is_silence, needs_retry
from daemon.engine.rules import LogitRules
from daemon.engine.segments import assign_words, split_segments, timed

if TYPE_CHECKING:
    from whisper.model import Whisper

log = logging.getLogger("subwatch.engine")


def transcribe_chunks(
    model: Whisper,
    requests: Sequence[ChunkRequest],
    options: EngineOptions = EngineOptions(),
    on_done: Callable[[int], None] | None = None,
) -> list[ChunkDecoding]:
    """Given windows to transcribe, return each one's decoding with segments (and words if asked).

    Windows failing the guards are decoded again at the next temperature;
    windows judged silent come back with `silent=True` and no segments.
    `on_done(i)` is called as window i is settled, in whatever order they finish.
    """
    import torch

    from daemon.engine.kinds import is_ct2

    if not requests:
        return []
    if is_ct2(model):  # the CPU engine: same contract, decoded by CTranslate2
        from daemon.engine.ct2 import transcribe_chunks as ct2_transcribe_chunks

        return ct2_transcribe_chunks(model, requests, options, on_done)  # type: ignore[arg-type]
    model = prepare_model(model)
    jobs = make_jobs(model, requests, options.temperatures)
    results: list[ChunkDecoding | None] = [None] * len(requests)

    def settle(job: Job, result: ChunkDecoding) -> None:
        results[job.index] = result
        if on_done is not None:
            on_done(job.index)

    # One pass per group size: beam search (and best-of sampling) rows come in groups.
    by_group: dict[int, list[Job]] = {}
    for job in jobs:
        by_group.setdefault(job.config.options.beam_size or job.config.options.best_of or 1, []).append(job)
    with torch.inference_mode():
        for group_jobs in by_group.values():
            Scheduler(model, group_jobs, options, settle).run()
    return results  # type: ignore[return-value]


class Scheduler:
    """Decodes a list of jobs with continuous batching: one pass of one group size.

    It owns the queue of waiting jobs and the batch: it admits jobs into free
    slots, steps the decoder, and every `sync_every` steps settles finished
    slots (accepting, retrying hotter or dropping them), closes their gaps and
    admits more. On GPU out-of-memory it halves the batch and goes on.
    """

    def __init__(
        self,
        model: Whisper,
        jobs: Sequence[Job],
        options: EngineOptions,
        on_result: Callable[[Job, ChunkDecoding], None],
    ) -> None:
        self.model, self.options, self.on_result = model, options, on_result
        self.decoder = Decoder(model)
        self.device = model.device
        self.pending: deque[Job] = deque(jobs)
        self.group = max((job.config.options.beam_size or job.config.options.best_of or 1) for job in jobs)
        self.capacity = pick_batch_size(model, self.group, options)
        self.sync_every = options.sync_every or (1 if self.device.type == "cpu" else 4)
        configs = sorted({id(job.config): job.config for job in jobs}.values(), key=lambda c: c.index)
        self.tokenizer = configs[0].tokenizer
        self.rules = LogitRules(configs, model.dims.n_vocab, self.device)

    # -- the loop

    def run(self) -> None:
        """Decode every pending job; on GPU out-of-memory, halve the batch and go on."""
        import torch

        while self.pending:
            try:
                self._run_batch()
            except torch.cuda.OutOfMemoryError:
                if self.capacity == 1:
                    raise
                self.capacity //= 2
                self.batch = None
                torch.cuda.empty_cache()
                log.warning("GPU out of memory; decoding %d chunks at once from now on", self.capacity)

    def _run_batch(self) -> None:
        import torch

        self.batch = Batch(self.model, self.capacity, self.group, self.tokenizer)
        try:
            with torch.inference_mode():
                self._admit()
                step = 0
                while self.batch.slots:
                    self._step()
                    step += 1
                    if step % self.sync_every == 0 or any(slot.beam for slot in self.batch.slots):
                        self._sync()
        except torch.cuda.OutOfMemoryError:
            # chunks in flight start again (greedy decoding gives the same tokens)
            self.pending.extendleft(reversed([slot.job for slot in self.batch.slots if not slot.settled]))
            raise

    def _step(self) -> None:
        """Feed every row its last token and choose the next one."""
        b = self.batch
        r = b.rows
        positions = [min(slot.pos, b.length - 1) for slot in b.slots]
        pos = b.pos[:r]
        logits = self.decoder.step(b.cache, b.last[:r], pos, positions)
        b.pos[:r] = (pos + 1).clamp_(max=b.length - 1)
        for slot in b.slots:
            slot.pos += 1
        choose(b, self.rules, slice(0, r), logits, b.slots)

    # -- settling finished chunks

    def _sync(self) -> None:
        """Settle finished chunks (accept, retry hotter, or drop), close the gaps, admit waiting chunks."""
        b = self.batch
        done = b.done[: b.rows].view(len(b.slots), b.group).all(dim=1).tolist()
        settled, retry = [], []
        for index, slot in enumerate(b.slots):
            enough = slot.beam and len(slot.finished or ()) >= round(b.group * slot.job.config.patience)
            if done[index] or enough:
                settled.append(index)
        if not settled:
            return
        accepted: list[tuple[int, ChunkDecoding]] = []
        for index in settled:
            result = best_result(b, index)
            job = b.slots[index].job
            if needs_retry(self.options, result) and job.attempt + 1 < len(job.temperatures):
                job.attempt += 1
                retry.append(index)
            else:
                accepted.append((index, result))
        self._emit(accepted)
        if retry:
            self._start(retry)
        self._compact({index for index, _ in accepted})
        if self.pending and (b.capacity - len(b.slots) >= max(1, b.capacity // 4) or not b.slots):
            self._admit()

    def _emit(self, accepted: list[tuple[int, ChunkDecoding]]) -> None:
        """Hand out accepted results: silence marked, others with their segments, and words if asked."""
        b = self.batch
        to_align = []
        for index, result in accepted:
            job = b.slots[index].job
            b.slots[index].settled = True
            if is_silence(self.options, result):
                result = replace(result, silent=True)
                self.on_result(job, result)
                continue
            pieces = split_segments(list(result.tokens), job.config.tokenizer, job.request.duration)
            result = replace(result, segments=timed(segment for segment, _ in pieces))
            if job.request.word_timestamps and pieces:
                to_align.append((index, result, pieces))
            else:
                self.on_result(job, result)
        if to_align:
            slots, results = [i for i, _, _ in to_align], [r for _, r, _ in to_align]
            timings = align(self.decoder, b, slots, results, self.model.alignment_heads)
            for (index, result, pieces), words in zip(to_align, timings, strict=True):
                segments = timed(assign_words(pieces, words))
                self.on_result(b.slots[index].job, replace(result, segments=segments))

    def _compact(self, leaving: set[int]) -> None:
        """Drop settled slots, moving the last slots into the gaps so rows stay contiguous."""
        b = self.batch
        keep = len(b.slots)
        for index in sorted(leaving, reverse=True):
            keep -= 1
            if index != keep:
                b.move_slot(keep, index)
        del b.slots[keep:]

    # -- admitting chunks

    def _admit(self) -> None:
        """Move waiting jobs into free slots: encode them, detect languages, prefill their prompts."""
        import torch

        b = self.batch
        free = b.capacity - len(b.slots)
        jobs = [self.pending.popleft() for _ in range(min(free, len(self.pending)))]
        if not jobs:
            return
        first = len(b.slots)
        try:
            requests = [job.request for job in jobs]
            features = encode_requests(self.model, requests, self.options.encoder_batch_size)
            self.decoder.cross_attend(b.cache, first, features)
            del features
        except torch.cuda.OutOfMemoryError:
            self.pending.extendleft(reversed(jobs))
            raise
        for job in jobs:
            b.slots.append(Slot(job))
        self._detect([first + i for i, job in enumerate(jobs) if job.config.detect and job.language is None])
        self._start(list(range(first, first + len(jobs))))

    def _detect(self, slots: list[int]) -> None:
        """Detect the language of these slots' windows, as whisper.decode does with language=None."""
        if not slots:
            return
        b = self.batch
        tokenizer = b.slots[slots[0]].job.config.tokenizer
        distributions = self.decoder.language_distributions(b.cache, slots, tokenizer)
        for index, dist in zip(slots, distributions, strict=True):
            job = b.slots[index].job
            job.language, job.language_probs = max(dist, key=dist.get), dist  # type: ignore[arg-type]

    def _start(self, slots: list[int]) -> None:
        """(Re)start decoding in these slots: prefill the start tokens, choose each row's first token."""
        b = self.batch
        jobs = [b.slots[i].job for i in slots]
        prompts = [job.start_tokens() for job in jobs]
        sots = [job.config.sot_index for job in jobs]
        rows, logits = self.decoder.prefill(b.cache, prompts, sots, slots, pad=b.eot)
        no_speech = jobs[0].config.tokenizer.no_speech
        speech = logits[:, 0].softmax(dim=-1)[:, no_speech].tolist() if no_speech is not None else None
        for n, (index, job, prompt) in enumerate(zip(slots, jobs, prompts, strict=True)):
            b.start(index, job, len(prompt), speech[n] if speech is not None else math.nan)
        first = logits[:, 1].repeat_interleave(self.group, dim=0)
        choose(b, self.rules, rows, first, [b.slots[i] for i in slots])
