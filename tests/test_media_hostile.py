"""Hostile media on real ffmpeg: files that would make ffmpeg read other files, runs that hang or
flood stderr, and files too long to hold; the memory a very long file takes; ordinary files still work.

Each hostile file points at a "secret" recording kept outside the media folder.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from daemon import media, pipeline
from daemon.config import load_config
from daemon.datatypes import AudioStream, MediaInfo
from daemon.media.tool import input_options, input_url
from daemon.samples import DiskSamples
from tests.media_factory import make_media, speak

SECRET_WORDS = "the secret code is four four two"
SAMPLE_RATE = media.SAMPLE_RATE


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A folder outside the media folder holding the secret as WAV, MPEG-TS (an HLS segment) and MP4."""
    folder = tmp_path / "elsewhere"
    wav = speak(SECRET_WORDS, folder / "secret.wav")
    for name, codec in (("secret.ts", "aac"), ("secret.mp4", "aac")):
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", codec,
                        str(folder / name)], check=True)
    return folder


def unguarded_seconds(path: Path, *options: str) -> float:
    """Return how much audio a plain ffmpeg run (no whitelists) decodes from `path`."""
    done = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "quiet", *options, "-i", str(path),
                           "-f", "f32le", "-ac", "1", "-ar", "16000", "pipe:"], capture_output=True)
    return len(done.stdout) / 4 / 16000


def _hls(media_dir: Path, secret: Path, name: str) -> Path:
    path = media_dir / name
    segment = secret / "secret.ts"
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{segment}\n#EXT-X-ENDLIST\n")
    return path


def _ffconcat(media_dir: Path, secret: Path) -> Path:
    path = media_dir / "list.ffconcat"
    path.write_text(f"ffconcat version 1.0\nfile '{secret / 'secret.wav'}'\n")
    return path


def _concat(media_dir: Path, secret: Path) -> Path:
    path = media_dir / "Episode.mkv"  # the list ffmpeg's concat demuxer takes with -f concat -safe 0
    path.write_text(f"# parts\nfile '{secret / 'secret.wav'}'\n")
    return path


def _dash(media_dir: Path, secret: Path) -> Path:
    path = media_dir / "manifest.mpd"
    path.write_text(textwrap.dedent(f"""\
        <?xml version="1.0" encoding="utf-8"?>
        <MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT3S"
             minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
          <Period><AdaptationSet mimeType="audio/mp4"><Representation id="a" bandwidth="64000"
              codecs="mp4a.40.2" audioSamplingRate="22050"><BaseURL>{secret / 'secret.mp4'}</BaseURL>
          </Representation></AdaptationSet></Period>
        </MPD>
        """))
    return path


def _sdp(media_dir: Path, secret: Path) -> Path:
    path = media_dir / "stream.mkv"
    path.write_text("v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 5004 RTP/AVP 0\n")
    return path


def _image_sequence(media_dir: Path, secret: Path) -> Path:
    # frame001.png, frame002.png … and a file literally named frame%03d.png: ffmpeg takes the name
    # as a pattern and reads the whole numbered sequence.
    media_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=d=1:r=3",
                    str(media_dir / "frame%03d.png")], check=True)
    path = media_dir / "frame%03d.png"
    path.write_bytes((media_dir / "frame001.png").read_bytes())
    return path


_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"dinf"}


def _mp4_boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    boxes, at = [], 0
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        boxes.append((kind, data[at + 8 : at + size]))
        at += size
    return boxes


def _mp4_box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _alias(target: bytes) -> bytes:
    """A QuickTime 'alis' data reference to `target` (an absolute path), as ffmpeg's mov demuxer reads it."""
    name = target.rsplit(b"/", 1)[-1]
    body = bytes(4 + 10 + 1 + 27 + 12) + bytes([len(name)]) + name.ljust(63, b"\0") + bytes(16)
    body += struct.pack(">hh", -1, -1) + bytes(16)
    body += struct.pack(">hH", 2, len(target)) + target + bytes(len(target) % 2) + struct.pack(">hH", -1, 0)
    return _mp4_box(b"alis", body)


def _point_at(data: bytes, target: bytes) -> bytes:
    """Return an MP4's boxes without its data (mdat), every track's dref pointing at `target`."""
    out = b""
    for kind, body in _mp4_boxes(data):
        if kind == b"mdat":
            continue
        if kind == b"dref":
            body = bytes(4) + struct.pack(">I", 1) + _alias(target)
        elif kind in _MP4_CONTAINERS:
            body = _point_at(body, target)
        out += _mp4_box(kind, body)
    return out


