"""Media stage: ask ffprobe what a file holds, and decode its audio with ffmpeg into memory.

Audio comes out as 16 kHz mono float32 through a pipe (no temporary WAV files),
exactly what Whisper's log-mel front end expects. Every ffmpeg/ffprobe call goes
through `run_tool`, which logs the command and keeps the end of stderr for the
error message.

A decode that stops early is judged against the audio stream's own length where
the container records one (Matroska DURATION tags, MP4 track durations), never
against the container's length: films whose audio ends before their silent end
credits are common. Where no such length exists, only ffmpeg saying that the
file ends inside its own data counts as truncation.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
from pathlib import Path

import ffmpeg
import numpy as np

from daemon import languages
from daemon.datatypes import Audio, AudioStream, MediaInfo
from daemon.text import format_duration

log = logging.getLogger("subwatch.media")
_DEMUXER_PREFIX = re.compile(r"\[[^\]]+ @ 0x[0-9a-f]+\]\s*")

SAMPLE_RATE = 16000
# Streams whose title or disposition says they are not the main programme.
NOT_MAIN_AUDIO = ("commentary", "comment", "description", "descriptive", "audio description", "karaoke")
TEXT_SUBTITLE_CODECS = frozenset({"subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text", "ttml"})
# A decode that yields less than this share of the audio stream's own length is a truncated file.
TRUNCATION_RATIO = 0.9
# What ffmpeg's demuxers log (at error level, exit status still 0) when the bytes stop
# before the file's own structure does: Matroska/WebM, then MP4/MOV.
ENDED_EARLY = ("File ended prematurely", "partial file")
# Matroska statistics tag: "DURATION", or "DURATION-eng" when the tag carries a language.
_DURATION_TAG = re.compile(r"DURATION(-\w+)?", re.IGNORECASE)
_HMS = re.compile(r"(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)")


class MediaError(Exception):
    """A file could not be probed or decoded.

    `permanent` is True when trying again cannot help (not media, no audio, corrupt);
    False for transient trouble (ffmpeg killed, out of memory, disk) worth a retry.
    """

    def __init__(self, path: Path, message: str, *, permanent: bool) -> None:
        self.path = path
        self.permanent = permanent
        super().__init__(message)


class MediaGone(MediaError):
    """The file disappeared before or while it was read (deleted or moved away)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "the file is gone (deleted or moved before it was read)", permanent=True)


