"""Transcription stage: Whisper models, loaded once and shared, turning audio into a Transcript.

Heavy imports (torch, whisper) happen inside functions so that `subwatch --help`,
`check-config` and `status` start instantly.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from daemon import coverage, models
from daemon.coverage import CoverageOptions
from daemon.datatypes import Audio, MemoryLimit, Segment, Transcript, Word
from daemon.engine import (
    ChunkDecoding,
    ChunkRequest,
    EngineOptions,
    cuda_index,
    encode,
    language_probabilities,
    log_mel,
    prepare_model,
    transcribe_chunks,
    vote_language,
)
from daemon.loops import MAX_REPEATS, collapse_repeats  # collapse_repeats: tests import it from here
from daemon.models import ModelNotFound
from daemon.vad import SpeechChunk, SpeechMap, VadOptions, map_speech_many

__all__ = ["ModelNotFound"]  # raised by load_model and ModelStore; callers import it from here

if TYPE_CHECKING:
    from whisper.model import Whisper

log = logging.getLogger("subwatch.transcribe")


class DeviceUnavailable(Exception):
    """The configured device (for example `cuda`) is not usable on this machine."""


@dataclass(frozen=True)
class TranscribeOptions:
    """The per-folder rules that shape decoding.

    model: Whisper name (tiny … large-v3, turbo) or path to a .pt checkpoint.
    language: ISO 639-1 code of the speech; None detects it by a vote over up
        to `language_windows` speech chunks spread through the file.
    task: "transcribe", or "translate" (to English).
    prompt: names, jargon, spelling; given to every chunk as its previous text.
    beam_size: None decodes greedily; a number uses beam search with that many
        beams (and that many samples when a chunk is decoded again hotter).
    word_timestamps: align each word (the subtitle stage times cues by words).
    temperatures, compression_ratio_threshold, logprob_threshold,
    no_speech_threshold: whisper's quality guards (see engine.EngineOptions).
    batch_size: chunks decoded at once; None sizes it from free GPU memory.
    max_repeated_lines: a line said more than this many times in a row is a
        decoding loop and is kept once (2).
    language_windows: speech chunks that vote on the language (5).
    vad: how speech is found and cut into chunks (see vad.VadOptions).
    coverage: how speech that no decoded word covers is decoded again (see
        coverage.CoverageOptions).
    """

    model: str
    language: str | None
    task: str = "transcribe"
    prompt: str | None = None
    beam_size: int | None = None
    word_timestamps: bool = True
    # The guards' defaults are the engine's, written once there.
    temperatures: tuple[float, ...] = EngineOptions.temperatures
    compression_ratio_threshold: float | None = EngineOptions.compression_ratio_threshold
    logprob_threshold: float | None = EngineOptions.logprob_threshold
    no_speech_threshold: float | None = EngineOptions.no_speech_threshold
    batch_size: int | None = EngineOptions.batch_size
    max_repeated_lines: int = MAX_REPEATS
    language_windows: int = 5
    vad: VadOptions = field(default_factory=VadOptions)
    coverage: CoverageOptions = field(default_factory=CoverageOptions)


_warned_cpu: list[bool] = []  # the CPU fallback is logged once per process, not per job


def resolve_device(spec: str) -> str:
    """Given `auto`, `cpu`, `cuda` or `cuda:N`, return the torch device to use.

    `auto` is CUDA when PyTorch sees a GPU, otherwise the CPU with a warning.
    A GPU comes back with its index (`cuda` → `cuda:0`), so one card has one name.
    Raise DeviceUnavailable if CUDA is asked for explicitly and is not there:
    a user who wrote `cuda` wants to know, not to be moved to the CPU silently.
    """
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        if not _warned_cpu:
            _warned_cpu.append(True)
            log.warning(
                "device auto: PyTorch sees no CUDA GPU; transcribing on the CPU, which is much slower"
            )
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"device {spec!r} was configured but PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}); install a CUDA build of torch or set device: auto"
            )
        index = int(spec.split(":", 1)[1]) if ":" in spec else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device {spec!r} was configured but only {torch.cuda.device_count()} GPU(s) are present"
            )
        return f"cuda:{index}"
    return spec


def load_model(spec: str, models_dir: Path, device: str) -> Whisper:
    """Given `model:` as configured (name, .pt file or model folder), return the loaded model on `device`.

    Raise ModelNotFound, saying where we looked and how to provide the model,
    if it is neither readable nor downloadable.
    """
    source = models.resolve(spec, models_dir)
    try:
        return models.load(source, models_dir, device)
    except ModelNotFound:
        raise
    except Exception as exc:  # urllib, SSL, checksum and disk errors all mean the same to the user
        if _out_of_memory(exc) or source.kind != "name":
            raise  # found, but it does not fit (or a bug): not a missing model
        target = source.path
        raise ModelNotFound(
            f"model {spec!r} is not in {models_dir} (looked for {target}) and downloading it failed: "
            f"{exc}. Copy {target.name if target else 'the checkpoint'} there from a machine with "
            f"internet access (~/.cache/whisper), or set `model:` to a .pt file or a model folder"
        ) from exc


# Parameters of the published models, in millions, to estimate memory before one is downloaded.
MODEL_PARAMETERS = {"tiny": 39, "base": 74, "small": 244, "medium": 769, "large": 1550, "turbo": 809}


def load_estimate(spec: str, models_dir: Path) -> int:
    """Given a model spec, return about how many bytes of GPU memory loading it takes at its peak.

    whisper.load_model puts the checkpoint (fp16 in the published files) on the
    device and then builds an fp32 copy of the model there: about three times
    the file's size, or 6 bytes per parameter. 0 if the spec is unknown.
    """
    try:
        source = models.resolve(spec, models_dir)
    except ModelNotFound:
        return 0
    on_disk = models.source_bytes(source)
    if on_disk or source.kind != "name":
        return 3 * on_disk
    family = "turbo" if "turbo" in spec else spec.split(".")[0].split("-")[0]
    return MODEL_PARAMETERS.get(family, 0) * 10**6 * 6


K = TypeVar("K", bound=Hashable)


def model_bytes(model: Any) -> int:
    """Given a loaded model, return the bytes its weights and buffers take."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def choose_evictions(idle: Sequence[tuple[K, int]], allocated: int, needed: int, limit: int) -> list[K]:
    """Given the idle models on a card (least recently used first, with their sizes in bytes), the bytes
    allocated there, the bytes a new model needs and the card's limit, return the models to unload.

    The oldest go first, only as many as it takes for `allocated + needed` to
    fit the limit; all of them if it does not fit even then.
    """
    evict: list[K] = []
    for key, size in idle:
        if allocated + needed <= limit:
            break
        evict.append(key)
        allocated -= size
    return evict


