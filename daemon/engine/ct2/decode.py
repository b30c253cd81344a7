"""Decoding windows with CTranslate2: the same requests, guards and results as the torch engine.

Windows go through in batches: each batch is encoded once, its languages detected
where not given, then decoded with `generate` (beam search batched across the
windows, whisper's logit rules applied inside CTranslate2), and windows failing
whisper's quality guards are decoded again at the next temperature, reusing their
encoder output. A window asking for it (ChunkRequest.encoder_seconds) is encoded at that
length rather than 30 s. Segments are cut at timestamp pairs as for the torch engine, and
words are timed by CTranslate2's `align` (the cross-attention of whisper's
alignment heads and DTW, in C++), then by the same code that ends whisper's
find_alignment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from daemon.engine.alignment import words_from_path
from daemon.engine.ct2.model import Ct2Whisper, _storage
from daemon.engine.jobs import N_FRAMES, ChunkDecoding, ChunkRequest, EngineOptions, Job, make_jobs
from daemon.engine.results import is_silence, needs_retry
from daemon.engine.segments import assign_words, split_segments, timed

if TYPE_CHECKING:
    import torch

# Windows decoded at once when EngineOptions.batch_size is None: with 4 encoded at once
# (Ct2Whisper.encode), the peak was 1.2 GB against 1.7 GB for 16, at the same speed.
CPU_BATCH = 8


def transcribe_chunks(
    model: Ct2Whisper,
    requests: Sequence[ChunkRequest],
    options: EngineOptions = EngineOptions(),
    on_done: Callable[[int], None] | None = None,
) -> list[ChunkDecoding]:
    """Given windows to transcribe, return each one's decoding with segments (and words if asked).

    The contract of daemon.engine.transcribe_chunks: windows failing the guards are decoded
    again hotter, silent ones come back with `silent=True`, `on_done(i)` as window i settles.
    """
    jobs = make_jobs(model, requests, options.temperatures)  # type: ignore[arg-type]
    results: list[ChunkDecoding | None] = [None] * len(requests)
    for batch in _batches(jobs, options.batch_size or CPU_BATCH):
        for job, result in _decode_batch(model, batch, options):
            results[job.index] = result
            if on_done is not None:
                on_done(job.index)
    return results  # type: ignore[return-value]


def _frames(request: ChunkRequest) -> int:
    """The mel frames the encoder reads for a request: the whole window, or its encoder_seconds."""
    if request.encoder_seconds is None or request.features is not None:
        return N_FRAMES
    return min(N_FRAMES, round(request.encoder_seconds * 100))


def _batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """The jobs in batches of at most `size`, each batch's windows encoded at one length, in order."""
    lengths: dict[int, list[Job]] = {}
    for job in jobs:
        lengths.setdefault(_frames(job.request), []).append(job)
    return [group[i : i + size] for group in lengths.values() for i in range(0, len(group), size)]


def _decode_batch(
    model: Ct2Whisper, jobs: list[Job], options: EngineOptions
) -> list[tuple[Job, ChunkDecoding]]:
    """Encode a batch once, decode it (again hotter where the guards fail), and finish the results."""
    features = _encode(model, [job.request for job in jobs], options.encoder_batch_size)
    _detect(model, jobs, features)
    settled: list[tuple[int, ChunkDecoding]] = []
    pending = list(range(len(jobs)))
    while pending:
        groups: dict[tuple[int, int], list[int]] = {}
        for i in pending:
            groups.setdefault((jobs[i].config.index, jobs[i].attempt), []).append(i)
        pending = []
        for rows in groups.values():
            for i, result in zip(
                rows, _generate(model, [jobs[i] for i in rows], features[rows]), strict=True
            ):
                job = jobs[i]
                if needs_retry(options, result) and job.attempt + 1 < len(job.temperatures):
                    job.attempt += 1
                    pending.append(i)
                else:
                    settled.append((i, result))
    return _finish(model, jobs, settled, features, options)


def _encode(model: Ct2Whisper, requests: Sequence[ChunkRequest], batch_size: int) -> torch.Tensor:
    """Each request's encoder output: its own features, or its log-mel (given or computed) encoded."""
    import torch

    from daemon.engine.encoder import log_mel

    features: list[Any] = [None if r.features is None else r.features.float().cpu() for r in requests]
    todo = [i for i, f in enumerate(features) if f is None]
    for start in range(0, len(todo), batch_size):
        part = todo[start : start + batch_size]
        given = [requests[i].mel for i in part]
        missing = [n for n, mel in enumerate(given) if mel is None]
        computed = (
            log_mel([_samples(requests[part[n]]) for n in missing], model.dims.n_mels, "cpu")
            if missing
            else []
        )
        mels = list(given)
        for n, mel in zip(missing, computed, strict=True):
            mels[n] = mel
        [frames] = {_frames(requests[i]) for i in part}  # one length per batch (_batches)
        encoded = model.encode(torch.stack([torch.as_tensor(m)[..., :frames] for m in mels]))
        for offset, i in enumerate(part):
            features[i] = encoded[offset]
    return torch.stack(features)


def _samples(request: ChunkRequest) -> Any:
    if request.samples is None:
        raise ValueError("a ChunkRequest needs samples, mel or features")
    return request.samples


