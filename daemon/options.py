"""Each stage's options for one watched folder, built in one place from the keys written for it.

daemon.config validates what the user wrote; `build_rules` turns the keys of one
folder (its own over `defaults`; for `subwatch transcribe`, the command line's
flags over those) into the frozen options each stage takes, in the order a file
meets them:

- watch: the watcher's `WatchSpec` (daemon.watch);
- media: what a file must pass before it is decoded, and which audio stream is (`MediaRules`);
- transcript_key, transcribe: the rules that shape a transcript (daemon.datatypes.TranscriptKey)
  and the decoding options made from them (daemon.transcribe.TranscribeOptions);
- subtitles: the formats, the cue layout and the file names (`SubtitleRules`, holding
  subtitles.CueRules and subtitles.NamingRules);
- devices, notify: which workers serve the folder, and its own notification targets.

`build_notify` does the same for the `notify:` section (notify.NotifyRules).

A key nobody wrote is not passed on, so the field's default applies: every default
is written once, on the stage's dataclass. FOLDER_KEYS says where each key goes;
tests/test_config.py checks it against the schema, and config.example.yaml's
documented defaults against these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from daemon.datatypes import TranscriptKey
from daemon.notify import NotifyRules
from daemon.subtitles import CueRules, NamingRules
from daemon.transcribe import TranscribeOptions
from daemon.watch import WatchSpec


@dataclass(frozen=True)
class MediaRules:
    """What a file must pass before it is decoded, and which of its audio streams is decoded."""

    min_duration_seconds: float = 0.0  # shorter media (jingles, samples) is skipped
    skip_if_embedded: bool = False  # skip a file that has a text subtitle stream in the target language
    audio_language: str | None = None  # the stream tagged with this language; None: the default stream
    max_hours: float = 24.0  # longer media fails (its decoded audio takes 230 MB of disk an hour)


@dataclass(frozen=True)
class SubtitleRules:
    """Which sidecars a folder's files get, how their cues are laid out, and how they are named."""

    formats: tuple[str, ...] = ("srt", "vtt")
    cues: CueRules = field(default_factory=CueRules)
    naming: NamingRules = field(default_factory=NamingRules)


@dataclass(frozen=True)
class FolderNotify:
    """A folder's own notification targets."""

    urls: tuple[str, ...] = ()
    replace: bool = False  # True: only these targets; False: in addition to notify.urls


@dataclass(frozen=True)
class FolderRules:
    """The effective rules of one watched folder, as the options of each stage (see the module)."""

    path: Path
    watch: WatchSpec
    media: MediaRules = field(default_factory=MediaRules)
    transcript_key: TranscriptKey = field(default_factory=TranscriptKey)  # its transcripts' storage key
    subtitles: SubtitleRules = field(default_factory=SubtitleRules)
    devices: tuple[str, ...] = ("auto",)  # auto, cpu, cuda, cuda:N; several = served by the worker of any
    create_if_missing: bool = False
    notify: FolderNotify = field(default_factory=FolderNotify)
    # Made from transcript_key here, so that the two never disagree.
    transcribe: TranscribeOptions = field(init=False)

    def __post_init__(self) -> None:
        key = self.transcript_key
        options = TranscribeOptions(
            model=key.model, language=key.language, task=key.task, prompt=key.prompt,
            beam_size=None if key.beam_size == 1 else key.beam_size,  # the engine's greedy is None
        )
        object.__setattr__(self, "transcribe", options)

    def keys(self) -> dict[str, Any]:
        """Return each folder key of the config with its value in these rules, as the field holds it
        (None for auto, tuples for lists)."""
        return {key: attrgetter(where)(self) for key, where in FOLDER_KEYS.items()}

    def with_keys(self, written: Mapping[str, Any]) -> FolderRules:
        """Given validated folder keys (`subwatch transcribe`'s flags), return these rules with them
        written over."""
        return build_rules(self.path, {**self.keys(), **written})


# Where each folder key of the config goes: the field of FolderRules, or of one of its stages, it sets.
FOLDER_KEYS: dict[str, str] = {
    "recursive": "watch.recursive",
    "poll": "watch.poll",
    "poll_interval": "watch.poll_interval",
    "settle_seconds": "watch.settle_seconds",
    "include": "watch.include",
    "exclude": "watch.exclude",
    "min_duration_seconds": "media.min_duration_seconds",
    "skip_if_embedded": "media.skip_if_embedded",
    "audio_language": "media.audio_language",
    "max_hours": "media.max_hours",
    "model": "transcript_key.model",
    "language": "transcript_key.language",
    "task": "transcript_key.task",
    "prompt": "transcript_key.prompt",
    "beam_size": "transcript_key.beam_size",
    "formats": "subtitles.formats",
    "max_line_chars": "subtitles.cues.max_line_chars",
    "max_lines": "subtitles.cues.max_lines",
    "lang_code": "subtitles.naming.lang_code",
    "sdh": "subtitles.naming.sdh",
    "forced": "subtitles.naming.forced",
    "name_template": "subtitles.naming.name_template",
    "device": "devices",
    "create_if_missing": "create_if_missing",
    "notify": "notify",
}


def build_rules(path: Path, written: Mapping[str, Any]) -> FolderRules:
    """Given a folder and the keys written for it (validated by daemon.config; model paths already
    absolute), return its rules. A key not written takes its field's default."""
    fields = {FOLDER_KEYS[key]: _field_value(key, value) for key, value in written.items()}
    return FolderRules(
        path=path,
        watch=WatchSpec(path, **_under(fields, "watch")),
        media=MediaRules(**_under(fields, "media")),
        transcript_key=TranscriptKey(**_under(fields, "transcript_key")),
        subtitles=SubtitleRules(
            **_under(fields, "subtitles"),
            cues=CueRules(**_under(fields, "subtitles.cues")),
            naming=NamingRules(**_under(fields, "subtitles.naming")),
        ),
        **_under(fields, ""),
    )


def build_notify(written: Mapping[str, Any]) -> NotifyRules:
    """Given the keys written under `notify:` (validated), return the notifier's rules."""
    convert = {"urls": tuple, "on": frozenset}
    return NotifyRules(**{key: convert.get(key, _same)(value) for key, value in written.items()})


def _field_value(key: str, value: Any) -> Any:
    """Given a folder key and its value as written (or as a field holds it), return the field's value."""
    if key in ("language", "poll"):
        return None if value == "auto" else value
    if key == "device":
        return (value,) if isinstance(value, str) else tuple(value)
    if key == "formats":
        return tuple(dict.fromkeys(value))  # a format written twice is written once
    if key in ("include", "exclude"):
        return tuple(value)
    if key == "notify":
        if value is None or isinstance(value, FolderNotify):
            return value or FolderNotify()
        return FolderNotify(**{k: tuple(v) if k == "urls" else v for k, v in value.items()})
    return value


def _under(fields: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """Return the fields that belong to `stage` itself ("" for FolderRules'), by their name there."""
    prefix = f"{stage}." if stage else ""
    inside = {where[len(prefix):]: value for where, value in fields.items() if where.startswith(prefix)}
    return {name: value for name, value in inside.items() if "." not in name}


def _same(value: Any) -> Any:
    return value
