"""A backlog of media files end to end: ffmpeg decoding, speech detection, batched decoding.

Generates a folder of episodes (speech from the shared test data with pauses,
a silent cold open, music-like credits; MKV/MP4 with AAC, WebM with Opus, MP3)
once, then times subwatch's pipeline pieces over all of them, and
openai-whisper's transcribe() over the same files (or the first few) as the
baseline, in the same run. x realtime is media seconds per wall second.

    python bench/backlog.py --files 4 --minutes 1 --shape tiny --device cpu     # CPU, a few minutes
    python bench/backlog.py --files 20 --minutes 3 --shape turbo --device cuda  # one hour on a GPU

The model has random weights, so every window decodes exactly --tokens tokens
in both pipelines (end-of-text suppressed; 96 is about what real speech gives
per 30 s with timestamps). subwatch runs as the daemon does: timestamps and
word alignment on, quality-guard retries off (random weights fail every
guard). The baseline runs without timestamps so that, as with a real model,
each window moves 30 s on; with random timestamps whisper would re-decode
overlapping windows and look slower than it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT / "tests" / "data" / "speech"  # the recordings in the repository
RATE = 16000
FORMATS = [
    (".mkv", "aac", "mpeg4"),
    (".mp4", "aac", "mpeg4"),
    (".webm", "libopus", "libvpx"),
    (".mp3", "libmp3lame", None),
]


def main() -> int:
    args = parse_args()
    paths = make_backlog(args.workdir, args.files, args.minutes)
    model = random_model(args)
    warm_up(model, paths[0], args)
    ours, base = None, None
    for _ in range(args.repeats):  # alternate, keep each one's best: a shared machine only slows runs down
        run = run_subwatch(paths, model, args)
        ours = run if ours is None or run["wall"] < ours["wall"] else ours
        if args.baseline_files:
            run = run_whisper(paths[: args.baseline_files], args)
            base = run if base is None or run["wall"] < base["wall"] else base
    print(report(ours, base, args))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=20, help="episodes in the backlog (default 20)")
    parser.add_argument("--minutes", type=float, default=3.0, help="length of each episode (default 3)")
    parser.add_argument("--shape", default="turbo", help="random model shape: tiny … turbo (default turbo)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    parser.add_argument("--tokens", type=int, default=96, help="tokens decoded per window (default 96)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="chunks per batch (default: from memory)"
    )
    parser.add_argument("--baseline-files", type=int, default=None, help="files for whisper (default all)")
    parser.add_argument("--no-words", dest="words", action="store_false", help="skip word alignment")
    parser.add_argument("--decoders", type=int, default=8, help="ffmpeg decodes at once (default 8)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each pipeline; the best counts (default 1)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/subwatch-backlog"))
    args = parser.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.baseline_files = args.files if args.baseline_files is None else args.baseline_files
    args.workdir = args.workdir / f"{args.files}x{args.minutes:g}min"
    return args


# ----------------------------------------------------------------------------- the media


def make_backlog(folder: Path, files: int, minutes: float) -> list[Path]:
    """Return the backlog's files, generating the missing ones (same content for the same arguments)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"Episode {i + 1:02d}{FORMATS[i % len(FORMATS)][0]}" for i in range(files)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if not missing:
        return paths
    clips = speech_clips()
    print(f"generating {len(missing)} file(s) in {folder} …", file=sys.stderr)
    for i in missing:
        rng = np.random.default_rng(i)
        encode(episode(clips, minutes * 60, rng), paths[i], FORMATS[i % len(FORMATS)])
    return paths


def speech_clips() -> list:
    """Return the shared test data's speech as 16 kHz arrays (espeak-ng sentences if it is missing)."""
    import numpy as np
    import whisper

    sources = sorted(SHARED.glob("fleurs/*.ogg")) + sorted(SHARED.glob("librispeech/*.flac"))
    if sources:
        return [whisper.load_audio(str(p)) for p in sources]
    from tests.media_factory import speak

    sentences = ["The quick brown fox jumps over the lazy dog.", "Subtitles appear beside the video file."]
    tmp = Path("/tmp/subwatch-backlog/speech")
    clips = [whisper.load_audio(str(speak(s, tmp / f"{i}.wav"))) for i, s in enumerate(sentences)]
    return clips or [np.zeros(RATE)]


