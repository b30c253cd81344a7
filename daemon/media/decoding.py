"""Decoding one audio stream with ffmpeg into 16 kHz mono float32 samples, kept on disk.

ffmpeg writes the samples (f32le, exactly what Whisper's log-mel front end expects)
straight into an unnamed temporary file: a film's audio never passes through
this process's memory (see daemon.samples). The decode has a time limit that
grows with the file's length and size, and `max_seconds` caps how much audio a
file may yield whatever its container claims.

A decode that stops early is judged against the audio stream's own length where
the container records one (Matroska DURATION tags, MP4 track durations), never
against the container's length: films whose audio ends before their silent end
credits are common. Where no such length exists, only ffmpeg saying that the
file ends inside its own data counts as truncation.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import IO

from daemon import samples as disk
from daemon.datatypes import Audio, AudioStream, MediaInfo
from daemon.media.errors import MediaError, MediaGone, Refused, TooLong
from daemon.media.probing import choose_audio_stream, probe, read_head
from daemon.media.tool import input_options, input_url, run_tool, sniff
from daemon.samples import DiskSamples
from daemon.text import format_duration

log = logging.getLogger("subwatch.media")

SAMPLE_RATE = 16000
# A decode that yields less than this share of the audio stream's own length is a truncated file.
TRUNCATION_RATIO = 0.9
# What ffmpeg's demuxers log (at error level, exit status still 0) when the bytes stop
# before the file's own structure does: Matroska/WebM, then MP4/MOV.
ENDED_EARLY = ("File ended prematurely", "partial file")
# Time a decode may take: a minute, plus a tenth of the audio's length (ffmpeg decodes audio at
# hundreds of times real time), plus a second per 8 MiB of file (a slow share reads the video
# too), never more than two hours; a file whose length is unknown gets the two hours.
DECODE_BASE_S = 60.0
DECODE_PER_AUDIO_S = 0.1
DECODE_BYTES_PER_S = 8 << 20
DECODE_MAX_S = 2 * 3600.0
CAP_SLACK_S = 0.5  # audio may run this far past load_audio's max_seconds (codec padding)


def decode_timeout(seconds: float, size: int) -> float:
    """Given the length of audio to decode (0 if unknown) and the file's size in bytes, return the
    seconds ffmpeg may take to decode it."""
    if seconds <= 0:
        return DECODE_MAX_S
    return min(DECODE_BASE_S + seconds * DECODE_PER_AUDIO_S + size / DECODE_BYTES_PER_S, DECODE_MAX_S)


def load_audio(
    path: Path, info: MediaInfo, stream: AudioStream, *, max_seconds: float | None = None,
    work_dir: Path | None = None,
) -> Audio:
    """Given a probed file and one of its audio streams, return that stream as 16 kHz mono float32,
    its samples a DiskSamples in an unnamed file in `work_dir` (None: the system's temporary folder).

    The samples are placed on the timeline the player shows (time 0 = the container's start), so
    subtitle times match even when the audio starts late. At most `max_seconds` of audio is
    decoded. Raise TooLong if the audio runs on past `max_seconds`; Refused if the file turned
    into one that refers to other files; MediaError if ffmpeg cannot decode it, takes too long, or
    it is clearly truncated: its audio ends well before the audio stream's own recorded length,
    or (where the container records none) ffmpeg says the file ends inside its own data.
    """
    sniff(path, read_head(path))  # the file may have been replaced since it was probed
    out = _work_file(path, work_dir)
    try:
        samples = _decode(path, info, stream, out, max_seconds)
    except BaseException:
        out.close()
        raise
    return Audio(samples=samples, sample_rate=SAMPLE_RATE)


def decode_upload(path: Path, max_seconds: float, work_dir: Path | None = None) -> DiskSamples:
    """Given an uploaded file (any media ffmpeg reads as one file), return its main audio stream as
    16 kHz mono float32 samples on disk, in `work_dir` (None: the system's temporary folder).

    Raise TooLong if it is, or its audio runs, longer than `max_seconds`; Refused if it is a
    playlist or other format that refers to other files; MediaError if it is no audio or cannot
    be decoded.
    """
    info = probe(path)
    if info.duration > max_seconds:
        raise TooLong(path, f"is {format_duration(info.duration)} long, over the limit of "
                      f"{format_duration(max_seconds)}; send a shorter recording")
    stream = choose_audio_stream(info)
    try:
        return load_audio(path, info, stream, max_seconds=max_seconds, work_dir=work_dir).samples  # type: ignore[return-value]
    except TooLong:
        raise TooLong(path, f"its audio runs on past the limit of {format_duration(max_seconds)}, "
                      "though the file says it is shorter; send a shorter recording") from None


def _work_file(path: Path, work_dir: Path | None) -> IO[bytes]:
    """Return a new unnamed file for the decoded samples. Raise MediaError (transient) if none can
    be made."""
    try:
        return disk.temporary_file(work_dir)
    except OSError as exc:
        where = work_dir if work_dir is not None else tempfile.gettempdir()
        raise MediaError(path, f"cannot make a temporary file for the decoded audio in {where}: "
                         f"{exc.strerror}", permanent=False) from None


def _decode(
    path: Path, info: MediaInfo, stream: AudioStream, out: IO[bytes], max_seconds: float | None,
) -> DiskSamples:
    """Decode `stream` of `path` into `out` and return the samples there, checked for length."""
    expected = _expected_end(info, stream)
    known = expected or info.duration
    seconds = min(known, max_seconds) if known and max_seconds else known or max_seconds or 0.0
    try:
        run = run_tool(_ffmpeg_args(path, stream, max_seconds), path, stdout=out,
                       timeout=decode_timeout(seconds, _size(path)), watch_for=ENDED_EARLY)
    except Refused:
        raise
    except MediaError as exc:
        if not path.exists():
            raise MediaGone(path) from None
        if "Decoder (codec" in str(exc):
            raise MediaError(path, f"ffmpeg has no decoder for its audio codec ({stream.codec}); convert "
                             "the audio to a common codec (AAC, Opus, FLAC)", permanent=True) from None
        raise MediaError(path, f"ffmpeg could not decode the audio: {exc}", permanent=exc.permanent) from None
    try:
        samples = disk.from_file(out)
    except (OSError, ValueError) as exc:
        raise MediaError(path, f"the decoded audio is unreadable: {exc}", permanent=False) from None
    _check_length(path, stream, samples, max_seconds, expected, run.seen)
    # -xerror already stops ffmpeg (non-zero exit, above) at a corrupt packet or a decoder
    # error; what is left here are errors it logged and read past.
    if run.errors:
        log.warning("%s: ffmpeg reported while decoding: %s", path, "; ".join(run.errors[-3:]))
    return samples


def _ffmpeg_args(path: Path, stream: AudioStream, max_seconds: float | None) -> list[str]:
    """Return the ffmpeg command that writes `stream` of `path` to stdout as 16 kHz mono f32le."""
    # A second past the cap, so that audio reaching past it shows (see _check_length).
    limit = [] if max_seconds is None else ["-t", f"{max_seconds + 1:.3f}"]
    return [
        "ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+warning", "-xerror",
        *input_options(), "-i", input_url(path),
        "-map", f"0:{stream.index}", "-vn", "-sn", "-dn",
        # Pad the start (and any gaps) with silence so sample 0 is the player's time 0,
        # even when the audio starts after the video or the encoder added priming.
        "-af", "aresample=async=1:first_pts=0",
        "-ac", "1", "-ar", str(SAMPLE_RATE), "-acodec", "pcm_f32le", *limit, "-f", "f32le", "pipe:1",
    ]


def _check_length(
    path: Path, stream: AudioStream, samples: DiskSamples, max_seconds: float | None, expected: float,
    seen: frozenset[str],
) -> None:
    """Raise MediaError if the decode yielded nothing or a truncated file's audio, TooLong if it ran
    past `max_seconds` (with CAP_SLACK_S for codec padding: a file just at the cap passes)."""
    if len(samples) == 0:
        raise MediaError(path, "ffmpeg decoded no audio samples (unsupported or broken audio codec "
                         f"{stream.codec!r})", permanent=True)
    decoded = len(samples) / SAMPLE_RATE
    if max_seconds is not None and decoded > max_seconds + CAP_SLACK_S:
        raise TooLong(path, f"its audio runs on past {format_duration(max_seconds)}, the most it may hold")
    if expected:
        _check_stream_length(path, expected, decoded)
    else:
        _check_not_ended_early(path, seen, decoded)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # gone: ffmpeg will say so


def _expected_end(info: MediaInfo, stream: AudioStream) -> float:
    """Return where the stream's audio ends on the decoded timeline (0 if its length is not recorded)."""
    if not stream.duration:
        return 0.0
    # The decode is padded to start at the container's time 0, so the stream ends at its offset + length.
    return max(stream.start_time - info.start_time, 0.0) + stream.duration


def _check_stream_length(path: Path, expected: float, decoded: float) -> None:
    """Raise MediaError if the decoded audio ends well before the audio stream's own end.

    Never the container's length: that covers the video too, which often runs on
    past the audio (silent end credits).
    """
    if expected - decoded > 2.0 and decoded < expected * TRUNCATION_RATIO:
        raise MediaError(
            path,
            f"truncated or corrupt: the audio stream should end at {format_duration(expected)} but the "
            f"decoded audio ends at {format_duration(decoded)}; replace the file with a complete copy",
            permanent=True,
        )


def _check_not_ended_early(path: Path, seen: frozenset[str], decoded: float) -> None:
    """Raise MediaError if ffmpeg logged that the file ends inside its own data (a cut-off file).

    For a container that records no length for the audio stream, this is the only
    sign of a cut: other errors ffmpeg read past (a damaged block mid-file) leave
    audio worth transcribing, so they are only logged.
    """
    sign = next((s for s in ENDED_EARLY if s in seen), None)
    if sign:
        raise MediaError(
            path,
            f"truncated or corrupt: the file ends inside its own data (ffmpeg: {sign}) after "
            f"{format_duration(decoded)} of audio; replace the file with a complete copy",
            permanent=True,
        )
