"""Transcription stage: Whisper models, loaded once and shared, turning audio into a Transcript.

Heavy imports (torch, whisper) happen inside functions so that `subwatch --help`,
`check-config` and `status` start instantly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.datatypes import Audio, Segment, Transcript, Word

if TYPE_CHECKING:
    from whisper.model import Whisper

log = logging.getLogger("subwatch.transcribe")


class ModelNotFound(Exception):
    """The model named in the config is neither a readable file nor available to download."""


class DeviceUnavailable(Exception):
    """The configured device (for example `cuda`) is not usable on this machine."""


@dataclass(frozen=True)
class TranscribeOptions:
    """The per-folder rules that shape decoding."""

    model: str  # Whisper name (tiny … large-v3, turbo) or path to a .pt checkpoint
    language: str | None  # ISO 639-1 code; None detects it
    task: str = "transcribe"  # or "translate" (to English)
    prompt: str | None = None  # initial prompt: names, jargon, spelling
    beam_size: int | None = None  # None = greedy
    word_timestamps: bool = True


def resolve_device(spec: str) -> str:
    """Given `auto`, `cpu`, `cuda` or `cuda:N`, return the torch device to use.

    Raise DeviceUnavailable if CUDA is asked for explicitly and is not there:
    a user who wrote `cuda` wants to know, not to be moved to the CPU silently.
    """
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"device {spec!r} was configured but PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}); install a CUDA build of torch or set device: auto"
            )
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device {spec!r} was configured but only {torch.cuda.device_count()} GPU(s) are present"
            )
    return spec


def model_file_for(name: str, models_dir: Path) -> Path | None:
    """Given an official Whisper model name, return where its checkpoint lives under models_dir."""
    import whisper

    url = whisper._MODELS.get(name)  # the names and URLs are whisper's own table
    return models_dir / os.path.basename(url) if url else None


def load_model(spec: str, models_dir: Path, device: str) -> Whisper:
    """Given a model name or checkpoint path, return the loaded model on `device`.

    Raise ModelNotFound, saying where we looked and how to provide the model,
    if it is neither a file nor downloadable.
    """
    import whisper

    path = Path(spec).expanduser()
    if spec.endswith(".pt") or os.sep in spec:
        if not path.is_file():
            raise ModelNotFound(
                f"model file {path} does not exist or is not a file; set `model:` to an existing "
                f".pt checkpoint or to a Whisper name ({', '.join(whisper.available_models())})"
            )
        return whisper.load_model(str(path), device=device)
    if spec not in whisper.available_models():
        raise ModelNotFound(f"unknown model {spec!r}; use one of {', '.join(whisper.available_models())}")
    target = model_file_for(spec, models_dir)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        return whisper.load_model(spec, device=device, download_root=str(models_dir))
    except Exception as exc:  # urllib, SSL, checksum and disk errors all mean the same to the user
        raise ModelNotFound(
            f"model {spec!r} is not in {models_dir} (looked for {target}) and downloading it failed: "
            f"{exc}. Copy {target.name if target else 'the checkpoint'} there from a machine with "
            f"internet access (~/.cache/whisper), or set `model:` to the path of a .pt file"
        ) from exc


class ModelStore:
    """Loads each (model, device) once and keeps it for later jobs; unloads idle ones.

    Loading turbo takes seconds and gigabytes, so jobs share one instance. A
    model unused for `unload_after_seconds` is dropped so the GPU is free for
    other work on the server.
    """

    def __init__(self, models_dir: Path, unload_after_seconds: float = 300.0) -> None:
        self.models_dir = models_dir
        self.unload_after_seconds = unload_after_seconds
        self._models: dict[tuple[str, str], tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def get(self, spec: str, device: str) -> Whisper:
        """Given a model spec and a resolved device, return the loaded model."""
        key = (spec, device)
        with self._lock:
            if key in self._models:
                model, _ = self._models[key]
            else:
                started = time.monotonic()
                model = load_model(spec, self.models_dir, device)
                log.info("loaded model %s on %s in %.1f s", spec, device, time.monotonic() - started)
            self._models[key] = (model, time.monotonic())
            return model

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Drop models unused for unload_after_seconds; return the specs dropped."""
        now = time.monotonic() if now is None else now
        dropped = []
        with self._lock:
            for key, (_, used) in list(self._models.items()):
                if now - used >= self.unload_after_seconds:
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

    Times are clamped to the audio: random or confused models can emit
    timestamps past the end of the last window.
    """
    import whisper

    duration = audio.duration
    if duration == 0:
        return Transcript((), options.language or "en", None, 0.0)
    fp16 = next(model.parameters()).device.type == "cuda"
    result = whisper.transcribe(
        model,
        audio.samples,
        verbose=False if show_progress_bar else None,
        language=options.language,
        task=options.task,
        initial_prompt=options.prompt,
        word_timestamps=options.word_timestamps,
        beam_size=options.beam_size,
        fp16=fp16,
    )
    if progress:
        progress(1.0)
    language = "en" if options.task == "translate" else result["language"]
    segments = tuple(_segment(raw, duration) for raw in result["segments"])
    return Transcript(tuple(s for s in segments if s.text.strip()), language, None, duration)


def _segment(raw: dict[str, Any], duration: float) -> Segment:
    def clamp(t: float) -> float:
        return min(max(float(t), 0.0), duration)

    words = tuple(
        Word(clamp(w["start"]), clamp(w["end"]), w["word"], float(w.get("probability", 1.0)))
        for w in raw.get("words", ())
    )
    return Segment(clamp(raw["start"]), clamp(raw["end"]), raw["text"], words)