@dataclass
class _Loaded:
    model: Any
    size: int  # bytes of its weights
    last_used: float  # monotonic time it was last taken or given back
    users: int = 0  # workers transcribing with it now; never unloaded while above 0


class ModelStore:
    """Loads each (model, device) once and keeps it for later jobs; unloads idle ones.

    Loading turbo takes seconds and gigabytes, so jobs share one instance. A
    model unused for `unload_after_seconds` is dropped so the GPU is free for
    other work on the server. With a `memory_limit`, each CUDA card is capped
    (the caching allocator enforces it) and loading a model unloads the least
    recently used idle models on that card until it fits, so several folders'
    models share it.

    The store is the one keeper of each card's limit (`memory_limit_on`). A
    model it hands out can be asked for its card's limit (`memory_limit_of`),
    which transcription passes to the engine to size its batches within it.
    """

    def __init__(
        self, models_dir: Path, unload_after_seconds: float = 300.0, memory_limit: MemoryLimit | None = None
    ) -> None:
        self.models_dir = models_dir
        self.unload_after_seconds = unload_after_seconds
        self.memory_limit = memory_limit
        self._models: dict[tuple[str, str], _Loaded] = {}
        self._limits: dict[str, int] = {}  # CUDA device → bytes it is capped at
        self._lock = threading.Lock()

    def get(self, spec: str, device: str) -> Whisper:
        """Given a model spec and a resolved device, return the loaded model (fp16 weights on a GPU).

        The model is not held: use `use` while transcribing with it.
        """
        with self.use(spec, device) as model:
            return model

    @contextmanager
    def use(self, spec: str, device: str) -> Iterator[Whisper]:
        """Given a model spec and a resolved device, load the model if needed and hold it while in the block.

        A held model is never unloaded (idle or to make room). Raise
        ModelNotFound if it cannot be found, OutOfMemoryError if it does not
        fit on the card even with every idle model unloaded.
        """
        key = (spec, device)
        with self._lock:
            entry = self._models.get(key)
            if entry is None:
                entry = self._models[key] = self._load(spec, device)
            entry.users += 1
            entry.last_used = time.monotonic()
        try:
            yield entry.model
        finally:
            with self._lock:
                entry.users -= 1
                entry.last_used = time.monotonic()

    def loaded(self) -> list[tuple[str, str]]:
        """Return the (spec, device) of every loaded model, least recently used first."""
        with self._lock:
            return [key for key, _ in sorted(self._models.items(), key=lambda item: item[1].last_used)]

    def memory_limit_on(self, device: str) -> int | None:
        """Given a resolved device, return the bytes this process may use there; None if it is not capped."""
        return self._limits.get(device)

    def set_memory_limit(self, memory_limit: MemoryLimit | None) -> None:
        """Apply a new limit (a reloaded config) to the cards already in use; None lifts it."""
        with self._lock:
            self.memory_limit = memory_limit
            devices, self._limits = list(self._limits), {}
            for device in devices:
                if memory_limit is None:
                    _cap_card(device, None)
                else:
                    self._limit_for(device)

    def _load(self, spec: str, device: str) -> _Loaded:
        import torch

        limit = self._limit_for(device)
        if limit is not None:
            self._make_room(device, load_estimate(spec, self.models_dir), limit)
        started = time.monotonic()
        try:
            model = prepare_model(load_model(spec, self.models_dir, device))
        except torch.cuda.OutOfMemoryError:
            idle = [key for key, _ in self._idle_on(device)]
            if limit is None or not self._unload(idle, f"to load {spec}"):
                raise
            model = None  # retried below, once the failed attempt's tensors are freed
        if model is None:
            _free_gpu_cache()
            model = prepare_model(load_model(spec, self.models_dir, device))
        size = model_bytes(model)
        log.info("loaded model %s on %s in %.1f s (%.0f MiB)", spec, device, time.monotonic() - started,
                 size / 2**20)
        model.subwatch_memory_limit = partial(self.memory_limit_on, device)  # read by memory_limit_of
        return _Loaded(model, size, time.monotonic())

    def _limit_for(self, device: str) -> int | None:
        """Return the byte limit of a CUDA device, capping it on first use; None on the CPU or without one."""
        if self.memory_limit is None or not device.startswith("cuda"):
            return None
        if device not in self._limits:
            import torch

            total = torch.cuda.get_device_properties(cuda_index(device)).total_memory
            self._limits[device] = _cap_card(device, self.memory_limit.on_card(total))
            log.info("gpu_memory_limit: subwatch uses at most %.1f of the %.1f GiB of %s",
                     self._limits[device] / 2**30, total / 2**30, device)
        return self._limits[device]

    def _idle_on(self, device: str) -> list[tuple[tuple[str, str], int]]:
        """Return the models on `device` that no worker holds, least recently used first, with sizes."""
        idle = [(key, e) for key, e in self._models.items() if key[1] == device and e.users == 0]
        return [(key, e.size) for key, e in sorted(idle, key=lambda item: item[1].last_used)]

    def _make_room(self, device: str, needed: int, limit: int) -> None:
        import torch

        allocated = torch.cuda.memory_allocated(cuda_index(device))
        self._unload(choose_evictions(self._idle_on(device), allocated, needed, limit), "to make room")

    def _unload(self, keys: list[tuple[str, str]], why: str) -> bool:
        """Drop the given models; return True if any was dropped."""
        for key in keys:
            del self._models[key]
        if keys:
            gc.collect()
            _free_gpu_cache()
            log.info("unloaded model(s) %s %s within gpu_memory_limit", ", ".join(k[0] for k in keys), why)
        return bool(keys)

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Drop models no worker holds that were unused for unload_after_seconds; return the specs dropped."""
        now = time.monotonic() if now is None else now
        dropped = []
        with self._lock:
            for key, entry in list(self._models.items()):
                if entry.users == 0 and now - entry.last_used >= self.unload_after_seconds:
                    del self._models[key]
                    dropped.append(key[0])
        if dropped:
            _free_gpu_cache()
            log.info("unloaded idle model(s) %s", ", ".join(dropped))
        return dropped

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
        _free_gpu_cache()


def memory_limit_of(model: Whisper) -> int | None:
    """Given a model, return the bytes this process may use on its card, as the ModelStore that loaded
    it keeps them; None if the card is not capped or the model comes from elsewhere."""
    limit_on_its_card = getattr(model, "subwatch_memory_limit", None)
    return None if limit_on_its_card is None else limit_on_its_card()


def _cap_card(device: str, limit: int | None) -> int:
    """Given a CUDA device and a number of bytes, keep this process within them there; return the limit.

    The caching allocator enforces it: an allocation beyond it raises
    OutOfMemoryError as a full card would, so decoding halves its batch, and
    the engine sizes batches within it (EngineOptions.memory_limit). None lifts the limit.
    """
    import torch

    index = cuda_index(device)
    total = torch.cuda.get_device_properties(index).total_memory
    if limit is None:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        return total
    limit = max(1, min(limit, total))
    torch.cuda.set_per_process_memory_fraction(limit / total, index)
    return limit


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _free_gpu_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def transcribe(
    audio: Audio,
    options: TranscribeOptions,
    model: Whisper,
    progress: Callable[[float], None] | None = None,
    show_progress_bar: bool = False,
) -> Transcript:
    """Given 16 kHz mono audio and the folder's options, return its Transcript.

    Speech is found first (silence, music and credits are never decoded) and
    packed into windows of at most 30 s that are decoded in batches. `progress(f)` is
    called as chunks finish and with 1.0 at the end; `show_progress_bar` draws
    a tqdm bar on stderr. Raise ValueError if the audio is not 16 kHz.
    """
    return _transcribe([(audio, options)], model, progress, show_progress_bar)[0]


def transcribe_many(
    items: Sequence[tuple[Audio, TranscribeOptions]],
    model: Whisper,
    progress: Callable[[float], None] | None = None,
) -> list[Transcript]:
    """Given several files' audio and options sharing one model, return their Transcripts in order.

    The chunks of all files are decoded in the same batches, which keeps a GPU
    busy through a backlog of short files. `progress` covers all of them.
    """
    return _transcribe(items, model, progress, show_progress_bar=False)


@dataclass
class _File:
    """One item on its way through the stage."""

    audio: Audio
    options: TranscribeOptions
    chunks: list[SpeechChunk]
    faint: tuple[tuple[float, float], ...]  # where speech may be: what must end up with words
    language: str | None = None
    probability: float | None = None


class _Progress:
    """Turns settled chunks into progress fractions (by seconds of audio) and an optional bar.

    Coverage rounds add work as they find it (`add`); the fraction never goes back.
    """

    def __init__(self, callback: Callable[[float], None] | None, bar: bool) -> None:
        self.callback = callback
        self.seconds: list[float] = []
        self.done, self.shown = 0.0, 0.0
        self.bar = None
        if bar:
            import tqdm

            self.bar = tqdm.tqdm(total=0, unit="s", desc="transcribing", leave=False)

    def add(self, seconds: list[float]) -> int:
        """Count more windows of work; return the index of the first of them."""
        first = len(self.seconds)
        self.seconds += seconds
        if self.bar is not None:
            self.bar.total = round(sum(self.seconds))
            self.bar.refresh()
        return first

    def report(self, fraction: float) -> None:
        self.shown = max(self.shown, min(1.0, fraction))
        if self.callback is not None:
            self.callback(self.shown)

    def chunk_done(self, index: int) -> None:
        self.done += self.seconds[index]
        if self.bar is not None:
            self.bar.update(round(self.done) - self.bar.n)
        self.report(0.02 + 0.98 * self.done / max(sum(self.seconds), 1e-9))  # 2 %: speech detection

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass(frozen=True)
class _Decoded:
    """One decoded window of a file; `retry` is the stretch a coverage round decoded it for."""

    chunk: SpeechChunk
    result: ChunkDecoding
    retry: tuple[float, float] | None = None


# A window to decode: (file index, the window, the uncovered stretch it retries or None).
_Work = tuple[int, SpeechChunk, "tuple[float, float] | None"]


def _transcribe(
    items: Sequence[tuple[Audio, TranscribeOptions]],
    model: Whisper,
    progress: Callable[[float], None] | None,
    show_progress_bar: bool,
) -> list[Transcript]:
    model = prepare_model(model)
    files = [
        _File(audio, options, list(found.chunks), found.faint)
        for (audio, options), found in zip(items, _speech(items), strict=True)
    ]
    features = _detect_languages(model, files)
    tracker = _Progress(progress, show_progress_bar)
    tracker.report(0.02)
    decoded: list[list[_Decoded]] = [[] for _ in files]
    try:
        first: list[_Work] = [(f, chunk, None) for f, file in enumerate(files) for chunk in file.chunks]
        _decode_round(model, files, first, features, tracker, decoded)
        features.clear()
        tried: list[list[tuple[float, float]]] = [[] for _ in files]
        for _ in range(max((file.options.coverage.max_rounds for file in files), default=0)):
            retries = _coverage_round(files, decoded, tried)
            if not retries:
                break
            _decode_round(model, files, retries, {}, tracker, decoded)
    finally:
        tracker.close_bar()
    tracker.report(1.0)
    return [_transcript(file, mine) for file, mine in zip(files, decoded, strict=True)]


def _decode_round(
    model: Whisper,
    files: list[_File],
    work: list[_Work],
    features: dict[tuple[int, SpeechChunk], Any],
    tracker: _Progress,
    decoded: list[list[_Decoded]],
) -> None:
    """Decode the windows in `work` and add each result to its file's list in `decoded`.

    One engine call per set of quality guards (usually one), so all files' windows share batches.
    """
    requests = [_request(model, files[f], chunk, features.get((f, chunk))) for f, chunk, _ in work]
    first = tracker.add([request.duration for request in requests])
    memory_limit = memory_limit_of(model)
    groups: dict[EngineOptions, list[int]] = {}
    for index, (f, _, _) in enumerate(work):
        groups.setdefault(_engine_options(files[f].options, memory_limit), []).append(index)
    for engine_options, indices in groups.items():
        results = transcribe_chunks(
            model,
            [requests[i] for i in indices],
            engine_options,
            on_done=lambda n, indices=indices: tracker.chunk_done(first + indices[n]),
        )
        for i, result in zip(indices, results, strict=True):
            f, chunk, stretch = work[i]
            decoded[f].append(_Decoded(chunk, result, stretch))


def _coverage_round(
    files: list[_File], decoded: list[list[_Decoded]], tried: list[list[tuple[float, float]]]
) -> list[_Work]:
    """Return the windows of the next coverage round: each file's uncovered speech, in windows not tried.

    Each window starts where the words before its stretch stopped (see
    coverage.retry_window) and is decoded alone, so the model meets that speech
    at the window's start, with nothing before it to end the window on.
    """
    work: list[_Work] = []
    for f, file in enumerate(files):
        if not file.options.coverage.max_rounds:
            continue
        words = _word_times(file, decoded[f])
        stretches = _uncovered(file, words)
        windows = coverage.merge(coverage.retry_window(s, words, file.options.coverage) for s in stretches)
        windows = coverage.untried(windows, tried[f])
        for window in windows:
            tried[f].append(window)
            for piece in coverage.split_long(window, file.options.vad.max_chunk_s):
                work.append((f, SpeechChunk((piece,), (piece,)), piece))
        if windows:
            log.debug("no words over %.1f s of speech in %d stretch(es); decoding %s again",
                      coverage.total(stretches), len(stretches),
                      ", ".join(f"{a:.1f}-{b:.1f}" for a, b in windows[:8]))
    return work


def _word_times(file: _File, decoded: list[_Decoded]) -> list[tuple[float, float]]:
    """Return the (start, end) of every decoded word on the file's timeline (segments without words
    count whole), in time order."""
    timed = [(t.start, t.end) for segment in _placed(file, decoded) for t in (segment.words or (segment,))]
    return sorted(timed)


def _uncovered(file: _File, words: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the file's stretches of possible speech that none of its words covers (see daemon.coverage)."""
    return coverage.uncovered(file.faint, words, file.options.coverage)


