"""What bench/abuse.py sends: a secret recording and playlists that point at it, live playlists, hours
of silence and noise (made by ffmpeg straight to disk, never held in memory), and real speech as Bazarr
sends it."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RATE = 16000
# Words no clip of the test data says: if they come back, the daemon read the secret file.
SECRET_TEXT = "The purple walrus has seventeen keys. The purple walrus has seventeen keys."
SECRET_MARKS = (("purple",), ("walrus", "walruses"), ("seventeen", "17"))

# What /asr is sent (encode=true) and, for the last, what is dropped into the watched folder as x.mkv.
PLAYLIST_KINDS = ("hls", "ffconcat", "concat", "dash", "sdp", "hls-as-mkv")


@dataclass(frozen=True)
class Secret:
    """The secret recording, outside every watched folder, in the forms playlists can name."""

    wav: Path
    ts: Path  # MPEG-TS: what an HLS segment is
    m4a: Path  # MP4: what a DASH representation is
    tmp_name: str  # a copy's name inside the daemon's temp dir (where uploads are written)


def ffmpeg(*args: str, timeout: float = 600) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-hide_banner", "-loglevel", "error", *args],
                   check=True, timeout=timeout)


def make_secret(folder: Path, daemon_tmp: Path) -> Secret:
    """Record SECRET_TEXT with espeak-ng into `folder`; put a copy in `daemon_tmp`; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    wav = folder / "secret.wav"
    subprocess.run(["espeak-ng", "-s", "140", "-w", str(wav), SECRET_TEXT], check=True, timeout=60)
    ts, m4a = folder / "secret.ts", folder / "secret.m4a"
    ffmpeg("-i", str(wav), "-ar", "48000", "-c:a", "aac", "-f", "mpegts", str(ts))
    ffmpeg("-i", str(wav), "-ar", "48000", "-c:a", "aac", "-movflags", "+faststart", str(m4a))
    shutil.copy(wav, daemon_tmp / "holiday.wav")
    return Secret(wav, ts, m4a, "holiday.wav")


def secret_heard(text: str) -> bool:
    """Return True if `text` holds at least two of the secret's three marks (purple, walrus, 17)."""
    words = set(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())
    return sum(1 for mark in SECRET_MARKS if words & set(mark)) >= 2


def playlist(kind: str, secret: Secret) -> bytes:
    """Return a playlist of `kind` (PLAYLIST_KINDS) that names the secret by its path."""
    if kind in ("hls", "hls-as-mkv"):
        return hls([secret.ts], ended=True)
    if kind == "ffconcat":  # a relative name passes the concat demuxer's safe=1 check
        return f"ffconcat version 1.0\nfile {secret.tmp_name}\n".encode()
    if kind == "concat":  # the list without its header: not probed as concat by ffmpeg
        return f"file '{secret.wav}'\n".encode()
    if kind == "dash":
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT10S" '
            'minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">\n'
            ' <Period><AdaptationSet mimeType="audio/mp4">\n'
            '  <Representation id="a" bandwidth="64000" codecs="mp4a.40.2">\n'
            f"   <BaseURL>file://{secret.m4a}</BaseURL>\n"
            "  </Representation>\n </AdaptationSet></Period>\n</MPD>\n"
        ).encode()
    if kind == "sdp":  # names no file, but has ffmpeg listen for RTP on a UDP port and wait
        return (b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
                b"m=audio 47123 RTP/AVP 97\na=rtpmap:97 L16/16000/1\n")
    raise ValueError(f"unknown playlist kind {kind!r}; one of {', '.join(PLAYLIST_KINDS)}")


def hls(segments: list[Path], ended: bool, seconds: float = 6.0) -> bytes:
    """Return an HLS media playlist of `segments` (absolute paths); without ENDLIST if not `ended` (live)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{int(seconds) + 1}",
             "#EXT-X-MEDIA-SEQUENCE:0"]
    for segment in segments:
        lines += [f"#EXTINF:{seconds:.1f},", str(segment)]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


def tone_segment(folder: Path) -> Path:
    """Write 4 s of a quiet tone as an MPEG-TS segment (what a live playlist names); return it."""
    path = folder / "tone.ts"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=4", "-af", "volume=0.1",
           "-c:a", "aac", "-f", "mpegts", str(path))
    return path


def long_silence_flac(cache: Path, minutes: float) -> Path:
    """Return a FLAC of `minutes` of silence, 16 kHz mono (3 h is 2 MB), made once into `cache`."""
    path = cache / f"silence-{minutes:g}min.flac"
    if not path.exists():
        part = path.with_suffix(".part.flac")
        ffmpeg("-f", "lavfi", "-i", f"anullsrc=r={RATE}:cl=mono:d={minutes * 60:g}", "-c:a", "flac",
               str(part))
        part.rename(path)
    return path


def long_noise_pcm(cache: Path, minutes: float) -> Path:
    """Return `minutes` of quiet pink noise as raw PCM s16le 16 kHz mono (Bazarr's form; 3 h is 345 MB),
    written by ffmpeg straight to a file in `cache`, once."""
    path = cache / f"noise-{minutes:g}min.s16le"
    if not path.exists():
        part = path.with_suffix(".part")
        ffmpeg("-f", "lavfi", "-i", f"anoisesrc=a=0.003:c=pink:r={RATE}:d={minutes * 60:g}:seed=7",
               "-f", "s16le", "-ac", "1", "-ar", str(RATE), str(part))
        part.rename(path)
    return path


def bazarr_pcm(path: Path) -> bytes:
    """The audio as Bazarr's encode_audio_stream makes it: s16le, mono, 16 kHz, async resampled."""
    done = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "0", "-i", str(path),
                           "-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(RATE),
                           "-af", "aresample=async=1", "-"], capture_output=True, check=True, timeout=120)
    return done.stdout