def episode(clips: list, seconds: float, rng) -> object:  # noqa: ANN001
    """Return an episode's samples: a silent cold open, speech with pauses, a music break, music credits."""
    import numpy as np

    def silence(s: float) -> np.ndarray:
        return np.zeros(round(s * RATE), np.float32)

    def music(s: float) -> np.ndarray:
        t = np.arange(round(s * RATE)) / RATE
        chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6, 440.0))
        return (0.05 * chord * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)

    parts, length = [silence(rng.uniform(3, 10))], 0.0
    credits = min(20.0, seconds * 0.1)
    while length < seconds - credits:
        if rng.random() < 0.05:
            parts.append(music(rng.uniform(5, 12)))
        parts += [clips[rng.integers(len(clips))], silence(rng.uniform(0.3, 3.0))]
        length = sum(len(p) for p in parts) / RATE
    samples = np.concatenate(parts)[: round((seconds - credits) * RATE)]
    return np.concatenate([samples, music(credits)])


def encode(samples, path: Path, fmt: tuple[str, str, str | None]) -> None:  # noqa: ANN001
    """Write 16 kHz samples as 48 kHz stereo in `path`, with a small video stream unless it is MP3."""
    _, audio_codec, video_codec = fmt
    seconds = len(samples) / RATE
    command = [
        "ffmpeg",
        "-nostdin",
        "-y",
        "-loglevel",
        "error",
        "-f",
        "f32le",
        "-ar",
        str(RATE),
        "-ac",
        "1",
        "-i",
        "pipe:",
    ]
    if video_codec:
        command += ["-f", "lavfi", "-i", f"color=c=black:s=160x120:r=1:d={seconds}", "-c:v", video_codec]
    command += ["-c:a", audio_codec, "-ar", "48000", "-ac", "2", "-shortest", str(path)]
    subprocess.run(command, input=samples.tobytes(), check=True)


# ----------------------------------------------------------------------------- the runs


def random_model(args: argparse.Namespace):  # noqa: ANN201
    from tests.whisper_checkpoint import random_whisper

    return random_whisper(args.shape, seed=0).to(args.device).eval()


def forced_options(model, tokens: int, **extra):  # noqa: ANN001, ANN003, ANN201
    from whisper.decoding import DecodingOptions
    from whisper.tokenizer import get_tokenizer

    eot = get_tokenizer(model.is_multilingual, num_languages=model.num_languages).eot
    return DecodingOptions(
        language="en",
        sample_len=tokens,
        suppress_tokens=f"-1,{eot}",
        fp16=model.device.type == "cuda",
        **extra,
    )


def load(path: Path):  # noqa: ANN201
    """The media stage: probe, pick the audio stream, decode it with ffmpeg to 16 kHz mono."""
    from daemon.media import choose_audio_stream, load_audio, probe

    info = probe(path)
    return load_audio(path, info, choose_audio_stream(info))


def warm_up(model, path: Path, args: argparse.Namespace) -> None:  # noqa: ANN001
    """One small pass of each pipeline, so that neither pays for first-call setup inside the timing."""
    import whisper

    from daemon import engine
    from daemon.transcribe import vad

    audio = load(path)
    chunk = vad.find_speech(audio)[0]
    request = engine.ChunkRequest(
        forced_options(model, 4), samples=chunk.samples(audio), word_timestamps=True
    )
    engine.transcribe_chunks(model, [request], engine.EngineOptions(temperatures=(0.0,)))
    if args.baseline_files:
        whisper.decode(
            model,
            whisper.log_mel_spectrogram(whisper.pad_or_trim(audio.samples), model.dims.n_mels).to(
                model.device
            ),
            forced_options(model, 4),
        )