def _speech(items: Sequence[tuple[Audio, TranscribeOptions]]) -> list[SpeechMap]:
    """Return the speech map of each item's audio, finding speech in all files together."""
    maps: list[SpeechMap | None] = [None] * len(items)
    groups: dict[VadOptions, list[int]] = {}
    for index, (_, options) in enumerate(items):
        groups.setdefault(options.vad, []).append(index)
    for vad_options, indices in groups.items():
        found_all = map_speech_many([items[i][0] for i in indices], vad_options)
        for i, found in zip(indices, found_all, strict=True):
            maps[i] = found
            seconds = sum(c.duration for c in found.chunks)
            log.debug("%d speech chunk(s), %.1f of %.1f s", len(found.chunks), seconds, items[i][0].duration)
    return maps  # type: ignore[return-value]


def _detect_languages(model: Whisper, files: list[_File]) -> dict[tuple[int, SpeechChunk], Any]:
    """Set each file's language (given, or voted by several of its chunks); return the voters' encodings.

    The voters' encoder outputs are handed back so that decoding does not encode them again.
    """
    voters: list[tuple[int, int]] = []
    for f, file in enumerate(files):
        file.language = file.options.language
        if file.language is None and not model.is_multilingual:
            file.language = "en"  # English-only models (*.en) have no language tokens
        elif file.language is None and file.chunks:
            voters += [(f, c) for c in _voter_chunks(file.chunks, file.options.language_windows)]
    encoded: dict[tuple[int, int], Any] = {}
    for start in range(0, len(voters), 16):
        part = voters[start : start + 16]
        mel = log_mel(
            [files[f].chunks[c].samples(files[f].audio) for f, c in part], model.dims.n_mels, model.device
        )
        encoded.update(zip(part, encode(model, mel), strict=True))
    if not voters:
        return {}
    import torch

    distributions = language_probabilities(model, torch.stack([encoded[v] for v in voters]))
    for f, file in enumerate(files):
        mine = [i for i, (owner, _) in enumerate(voters) if owner == f]
        if mine:
            weights = [_speech_seconds(file.chunks[voters[i][1]]) for i in mine]
            file.language, file.probability = vote_language([distributions[i] for i in mine], weights)
            log.debug("language %s (%.2f) by %d chunk(s)", file.language, file.probability, len(mine))
    return {(f, files[f].chunks[c]): features for (f, c), features in encoded.items()}


