"""Make real media files for tests with ffmpeg (lavfi sources) and espeak-ng speech."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr[-800:]}")


def speak(text: str, wav: Path, voice: str = "en", speed: int = 160) -> Path:
    """Given a sentence, write espeak-ng's spoken version of it to `wav` and return the path."""
    wav.parent.mkdir(parents=True, exist_ok=True)
    _run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text])
    return wav


def make_media(
    path: Path,
    *,
    speech: str | None = None,
    seconds: float = 4.0,
    video: bool = True,
    audio: bool = True,
    start_time: float = 0.0,
    voice: str = "en",
    audio_seconds: float | None = None,
    faststart: bool = False,
    audio_from: Path | None = None,
) -> Path:
    """Write a media file at `path` (container from the suffix) and return the path.

    With `speech`, the audio is espeak-ng saying it, padded with silence to
    `seconds` (or longer if the speech is longer); with `audio_from`, it is that
    recording (a shared speech clip, a WAV from `write_samples`), padded the same
    way, and the video lasts as long as the recording if that is longer than
    `seconds`; otherwise a quiet tone.
    `audio_seconds` makes the audio that long instead, shorter or longer than the
    video (a film whose audio ends before its silent end credits).
    `start_time` shifts the container's timestamps, as web downloads often do.
    `faststart` puts an MP4's index (moov) before its data, as files made for streaming have it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error"]
    if audio_from is not None:
        if speech is not None:
            raise ValueError("give speech or audio_from, not both")
        seconds = max(seconds, duration_of(audio_from))
    sound = seconds if audio_seconds is None else audio_seconds
    if audio and (speech is not None or audio_from is not None):
        wav = audio_from or speak(speech, path.with_name(path.name + ".speech.wav"), voice=voice)
        cmd += ["-i", str(wav)]
        audio_filter = ["-af", f"apad=whole_dur={sound}"]
    elif audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={sound}"]
        audio_filter = ["-af", "volume=0.1"]
    else:
        audio_filter = []
    if video:
        cmd += ["-f", "lavfi", "-i", f"testsrc=size=160x120:rate=10:duration={seconds}"]
    cmd += audio_filter
    if video:
        cmd += ["-c:v", "mpeg4" if path.suffix != ".webm" else "libvpx", "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", {".mp3": "libmp3lame", ".webm": "libopus", ".ogg": "libopus", ".flac": "flac",
                         ".wav": "pcm_s16le"}.get(path.suffix, "aac")]
    if start_time:
        cmd += ["-output_ts_offset", str(start_time)]
    if faststart:
        cmd += ["-movflags", "+faststart"]
    cmd.append(str(path))
    _run(cmd)
    if audio and speech is not None:
        path.with_name(path.name + ".speech.wav").unlink()
    return path


def drop_stream_lengths(path: Path) -> Path:
    """Rename the per-stream DURATION tags of an ffmpeg-made Matroska file; return the path.

    What is left records only the container's length, like files from muxers that
    write no statistics tags (HandBrake, many older ones). The tag name is an EBML
    string, so a same-length rename keeps every element size valid.
    """
    data = path.read_bytes()
    if b"DURATION" not in data:
        raise RuntimeError(f"{path} has no DURATION tags to drop")
    path.write_bytes(data.replace(b"DURATION", b"XURATION"))
    return path


def cut_in_half(full: Path, path: Path) -> Path:
    """Write the first half of `full`'s bytes to `path` (a copy cut off mid-way); return `path`."""
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def duration_of(path: Path) -> float:
    """Return the container duration ffprobe reports for `path`, in seconds."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    return float(out)


def lavfi_samples(source: str, seconds: float):  # -> numpy float32 array at 16 kHz
    """Render an ffmpeg lavfi audio source (`anoisesrc=color=pink:amplitude=0.05`, an
    `aevalsrc` expression, …) for `seconds` as 16 kHz mono float32 samples."""
    import numpy as np

    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", source, "-t", str(seconds),
         "-ac", "1", "-ar", "16000", "-f", "f32le", "pipe:"],
        capture_output=True, check=True,
    )
    return np.frombuffer(done.stdout, dtype="<f4").copy()


def write_samples(path: Path, samples) -> Path:  # noqa: ANN001 - a numpy float array
    """Write 16 kHz mono float samples (clipped to ±1) as a 16-bit PCM WAV; return the path."""
    import numpy as np

    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_wav(path, pcm)


def write_wav(path: Path, data: bytes, format_tag: int = 1) -> Path:
    """Write `data` as a mono 16 kHz 16-bit WAV with the given format tag (1 = PCM); return the path."""
    fmt = struct.pack("<HHIIHH", format_tag, 1, 16000, 32000, 2, 16)
    chunks = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(chunks)) + chunks)
    return path


def write_odd_wav(path: Path, seconds: float = 3.0) -> Path:
    """Write a WAV whose format tag (0x3313) no ffmpeg decoder knows: probes fine, cannot decode."""
    return write_wav(path, bytes(range(256)) * int(seconds * 32000 / 256), format_tag=0x3313)


def write_distinct_wav(path: Path, serial: int) -> Path:
    """Write a 0.1 s silent PCM WAV whose first samples encode `serial`: distinct content per file."""
    return write_wav(path, struct.pack("<hh", serial % 32768, serial // 32768) + bytes(3196))