def run_subwatch(paths: list[Path], model, args: argparse.Namespace) -> dict:  # noqa: ANN001
    """Time the daemon's pieces over the backlog: media stage, VAD for all files together, the engine."""
    from daemon import engine
    from daemon.transcribe import vad

    model = engine.prepare_model(model)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.decoders) as pool:  # ffmpeg runs in subprocesses: threads overlap them
        audios = list(pool.map(load, paths))
    decoded = time.perf_counter()
    chunks = vad.find_speech_many(audios)
    detected = time.perf_counter()
    options = forced_options(model, args.tokens)
    requests = [
        engine.ChunkRequest(
            options, samples=c.samples(a), duration=min(c.duration, 30.0), word_timestamps=args.words
        )
        for a, file_chunks in zip(audios, chunks, strict=True)
        for c in file_chunks
    ]
    results = engine.transcribe_chunks(
        model, requests, engine.EngineOptions(temperatures=(0.0,), batch_size=args.batch_size)
    )
    sync(args.device)
    finished = time.perf_counter()
    return {
        "files": len(paths),
        "media": sum(a.duration for a in audios),
        "speech": sum(c.duration for file_chunks in chunks for c in file_chunks),
        "chunks": len(requests),
        "tokens": sum(len(r.tokens) for r in results),
        "decode": decoded - started,
        "vad": detected - decoded,
        "engine": finished - detected,
        "wall": finished - started,
    }


def run_whisper(paths: list[Path], args: argparse.Namespace) -> dict:
    """Time openai-whisper's transcribe() (with its own ffmpeg decoding) over `paths`."""
    import whisper

    model = random_model(args)  # as whisper.load_model leaves it: fp32 weights
    options = forced_options(model, args.tokens, without_timestamps=True)
    kwargs = {
        k: getattr(options, k)
        for k in ("language", "sample_len", "suppress_tokens", "fp16", "without_timestamps")
    }
    media, windows, tokens = 0.0, 0, 0
    started = time.perf_counter()
    for path in paths:
        audio = whisper.load_audio(str(path))
        result = whisper.transcribe(model, audio, temperature=0.0, verbose=None, **kwargs)
        media += len(audio) / RATE
        windows += len({s["seek"] for s in result["segments"]})
        tokens += sum(len(s["tokens"]) for s in result["segments"])
    sync(args.device)
    return {
        "files": len(paths),
        "media": media,
        "wall": time.perf_counter() - started,
        "windows": windows,
        "tokens": tokens,
    }


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- report


def clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


def report(ours: dict, base: dict | None, args: argparse.Namespace) -> str:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name:")
        ),
        "?",
    )
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    lines = [
        f"\nmachine: {cpu}, {torch.get_num_threads()} torch threads, GPU {gpu}; torch {torch.__version__}",
        f"work: {args.files} files x {args.minutes:g} min, shape {args.shape}, device {args.device}, "
        f"{args.tokens} tokens per window, words {'on' if args.words else 'off'}, "
        f"best of {args.repeats} run(s)\n",
        "| pipeline | files | media | wall s | x realtime | notes |",
        "|---|---:|---:|---:|---:|---|",
        f"| subwatch: media stage + VAD + engine | {ours['files']} | {clock(ours['media'])} "
        f"| {ours['wall']:.1f} | {ours['media'] / ours['wall']:,.0f} "
        f"| ffmpeg {ours['decode']:.1f} s, VAD {ours['vad']:.1f} s, engine {ours['engine']:.1f} s; "
        f"{clock(ours['speech'])} of speech in {ours['chunks']} chunks, {ours['tokens']:,} tokens |",
    ]
    if base:
        lines.append(
            f"| openai-whisper transcribe() | {base['files']} | {clock(base['media'])} | {base['wall']:.1f} "
            f"| {base['media'] / base['wall']:,.0f} | {base['windows']} windows, {base['tokens']:,} tokens |"
        )
        speedup = (ours["media"] / ours["wall"]) / (base["media"] / base["wall"])
        lines.append(f"\nsubwatch vs openai-whisper transcribe(): {speedup:.1f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