def _voter_chunks(chunks: list[SpeechChunk], count: int) -> list[int]:
    """Return indices of up to `count` chunks spread through the file: the wordiest of each stretch.

    A film's first 30 s are often music or a studio logo; chunks from its
    whole length outvote one odd stretch.
    """
    count = max(1, min(count, len(chunks)))
    bounds = [round(i * len(chunks) / count) for i in range(count + 1)]
    return [
        max(range(lo, hi), key=lambda i: _speech_seconds(chunks[i]))
        for lo, hi in zip(bounds, bounds[1:], strict=False)
        if hi > lo
    ]


def _speech_seconds(chunk: SpeechChunk) -> float:
    return sum(end - start for start, end in chunk.regions) or chunk.duration


def _request(model: Whisper, file: _File, chunk: SpeechChunk, features: Any) -> ChunkRequest:
    """Return the engine request for one chunk: its audio (or encoding) and the folder's wording."""
    from whisper.decoding import DecodingOptions

    options = file.options
    decoding = DecodingOptions(
        task=options.task,
        language=file.language,
        prompt=options.prompt,  # every chunk gets it, as <|startofprev|> text
        beam_size=options.beam_size,
        fp16=model.device.type == "cuda",
    )
    return ChunkRequest(
        decoding,
        samples=None if features is not None else chunk.samples(file.audio),
        features=features,
        duration=min(chunk.duration, 30.0),
        word_timestamps=options.word_timestamps,
    )


