"""Media stage on real files made by ffmpeg: probing, decoding, stream choice, bad input."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from daemon.datatypes import AudioStream, MediaInfo
from daemon.media import (
    SAMPLE_RATE,
    MediaError,
    MediaGone,
    choose_audio_stream,
    load_audio,
    probe,
)
from daemon.media.probing import _stream_length
from daemon.samples import DiskSamples, from_pcm_stream
from daemon.transcribe.vad import LEVEL_BLOCK, level_gains, speech_probabilities
from tests.media_factory import cut_in_half, drop_stream_lengths, make_media, write_odd_wav


def decode(path: Path):  # noqa: ANN201
    info = probe(path)
    return info, load_audio(path, info, choose_audio_stream(info))


def test_decodes_speech_to_16k_mono_float(tmp_path: Path) -> None:
    path = make_media(tmp_path / "Movie (2009).mkv", speech="Hello there, general Kenobi.", seconds=5)
    info, audio = decode(path)
    assert audio.sample_rate == SAMPLE_RATE and audio.samples.dtype == np.float32
    assert abs(audio.duration - info.duration) < 0.2 and abs(info.duration - 5.0) < 0.2
    # espeak speech is at the start, the padding after it is silent
    rms = lambda a: float(np.sqrt(np.mean(a**2)))  # noqa: E731
    assert rms(audio.samples[: SAMPLE_RATE]) > 0.01
    assert rms(audio.samples[-SAMPLE_RATE // 2:]) < 1e-4


def test_file_name_that_is_not_utf8_decodes(tmp_path: Path) -> None:
    made = make_media(tmp_path / "made.mkv", speech="Bytes in the name.", seconds=2)
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9 \xff.mkv"))
    os.rename(made, odd)
    _, audio = decode(odd)
    assert audio.duration == pytest.approx(2.0, abs=0.1)
    assert float(np.abs(audio.samples).max()) > 0.05  # the speech, not silence


def test_audio_starting_after_container_start_is_shifted(tmp_path: Path) -> None:
    # Audio 1.5 s after the video starts: the speech must land 1.5 s into the decoded timeline.
    wav = tmp_path / "beep.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=16000:duration=2", str(wav)], check=True)
    path = tmp_path / "late.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=10:duration=4", "-itsoffset", "1.5", "-i", str(wav),
                    "-c:v", "mpeg4", "-c:a", "aac", str(path)], check=True)
    info, audio = decode(path)
    assert choose_audio_stream(info).start_time > 1.0  # the container really starts the audio late
    # ffmpeg's DURATION tag holds the end time (3.5 s); the stream itself lasts 2 s.
    assert choose_audio_stream(info).duration == pytest.approx(2.0, abs=0.1)
    energy = np.abs(audio.samples)
    first_loud = int(np.argmax(energy > 0.05)) / SAMPLE_RATE
    assert first_loud == pytest.approx(1.5, abs=0.05)


def _zero(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _text(p: Path) -> Path:
    p.write_text("this is not a video\n" * 200)
    return p


def _truncated(p: Path) -> Path:
    full = make_media(p.with_name("full" + p.suffix), speech="A sentence that runs for a while.", seconds=20)
    return cut_in_half(full, p)


def _no_audio(p: Path) -> Path:
    return make_media(p, audio=False)


def _unreadable(p: Path) -> Path:
    make_media(p, seconds=2)
    p.chmod(0)
    return p


BAD_INPUT = [
    ("zero.mkv", _zero, "the file is empty (0 bytes)"),
    ("text.mkv", _text, "not a media file, or corrupt"),
    # ffmpeg writes an MP4's index (moov) last: the first half has none, so ffprobe gives up.
    ("truncated.mp4", _truncated, "not a media file, or corrupt: moov atom not found"),
    ("silent-film.mkv", _no_audio, "no audio stream (streams: video); nothing to transcribe"),
]


@pytest.mark.parametrize(("name", "make", "message"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_is_a_permanent_clear_error(tmp_path: Path, name: str, make, message: str) -> None:  # noqa: ANN001
    path = make(tmp_path / name)
    with pytest.raises(MediaError) as info:
        decode(path)
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.permanent and info.value.path == path
    assert "0x" not in str(info.value)  # no ffmpeg pointer noise in the user's error


def _truncated_faststart(p: Path) -> Path:
    full = make_media(p.with_name("full" + p.suffix), seconds=20, faststart=True)
    return cut_in_half(full, p)


def _truncated_untagged(p: Path) -> Path:
    full = drop_stream_lengths(make_media(p.with_name("full" + p.suffix), seconds=20))
    return cut_in_half(full, p)


REPLACE = "; replace the file with a complete copy"
CUT_AT_HALF = ("truncated or corrupt: the audio stream should end at 0:00:20 "
               "but the decoded audio ends at 0:00:(09|10)" + REPLACE)
TRUNCATED = [
    # The audio stream's own length survives the cut (Matroska DURATION tag, MP4 track duration).
    ("truncated.mkv", _truncated, 20.0, CUT_AT_HALF),
    ("truncated-faststart.mp4", _truncated_faststart, 20.0, CUT_AT_HALF),
    # No per-stream length to compare with: ffmpeg's own report of the cut is the evidence.
    ("truncated-untagged.mkv", _truncated_untagged, 0.0,
     r"truncated or corrupt: the file ends inside its own data \(ffmpeg: File ended prematurely\) "
     "after 0:00:(09|10) of audio" + REPLACE),
]


@pytest.mark.parametrize(("name", "make", "length", "message"), TRUNCATED, ids=[t[0] for t in TRUNCATED])
def test_truncated_file_says_what_was_expected_and_found(
    tmp_path: Path, name: str, make, length: float, message: str,  # noqa: ANN001
) -> None:
    path = make(tmp_path / name)
    info = probe(path)
    assert choose_audio_stream(info).duration == pytest.approx(length, abs=0.1)  # the yardstick used
    with pytest.raises(MediaError) as err:
        load_audio(path, info, choose_audio_stream(info))
    assert re.fullmatch(message, str(err.value)), str(err.value)
    assert err.value.permanent and err.value.path == path
    assert "0x" not in str(err.value)


def _short_audio(p: Path) -> Path:
    return make_media(p, seconds=7.6, audio_seconds=2.7)


def _short_audio_untagged(p: Path) -> Path:
    return drop_stream_lengths(_short_audio(p))


SHORT_AUDIO = [("credits.mkv", _short_audio, 2.7), ("credits.mp4", _short_audio, 2.7),
               ("credits-untagged.mkv", _short_audio_untagged, 0.0)]


@pytest.mark.parametrize(("name", "make", "length"), SHORT_AUDIO, ids=[s[0] for s in SHORT_AUDIO])
def test_audio_ending_before_the_video_is_not_truncated(
    tmp_path: Path, name: str, make, length: float,  # noqa: ANN001
) -> None:
    # A film with silent end credits: the container runs 7.6 s, its audio only 2.7 s.
    info, audio = decode(make(tmp_path / name))
    assert info.duration == pytest.approx(7.6, abs=0.1)
    assert choose_audio_stream(info).duration == pytest.approx(length, abs=0.1)
    assert audio.duration == pytest.approx(2.7, abs=0.15)
    # the quiet tone itself (RMS about 0.009), not silence
    assert float(np.sqrt(np.mean(audio.samples[: int(2.5 * SAMPLE_RATE)] ** 2))) > 0.005


@pytest.mark.parametrize(("raw", "length"), [
    ({"duration": "2.700000", "start_time": "0.000000"}, 2.7),  # MP4: ffprobe has the track's length
    ({"duration": "N/A", "start_time": "1.436000", "tags": {"DURATION": "00:00:03.500000000"}}, 2.064),
    ({"start_time": "0.000000", "tags": {"DURATION-eng": "01:52:10.500000000"}}, 6730.5),
    # mkvmerge writes the length itself; one shorter than the start cannot be an end time.
    ({"start_time": "60.000000", "tags": {"DURATION": "00:00:30.000000000"}}, 30.0),
    ({"start_time": "0.000000", "tags": {"DURATION": "soon"}}, 0.0),
    ({"start_time": "0.000000", "tags": {"ENCODER": "Lavc"}}, 0.0),
])
def test_stream_length_from_ffprobe_fields(raw: dict, length: float) -> None:
    assert _stream_length(raw) == pytest.approx(length, abs=1e-6)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="permission denied"):
        decode(_unreadable(tmp_path / "locked.mkv"))


def test_vanished_file_is_gone_not_failed(tmp_path: Path) -> None:
    with pytest.raises(MediaGone):
        probe(tmp_path / "deleted.mkv")


def test_undecodable_codec_is_permanent(tmp_path: Path) -> None:
    # A stream ffprobe lists but ffmpeg has no decoder for: raw bytes tagged as an unknown codec.
    path = make_media(tmp_path / "good.mkv", seconds=2)
    info = probe(path)
    broken = AudioStream(index=7, codec="mystery", language=None, title=None, default=True, channels=1)
    with pytest.raises(MediaError) as err:
        load_audio(path, info, broken)
    assert err.value.permanent and str(err.value).startswith("ffmpeg could not decode the audio")


def test_codec_without_decoder_says_so(tmp_path: Path) -> None:
    path = write_odd_wav(tmp_path / "odd.wav")
    with pytest.raises(MediaError) as err:
        decode(path)
    assert str(err.value) == ("ffmpeg has no decoder for its audio codec (unknown, tag 0x3313); convert the "
                              "audio to a common codec (AAC, Opus, FLAC)")


def _info(*streams: AudioStream) -> MediaInfo:
    return MediaInfo(Path("x.mkv"), 10.0, 0.0, streams, "matroska")


def stream(index: int, language: str | None = None, title: str | None = None, default: bool = False,
           secondary: bool = False) -> AudioStream:
    return AudioStream(index, "aac", language, title, default, 2, secondary=secondary)


def test_choose_default_stream_over_first() -> None:
    assert choose_audio_stream(_info(stream(1, "eng"), stream(2, "jpn", default=True))).index == 2


def test_choose_requested_language_by_639_2_tag() -> None:
    info = _info(stream(1, "eng", default=True), stream(2, "jpn"))
    assert choose_audio_stream(info, "ja").index == 2
    assert choose_audio_stream(info, "fr").index == 1  # no such stream: the default


def test_commentary_and_description_skipped() -> None:
    info = _info(stream(1, "eng", title="Director's Commentary", default=True),
                 stream(2, "eng", secondary=True), stream(3, "eng"))
    assert choose_audio_stream(info).index == 3
    only = _info(stream(1, "eng", title="Commentary"))
    assert choose_audio_stream(only).index == 1  # nothing else: better than nothing


def test_real_multi_stream_file_tags(tmp_path: Path) -> None:
    path = tmp_path / "dual.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error",
                    "-f", "lavfi", "-i", "sine=frequency=300:duration=2",
                    "-f", "lavfi", "-i", "sine=frequency=900:duration=2",
                    "-map", "0", "-map", "1", "-c:a", "aac",
                    "-metadata:s:a:0", "language=eng", "-metadata:s:a:0", "title=Commentary",
                    "-metadata:s:a:1", "language=jpn", "-disposition:a:0", "default",
                    "-disposition:a:1", "0", str(path)], check=True)
    info = probe(path)
    assert [(s.language, s.title) for s in info.audio_streams] == [("eng", "Commentary"), ("jpn", None)]
    assert choose_audio_stream(info).language == "jpn"




# --- Decoded audio on disk (daemon.samples) -------------------------------------------------------


def ffmpeg_in_memory(path: Path) -> np.ndarray:
    """Return the first audio stream of `path` decoded as load_audio did before its samples went to
    disk: the same ffmpeg arguments, stdout read into memory."""
    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "f32le", "-ac", "1",
         "-acodec", "pcm_f32le", "-af", "aresample=async=1:first_pts=0", "-ar", "16000", "-dn",
         "-map", "0:a:0", "-sn", "-vn", "pipe:"],
        capture_output=True, check=True,
    )
    return np.frombuffer(done.stdout, dtype=np.float32)


def test_decoded_samples_are_on_disk_and_the_same_values(testdata: Path) -> None:
    path = testdata / "speech" / "jfk.flac"
    info, audio = decode(path)
    reference = ffmpeg_in_memory(path)
    assert isinstance(audio.samples, DiskSamples)
    assert audio.samples.dtype == np.float32 and audio.samples.shape == reference.shape
    assert np.array_equal(audio.samples[:], reference)  # bit for bit: transcripts cannot change
    assert np.array_equal(np.asarray(audio.samples), reference)


@pytest.mark.parametrize("key", [
    slice(None), slice(10, 20), slice(-100, None), slice(5, -5, 3), slice(None, None, -7),
    slice(100, 50), slice(170_000, 180_000), slice(None, 3), slice(-3, -1, -1), slice(7, 2, -2),
    0, 12_345, -1,
], ids=str)
def test_disk_samples_index_like_numpy(testdata: Path, key: slice | int) -> None:
    _, audio = decode(testdata / "speech" / "jfk.flac")
    reference = ffmpeg_in_memory(testdata / "speech" / "jfk.flac")
    got = audio.samples[key]
    assert np.array_equal(got, reference[key])
    assert np.asarray(got).dtype == np.float32


def test_disk_samples_refuse_what_numpy_would(tmp_path: Path) -> None:
    samples = from_pcm_stream([np.arange(10, dtype="<f4").tobytes()], "f32le", tmp_path)
    with pytest.raises(IndexError):
        samples[10]
    with pytest.raises(TypeError):
        samples[[1, 2]]  # type: ignore[index]
    samples.close()
    with pytest.raises(OSError):
        samples[:2]


def test_pcm_stream_becomes_the_same_floats_as_in_memory(tmp_path: Path) -> None:
    pcm = np.random.default_rng(0).integers(-32768, 32767, 100_001, dtype="<i2").tobytes()
    chunks = [pcm[i : i + 777] for i in range(0, len(pcm), 777)]  # odd sizes: samples cut across chunks
    samples = from_pcm_stream(iter(chunks), "s16le", tmp_path)
    expected = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0  # Bazarr's in-memory conversion
    assert len(samples) == 100_001 and np.array_equal(samples[:], expected)
    floats = expected.tobytes()
    again = from_pcm_stream([floats[:5], floats[5:9999], floats[9999:]], "f32le", tmp_path)
    assert np.array_equal(again[:], expected)


def test_pcm_stream_cut_inside_a_sample_or_over_its_cap_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ends inside a sample: s16le samples are 2 bytes each"):
        from_pcm_stream([b"\x00\x01\x02"], "s16le", tmp_path)
    with pytest.raises(ValueError, match="more than 4 samples"):
        from_pcm_stream([bytes(12), bytes(12)], "f32le", tmp_path, max_samples=4)
    assert list(tmp_path.iterdir()) == []  # the files are unnamed: nothing left behind either way


def _level_gains_before(samples: np.ndarray, window_s: float) -> np.ndarray:
    """vad.level_gains as it was when it took a whole numpy array at once: the yardstick."""
    frame, target, floor = 320, 0.05, 3e-4
    frames = -(-len(samples) // frame)
    whole = len(samples) // frame
    view = samples[: whole * frame].reshape(whole, frame)
    energy = np.einsum("ij,ij->i", view, view)
    tail = samples[whole * frame :]
    if len(tail):
        energy = np.append(energy, np.dot(tail, tail))
    rms = np.sqrt(energy / frame)
    half = max(1, round(window_s * SAMPLE_RATE / frame / 2))
    around = np.lib.stride_tricks.sliding_window_view(np.pad(rms, half, mode="edge"), 2 * half + 1)
    assert len(rms) == frames
    return (target / np.maximum(around.max(axis=1), floor)).astype(np.float32)


def test_speech_detection_is_the_same_on_disk_and_in_memory(testdata: Path, tmp_path: Path) -> None:
    # JFK 17 times over, cut mid-frame: over two of level_gains' blocks, and a last frame that is short.
    jfk = ffmpeg_in_memory(testdata / "speech" / "jfk.flac")
    signal = np.tile(jfk, 17)[:-123]
    assert len(signal) > 2 * LEVEL_BLOCK and len(signal) % 320
    on_disk = from_pcm_stream([signal.tobytes()], "f32le", tmp_path)

    before = _level_gains_before(signal, 3.0)
    assert np.array_equal(level_gains(signal, 3.0), before)
    assert np.array_equal(level_gains(on_disk, 3.0), before)
    # Each alone: in one batch, a row's place in it moves silero's sums in the last bit.
    [in_memory], [disk] = speech_probabilities([signal]), speech_probabilities([on_disk])
    assert np.array_equal(in_memory, disk) and len(disk) == -(-len(signal) // 512)
    assert (disk > 0.5).mean() > 0.5  # it is speech, most of it
