"""One file through the stages: media → transcribe → subtitles.

The work is split in two so the service can overlap them: `prepare` (probe,
cheap checks, ffmpeg decode: CPU) and `complete` (write cues: CPU) around the
GPU's `transcribe`. Both the daemon and `subwatch transcribe` use these
functions, so a one-shot run and the service write identical sidecars.

A file whose content already has a stored transcript for its folder's rules (a
copy of a finished file) is only probed: `prepare(..., stored=…)` returns it
without audio, and `complete` writes its sidecars from that transcript. So
does `reuse`, for `subwatch rewrite`.

A transcript with nothing to show (no speech found) gets no sidecars at all: an empty
.srt/.vtt would be listed by media servers as a subtitle track. Its job ends done with the
note NO_SPEECH; the transcript is still stored, so a copy is answered from it the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon import media, subtitles
from daemon.datatypes import Audio, AudioStream, JobResult, MediaInfo, Transcript
from daemon.options import FolderRules
from daemon.text import format_duration

log = logging.getLogger("subwatch.pipeline")

NO_SPEECH = "no speech found"  # the note of a done job with nothing to show (JobResult.note)


class Skip(Exception):
    """The file needs no work (already has subtitles, too short, …); the message says why."""


@dataclass(frozen=True)
class Prepared:
    """A file that passed the cheap checks: its audio decoded, ready for the model, or (with
    `transcript`) a stored transcript of its content, ready for `complete` with no model at all."""

    path: Path
    rules: FolderRules
    info: MediaInfo
    stream: AudioStream
    audio: Audio | None  # None when `transcript` is given
    started: float  # time.monotonic() when preparation began, for the elapsed time
    job_id: int | None = None  # the daemon's job; it follows a rename, the path does not
    transcript: Transcript | None = None  # stored for this content and these rules: nothing to decode
    suspect: bool = False  # in the model when the daemon died: transcribed alone (JobQueue.recover_running)


def output_language(rules: FolderRules) -> str | None:
    """Return the language the subtitles will be in, when it is known before transcribing."""
    key = rules.transcript_key
    return "en" if key.task == "translate" else key.language


def prepare(
    path: Path, rules: FolderRules, owned: Callable[[Path], bool], stored: Transcript | None = None,
    work_dir: Path | None = None,
) -> Prepared:
    """Given a queued file and its folder's rules, return it decoded and ready to transcribe; or,
    given the transcript stored for its content and these rules (`stored`), return it probed only,
    ready for `complete` (no decoding). The decoded audio waits in an unnamed file in `work_dir`
    (None: the system's temporary folder).

    Raise Skip if it needs no work, media.TooLong if it is longer than the folder's max_hours,
    media.MediaError (or MediaGone) if it cannot be read.
    """
    started = time.monotonic()
    info = media.probe(path)
    limit = rules.media.min_duration_seconds
    if info.duration and info.duration < limit:
        raise Skip(f"shorter than min_duration_seconds ({info.duration:.0f} s < {limit:.0f} s)")
    _skip_if_subtitled(path, rules, info, owned, stored.language if stored else output_language(rules))
    stream = media.choose_audio_stream(info, rules.media.audio_language)
    if stored is not None:
        return Prepared(path, rules, info, stream, None, started, transcript=stored)
    audio = _decode(path, rules, info, stream, work_dir)
    return Prepared(path, rules, info, stream, audio, started)


def _decode(path: Path, rules: FolderRules, info: MediaInfo, stream: AudioStream,
            work_dir: Path | None) -> Audio:
    """Return the stream decoded, at most the folder's max_hours of it. Raise media.TooLong if the
    file is (or its audio runs) longer, media.MediaError if it cannot be decoded."""
    hours = rules.media.max_hours
    limit = hours * 3600
    advice = f"over max_hours ({hours:g} h) in the folder's rules; raise max_hours or split the file"
    if info.duration > limit:
        raise media.TooLong(path, f"is {format_duration(info.duration)} long, {advice}")
    try:
        return media.load_audio(path, info, stream, max_seconds=limit, work_dir=work_dir)
    except media.TooLong:
        said = f" (the file says {format_duration(info.duration)})" if info.duration else ""
        message = f"its audio runs on past {format_duration(limit)}{said}, {advice}"
        raise media.TooLong(path, message) from None


def reuse(path: Path, rules: FolderRules, transcript: Transcript) -> Prepared:
    """Given a finished file, its folder's rules and the transcript stored for it, return it ready
    for `complete` with no decoding and none of prepare's skip checks (`subwatch rewrite`).

    Raise media.MediaError (or MediaGone) if it cannot be probed.
    """
    started = time.monotonic()
    info = media.probe(path)
    stream = media.choose_audio_stream(info, rules.media.audio_language)
    return Prepared(path, rules, info, stream, None, started, transcript=transcript)


def _skip_if_subtitled(
    path: Path, rules: FolderRules, info: MediaInfo, owned: Callable[[Path], bool], language: str | None
) -> None:
    if rules.media.skip_if_embedded and language and language in _embedded_codes(info):
        raise Skip(f"has an embedded {language} text subtitle stream (skip_if_embedded)")
    if language is None:
        return  # decided after detection, when the sidecars are written
    layout = rules.subtitles
    targets = [subtitles.sidecar_path(path, language, fmt, layout.naming) for fmt in layout.formats]
    if all(t.exists() and not owned(t) for t in targets):
        raise Skip(f"already has {language} subtitles: {', '.join(t.name for t in targets)}")


def _embedded_codes(info: MediaInfo) -> set[str]:
    return {media.to_iso639_1(tag) for tag in info.text_subtitle_languages}


def media_end(prepared: Prepared) -> float:
    """Return where the player's timeline ends: decoded audio can run past the container's
    duration (AAC padding), and a cue there would outlast the file."""
    audio = _audio_seconds(prepared)
    return min(audio, prepared.info.duration) if prepared.info.duration else audio


def _audio_seconds(prepared: Prepared) -> float:
    """Return how long the decoded audio is; for a stored transcript, how long it was when decoded."""
    if prepared.audio is not None:
        return prepared.audio.duration
    if prepared.transcript is None:
        raise ValueError(f"{prepared.path}: prepared with neither audio nor a stored transcript")
    return prepared.transcript.duration


def complete(prepared: Prepared, transcript: Transcript, sidecars: subtitles.Sidecars) -> JobResult:
    """Given a prepared file, its transcript and what writes its sidecars (the daemon's
    `SidecarLedger.for_job`, or `subtitles.Unrecorded`), write them and return the job's result.

    A sidecar path that holds a subtitle subwatch did not write (or one the user
    edited) is left untouched and reported in `kept`. A transcript with no cues to
    show writes nothing and returns the result noted NO_SPEECH. Raise
    subtitles.SidecarFolderError if a sidecar's folder cannot be made.
    """
    layout = prepared.rules.subtitles
    if not prepared.path.exists():
        raise media.MediaGone(prepared.path)  # deleted while it was transcribed: write nothing
    cues = subtitles.build_cues(
        transcript.segments, layout.cues, media_duration=media_end(prepared), language=transcript.language,
    )
    if not cues:
        # Nothing is written, and nothing is removed either: a sidecar already there (the user's,
        # or one subwatch wrote for an earlier version of the file, which the ledger still
        # tracks) stays as it is; an empty subtitle would be worse than an old one.
        return _result(prepared, transcript, (), (), note=NO_SPEECH)
    written, kept = [], []
    for fmt in layout.formats:
        target = subtitles.sidecar_path(prepared.path, transcript.language, fmt, layout.naming)
        if sidecars.write(target, subtitles.RENDERERS[fmt](cues, transcript)):
            written.append(target)
        else:
            log.warning("kept %s: it is not a subtitle subwatch wrote", target)
            kept.append(target)
    return _result(prepared, transcript, tuple(written), tuple(kept))


def _result(prepared: Prepared, transcript: Transcript, written: tuple[Path, ...], kept: tuple[Path, ...],
            note: str | None = None) -> JobResult:
    return JobResult(
        language=transcript.language,
        language_probability=transcript.language_probability,
        media_duration=prepared.info.duration or _audio_seconds(prepared),
        elapsed=time.monotonic() - prepared.started,
        outputs=written,
        kept=kept,
        transcript=transcript,
        transcript_key=prepared.rules.transcript_key,
        note=note,
    )