def _engine_options(o: TranscribeOptions, memory_limit: int | None) -> EngineOptions:
    """The engine's share of a folder's options (its quality guards and batch size), and the model's
    card's memory limit."""
    return EngineOptions(
        temperatures=o.temperatures,
        compression_ratio_threshold=o.compression_ratio_threshold,
        logprob_threshold=o.logprob_threshold,
        no_speech_threshold=o.no_speech_threshold,
        batch_size=o.batch_size,
        memory_limit=memory_limit,
    )


def _transcript(file: _File, decoded: list[_Decoded]) -> Transcript:
    """Put a file's decoded windows onto its timeline and return its Transcript."""
    segments = collapse_repeats(_placed(file, decoded), file.options.max_repeated_lines)
    speech = coverage.merge(region for chunk in file.chunks for region in chunk.regions)
    left = _uncovered(file, _word_times(file, decoded))
    language = "en" if file.options.task == "translate" else (file.language or "en")
    probability = None if file.options.task == "translate" else file.probability
    return Transcript(
        tuple(segments), language, probability, file.audio.duration,
        speech_seconds=round(coverage.total(speech), 2), uncovered_seconds=round(coverage.total(left), 2),
    )


def _placed(file: _File, decoded: list[_Decoded]) -> list[Segment]:
    """Return the segments of all decoded windows on the file's timeline, in time order.

    A coverage retry keeps only the words inside its window (by their middle):
    the window lies between words of earlier rounds, so every one of them is new.
    """
    duration = file.audio.duration
    segments: list[Segment] = []
    for item in decoded:
        if item.result.silent or (item.retry and not coverage.confident(item.result, file.options.coverage)):
            continue
        placed = [_on_timeline(segment, item.chunk, duration) for segment in item.result.segments]
        if item.retry is not None:
            placed = [s for s in (_within(segment, item.retry) for segment in placed) if s is not None]
        segments += placed
    ends = [end for _, end in file.faint]
    segments = [_snapped(segment, file.faint, ends) for segment in segments]
    return sorted(segments, key=lambda segment: (segment.start, segment.end))