def _mp4_dref(media_dir: Path, secret: Path) -> Path:
    # ffmpeg's muxer writes no external data references; this is the secret's own index, its
    # sample table pointing into the secret file (a QuickTime reference movie).
    path = media_dir / "Trailer.mp4"
    path.write_bytes(_point_at((secret / "secret.mp4").read_bytes(), os.fsencode(secret / "secret.mp4")))
    return path


HOSTILE = [
    ("hls", lambda m, s: _hls(m, s, "playlist.m3u8"), "an HLS playlist", ()),
    ("hls-named-mkv", lambda m, s: _hls(m, s, "Film.mkv"), "an HLS playlist", ()),
    ("ffconcat", _ffconcat, "a concat list", None),
    ("concat", _concat, "a concat list", None),
    ("dash", _dash, "a DASH manifest", None),
    ("sdp", _sdp, "an SDP session description", None),
    ("image2", _image_sequence, "an image sequence pattern", None),
    ("mp4-dref", _mp4_dref, "an MP4/MOV file with external data references",
     ("-enable_drefs", "1", "-use_absolute_path", "1")),
]


@pytest.mark.parametrize(("make", "named", "leaks_with"), [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])
def test_file_that_refers_to_other_files_is_refused_by_name(
    tmp_path: Path, secret: Path, make, named: str, leaks_with: tuple[str, ...] | None,  # noqa: ANN001
) -> None:
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    path = make(media_dir, secret)
    if leaks_with is not None:  # the attack is real: ffmpeg left to itself plays the secret
        assert unguarded_seconds(path, *leaks_with) > 1.5

    with pytest.raises(media.MediaError) as probed:
        media.probe(path)
    # Decoded without a probe (a file swapped in after its probe): refused just the same.
    stream = AudioStream(0, "aac", None, None, True, 1, duration=3.0)
    with pytest.raises(media.MediaError) as decoded:
        media.load_audio(path, MediaInfo(path, 3.0, 0.0, (stream,), "matroska"), stream, work_dir=tmp_path)

    for err in (probed.value, decoded.value):
        assert isinstance(err, media.Refused) and err.permanent and err.path == path
        assert str(err).startswith(f"{named} (it can make ffmpeg read other files); subwatch only reads "
                                   "single-file media"), str(err)
    assert list(tmp_path.glob("tmp*")) == []  # no decoded audio left behind either


ORDINARY = [".mkv", ".mp4", ".m4a", ".flac", ".wav", ".mp3", ".ogg", ".ts", ".avi", ".webm"]