def _detect(model: Ct2Whisper, jobs: list[Job], features: torch.Tensor) -> None:
    """Detect the language of windows whose options leave it open, as whisper.decode does."""
    rows = [i for i, job in enumerate(jobs) if job.config.detect and job.language is None]
    if rows:
        for i, dist in zip(rows, model.language_probabilities(features[rows]), strict=True):
            jobs[i].language, jobs[i].language_probs = max(dist, key=dist.get), dist  # type: ignore[arg-type]


def _generate(model: Ct2Whisper, jobs: list[Job], features: torch.Tensor) -> list[ChunkDecoding]:
    """Decode windows sharing options and temperature with one `generate` call; rank as whisper does."""
    from whisper.utils import compression_ratio

    config, temperature = jobs[0].config, jobs[0].temperature
    o = config.options
    length_penalty = 1.0 if o.length_penalty is None else o.length_penalty  # None: mean log probability
    kwargs: dict[str, Any] = {
        "max_length": config.sample_len,
        "return_scores": True,
        "return_no_speech_prob": True,
        "suppress_blank": o.suppress_blank,
        "suppress_tokens": list(config.suppress),
        "max_initial_timestamp_index": features.shape[1]  # encoder positions: 1500 for 30 s
        if config.max_initial is None
        else config.max_initial,
        "length_penalty": length_penalty,
    }
    if temperature == 0 and config.beam:
        kwargs.update(beam_size=config.beam, patience=config.patience)
    elif temperature == 0:
        kwargs.update(beam_size=1, sampling_topk=1)
    else:  # whisper's best_of: that many samples, the likeliest kept
        kwargs.update(
            beam_size=1,
            sampling_topk=0,
            sampling_temperature=temperature,
            num_hypotheses=o.beam_size or o.best_of or 1,
        )
    outputs = model.ct2.generate(_storage(features.numpy()), [job.start_tokens() for job in jobs], **kwargs)
    decoded = []
    for job, out in zip(jobs, outputs, strict=True):
        best = max(range(len(out.scores)), key=lambda n: out.scores[n])
        tokens = [t for t in out.sequences_ids[best] if t != config.tokenizer.eot]
        total = out.scores[best] * max(len(tokens), 1) ** length_penalty  # the summed log probability
        text = config.tokenizer.decode(tokens).strip()
        decoded.append(
            ChunkDecoding(
                tokens=tuple(tokens),
                text=text,
                language=job.language or o.language or "en",
                language_probs=job.language_probs,
                avg_logprob=total / (len(tokens) + 1),
                no_speech_prob=out.no_speech_prob,
                temperature=temperature,
                compression_ratio=compression_ratio(text),
            )
        )
    return decoded


def _finish(
    model: Ct2Whisper,
    jobs: list[Job],
    settled: list[tuple[int, ChunkDecoding]],
    features: torch.Tensor,
    options: EngineOptions,
) -> list[tuple[Job, ChunkDecoding]]:
    """Mark silence, cut segments, and time words (all windows of the batch that ask, together)."""
    finished: list[tuple[Job, ChunkDecoding]] = []
    to_align: list[tuple[int, ChunkDecoding, list[Any]]] = []
    for i, result in settled:
        job = jobs[i]
        if is_silence(options, result):
            finished.append((job, replace(result, silent=True)))
            continue
        pieces = split_segments(list(result.tokens), job.config.tokenizer, job.request.duration)
        result = replace(result, segments=timed(segment for segment, _ in pieces))
        if job.request.word_timestamps and pieces:
            to_align.append((i, result, pieces))
        else:
            finished.append((job, result))
    for (i, result, pieces), words in zip(to_align, _align(model, jobs, to_align, features), strict=True):
        finished.append((jobs[i], replace(result, segments=timed(assign_words(pieces, words)))))
    return finished


def _align(
    model: Ct2Whisper,
    jobs: list[Job],
    work: list[tuple[int, ChunkDecoding, list[Any]]],
    features: torch.Tensor,
) -> list[list[Any]]:
    """Word timings of each window in `work`, aligned by CTranslate2 in groups sharing a start sequence."""
    timings: list[list[Any]] = [[] for _ in work]
    groups: dict[tuple[int, ...], list[int]] = {}
    for n, (i, result, _) in enumerate(work):
        job = jobs[i]
        if any(t < job.config.tokenizer.eot for t in result.tokens):
            groups.setdefault(_sot_sequence(job), []).append(n)
    for sot, members in groups.items():
        rows = [work[n][0] for n in members]
        texts = [[t for t in work[n][1].tokens if t < jobs[work[n][0]].config.tokenizer.eot] for n in members]
        frames = [min(N_FRAMES, round(jobs[i].request.duration * 100)) for i in rows]
        aligned = model.ct2.align(_storage(features[rows].numpy()), list(sot), texts, frames)
        for n, text, out in zip(members, texts, aligned, strict=True):
            path = out.alignments
            text_indices = [a for a, _ in path]
            time_indices = [b for _, b in path]
            tokenizer = jobs[work[n][0]].config.tokenizer
            timings[n] = words_from_path(
                tokenizer, text, text_indices, time_indices, list(out.text_token_probs)
            )
    return timings


def _sot_sequence(job: Job) -> tuple[int, ...]:
    """The window's <|startoftranscript|> language task tokens (the detected language filled in)."""
    tokens = job.start_tokens()[job.config.sot_index :]
    return tuple(tokens[: len(job.config.tokenizer.sot_sequence)])
