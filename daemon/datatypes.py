"""Typed values that cross stage boundaries.

The stages (media, transcribe, subtitles, notify, queue) never import each
other; they take and return these plain frozen dataclasses, and the pipeline
module wires them together. Times are seconds on the media's own timeline
(0 = the first sample the player shows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Word:
    """One word (or, for languages without spaces, one token) with its timing.

    `text` keeps Whisper's leading space where there is one, so joining the
    texts of consecutive words reproduces the segment text.
    """

    start: float
    end: float
    text: str
    probability: float = 1.0


@dataclass(frozen=True)
class Segment:
    """A stretch of decoded text; `words` is empty when no alignment was run."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    """What the transcription stage returns for one media file."""

    segments: tuple[Segment, ...]
    language: str  # ISO 639-1 code of the text (English for task=translate)
    language_probability: float | None  # None when the language was given, not detected
    duration: float  # seconds of audio that were transcribed
    speech_seconds: float = 0.0  # seconds speech detection found
    uncovered_seconds: float = 0.0  # of those, seconds no decoded word covers, after every retry


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: at most a few short lines shown from start to end."""

    start: float
    end: float
    lines: tuple[str, ...]


@dataclass(frozen=True)
class AudioStream:
    index: int  # ffmpeg stream index inside the container
    codec: str
    language: str | None
    title: str | None
    default: bool
    channels: int
    start_time: float = 0.0  # seconds on the container's clock where this stream's first sample sits
    duration: float = 0.0  # the stream's own length (not its end time) when the container records one, else 0
    secondary: bool = False  # commentary or audio description, by disposition


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says about a file, before any decoding."""

    path: Path
    duration: float  # seconds; 0.0 when the container does not say
    start_time: float  # container start offset in seconds (non-zero in many web downloads)
    audio_streams: tuple[AudioStream, ...]
    format_name: str
    text_subtitle_languages: tuple[str, ...] = ()  # embedded text subtitle streams ("und" if untagged)


@dataclass(frozen=True)
class Audio:
    """Decoded audio: mono float32 samples at `sample_rate`.

    `samples` is a numpy float32 array in memory (raw PCM from a request, tests), or a
    daemon.samples.DiskSamples: what ffmpeg decoded, in an unnamed temporary file, read by the
    slice. Both take len() and slices that return numpy arrays; code that handles either slices
    (np.asarray would read a DiskSamples whole into memory).
    """

    samples: Any  # numpy.ndarray[float32] | daemon.samples.DiskSamples; loose, so this module needs no numpy
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


class JobState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Job:
    """One row of the queue."""

    id: int
    path: Path
    folder: Path  # the watched folder whose rules apply
    state: JobState
    size: int
    mtime: float
    fingerprint: str
    attempts: int = 0
    error: str | None = None
    language: str | None = None
    language_probability: float | None = None
    outputs: tuple[Path, ...] = ()
    media_duration: float | None = None
    elapsed: float | None = None  # seconds the last run took
    speech_seconds: float | None = None  # seconds of speech found; None until done (or if not recorded)
    uncovered_seconds: float | None = None  # of those, seconds no subtitle covers
    created_at: float = 0.0
    updated_at: float = 0.0
    next_attempt_at: float = 0.0
    # Crash bookkeeping (see JobQueue.recover_running): when the model began transcribing it (None
    # while it is only queued, claimed, decoded or waiting), whether it was in the model when the
    # daemon died (then it is transcribed alone), and how often the daemon died while it ran alone.
    in_model_since: float | None = None
    suspect: bool = False
    crashes: int = 0
    # The node (daemon) that claimed it last, and its lease while it runs: a random token per claim
    # and when the lease lapses (the database's clock) unless that node renews it (JobQueue.renew).
    node: str | None = None
    lease_token: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True)
class MemoryLimit:
    """How much of a GPU subwatch's models and batches may use: bytes, or a fraction of each card."""

    bytes: int | None = None
    fraction: float | None = None

    def on_card(self, total: int) -> int:
        """Given a card's total memory in bytes, return the limit on it in bytes (never above the total)."""
        if self.fraction is not None:
            return int(total * self.fraction)
        return min(total, self.bytes or total)

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction:g} of the card"
        return f"{(self.bytes or 0) / 2**30:.1f} GiB"


@dataclass(frozen=True)
class TranscriptKey:
    """The folder rules that shape a transcript (layout rules do not).

    With the content fingerprint it is the key under which a finished
    transcript is stored, so a copy of the same content, or a new subtitle
    layout, needs no decoding. Its defaults are the config's (daemon.options
    builds a folder's key from the keys written for it; the rest come from here).
    """

    model: str = "turbo"  # fast, near large-v3 accuracy
    language: str | None = None  # None = detected
    task: str = "transcribe"
    prompt: str | None = None
    beam_size: int = 5  # 1 = greedy


@dataclass(frozen=True)
class JobResult:
    """What the pipeline reports after working on one job."""

    language: str
    language_probability: float | None
    media_duration: float
    elapsed: float
    outputs: tuple[Path, ...] = ()
    kept: tuple[Path, ...] = field(default=())  # sidecars left alone because the user owns them
    transcript: Transcript | None = None  # what the sidecars were written from, stored by the queue
    transcript_key: TranscriptKey | None = None  # the rules that shaped it
    note: str | None = None  # why a done job has no sidecars (pipeline.NO_SPEECH); the queue keeps it


# File extensions (case-folded, without the dot) that are media by their name alone: the watcher
# takes them without asking ffprobe, and the subtitle finder knows other media beside a video by
# them. One list, so the two never disagree about what a media file is.
MEDIA_EXTENSIONS = frozenset({
    # video
    "mkv", "mk3d", "mp4", "m4v", "avi", "mov", "qt", "wmv", "asf", "webm", "ts", "mts", "m2ts", "m2t",
    "mpg", "mpeg", "mpe", "vob", "flv", "f4v", "ogv", "ogm", "3gp", "3g2", "divx", "rm",
    "rmvb", "dv", "mxf", "wtv", "dvr-ms", "nut",
    # audio
    "mp3", "m4a", "m4b", "aac", "ac3", "eac3", "dts", "flac", "wav", "ogg", "oga", "opus", "wma", "aif",
    "aiff", "ape", "wv", "mka", "amr", "mp2", "caf", "spx",
})