@pytest.mark.parametrize("suffix", ORDINARY)
def test_ordinary_files_still_decode_to_their_length(tmp_path: Path, suffix: str) -> None:
    path = make_media(tmp_path / f"film{suffix}", seconds=3, video=suffix not in (".m4a", ".flac", ".wav",
                                                                                  ".mp3", ".ogg"))
    info = media.probe(path)
    audio = media.load_audio(path, info, media.choose_audio_stream(info), work_dir=tmp_path)
    assert audio.duration == pytest.approx(3.0, abs=0.1)
    tone = audio.samples[SAMPLE_RATE // 2 : 2 * SAMPLE_RATE]
    assert float(np.sqrt(np.mean(tone**2))) > 0.005  # the quiet 440 Hz tone (RMS 0.009), not silence


def test_a_run_past_its_time_limit_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    # A shell standing in for a tool that hangs and has started a helper of its own.
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $$ $! > {pids}; wait"
    with pytest.raises(media.MediaError) as err:
        media.run_tool(["sh", "-c", script], tmp_path / "film.mkv", timeout=1)
    assert not err.value.permanent
    assert str(err.value).startswith("sh took longer than 1 s, the most this file is given, and was stopped")
    shell, helper = map(int, pids.read_text().split())
    assert not running(shell) and not running(helper)  # the helper went with its group, not only the shell


def running(pid: int) -> bool:
    """Return whether process `pid` exists and is not a zombie (killed, waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_ffmpeg_hung_on_a_pipe_is_stopped(tmp_path: Path) -> None:
    # A FIFO put where the file was: ffmpeg would wait on it for ever.
    fifo = tmp_path / "film.mkv"
    os.mkfifo(fifo)
    args = ["ffmpeg", "-nostdin", "-loglevel", "level+warning", *input_options(), "-i", input_url(fifo),
            "-f", "null", "-"]
    with pytest.raises(media.MediaError, match="ffmpeg took longer than 2 s") as err:
        media.run_tool(args, fifo, timeout=2)
    assert not err.value.permanent
    with pytest.raises(media.MediaError, match="is not a regular file"):
        media.probe(fifo)  # and the media stage never hands it to ffmpeg at all


def test_a_flood_on_stderr_neither_blocks_nor_is_kept(tmp_path: Path) -> None:
    # 21 MB of error lines, far past any pipe's buffer, then the line that says what went wrong.
    script = "yes '[error] noise' | head -c 21000000 >&2; echo '[error] the real reason' >&2; exit 1"
    with pytest.raises(media.MediaError) as err:
        media.run_tool(["sh", "-c", script], tmp_path / "film.mkv", timeout=120)
    assert err.value.permanent
    assert str(err.value) == "noise; the real reason"  # the tail, its distinct lines


def test_load_audio_yields_no_more_than_max_seconds(tmp_path: Path) -> None:
    path = make_media(tmp_path / "film.mkv", seconds=6, video=False)
    info = media.probe(path)
    stream = media.choose_audio_stream(info)
    with pytest.raises(media.TooLong) as err:
        media.load_audio(path, info, stream, max_seconds=2.0, work_dir=tmp_path)
    assert err.value.permanent and str(err.value) == "its audio runs on past 0:00:02, the most it may hold"
    assert media.load_audio(path, info, stream, max_seconds=6.0).duration == pytest.approx(6.0, abs=0.1)


def test_decode_upload_gives_samples_on_disk_within_its_cap(tmp_path: Path, secret: Path) -> None:
    samples = media.decode_upload(secret / "secret.wav", max_seconds=60, work_dir=tmp_path)
    assert isinstance(samples, DiskSamples)
    assert len(samples) / SAMPLE_RATE == pytest.approx(media.probe(secret / "secret.wav").duration, abs=0.05)
    with pytest.raises(media.TooLong, match=r"^is 0:00:0\d long, over the limit of 0:00:01; send a shorter"):
        media.decode_upload(secret / "secret.wav", max_seconds=1, work_dir=tmp_path)
    with pytest.raises(media.Refused, match="^an HLS playlist"):
        media.decode_upload(_hls(tmp_path, secret, "upload.bin"), max_seconds=60, work_dir=tmp_path)


def test_file_over_max_hours_fails_naming_the_key(tmp_path: Path) -> None:
    folder = tmp_path / "films"
    film = make_media(folder / "Film.mkv", seconds=12, video=False)
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path}\ndefaults: {{language: en, max_hours: 0.002}}\n"
                      f"folders: [{{path: {folder}}}]\n")
    rules = load_config(config).folder_for(film)
    assert rules.media.max_hours == 0.002  # 7.2 s

    with pytest.raises(media.TooLong) as err:
        pipeline.prepare(film, rules, lambda _: False)
    assert err.value.permanent and err.value.path == film
    assert str(err.value) == ("is 0:00:12 long, over max_hours (0.002 h) in the folder's rules; "
                              "raise max_hours or split the file")


PEAK_MEMORY = """
import sys
from pathlib import Path
from daemon import media
from daemon.transcribe import vad
path = Path(sys.argv[1])
info = media.probe(path)
audio = media.load_audio(path, info, media.choose_audio_stream(info), work_dir=Path(sys.argv[2]))
maps = vad.map_speech_many([audio])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(round(audio.duration), len(maps[0].chunks), int(peak.split()[1]) * 1024)
"""


def peak_memory(path: Path, work_dir: Path) -> tuple[int, int, int]:
    """Return (seconds of audio, speech chunks, peak resident bytes) of a fresh process that decodes
    `path` with the media stage and finds its speech."""
    done = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(path), str(work_dir)],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, chunks, peak = map(int, done.stdout.split())
    return seconds, chunks, peak


def test_six_hours_take_no_more_memory_than_ten_minutes_and_a_batch(tmp_path: Path) -> None:
    # Silence compresses to almost nothing: a 6 h FLAC is 4 MB, its decoded audio 1.4 GB on disk.
    lengths = {"short": 600, "long": 6 * 3600}
    files = {}
    for name, seconds in lengths.items():
        files[name] = tmp_path / f"{name}.flac"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        "anullsrc=r=8000:cl=mono", "-t", str(seconds), "-c:a", "flac", str(files[name])],
                       check=True)
    short, long = (peak_memory(files[name], tmp_path) for name in lengths)
    assert (short[0], long[0]) == (600, 21600) and short[1] == long[1] == 0  # all of it, and no speech
    # In memory, the 6 h would hold 1.4 GB of samples; on disk, what grows is one VAD batch
    # (128 streams of 32 s: 260 MB).
    assert long[2] - short[2] < 600 << 20, (short, long)
    assert list(tmp_path.glob("tmp*")) == []  # the unnamed files left nothing behind
