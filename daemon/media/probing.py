"""What a file holds, by ffprobe: its length, audio streams and text subtitles; and which audio
stream to transcribe."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from daemon import languages
from daemon.datatypes import AudioStream, MediaInfo
from daemon.media.errors import MediaError, MediaGone, Refused
from daemon.media.tool import input_options, input_url, run_tool, sniff

# Streams whose title or disposition says they are not the main programme.
NOT_MAIN_AUDIO = ("commentary", "comment", "description", "descriptive", "audio description", "karaoke")
TEXT_SUBTITLE_CODECS = frozenset({"subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text", "ttml"})
PROBE_TIMEOUT = 60.0  # seconds ffprobe may take: it reads at most PROBE_BYTES, however long the file
HEAD_BYTES = 4096  # bytes read to recognise a playlist or list of files before ffprobe sees it
# Matroska statistics tag: "DURATION", or "DURATION-eng" when the tag carries a language.
_DURATION_TAG = re.compile(r"DURATION(-\w+)?", re.IGNORECASE)
_HMS = re.compile(r"(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)")


def read_head(path: Path) -> bytes:
    """Given a path, return its first HEAD_BYTES bytes. Raise MediaError (or MediaGone) for cheap,
    certain failures: not there, not readable, not a regular file, empty."""
    try:
        # O_NONBLOCK: a FIFO put where the file was must not hang the open; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise MediaGone(path) from None
    except PermissionError:
        raise MediaError(path, "permission denied; make the file readable by the user subwatch runs as",
                         permanent=True) from None
    except OSError as exc:
        raise MediaError(path, f"cannot read it: {exc.strerror}", permanent=False) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise MediaError(path, "is a directory, not a media file", permanent=True)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(path, "is not a regular file (a pipe, socket or device); subwatch reads "
                             "only media files", permanent=True)
        if info.st_size == 0:
            raise MediaError(path, "the file is empty (0 bytes)", permanent=True)
        return os.read(fd, HEAD_BYTES)
    except IsADirectoryError:
        raise MediaError(path, "is a directory, not a media file", permanent=True) from None
    except OSError as exc:
        raise MediaError(path, f"cannot read it: {exc.strerror}", permanent=False) from None
    finally:
        os.close(fd)


def probe(path: Path) -> MediaInfo:
    """Given a media path, return what ffprobe reports about it.

    Raise Refused if it is in a format that can make ffmpeg read other files (a playlist, a list
    of files, an MP4 with external data), MediaError if it is not a media file (or is corrupt) or
    has no audio stream, MediaGone if it is not there.
    """
    sniff(path, read_head(path))
    args = ["ffprobe", "-hide_banner", "-loglevel", "level+warning",
            "-print_format", "json", "-show_format", "-show_streams", *input_options(), input_url(path)]
    try:
        data = json.loads(run_tool(args, path, timeout=PROBE_TIMEOUT).stdout or b"{}")
    except Refused:
        raise
    except MediaError as exc:
        if not path.exists():
            raise MediaGone(path) from None
        if not exc.permanent:
            raise
        raise MediaError(path, f"not a media file, or corrupt: {exc}", permanent=True) from None
    except ValueError:  # JSON ffprobe cannot have written; never expected
        raise MediaError(path, "not a media file, or corrupt: ffprobe's report is unreadable",
                         permanent=True) from None
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
