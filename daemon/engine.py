"""Batched Whisper decoding: many 30-second chunks, from many files, through one model at once.

openai-whisper decodes one window at a time, with a Python step per token, a
`torch.cat` of every key/value cache per step and a Python loop over the rows
in its timestamp rules (a GPU sync per row per token); on a GPU the card waits
on Python. Here all chunks in flight advance one token per step together:

- the encoder runs on batches of chunks, and each chunk's cross-attention keys
  and values are computed once, when the chunk is admitted;
- self-attention keys/values live in a cache allocated once per batch;
- whisper's logit rules (suppress blank and tokens, timestamp pairing) are
  tensor masks over all rows, with no Python loop over rows;
- a chunk that finishes leaves the batch (a later row moves into its slot) and
  a waiting chunk is admitted in its place, so the batch stays full;
- a chunk that fails the quality guards is decoded again at the next
  temperature in its own slot, reusing its encoder output;
- word timings come from the cross-attention of whisper's alignment heads,
  computed for finished chunks together while their keys/values are cached.

Greedy decoding returns exactly the tokens `whisper.decode` returns for each
chunk alone (tests/test_engine.py); beam search follows whisper's
BeamSearchDecoder step for step. Times in results are seconds from the start
of each chunk; the transcription stage maps them onto the file's timeline.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from daemon.datatypes import Segment, Word

if TYPE_CHECKING:
    import numpy as np
    import torch
    from whisper.decoding import DecodingOptions
    from whisper.model import Whisper
    from whisper.tokenizer import Tokenizer

log = logging.getLogger("subwatch.engine")

SAMPLE_RATE = 16000
N_FRAMES = 3000  # mel frames in Whisper's 30 s window
N_SAMPLES = 480000  # samples in that window
SECONDS_PER_TOKEN = 0.02  # one timestamp step, one encoder position
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class EngineOptions:
    """How chunks are decoded: quality guards, fallback temperatures and batch size.

    temperatures: tried in turn while a chunk fails a guard; above 0 tokens are
        sampled (whisper's schedule: 0.0, 0.2 … 1.0).
    compression_ratio_threshold: gzip ratio above which the text is a repetition
        loop and the chunk is decoded again (2.4).
    logprob_threshold: mean token log probability below which the chunk is
        decoded again (-1.0).
    no_speech_threshold: a chunk whose no-speech probability is above this and
        whose mean log probability is below logprob_threshold is silence: no
        retries, and its text is dropped (0.6).
    batch_size: chunks decoded at once; None picks it from free GPU memory
        (16 on the CPU, where larger batches gain nothing measurable).
    max_batch_size: the most that batch_size=None picks on a GPU (64).
    encoder_batch_size: chunks per encoder call when admitting chunks (16).
    sync_every: decoding steps between checks for finished chunks; None is 1
        on the CPU and 4 on a GPU, where each check waits for the card and
        empties its queue of work.
    memory_limit: bytes this process may use on the model's GPU (the cap
        transcribe.ModelStore put on the card); batch_size=None picks within
        it. None: the whole card.
    """

    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    batch_size: int | None = None
    max_batch_size: int = 64
    encoder_batch_size: int = 16
    sync_every: int | None = None
    memory_limit: int | None = None


@dataclass(frozen=True)
class ChunkRequest:
    """One window to decode and how: give one of samples, mel or features.

    samples: up to 30 s of 16 kHz mono float32 audio; its log-mel is computed on
        the model's device when the chunk is admitted, so a backlog of chunks
        waits as plain audio, not as spectrograms.
    mel: a (n_mels, 3000) log-mel, as `whisper.log_mel_spectrogram` + `pad_or_trim` give.
    features: the encoder's output for the window (e.g. kept from language detection).
    duration: seconds of real audio in the window; word timings are cut there.
    word_timestamps: align words and return them in the chunk's segments.
    """

    options: DecodingOptions
    samples: Any = None
    mel: Any = None
    features: Any = None
    duration: float = 30.0
    word_timestamps: bool = False


@dataclass(frozen=True)
class ChunkDecoding:
    """What decoding one window gave, as whisper's DecodingResult, plus its segments.

    tokens are the sampled tokens without prompt and end-of-text. `segments`
    (times in seconds from the window's start) are filled by
    `transcribe_chunks`; `silent` marks a window the guards judged to be silence.
    """

    tokens: tuple[int, ...]
    text: str
    language: str
    language_probs: dict[str, float] | None
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    segments: tuple[Segment, ...] = ()
    silent: bool = False


class _Config:
    """What whisper's DecodingTask derives from one DecodingOptions, kept for every chunk using it."""

    def __init__(self, model: Whisper, options: DecodingOptions, index: int) -> None:
        from whisper.decoding import DecodingTask

        task = DecodingTask(model, options)  # whisper's own reading of the options
        self.index = index
        self.row = 0  # its row in a pass's suppression masks
        self.options = options
        self.tokenizer: Tokenizer = task.tokenizer
        self.initial_tokens = list(task.initial_tokens)
        self.sot_index = task.sot_index
        self.sample_len = task.sample_len
        self.suppress = task._get_suppress_tokens() if options.suppress_tokens else ()
        self.detect = options.language is None and model.is_multilingual
        self.timestamps = not options.without_timestamps
        self.max_initial: int | None = None
        if self.timestamps and options.max_initial_timestamp:
            self.max_initial = round(options.max_initial_timestamp / SECONDS_PER_TOKEN)
        self.beam = options.beam_size if options.temperature == 0 else None
        self.patience = options.patience or 1.0


# ----------------------------------------------------------------------------- model and audio


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

    if model.device.type != "cuda" or getattr(model, "_subwatch_fp16", False):
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

    dtype = compute_dtype(model)
    with torch.inference_mode():
        parts = [
            model.encoder(mel[i : i + batch_size].to(model.device, dtype))
            for i in range(0, len(mel), batch_size)
        ]
    return torch.cat(parts)


def language_probabilities(model: Whisper, features: torch.Tensor) -> list[dict[str, float]]:
    """Given encoder outputs, return each window's probability for every language Whisper knows."""
    import torch
    from whisper.decoding import detect_language
    from whisper.tokenizer import get_tokenizer

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


# ----------------------------------------------------------------------------- GPU memory


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


# ----------------------------------------------------------------------------- decoder arithmetic


class _Layers:
    """The decoder's weights, gathered once so that a step does no module lookups."""

    def __init__(self, model: Whisper) -> None:
        decoder = model.decoder
        self.embedding = decoder.token_embedding.weight
        self.positions = decoder.positional_embedding
        self.ln = decoder.ln
        self.blocks = list(decoder.blocks)
        self.n_head = model.dims.n_text_head
        self.n_state = model.dims.n_text_state
        self.head_dim = self.n_state // self.n_head


def _norm(x: torch.Tensor, ln: Any) -> torch.Tensor:
    """whisper's LayerNorm: computed in fp32, returned in x's dtype."""
    import torch.nn.functional as F

    return F.layer_norm(x.float(), ln.normalized_shape, ln.weight, ln.bias, ln.eps).type(x.dtype)


def _linear(x: torch.Tensor, layer: Any) -> torch.Tensor:
    import torch.nn.functional as F

    return F.linear(x, layer.weight, layer.bias)


def _mlp(x: torch.Tensor, block: Any) -> torch.Tensor:
    import torch.nn.functional as F

    h = _norm(x, block.mlp_ln)
    return _linear(F.gelu(_linear(h, block.mlp[0])), block.mlp[2])


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(batch, time, state) → (batch, heads, time, head_dim), as whisper's attention views it."""
    return x.view(*x.shape[:2], n_head, -1).permute(0, 2, 1, 3)


def _merge(a: torch.Tensor) -> torch.Tensor:
    return a.permute(0, 2, 1, 3).flatten(start_dim=2)


def _manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[Any, Any]:
    """whisper's non-SDPA attention (what its word alignment runs): return (output, fp32 scores)."""
    import torch

    scale = q.shape[-1] ** -0.25
    qk = (q * scale) @ (k * scale).transpose(-1, -2)
    if causal:
        n = q.shape[-2]
        qk = qk + torch.full((n, n), float("-inf"), device=qk.device).triu_(1)
    qk = qk.float()
    weights = qk.softmax(dim=-1).to(q.dtype)
    return weights @ v, qk


# ----------------------------------------------------------------------------- the batch


@dataclass
class _Job:
    """A request on its way through the engine."""

    index: int
    request: ChunkRequest
    config: _Config
    temperatures: tuple[float, ...]
    attempt: int = 0
    language: str | None = None
    language_probs: dict[str, float] | None = None

    @property
    def temperature(self) -> float:
        return self.temperatures[self.attempt]


@dataclass
class _Slot:
    """One chunk occupying `group` consecutive rows of the batch."""

    job: _Job
    pos: int = 0  # position the next fed token takes (equal for all rows of the slot)
    no_speech_prob: float = math.nan
    beam: bool = False
    finished: dict[tuple[int, ...], float] | None = None  # beam search: completed sequences
    history: list[list[int]] | None = None  # beam search: sampled tokens per row
    settled: bool = False  # its result has been handed out


class _Batch:
    """The tensors of every chunk in flight; rows [0, len(slots) * group) are in use."""

    def __init__(self, model: Whisper, capacity: int, group: int) -> None:
        import torch

        dims = model.dims
        device, dtype = model.device, compute_dtype(model)
        heads, head_dim = dims.n_text_head, dims.n_text_state // dims.n_text_head
        rows = capacity * group
        self.capacity, self.group, self.length = capacity, group, dims.n_text_ctx
        # zeros, not empty: masked-out cache entries are still multiplied by a zero
        # attention weight, and 0 * NaN from uninitialised memory would be NaN
        self.self_k = torch.zeros(
            dims.n_text_layer, rows, heads, self.length, head_dim, device=device, dtype=dtype
        )
        self.self_v = torch.zeros_like(self.self_k)
        cross = (dims.n_text_layer, capacity, heads, dims.n_audio_ctx, head_dim)
        self.cross_k = torch.empty(cross, device=device, dtype=dtype)
        self.cross_v = torch.empty_like(self.cross_k)

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
        self.slots: list[_Slot] = []

    @property
    def rows(self) -> int:
        return len(self.slots) * self.group

    def move_slot(self, source: int, target: int) -> None:
        """Copy slot `source`'s state into slot `target` (to close a gap left by a finished chunk)."""
        g = self.group
        src, dst = slice(source * g, source * g + g), slice(target * g, target * g + g)
        for t in (self.self_k, self.self_v):
            t[:, dst] = t[:, src]
        for t in (self.cross_k, self.cross_v):
            t[:, target] = t[:, source]
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
        for t in (self.self_k, self.self_v):
            t[:, rows] = t[:, sources]
        for t in (self.n_sampled, self.sum_logprob, self.last_ts, self.penult_ts, self.ts_last, self.out):
            t[rows] = t[sources]


class _Pass:
    """Decodes a list of jobs with continuous batching; see the module docstring."""

    def __init__(
        self,
        model: Whisper,
        jobs: Sequence[_Job],
        options: EngineOptions,
        on_result: Callable[[_Job, ChunkDecoding], None],
    ) -> None:
        import torch

        self.model, self.options, self.on_result = model, options, on_result
        self.layers = _Layers(model)
        self.dtype = compute_dtype(model)
        self.device = model.device
        self.pending: deque[_Job] = deque(jobs)
        self.group = max((job.config.options.beam_size or job.config.options.best_of or 1) for job in jobs)
        self.capacity = pick_batch_size(model, self.group, options)
        self.sync_every = options.sync_every or (1 if self.device.type == "cpu" else 4)
        configs = {id(job.config): job.config for job in jobs}
        self.configs = sorted(configs.values(), key=lambda c: c.index)
        tokenizer = self.configs[0].tokenizer
        self.eot, self.ts_begin, self.no_ts = (
            tokenizer.eot,
            tokenizer.timestamp_begin,
            tokenizer.no_timestamps,
        )
        vocab = model.dims.n_vocab
        self.vocab = torch.arange(vocab, device=self.device)
        self.suppress = torch.zeros(len(self.configs), vocab, dtype=torch.bool, device=self.device)
        self.blank = torch.zeros(len(self.configs), vocab, dtype=torch.bool, device=self.device)
        for row, config in enumerate(self.configs):
            config.row = row
            self.suppress[row, list(config.suppress)] = True
            if config.options.suppress_blank:
                self.blank[row, tokenizer.encode(" ") + [tokenizer.eot]] = True

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

        self.batch = _Batch(self.model, self.capacity, self.group)
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
            result = self._result(index)
            job = b.slots[index].job
            if self._needs_retry(result) and job.attempt + 1 < len(job.temperatures):
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

    def _needs_retry(self, result: ChunkDecoding) -> bool:
        """whisper's fallback rule: too repetitive or too unlikely, unless it is silence."""
        o = self.options
        if o.no_speech_threshold is not None and o.logprob_threshold is not None:
            if result.no_speech_prob > o.no_speech_threshold and result.avg_logprob < o.logprob_threshold:
                return False
        if (
            o.compression_ratio_threshold is not None
            and result.compression_ratio > o.compression_ratio_threshold
        ):
            return True
        return o.logprob_threshold is not None and result.avg_logprob < o.logprob_threshold

    def _is_silence(self, result: ChunkDecoding) -> bool:
        """whisper's skip rule: likely no speech and not decoded confidently."""
        o = self.options
        if o.no_speech_threshold is None or result.no_speech_prob <= o.no_speech_threshold:
            return False
        return o.logprob_threshold is None or result.avg_logprob <= o.logprob_threshold

    def _emit(self, accepted: list[tuple[int, ChunkDecoding]]) -> None:
        b = self.batch
        to_align = []
        for index, result in accepted:
            job = b.slots[index].job
            b.slots[index].settled = True
            if self._is_silence(result):
                result = replace(result, silent=True)
                self.on_result(job, result)
                continue
            pieces = split_segments(list(result.tokens), job.config.tokenizer, job.request.duration)
            result = replace(result, segments=_timed(segment for segment, _ in pieces))
            if job.request.word_timestamps and pieces:
                to_align.append((index, result, pieces))
            else:
                self.on_result(job, result)
        if to_align:
            timings = self._align([i for i, _, _ in to_align], [r for _, r, _ in to_align])
            for (index, result, pieces), words in zip(to_align, timings, strict=True):
                segments = _timed(assign_words(pieces, words))
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
            features = self._features(jobs)
            for layer, block in enumerate(self.layers.blocks):
                attn = block.cross_attn
                k = _heads(_linear(features, attn.key), self.layers.n_head)
                v = _heads(_linear(features, attn.value), self.layers.n_head)
                b.cross_k[layer, first : first + len(jobs)] = k
                b.cross_v[layer, first : first + len(jobs)] = v
            del features
        except torch.cuda.OutOfMemoryError:
            self.pending.extendleft(reversed(jobs))
            raise
        for job in jobs:
            b.slots.append(_Slot(job))
        self._detect([first + i for i, job in enumerate(jobs) if job.config.detect and job.language is None])
        self._start(list(range(first, first + len(jobs))))

    def _features(self, jobs: Sequence[_Job]) -> torch.Tensor:
        """Return the encoder output of each job's window, encoding those that need it in batches."""
        import torch

        features: list[torch.Tensor | None] = [
            None if job.request.features is None else job.request.features.to(self.device, self.dtype)
            for job in jobs
        ]
        todo = [i for i, f in enumerate(features) if f is None]
        step = self.options.encoder_batch_size
        for start in range(0, len(todo), step):
            part = [jobs[i].request for i in todo[start : start + step]]
            mels = [None if r.mel is None else torch.as_tensor(r.mel).to(self.device) for r in part]
            missing = [n for n, m in enumerate(mels) if m is None]
            if missing:
                computed = log_mel([_samples(part[n]) for n in missing], self.model.dims.n_mels, self.device)
                for n, mel in zip(missing, computed, strict=True):
                    mels[n] = mel
            encoded = self.model.encoder(torch.stack(mels).to(self.dtype))  # type: ignore[arg-type]
            for offset, i in enumerate(todo[start : start + step]):
                features[i] = encoded[offset]
        return torch.stack(features)  # type: ignore[arg-type]

    def _detect(self, slots: list[int]) -> None:
        """Detect the language of these slots' windows, as whisper.decode does with language=None."""
        import torch

        if not slots:
            return
        b = self.batch
        tokenizer = b.slots[slots[0]].job.config.tokenizer
        tokens = torch.full((len(slots), 1), tokenizer.sot, device=self.device)
        hidden, _ = self._forward(tokens, torch.tensor(slots, device=self.device))
        logits = self._logits(hidden[:, 0])
        mask = torch.ones(logits.shape[-1], dtype=torch.bool, device=self.device)
        mask[list(tokenizer.all_language_tokens)] = False
        logits[:, mask] = -math.inf
        probs = logits.softmax(dim=-1).cpu()
        codes = tokenizer.all_language_codes
        for row, index in enumerate(slots):
            dist = {
                c: probs[row, t].item() for t, c in zip(tokenizer.all_language_tokens, codes, strict=True)
            }
            job = b.slots[index].job
            job.language, job.language_probs = max(dist, key=dist.get), dist  # type: ignore[arg-type]

    def _start(self, slots: list[int]) -> None:
        """(Re)start decoding in these slots: prefill the initial tokens, choose each row's first token."""
        import torch

        b, g = self.batch, self.group
        jobs = [b.slots[i].job for i in slots]
        prompts = [self._initial_tokens(job) for job in jobs]
        width = max(map(len, prompts))
        tokens = torch.tensor([p + [self.eot] * (width - len(p)) for p in prompts], device=self.device)
        slot_index = torch.tensor(slots, device=self.device)
        rows = (slot_index[:, None] * g + torch.arange(g, device=self.device)).flatten()
        hidden, _ = self._forward(tokens, slot_index, cache_rows=rows)
        ends = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        sots = torch.tensor([job.config.sot_index for job in jobs], device=self.device)
        picked = hidden[torch.arange(len(slots), device=self.device)[:, None], torch.stack([sots, ends], 1)]
        # (slots, 2, vocab): the logits at <|startoftranscript|> (no-speech) and at the last prompt token
        logits = self._logits(picked)
        no_speech = jobs[0].config.tokenizer.no_speech
        speech = logits[:, 0].softmax(dim=-1)[:, no_speech].tolist() if no_speech is not None else None
        for n, (index, job, prompt) in enumerate(zip(slots, jobs, prompts, strict=True)):
            config = job.config
            slot = b.slots[index] = _Slot(job, pos=len(prompt))
            slot.no_speech_prob = speech[n] if speech is not None else math.nan
            slot.beam = config.beam is not None and job.temperature == 0
            if slot.beam:
                slot.finished, slot.history = {}, [[] for _ in range(g)]
            r = slice(index * g, index * g + g)
            b.pos[r] = len(prompt)
            b.n_sampled[r] = 0
            b.max_new[r] = min(config.sample_len, self.model.dims.n_text_ctx + 1 - len(prompt))
            b.sum_logprob[r] = 0.0
            b.done[r] = False
            b.temperature[r] = job.temperature
            b.timestamps[r] = config.timestamps
            b.max_initial[r] = (
                self.ts_begin + config.max_initial if config.max_initial is not None else 1 << 30
            )
            b.config[r] = config.row
            b.last_ts[r] = False
            b.penult_ts[r] = True
            b.ts_last[r] = -1
        self._choose(rows, logits[:, 1].repeat_interleave(g, dim=0), [b.slots[i] for i in slots])

    def _initial_tokens(self, job: _Job) -> list[int]:
        tokens = list(job.config.initial_tokens)
        if job.language is not None and job.config.detect:
            tokenizer = job.config.tokenizer
            tokens[job.config.sot_index + 1] = tokenizer.to_language_token(job.language)
        return tokens

    # -- one decoding step

    def _step(self) -> None:
        """Feed every row its last token and choose the next one."""
        import torch
        import torch.nn.functional as F

        b, L = self.batch, self.layers
        n, g = len(b.slots), b.group
        r = n * g
        positions = [min(slot.pos, b.length - 1) for slot in b.slots]
        length = max(positions) + 1
        uniform = min(positions) == max(positions)
        pos = b.pos[:r]
        x = (L.embedding[b.last[:r]] + L.positions[pos])[:, None].to(self.dtype)
        mask = None if uniform else (torch.arange(length, device=self.device) <= pos[:, None])[:, None, None]
        row_index = torch.arange(r, device=self.device)
        for layer, block in enumerate(L.blocks):
            h = _norm(x, block.attn_ln)
            q, k, v = _linear(h, block.attn.query), _linear(h, block.attn.key), _linear(h, block.attn.value)
            k, v = k.view(r, L.n_head, L.head_dim), v.view(r, L.n_head, L.head_dim)
            if uniform:
                b.self_k[layer, :r, :, positions[0]] = k
                b.self_v[layer, :r, :, positions[0]] = v
            else:
                b.self_k[layer, row_index, :, pos] = k
                b.self_v[layer, row_index, :, pos] = v
            keys, values = b.self_k[layer, :r, :, :length], b.self_v[layer, :r, :, :length]
            a = F.scaled_dot_product_attention(_heads(q, L.n_head), keys, values, attn_mask=mask)
            x = x + _linear(_merge(a), block.attn.out)
            h = _norm(x, block.cross_attn_ln)
            q = _linear(h, block.cross_attn.query).view(n, g, L.n_head, L.head_dim).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, b.cross_k[layer, :n], b.cross_v[layer, :n])
            x = x + _linear(a.transpose(1, 2).reshape(r, 1, L.n_state), block.cross_attn.out)
            x = x + _mlp(x, block)
        logits = self._logits(x[:, 0])
        b.pos[:r] = (pos + 1).clamp_(max=b.length - 1)
        for slot in b.slots:
            slot.pos += 1
        self._choose(slice(0, r), logits, b.slots)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final layer norm and output projection, as whisper's TextDecoder ends."""
        import torch

        x = _norm(x, self.layers.ln)
        return (x @ torch.transpose(self.layers.embedding.to(x.dtype), 0, 1)).float()

    def _forward(
        self,
        tokens: torch.Tensor,
        slots: torch.Tensor,
        cache_rows: torch.Tensor | None = None,
        capture: dict[int, list[int]] | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run whole token sequences (prompts, or text to align) through the decoder.

        Given (n, t) tokens and each sequence's slot, return the hidden states
        before the final layer norm and, for the layers in `capture`, the
        cross-attention scores of the listed heads. Keys/values are written to
        the self-attention cache at `cache_rows` (each slot's rows, in order).
        With `capture`, attention is whisper's manual path, as its alignment uses.
        """
        import torch.nn.functional as F

        b, L = self.batch, self.layers
        n, t = tokens.shape
        x = (L.embedding[tokens] + L.positions[:t]).to(self.dtype)
        scores = {}
        for layer, block in enumerate(L.blocks):
            h = _norm(x, block.attn_ln)
            q, k, v = _linear(h, block.attn.query), _linear(h, block.attn.key), _linear(h, block.attn.value)
            q, k, v = _heads(q, L.n_head), _heads(k, L.n_head), _heads(v, L.n_head)
            if cache_rows is not None:
                repeat = len(cache_rows) // n
                b.self_k[layer, cache_rows, :, :t] = k.repeat_interleave(repeat, dim=0)
                b.self_v[layer, cache_rows, :, :t] = v.repeat_interleave(repeat, dim=0)
            if capture is not None:
                a, _ = _manual_attention(q, k, v, causal=True)
            else:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
            x = x + _linear(_merge(a), block.attn.out)
            h = _norm(x, block.cross_attn_ln)
            q = _heads(_linear(h, block.cross_attn.query), L.n_head)
            keys, values = b.cross_k[layer, slots], b.cross_v[layer, slots]
            if capture is not None:
                a, qk = _manual_attention(q, keys, values, causal=False)
                if layer in capture:
                    scores[layer] = qk[:, capture[layer]]
            else:
                a = F.scaled_dot_product_attention(q, keys, values)
            x = x + _linear(_merge(a), block.cross_attn.out)
            x = x + _mlp(x, block)
        return x, scores

    # -- choosing tokens

    def _choose(self, rows: slice | torch.Tensor, logits: torch.Tensor, slots: Sequence[_Slot]) -> None:
        """Apply whisper's logit rules to `logits` (one row per batch row) and append the chosen tokens."""
        import torch

        b = self.batch
        self._apply_rules(rows, logits, any(slot.job.config.timestamps for slot in slots))
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        chosen = logits.argmax(dim=-1)
        sampling = [i for i, slot in enumerate(slots) if slot.job.temperature > 0]
        if sampling:
            g = b.group
            idx = torch.tensor([i * g + j for i in sampling for j in range(g)], device=self.device)
            temperature = b.temperature[rows][idx][:, None]
            chosen[idx] = torch.distributions.Categorical(logits=logits[idx] / temperature).sample()
        if any(slot.beam for slot in slots):
            chosen = self._beam_update(rows, logprobs, chosen, slots)
            if chosen is None:
                return
        current = logprobs.gather(1, chosen[:, None])[:, 0]
        live = ~b.done[rows]
        b.sum_logprob[rows] += current * live
        chosen = torch.where(live, chosen, self.eot)
        self._append(rows, chosen, live)

    def _append(self, rows: slice | torch.Tensor, chosen: torch.Tensor, live: torch.Tensor) -> None:
        import torch

        b = self.batch
        n_sampled = b.n_sampled[rows]
        row_ids = torch.arange(b.rows, device=self.device)[rows] if isinstance(rows, slice) else rows
        b.out[row_ids, n_sampled.clamp(max=b.length)] = chosen
        is_ts = chosen >= self.ts_begin
        last_ts = b.last_ts[rows]
        b.penult_ts[rows] = torch.where(live, (n_sampled == 0) | last_ts, b.penult_ts[rows])
        b.last_ts[rows] = torch.where(live, is_ts, last_ts)
        b.ts_last[rows] = torch.where(live & is_ts, chosen, b.ts_last[rows])
        n_sampled = n_sampled + live
        b.n_sampled[rows] = n_sampled
        b.done[rows] = b.done[rows] | (live & ((chosen == self.eot) | (n_sampled >= b.max_new[rows])))
        b.last[rows] = chosen

    def _apply_rules(self, rows: slice | torch.Tensor, logits: torch.Tensor, timestamps_on: bool) -> None:
        """SuppressBlank, SuppressTokens and ApplyTimestampRules of whisper.decoding, on all rows at once."""
        import torch

        b, vocab = self.batch, self.vocab
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

    def _beam_update(
        self, rows: slice | torch.Tensor, logprobs: torch.Tensor, chosen: torch.Tensor, slots: Sequence[_Slot]
    ) -> torch.Tensor | None:
        """whisper's BeamSearchDecoder.update for the beam slots among `slots`; others keep `chosen`.

        Returns the tokens to append, or None when it appended them itself.
        """
        import numpy as np
        import torch

        b, g = self.batch, self.group
        top_lp, top_tok = logprobs.topk(g + 1, dim=-1)
        top_lp, top_tok = top_lp.cpu().numpy(), top_tok.cpu().numpy()
        sums = b.sum_logprob[rows].cpu().numpy()
        new_tokens = chosen.clone()
        sources = torch.arange(len(chosen), device=self.device)
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
                if sequence[-1] == self.eot:
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
        row_ids = torch.arange(b.rows, device=self.device)[rows] if isinstance(rows, slice) else rows
        moved = sources != torch.arange(len(chosen), device=self.device)
        if bool(moved.any()):
            b.reorder_rows(row_ids[moved], row_ids[sources[moved]])
        beam_rows = torch.tensor([slot.beam for slot in slots for _ in range(g)], device=self.device)
        # non-beam rows add their own log probability; beam rows carry their candidate's score
        current = logprobs.gather(1, new_tokens[:, None])[:, 0]
        live = ~b.done[rows]
        b.sum_logprob[rows] = torch.where(beam_rows, new_sums, b.sum_logprob[rows] + current * live)
        live = live | beam_rows
        self._append(rows, torch.where(live, new_tokens, self.eot), live)
        return None

    # -- results

    def _result(self, index: int) -> ChunkDecoding:
        """Return the best sequence of a settled slot, as whisper's DecodingTask.run would."""
        import torch
        from whisper.decoding import MaximumLikelihoodRanker
        from whisper.utils import compression_ratio

        b, g = self.batch, self.group
        slot = b.slots[index]
        job, tokenizer = slot.job, slot.job.config.tokenizer
        if slot.beam:
            candidates, sums = self._beam_candidates(index)
        else:
            r = slice(index * g, index * g + g)
            counts = b.n_sampled[r].tolist()
            out = b.out[r, : max(counts)].tolist()
            candidates = [seq[:n] for seq, n in zip(out, counts, strict=True)]
            candidates = [seq[: seq.index(self.eot)] if self.eot in seq else seq for seq in candidates]
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

    def _beam_candidates(self, index: int) -> tuple[list[list[int]], list[float]]:
        """whisper's BeamSearchDecoder.finalize: finished sequences, topped up with the live beams."""
        import numpy as np

        b, g = self.batch, self.group
        slot = b.slots[index]
        assert slot.finished is not None and slot.history is not None
        finished = dict(slot.finished)
        if len(finished) < g:
            sums = np.array(b.sum_logprob[index * g : index * g + g].tolist(), dtype=np.float32)
            for j in list(np.argsort(sums))[::-1]:
                finished[(*slot.history[j], self.eot)] = float(sums[j])
                if len(finished) >= g:
                    break
        candidates = [list(seq[: seq.index(self.eot)]) if self.eot in seq else list(seq) for seq in finished]
        return candidates, list(finished.values())

    def _align(self, slots: list[int], results: list[ChunkDecoding]) -> list[list[Any]]:
        """Word timings for finished chunks, from their cached cross-attention: whisper's find_alignment."""
        import torch

        b = self.batch
        heads = self.model.alignment_heads.indices().T.tolist()
        capture: dict[int, list[int]] = {}
        for layer, head in heads:
            capture.setdefault(layer, []).append(head)
        sequences, prefixes = [], []
        for index, result in zip(slots, results, strict=True):
            tokenizer = b.slots[index].job.config.tokenizer
            job = b.slots[index].job
            sot = list(self._initial_tokens(job)[job.config.sot_index :])[: len(tokenizer.sot_sequence)]
            text = [t for t in result.tokens if t < self.eot]
            sequences.append([*sot, tokenizer.no_timestamps, *text, self.eot])
            prefixes.append(len(sot))
        width = max(map(len, sequences))
        tokens = torch.tensor([s + [self.eot] * (width - len(s)) for s in sequences], device=self.device)
        hidden, scores = self._forward(tokens, torch.tensor(slots, device=self.device), capture=capture)
        logits = self._logits(hidden)
        timings = []
        for n, (index, result) in enumerate(zip(slots, results, strict=True)):
            job = b.slots[index].job
            text = [t for t in result.tokens if t < self.eot]
            qk = torch.cat([scores[layer][n : n + 1, capture[layer].index(head)] for layer, head in heads])
            timings.append(
                _word_timings(
                    job.config.tokenizer,
                    text,
                    qk[:, : len(sequences[n])],
                    logits[n, prefixes[n] : len(sequences[n])],
                    prefixes[n],
                    min(N_FRAMES, round(job.request.duration * 100)),
                )
            )
        return timings


def _timed(segments: Iterable[Segment]) -> tuple[Segment, ...]:
    """Drop segments of no duration, as whisper.transcribe does: text timed at one instant is not speech."""
    return tuple(segment for segment in segments if segment.end > segment.start)


def _samples(request: ChunkRequest) -> Any:
    if request.samples is None:
        raise ValueError("a ChunkRequest needs samples, mel or features")
    return request.samples


# ----------------------------------------------------------------------------- words and segments


def _word_timings(
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
    from whisper.timing import WordTiming, dtw, median_filter

    probs = logits[: len(text_tokens), : tokenizer.eot].float().softmax(dim=-1).cpu()
    token_probs = probs[np.arange(len(text_tokens)), text_tokens].tolist()
    weights = qk[:, :, : num_frames // 2].float().cpu().softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std, medfilt_width)
    matrix = weights.mean(dim=0)[prefix:-1]
    text_indices, time_indices = dtw(-matrix)
    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] * SECONDS_PER_TOKEN
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    probabilities = [np.mean(token_probs[i:j]) for i, j in zip(boundaries[:-1], boundaries[1:], strict=True)]
    return [
        WordTiming(word, tokens, start, end, probability)
        for word, tokens, start, end, probability in zip(
            words, word_tokens, starts, ends, probabilities, strict=False
        )
    ]


def split_segments(
    tokens: list[int], tokenizer: Tokenizer, duration: float
) -> list[tuple[Segment, list[int]]]:
    """Given one window's sampled tokens, return its segments and their text tokens.

    Cut at timestamp pairs as whisper does. Text after the last timestamp
    (whisper would decode it again in its next window; a chunk has no next
    window) becomes a segment ending with the chunk. Times are seconds from
    the window's start; segments without text are left out.
    """
    begin, eot = tokenizer.timestamp_begin, tokenizer.eot

    def time(token: int) -> float:
        return min((token - begin) * SECONDS_PER_TOKEN, duration)

    segments: list[tuple[Segment, list[int]]] = []
    start = 0.0
    text: list[int] = []
    opened = False
    for token in tokens:
        if token >= begin:
            if text:
                segments.append((Segment(start, max(time(token), start), tokenizer.decode(text)), text))
                text = []
                opened = False
            else:
                start, opened = time(token), True
        elif token < eot:
            if not text and not opened and segments:
                start = segments[-1][0].end
            text.append(token)
    if text:
        segments.append((Segment(start, max(duration, start), tokenizer.decode(text)), text))
    return [(segment, text) for segment, text in segments if segment.text.strip()]


def assign_words(segments: list[tuple[Segment, list[int]]], alignment: list[Any]) -> list[Segment]:
    """Given a window's segments and its word alignment, return the segments with their words.

    whisper.timing.add_word_timestamps: long words at sentence and segment
    boundaries are shortened and segment bounds follow their words.
    """
    import numpy as np
    from whisper.timing import merge_punctuations

    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) > 0 else 0.0
    longest = median * 2
    if len(durations) > 0:
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in ".。!！?？":
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in ".。!！?？":
                    alignment[i].start = alignment[i].end - longest
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    result, index, last_speech = [], 0, 0.0
    for segment, tokens in segments:
        saved, words = 0, []
        while index < len(alignment) and saved < len(tokens):
            timing = alignment[index]
            if timing.word:
                words.append(
                    [
                        timing.word,
                        round(float(timing.start), 2),
                        round(float(timing.end), 2),
                        float(timing.probability),
                    ]
                )
            saved += len(timing.tokens)
            index += 1
        start, end = segment.start, segment.end
        if words:
            first, second = words[0], words[1] if len(words) > 1 else None
            if first[2] - last_speech > median * 4 and (
                first[2] - first[1] > longest or (second is not None and second[2] - first[1] > longest * 2)
            ):
                if second is not None and second[2] - second[1] > longest:
                    boundary = max(second[2] / 2, second[2] - longest)
                    first[2] = second[1] = boundary
                first[1] = max(0.0, first[2] - longest)
            if start < first[2] and start - 0.5 > first[1]:
                first[1] = max(0.0, min(first[2] - median, start))
            else:
                start = first[1]
            if end > words[-1][1] and end + 0.5 < words[-1][2]:
                words[-1][2] = max(words[-1][1] + median, end)
            else:
                end = words[-1][2]
            last_speech = end
        result.append(Segment(start, end, segment.text, tuple(Word(w[1], w[2], w[0], w[3]) for w in words)))
    return result


# ----------------------------------------------------------------------------- entry points


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
    return _run(model, requests, options, on_done=on_done)


def _run(
    model: Whisper,
    requests: Sequence[ChunkRequest],
    options: EngineOptions,
    on_done: Callable[[int], None] | None = None,
) -> list[ChunkDecoding]:
    import torch

    if not requests:
        return []
    model = prepare_model(model)
    configs: dict[str, _Config] = {}
    jobs = []
    for index, request in enumerate(requests):
        key = repr(request.options)
        if key not in configs:
            configs[key] = _Config(model, request.options, len(configs))
        jobs.append(_Job(index, request, configs[key], options.temperatures))
    results: list[ChunkDecoding | None] = [None] * len(requests)

    def settle(job: _Job, result: ChunkDecoding) -> None:
        results[job.index] = result
        if on_done is not None:
            on_done(job.index)

    # One pass per group size: beam search (and best-of sampling) rows come in groups.
    by_group: dict[int, list[_Job]] = {}
    for job in jobs:
        by_group.setdefault(job.config.options.beam_size or job.config.options.best_of or 1, []).append(job)
    with torch.inference_mode():
        for group_jobs in by_group.values():
            _Pass(model, group_jobs, options, settle).run()
    return results  # type: ignore[return-value]
