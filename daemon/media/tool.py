"""Running ffmpeg and ffprobe on a file from outside: only that file, for a bounded time and memory.

A media file is hostile input. Several ffmpeg formats are lists of other things to
read: an HLS playlist or DASH manifest names segment files (any path, any URL), a
concat list names files, an SDP file opens network streams, an image2 pattern
reads a numbered sequence, and an MP4/MOV can keep its tracks in other files
(data references). ffmpeg picks the format from the bytes, not the name, so an HLS
playlist saved as "film.mkv" is read as one. Every run therefore gets
`input_options`: the file protocol only (the path is given as a `file:` URL, `input_url`, so a
name like "concat:a|b" or "subfile:…" is never a protocol), demuxers for
single-file containers only (SINGLE_FILE_FORMATS), and capped probing. A format
that can refer to other files is refused (`Refused`), named in the message, both
from a cheap look at the file's first bytes (`sniff`, which also knows concat lists
ffmpeg would not detect on its own) and from ffmpeg's own refusal.

`run_tool` runs the tool in its own process group with a time limit; past it the
whole group is killed. stderr is drained while the tool runs (a chatty tool never
blocks on a full pipe) and only its last STDERR_TAIL bytes are kept; stdout is
either a file (decoded audio goes to disk) or captured up to a limit.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from daemon.media.errors import MediaError, Refused

log = logging.getLogger("subwatch.media")

# ffmpeg's demuxers for media that lives in one file. A listed name matches a demuxer whose
# name has it among its comma-separated parts ("mov" matches "mov,mp4,m4a,3gp,3g2,mj2").
SINGLE_FILE_FORMATS = (
    "matroska", "webm", "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "avi", "mpegts", "mpeg",
    "asf", "flv", "nut", "nuv", "rm", "dv", "wtv", "ogg", "flac", "mp3", "wav", "w64", "aiff",
    "caf", "au", "aac", "loas", "ac3", "eac3", "dts", "dtshd", "truehd", "mlp", "amr", "amrnb",
    "amrwb", "ape", "wv", "tta", "tak", "shn", "mpc", "mpc8", "dsf", "oma", "voc", "xwma",
)
# How much ffmpeg may read to find the streams: its own defaults (5 MB, 5 s of media), written out
# so that they stay the cap whatever a later ffmpeg defaults to.
PROBE_BYTES = 5_000_000  # -probesize
PROBE_MICROSECONDS = 5_000_000  # -analyzeduration
STDERR_TAIL = 64 * 1024  # bytes of stderr kept: enough for the last lines, bounded for a chatty file
# Formats that can make ffmpeg read other files or streams, by ffmpeg's demuxer name (and
# "mov-dref": an MP4/MOV with external data references), as a reader would call them.
REFERENCING = {
    "hls": "an HLS playlist",
    "dash": "a DASH manifest",
    "webm_dash_manifest": "a WebM DASH manifest",
    "concat": "a concat list",
    "sdp": "an SDP session description",
    "rtsp": "an RTSP session description",
    "rtp": "an RTP session description",
    "image2": "an image sequence pattern",
    "imf": "an IMF composition playlist",
    "mov-dref": "an MP4/MOV file with external data references",
}
_DREF_WARNING = "Skipped opening external track"  # the mov demuxer, with enable_drefs off (its default)
_NOT_WHITELISTED = "Format not on whitelist"
_LINE = re.compile(r"(?:\[(?P<context>[^\]]+?) @ 0x[0-9a-f]+\] )?(?:\[(?P<level>[a-z]+)\] )?(?P<text>.*)")
# The first line of text formats that name other files (after any comments), for `sniff`.
_TEXT_SIGNS = ((b"ffconcat version", "concat"), (b"file ", "concat"), (b"v=0", "sdp"))


def input_options() -> list[str]:
    """Return ffmpeg/ffprobe's input options that let it open one single-file medium and nothing
    else; the input itself follows them, as `input_url` gives it."""
    return [
        "-protocol_whitelist", "file,pipe",
        "-format_whitelist", ",".join(SINGLE_FILE_FORMATS),
        "-probesize", str(PROBE_BYTES),
        "-analyzeduration", str(PROBE_MICROSECONDS),
        # The hls demuxer's allowed_extensions is never set here: were hls ever allowed, its
        # default would still refuse segments that are not media files.
    ]


def input_url(path: Path) -> str:
    """Given a media path, return it as a `file:` URL: a name like "concat:a|b" stays a file name."""
    return f"file:{path}"


def refusal(path: Path, format_name: str) -> Refused:
    """Given a file and the format (ffmpeg's name, or "mov-dref") that may make ffmpeg read
    other files, return the permanent error that says so and what to do."""
    what = REFERENCING.get(format_name, f"in ffmpeg's {format_name} format")
    return Refused(
        path, format_name,
        f"{what} (it can make ffmpeg read other files); subwatch only reads single-file media: give it "
        "the media file itself, or join what it plays into one file first (ffmpeg -i <it> -c copy out.mkv)",
    )


def sniff(path: Path, head: bytes) -> None:
    """Given a file and its first bytes, raise Refused if they are a text format that names other
    files (HLS playlist, concat list, SDP, DASH manifest), whatever the file is called."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"#EXTM3U"):
        raise refusal(path, "hls")
    if text.startswith((b"<?xml", b"<MPD")) and b"<MPD" in text:
        raise refusal(path, "dash")
    # A concat list may open with comments; the other signs are the first thing in their file.
    first = next((line.strip() for line in text.splitlines() if line.strip()[:1] not in (b"", b"#")), b"")
    found = next((name for sign, name in _TEXT_SIGNS if first.startswith(sign)), None)
    if found:
        raise refusal(path, found)


@dataclass(frozen=True)
class ToolRun:
    """A finished ffmpeg/ffprobe run: what it printed (b"" when stdout went to a file), the distinct
    error and warning lines at the end of its stderr, and which `watch_for` strings appeared
    anywhere in its stderr."""

    stdout: bytes
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    seen: frozenset[str]

    def reason(self) -> str:
        """Return the last few error lines (warnings when there are none) as one short message."""
        lines = self.errors or self.warnings
        return ("; ".join(lines[-3:]) if lines else "no error output")[-500:]


def run_tool(
    args: list[str], path: Path, *, timeout: float, stdout: IO[bytes] | None = None,
    stdout_limit: int = 16 << 20, watch_for: Iterable[str] = (),
) -> ToolRun:
    """Given an ffmpeg/ffprobe argument list (its input from `input_options` and `input_url`, its log level
    level+warning), run it in its own process group and return the finished run. stdout goes to
    the given file, or is captured up to `stdout_limit` bytes.

    Raise Refused if the file is in a format that can refer to other files; MediaError if the tool
    fails: transient if it is missing, killed by a signal, or still running after `timeout` seconds
    (its whole process group is killed then); permanent for a non-zero exit or too much output.
    """
    log.debug("running %s (time limit %.0f s)", shlex.join(args), timeout)
    try:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
    except FileNotFoundError:
        raise MediaError(path, f"{args[0]} is not installed; install ffmpeg (apt install ffmpeg)",
                         permanent=False) from None
    except OSError as exc:
        raise MediaError(path, f"{args[0]} could not be started: {exc.strerror}", permanent=False) from None
    needles = (_DREF_WARNING, _NOT_WHITELISTED, *watch_for)
    err = _Drain(proc, proc.stderr, STDERR_TAIL, needles)  # type: ignore[arg-type]
    out = None if stdout is not None else _Drain(proc, proc.stdout, stdout_limit, (), cap=True)  # type: ignore[arg-type]
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.returncode is None:  # too slow, or this thread was interrupted
            _kill_group(proc)
        for drain in (err, out):
            if drain is not None:
                drain.join()
    run = ToolRun(out.data() if out else b"", *_lines(err.data(), err.trimmed, path), frozenset(err.seen))
    if timed_out:
        raise MediaError(path, f"{args[0]} took longer than {timeout:.0f} s, the most this file is given, "
                         "and was stopped (a slow disk or share, or a damaged file)", permanent=False)
    return _judge(args[0], path, proc.returncode, run, overflow=bool(out and out.overflow))


def _judge(tool: str, path: Path, code: int, run: ToolRun, *, overflow: bool) -> ToolRun:
    """Given a finished run, return it if it succeeded; raise the error it calls for otherwise."""
    if _DREF_WARNING in run.seen:
        raise refusal(path, "mov-dref")
    if _NOT_WHITELISTED in run.seen:
        raise _not_whitelisted(path, run.errors)
    if overflow:
        raise MediaError(path, f"{tool} printed more about the file than a media file calls for",
                         permanent=True)
    if code == 0:
        return run
    if code < 0:
        raise MediaError(path, f"{tool} was killed by signal {-code}: {run.reason()}", permanent=False)
    if any("No space left on device" in line for line in run.errors):
        raise MediaError(path, f"the disk is full ({run.reason()}); free space in the temporary folder",
                         permanent=False)
    raise MediaError(path, run.reason(), permanent=True)


def _not_whitelisted(path: Path, errors: tuple[str, ...]) -> MediaError:
    """Given a file ffmpeg refused as not on the whitelist and its error lines, return the error:
    Refused (naming the format) for one that refers to other files."""
    said = next((line for line in errors if line.startswith(_NOT_WHITELISTED)), "")
    name = said.partition(": ")[2].split(",")[0]  # "matroska,webm" is one demuxer's names
    if name in REFERENCING:
        return refusal(path, name)
    shown = f"ffmpeg reads it as {name}" if name else "ffmpeg does not read it as one"
    return MediaError(path, f"{shown}, not an audio or video format subwatch reads", permanent=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the tool and everything it started (its own process group), and reap it."""
    _signal_group(proc)
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes]) -> None:
    """Send SIGKILL to the tool's process group (its pid: it leads a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Drain:
    """Reads a pipe on its own thread until it closes, keeping at most `limit` bytes: the tail,
    or (with `cap`) the head, killing the process group once the limit is passed. Notes which of
    `needles` appear anywhere, across chunk boundaries too."""

    def __init__(self, proc: subprocess.Popen[bytes], pipe: IO[bytes], limit: int,
                 needles: Iterable[str], *, cap: bool = False) -> None:
        self._proc, self._pipe, self._limit, self._cap = proc, pipe, limit, cap
        self._needles = [n.encode() for n in needles]
        self._buffer = bytearray()
        self.seen: set[str] = set()
        self.trimmed = False  # the tail lost its head: its first line may be partial
        self.overflow = False
        self._thread = threading.Thread(target=self._run, name="ffmpeg-pipe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        overlap = max((len(n) for n in self._needles), default=1) - 1
        carry = b""
        with self._pipe:
            while chunk := self._pipe.read1(65536):  # type: ignore[attr-defined]
                window = carry + chunk
                self.seen.update(n.decode() for n in self._needles if n in window)
                carry = window[-overlap:] if overlap else b""
                self._keep(chunk)

    def _keep(self, chunk: bytes) -> None:
        if self._cap:
            if not self.overflow and len(self._buffer) + len(chunk) > self._limit:
                self.overflow = True
                _signal_group(self._proc)
            if not self.overflow:
                self._buffer += chunk
            return
        self._buffer += chunk
        if len(self._buffer) > self._limit:
            del self._buffer[: len(self._buffer) - self._limit]
            self.trimmed = True

    def join(self) -> None:
        self._thread.join()

    def data(self) -> bytes:
        return bytes(self._buffer)


def _lines(stderr: bytes, trimmed: bool, path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Given the kept end of stderr (written with -loglevel level+…), return its distinct error lines
    and warning lines, without the input's URL or ffmpeg's "[matroska,webm @ 0x55…]" prefixes."""
    errors: dict[str, None] = {}
    warnings: dict[str, None] = {}
    for line in stderr.decode("utf-8", "replace").splitlines()[1 if trimmed else 0 :]:
        match = _LINE.fullmatch(line.strip())
        text = match["text"].strip().replace(f"file:{path}: ", "").replace(f"{path}: ", "") if match else ""
        if not text:
            continue
        if _NOT_WHITELISTED in text:  # the demuxer ffmpeg took the file for names its format
            text = f"{_NOT_WHITELISTED}: {match['context'] or ''}"  # type: ignore[index]
        (warnings if match["level"] == "warning" else errors)[text] = None  # type: ignore[index]
    return tuple(errors), tuple(warnings)