def run_tool(
    args: list[str], path: Path, *, timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Given an ffmpeg/ffprobe argument list, run it and return the finished run (stdout, stderr).

    Raise MediaError with the last lines of stderr if it fails; a run killed by a
    signal or a timeout is transient, a non-zero exit is treated as permanent.
    """
    log.debug("running %s", shlex.join(args))
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise MediaError(path, f"{args[0]} is not installed; install ffmpeg (apt install ffmpeg)",
                         permanent=False) from None
    except subprocess.TimeoutExpired:
        raise MediaError(path, f"{args[0]} took longer than {timeout:.0f} s", permanent=False) from None
    if done.returncode == 0:
        return done
    reason = _stderr_reason(done.stderr, path)
    if done.returncode < 0:
        raise MediaError(path, f"{args[0]} was killed by signal {-done.returncode}: {reason}",
                         permanent=False)
    raise MediaError(path, reason, permanent=True)


def _stderr_lines(stderr: bytes, path: Path) -> list[str]:
    """Given ffmpeg's stderr, return its distinct non-empty lines, without path or demuxer prefixes."""
    text = stderr.decode("utf-8", "replace").replace(f"{path}: ", "")
    # ffmpeg prefixes lines with "[matroska,webm @ 0x55…]"; the address means nothing to a reader.
    lines = [_DEMUXER_PREFIX.sub("", line).strip() for line in text.splitlines()]
    return list(dict.fromkeys(line for line in lines if line))


def _stderr_reason(stderr: bytes, path: Path) -> str:
    lines = _stderr_lines(stderr, path)
    return ("; ".join(lines[-3:]) if lines else "no error output")[-500:]


def check_readable(path: Path) -> int:
    """Given a path, return its size. Raise MediaError (or MediaGone) for cheap, certain failures."""
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise MediaGone(path) from None
    except PermissionError:
        raise MediaError(path, "permission denied; make the file readable by the user subwatch runs as",
                         permanent=True) from None
    except IsADirectoryError:
        raise MediaError(path, "is a directory, not a media file", permanent=True) from None
    except OSError as exc:
        raise MediaError(path, f"cannot read it: {exc.strerror}", permanent=False) from None
    if size == 0:
        raise MediaError(path, "the file is empty (0 bytes)", permanent=True)
    return size


def probe(path: Path) -> MediaInfo:
    """Given a media path, return what ffprobe reports about it.

    Raise MediaError if it is not a media file (or is corrupt), or has no audio stream.
    """
    check_readable(path)
    try:
        out = run_tool(
            ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
            path, timeout=120,
        ).stdout
    except MediaError as exc:
        if not path.exists():
            raise MediaGone(path) from None
        if not exc.permanent:
            raise
        raise MediaError(path, f"not a media file, or corrupt: {exc}", permanent=True) from None
    data = json.loads(out or b"{}")
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    audio = tuple(_audio_stream(s) for s in streams if s.get("codec_type") == "audio")
    if not audio:
        kinds = sorted({s.get("codec_type", "?") for s in streams}) or ["none"]
        raise MediaError(path, f"no audio stream (streams: {', '.join(kinds)}); nothing to transcribe",
                         permanent=True)
    return MediaInfo(
        path=path,
        duration=_float(fmt.get("duration")),
        start_time=_float(fmt.get("start_time")),
        audio_streams=audio,
        format_name=fmt.get("format_name", "?"),
        text_subtitle_languages=tuple(
            _language(s) or "und" for s in streams
            if s.get("codec_type") == "subtitle" and s.get("codec_name") in TEXT_SUBTITLE_CODECS
        ),
    )


def _audio_stream(raw: dict) -> AudioStream:
    disposition = raw.get("disposition") or {}
    return AudioStream(
        index=int(raw["index"]),
        codec=raw.get("codec_name") or f"unknown, tag {raw.get('codec_tag', '?')}",
        language=_language(raw),
        title=(raw.get("tags") or {}).get("title"),
        default=bool(disposition.get("default")),
        channels=int(raw.get("channels") or 0),
        start_time=_float(raw.get("start_time")),
        duration=_stream_length(raw),
        secondary=bool(disposition.get("comment") or disposition.get("visual_impaired")
                       or disposition.get("descriptions")),
    )


def _stream_length(raw: dict) -> float:
    """Given an ffprobe stream, return its own length in seconds where the container records one, else 0.

    ffprobe gives MP4/MOV track durations (and MP3, FLAC headers) as `duration`. For
    Matroska it says N/A, and the length is in the DURATION statistics tag instead.
    """
    seconds = _float(raw.get("duration"))
    if seconds > 0:
        return seconds
    tags = raw.get("tags") or {}
    end = next((_hms(value) for key, value in tags.items() if _DURATION_TAG.fullmatch(key)), 0.0)
    start = _float(raw.get("start_time"))
    # ffmpeg's muxer writes the stream's end timestamp, mkvmerge its end minus its start.
    # Subtracting the start is exact for the first and, for the second, errs short: a late
    # stream is never taken for a truncated one.
    return end - start if 0 < start < end else end


def _hms(value: object) -> float:
    """Given "HH:MM:SS.nnnnnnnnn" (Matroska's DURATION tag), return seconds; 0 if it is not that."""
    match = _HMS.fullmatch(str(value).strip())
    if not match:
        return 0.0
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _language(raw: dict) -> str | None:
    tags = {k.lower(): v for k, v in (raw.get("tags") or {}).items()}
    value = tags.get("language")
    return None if value in (None, "", "und") else str(value).lower()


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def choose_audio_stream(info: MediaInfo, language: str | None = None) -> AudioStream:
    """Given a probed file, return the stream to transcribe.

    The one tagged `language` when asked (ISO 639-1 or -2 tags both match), else
    the container's default; commentary and audio-description streams only
    when nothing else exists.
    """
    main = [s for s in info.audio_streams if not _is_secondary(s)] or list(info.audio_streams)
    if language:
        tagged = [s for s in main if s.language and _same_language(s.language, language)]
        if tagged:
            main = tagged
    return next((s for s in main if s.default), main[0])


def _is_secondary(stream: AudioStream) -> bool:
    title = (stream.title or "").lower()
    return stream.secondary or any(word in title for word in NOT_MAIN_AUDIO)


def to_iso639_1(tag: str) -> str:
    """Given a container language tag (ISO 639-1 or -2, or a name), return Whisper's code where known."""
    return languages.from_any(tag) or tag.lower()


def _same_language(tag: str, code: str) -> bool:
    return to_iso639_1(tag) == to_iso639_1(code)


_INPUT = "{input}"


def load_audio(path: Path, info: MediaInfo, stream: AudioStream) -> Audio:
    """Given a probed file and one of its audio streams, return that stream as 16 kHz mono float32.

    The samples are placed on the timeline the player shows (time 0 = the
    container's start), so subtitle times match even when the audio starts late.
    Raise MediaError if ffmpeg cannot decode it, or it is clearly truncated: its
    audio ends well before the audio stream's own recorded length, or (where the
    container records none) ffmpeg says the file ends inside its own data.
    """
    args = (
        # ffmpeg-python hashes its arguments as UTF-8 and fails on a file name that is not;
        # a placeholder goes through it and the real path into the argument list at the end.
        ffmpeg.input(_INPUT)
        .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=SAMPLE_RATE,
                map=f"0:{stream.index}", vn=None, sn=None, dn=None,
                # Pad the start (and any gaps) with silence so sample 0 is the player's time 0,
                # even when the audio starts after the video or the encoder added priming.
                af="aresample=async=1:first_pts=0")
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-xerror")
        .compile()
    )
    args = [str(path) if arg == _INPUT else arg for arg in args]
    try:
        done = run_tool(args, path)
    except MediaError as exc:
        if not path.exists():
            raise MediaGone(path) from None
        if "Decoder (codec" in str(exc):
            raise MediaError(path, f"ffmpeg has no decoder for its audio codec ({stream.codec}); convert "
                             "the audio to a common codec (AAC, Opus, FLAC)", permanent=True) from None
        raise MediaError(path, f"ffmpeg could not decode the audio: {exc}", permanent=exc.permanent) from None
    samples = np.frombuffer(done.stdout, dtype=np.float32)
    if samples.size == 0:
        raise MediaError(path, "ffmpeg decoded no audio samples (unsupported or broken audio codec "
                         f"{stream.codec!r})", permanent=True)
    decoded = len(samples) / SAMPLE_RATE
    # -xerror already stops ffmpeg (non-zero exit, above) at a corrupt packet or a decoder
    # error; what is left here are errors it logged and read past.
    errors = _stderr_lines(done.stderr, path)
    if stream.duration:
        _check_stream_length(path, info, stream, decoded)
    else:
        _check_not_ended_early(path, errors, decoded)
    if errors:
        log.warning("%s: ffmpeg reported while decoding: %s", path, "; ".join(errors[-3:]))
    return Audio(samples=samples, sample_rate=SAMPLE_RATE)


