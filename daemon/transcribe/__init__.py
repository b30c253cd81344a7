"""Transcription stage: Whisper models, loaded once and shared, turning audio into a Transcript.

`transcribe` and `transcribe_many` run the stage here; its parts, in the order the data flows:

- `options`: `TranscribeOptions`, a folder's rules for decoding.
- `models`: where a model comes from (a name, a .pt file, a faster-whisper or Hugging Face
  folder) and how it is read into openai-whisper's model.
- `store`: `ModelStore` loads each model once per device and shares it, unloads
  idle ones, and keeps each CUDA card within its memory limit (load estimates,
  evictions of the least recently used idle models, `memory_limit_of`).
- `vad`: silero's speech detection, on levelled and raw audio, and the windows it packs.
- `speech`: where each file's speech is (voice activity detection for all files
  together), and the windows spread through a file that vote on its language.
- `coverage`: the speech no decoded word covers, and the windows that decode it again.
- `recheck`: the lines read with little confidence, decoded again alone.
- `state`: what the stage carries per file (`File`) and per decoded window.
- `rounds`: the engine request for each window, and the windows of each coverage
  round: speech that no decoded word covers, decoded again alone.
- `placement`: decoded windows onto the file's timeline (words snapped onto
  speech, a retry keeping only its new words), what is left uncovered, and the
  `Transcript`; `repeats` keeps a line Whisper loops on once.
- `progress`: fractions by seconds of audio, and an optional tqdm bar.

The device choice, the language vote and the decoding rounds are here, beside
the entry points: they call the engine through this module's names
(`transcribe_chunks`, `language_probabilities`), which is where tests spy on them.

Heavy imports (torch, whisper) happen inside functions so that `subwatch --help`,
`check-config` and `status` start instantly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from daemon.datatypes import Audio, Transcript
from daemon.engine import (
    EngineOptions,
    encode,
    language_probabilities,
    log_mel,
    prepare_model,
    transcribe_chunks,
    vote_language,
)
from daemon.loops import collapse_repeats
from daemon.transcribe.models import ModelNotFound
from daemon.transcribe.options import TranscribeOptions
from daemon.transcribe.placement import transcript_of
from daemon.transcribe.progress import Progress
from daemon.transcribe.recheck import better, recheck_round, words_of
from daemon.transcribe.rounds import chunk_request, coverage_round, engine_options_for
from daemon.transcribe.speech import speech_maps, speech_seconds, voter_chunks
from daemon.transcribe.state import Decoded, File, Work
from daemon.transcribe.store import (
    MODEL_PARAMETERS,
    ModelStore,
    choose_evictions,
    load_estimate,
    load_model,
    memory_limit_of,
    model_bytes,
)
from daemon.transcribe.vad import SpeechChunk

__all__ = [
    "MODEL_PARAMETERS",
    "DeviceUnavailable",
    "ModelNotFound",  # raised by load_model and ModelStore; callers import it from here
    "ModelStore",
    "TranscribeOptions",
    "choose_evictions",
    "collapse_repeats",
    "load_estimate",
    "load_model",
    "memory_limit_of",
    "model_bytes",
    "resolve_device",
    "transcribe",
    "transcribe_many",
]

if TYPE_CHECKING:
    from whisper.model import Whisper

log = logging.getLogger("subwatch.transcribe")


class DeviceUnavailable(Exception):
    """The configured device (for example `cuda`) is not usable on this machine."""


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


def _transcribe(
    items: Sequence[tuple[Audio, TranscribeOptions]],
    model: Whisper,
    progress: Callable[[float], None] | None,
    show_progress_bar: bool,
) -> list[Transcript]:
    """The stage for several files together: speech found, languages voted, every speech window
    decoded (the first round), then coverage rounds until no new window is left; one Transcript each."""
    model = prepare_model(model)
    files = [
        File(audio, options, list(found.chunks), found.faint)
        for (audio, options), found in zip(items, speech_maps(items), strict=True)
    ]
    features = _detect_languages(model, files)
    tracker = Progress(progress, show_progress_bar)
    tracker.report(0.02)
    decoded: list[list[Decoded]] = [[] for _ in files]
    try:
        first: list[Work] = [(f, chunk, None) for f, file in enumerate(files) for chunk in file.chunks]
        _decode_round(model, files, first, features, tracker, decoded)
        features.clear()
        _recheck(model, files, tracker, decoded)
        tried: list[list[tuple[float, float]]] = [[] for _ in files]
        for _ in range(max((file.options.coverage.max_rounds for file in files), default=0)):
            retries = coverage_round(files, decoded, tried)
            if not retries:
                break
            _decode_round(model, files, retries, {}, tracker, decoded)
    finally:
        tracker.close_bar()
    tracker.report(1.0)
    return [transcript_of(file, mine) for file, mine in zip(files, decoded, strict=True)]


def _decode_round(
    model: Whisper,
    files: list[File],
    work: list[Work],
    features: dict[tuple[int, SpeechChunk], Any],
    tracker: Progress,
    decoded: list[list[Decoded]],
) -> None:
    """Decode the windows in `work` and add each result to its file's list in `decoded`.

    One engine call per set of quality guards (usually one), so all files' windows share batches.
    """
    requests = [
        chunk_request(model, files[f], chunk, features.get((f, chunk)), retry=stretch is not None)
        for f, chunk, stretch in work
    ]
    first = tracker.add([request.duration for request in requests])
    memory_limit = memory_limit_of(model)
    groups: dict[EngineOptions, list[int]] = {}
    for index, (f, _, _) in enumerate(work):
        groups.setdefault(engine_options_for(files[f].options, memory_limit), []).append(index)
    for engine_options, indices in groups.items():
        results = transcribe_chunks(
            model,
            [requests[i] for i in indices],
            engine_options,
            on_done=lambda n, indices=indices: tracker.chunk_done(first + indices[n]),
        )
        for i, result in zip(indices, results, strict=True):
            f, chunk, stretch = work[i]
            decoded[f].append(Decoded(chunk, result, stretch))


def _recheck(model: Whisper, files: list[File], tracker: Progress, decoded: list[list[Decoded]]) -> None:
    """Decode again alone each line the first round read with little confidence (see
    transcribe.recheck); keep a new reading where the model is surer of it."""
    work = recheck_round(files, decoded)
    if not work:
        return
    again: list[list[Decoded]] = [[] for _ in files]
    _decode_round(model, files, work, {}, tracker, again)
    kept = 0
    for f, earlier in enumerate(decoded):
        mine = [w for w in work if w[0] == f]
        if not mine:
            continue
        placed = words_of(files[f], earlier)  # once per file: placing every word is the costly part
        winners = [better(files[f], placed, w, d) for w, d in zip(mine, again[f], strict=True)]
        earlier += [w for w in winners if w is not None]
        kept += sum(w is not None for w in winners)
    log.debug("rechecked %d line(s) read with little confidence; %d read better alone", len(work), kept)


def _detect_languages(model: Whisper, files: list[File]) -> dict[tuple[int, SpeechChunk], Any]:
    """Set each file's language (given, or voted by several of its chunks); return the voters' encodings.

    The voters' encoder outputs are handed back so that decoding does not encode them again.
    """
    voters: list[tuple[int, int]] = []
    for f, file in enumerate(files):
        file.language = file.options.language
        if file.language is None and not model.is_multilingual:
            file.language = "en"  # English-only models (*.en) have no language tokens
        elif file.language is None and file.chunks:
            voters += [(f, c) for c in voter_chunks(file.chunks, file.options.language_windows)]
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
            weights = [speech_seconds(file.chunks[voters[i][1]]) for i in mine]
            file.language, file.probability = vote_language([distributions[i] for i in mine], weights)
            log.debug("language %s (%.2f) by %d chunk(s)", file.language, file.probability, len(mine))
    return {(f, files[f].chunks[c]): features for (f, c), features in encoded.items()}
