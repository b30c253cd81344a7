"""What the daemon and a decoder child say to each other: small frozen messages over a pipe.

Audio never travels in a message: each recording's samples are in a file (the
decoded audio's unnamed temporary file, or one written for an HTTP request's
samples) whose descriptor is passed alongside (SCM_RIGHTS), so a three-hour film
costs the pipe a few bytes and the child reads only the slices it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.datatypes import MemoryLimit, Transcript
from daemon.transcribe.options import TranscribeOptions
from daemon.transcribe.store import LoadedModel


@dataclass(frozen=True)
class Settings:
    """What a child needs to load models as the daemon would (config's share, fixed per child)."""

    models_dir: Path
    unload_after_seconds: float
    memory_limit: MemoryLimit | None
    engine: str
    log_level: str = "info"
    threads: int | None = None  # torch's CPU threads in the child; None keeps torch's default


# The daemon's requests ------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """Load `spec` on `device` (as configured: auto, cpu, cuda:N) within `memory_limit` (the config's,
    reloads included) and keep it; answered by Ready."""

    spec: str
    device: str
    memory_limit: MemoryLimit | None = None


@dataclass(frozen=True)
class Recording:
    """One recording of a Work: its samples come as the descriptor sent after the message."""

    name: str  # the file's name, for the child's log lines (and the test hook)
    length: int  # float32 samples in the file
    options: TranscribeOptions
    sample_rate: int = 16000  # as the daemon has it: the stage refuses any other rate, with a reason


@dataclass(frozen=True)
class Work:
    """Transcribe (or detect the language of) `recordings` with the model Load last readied.

    One descriptor per recording follows the message. `batch_size` caps the engine's
    batch (after an out-of-memory death alone, the file is tried with smaller ones).
    Answered by Progress messages, then Transcribed or Detected, or Failed.
    """

    kind: Literal["transcribe", "detect"]
    recordings: tuple[Recording, ...]
    batch_size: int | None = None


@dataclass(frozen=True)
class Stop:
    """Unload and exit."""


# The child's answers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The model is loaded on `device` (resolved: cpu, cuda:0); what the child holds now."""

    device: str
    models: tuple[LoadedModel, ...]


@dataclass(frozen=True)
class Progress:
    fraction: float


@dataclass(frozen=True)
class Transcribed:
    transcripts: tuple[Transcript, ...]
    models: tuple[LoadedModel, ...]


@dataclass(frozen=True)
class Detected:
    languages: tuple[tuple[str, float], ...]


FailureKind = Literal["device", "model", "memory", "error"]


@dataclass(frozen=True)
class Failed:
    """The request failed in the child, which lives on: no device, no model, out of memory, an error."""

    kind: FailureKind
    message: str