def _check_stream_length(path: Path, info: MediaInfo, stream: AudioStream, decoded: float) -> None:
    """Raise MediaError if the decoded audio ends well before the audio stream's own length.

    Never the container's length: that covers the video too, which often runs on
    past the audio (silent end credits).
    """
    # The decode is padded to start at the container's time 0, so the stream ends at its offset + length.
    offset = max(stream.start_time - info.start_time, 0.0)
    expected = offset + stream.duration
    if expected - decoded > 2.0 and decoded < expected * TRUNCATION_RATIO:
        raise MediaError(
            path,
            f"truncated or corrupt: the audio stream should end at {format_duration(expected)} but the "
            f"decoded audio ends at {format_duration(decoded)}; replace the file with a complete copy",
            permanent=True,
        )


def _check_not_ended_early(path: Path, errors: list[str], decoded: float) -> None:
    """Raise MediaError if ffmpeg logged that the file ends inside its own data (a cut-off file).

    For a container that records no length for the audio stream, this is the only
    sign of a cut: other errors ffmpeg read past (a damaged block mid-file) leave
    audio worth transcribing, so they are only logged.
    """
    sign = next((s for s in ENDED_EARLY if any(s in line for line in errors)), None)
    if sign:
        raise MediaError(
            path,
            f"truncated or corrupt: the file ends inside its own data (ffmpeg: {sign}) after "
            f"{format_duration(decoded)} of audio; replace the file with a complete copy",
            permanent=True,
        )