def _snapped(segment: Segment, speech: Sequence[tuple[float, float]], ends: list[float]) -> Segment:
    """Return the segment with word edges that stick out of speech moved onto it (see coverage.snap);
    a segment bounded by its words stays bounded by them."""
    if not segment.words:
        return segment
    words = []
    for word in segment.words:
        start, end = coverage.snap((word.start, word.end), speech, ends)
        words.append(word if (start, end) == (word.start, word.end) else replace(word, start=start, end=end))
    was_first, was_last = segment.words[0], segment.words[-1]
    start = words[0].start if segment.start <= was_first.start else max(segment.start, words[0].start)
    end = words[-1].end if segment.end >= was_last.end else min(segment.end, words[-1].end)
    return Segment(start, max(start, end), segment.text, tuple(words))


def _within(segment: Segment, window: tuple[float, float]) -> Segment | None:
    """Return the part of a segment inside `window` (by its words' middles), or None if nothing is."""
    if not segment.words:
        return segment if coverage.inside((segment.start, segment.end), window) else None
    words = tuple(w for w in segment.words if coverage.inside((w.start, w.end), window))
    if not words:
        return None
    if len(words) == len(segment.words):
        return segment
    return Segment(words[0].start, words[-1].end, "".join(w.text for w in words), words)


def _on_timeline(segment: Segment, chunk: SpeechChunk, duration: float) -> Segment:
    """Map a chunk-relative segment and its words onto the file's timeline, within [0, duration]."""

    def at(t: float) -> float:
        return min(max(chunk.to_timeline(t), 0.0), duration)

    words = []
    for word in segment.words:
        start = at(word.start)
        words.append(Word(start, max(start, at(word.end)), word.text, word.probability))
    start = at(segment.start)
    return Segment(start, max(start, at(segment.end)), segment.text, tuple(words))
