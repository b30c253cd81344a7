"""Decoder throughput: subwatch's engine against openai-whisper and Hugging Face, same model, same work.

Every row decodes the same 30-second windows of real speech (or noise when
the shared test data is missing) with a random-weight model of the same shape,
and every window decodes exactly --tokens tokens: end-of-text is suppressed
and the sample length is --tokens, so no implementation can win by stopping
early. Each row runs in its own process, so its peak memory is its own (GPU
peak on CUDA, resident set size on the CPU). The table comes last.

    python bench/engine.py --shape tiny --device cpu --windows 16 --tokens 64   # CPU, a few minutes
    python bench/engine.py --shape turbo --device cuda --windows 256 --tokens 128  # GPU

Rows:
  openai-whisper, one window at a time   whisper.decode per window, as whisper.transcribe does
  openai-whisper, batched decode()       whisper.decode on --batch-size windows at once
  HF transformers generate(), batched    GenerationMixin.generate, SDPA attention (skipped if not installed)
  subwatch engine                        daemon.engine.transcribe_chunks with continuous batching
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS = {
    "whisper-sequential": "openai-whisper, one window at a time",
    "whisper-batched": "openai-whisper, batched decode()",
    "hf-generate": "HF transformers generate(), batched",
    "subwatch": "subwatch engine",
}
SHARED = ROOT / "tests" / "data" / "speech"  # the recordings in the repository


def main() -> int:
    args = parse_args()
    if args.row:
        print(json.dumps(run_row(args)), flush=True)
        return 0
    results = []
    for row in args.rows:
        print(f"running {ROWS[row]} …", file=sys.stderr, flush=True)
        results.append(run_in_child(row, args))
    print(machine(args))
    print(table(results, args))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shape", default="tiny", help="tiny, base, small, medium, large-v3, turbo (default tiny)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    parser.add_argument("--windows", type=int, default=None, help="30 s windows (default 16 CPU, 256 GPU)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per window (default 64)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="windows per batch (default 16 CPU, 64 GPU)"
    )
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per row; the best counts (default 3)"
    )
    parser.add_argument(
        "--sequential-windows",
        type=int,
        default=32,
        help="windows for the one-at-a-time row, which is slow; its rates do not depend on it (default 32)",
    )
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators per row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument(
        "--row", choices=list(ROWS), help=argparse.SUPPRESS
    )  # internal: run one row, print JSON
    args = parser.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device.startswith("cuda")
    args.windows = args.windows or (256 if gpu else 16)
    args.batch_size = args.batch_size or (64 if gpu else 16)
    return args


def run_in_child(row: str, args: argparse.Namespace) -> dict:
    """Run one row in a fresh process (clean peak memory); return its result or a note why it has none."""
    command = [
        sys.executable,
        __file__,
        "--row",
        row,
        "--shape",
        args.shape,
        "--device",
        args.device,
        "--windows",
        str(args.windows),
        "--tokens",
        str(args.tokens),
        "--batch-size",
        str(args.batch_size),
        "--repeats",
        str(args.repeats),
        "--sequential-windows",
        str(args.sequential_windows),
    ]
    if args.profile:
        command.append("--profile")
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-4000:] if done.returncode else "")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"row": row, "note": f"failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    if args.profile:
        print(done.stdout.split(lines[-1])[0], file=sys.stderr)
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- one row, in the child


def run_row(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    count = min(args.windows, args.sequential_windows) if args.row == "whisper-sequential" else args.windows
    mel = windows(count, 128 if args.shape in ("large-v3", "turbo") else 80)
    try:
        decode, label = builder(args.row)(args)
    except ImportError as exc:
        return {"row": args.row, "note": f"skipped: {exc}"}
    decode(mel[:1], 2)  # warm-up: allocator, kernels, tokenizer
    sync(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = math.inf
    for _ in range(args.repeats):  # best of N: a shared machine's other work only ever slows a run down
        started = time.perf_counter()
        tokens = decode(mel, args.tokens)
        sync(args.device)
        seconds = min(seconds, time.perf_counter() - started)
    if args.profile:
        with torch.profiler.profile() as profiler:
            decode(mel, args.tokens)
            sync(args.device)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    expected = count * args.tokens
    return {
        "row": args.row,
        "label": label if count == args.windows else f"{label} ({count} windows)",
        "seconds": seconds,
        "tokens": tokens,
        "realtime": count * 30.0 / seconds,
        "tokens_per_second": tokens / seconds,
        "peak_mib": peak_mib(args.device),
        "note": "" if tokens == expected else f"decoded {tokens} tokens, expected {expected}",
    }


def builder(row: str):  # noqa: ANN201 - returns a factory
    return {
        "whisper-sequential": whisper_sequential,
        "whisper-batched": whisper_batched,
        "hf-generate": hf_generate,
        "subwatch": subwatch,
    }[row]


def random_model(args: argparse.Namespace):  # noqa: ANN201
    from tests.whisper_checkpoint import random_whisper

    return random_whisper(args.shape, seed=0).to(args.device).eval()


def forced_options(model, tokens: int):  # noqa: ANN001, ANN201
    """Greedy, English, timestamps on (as transcribe decodes), end-of-text suppressed: `tokens` tokens."""
    from whisper.decoding import DecodingOptions
    from whisper.tokenizer import get_tokenizer

    eot = get_tokenizer(model.is_multilingual, num_languages=model.num_languages).eot
    fp16 = model.device.type == "cuda"
    return DecodingOptions(language="en", sample_len=tokens, suppress_tokens=f"-1,{eot}", fp16=fp16)


def whisper_sequential(args: argparse.Namespace):  # noqa: ANN201
    import whisper

    model = random_model(args)

    def decode(mel, tokens: int) -> int:  # noqa: ANN001
        options = forced_options(model, tokens)
        mel = mel.to(model.device)
        return sum(len(whisper.decode(model, window, options).tokens) for window in mel)

    return decode, ROWS["whisper-sequential"]


def whisper_batched(args: argparse.Namespace):  # noqa: ANN201
    import whisper

    model = random_model(args)

    def decode(mel, tokens: int) -> int:  # noqa: ANN001
        options = forced_options(model, tokens)
        mel = mel.to(model.device)
        batches = [mel[i : i + args.batch_size] for i in range(0, len(mel), args.batch_size)]
        return sum(len(r.tokens) for batch in batches for r in whisper.decode(model, batch, options))

    return decode, f"{ROWS['whisper-batched']} ({args.batch_size})"


def subwatch(args: argparse.Namespace):  # noqa: ANN201
    from daemon import engine

    model = engine.prepare_model(random_model(args))  # fp16 once, on a GPU

    # guards off: each window is decoded once, as whisper.decode does in the other rows
    one_pass = engine.EngineOptions(
        temperatures=(0.0,),
        compression_ratio_threshold=None,
        logprob_threshold=None,
        no_speech_threshold=None,
        batch_size=args.batch_size,
    )

    def decode(mel, tokens: int) -> int:  # noqa: ANN001
        requests = [engine.ChunkRequest(forced_options(model, tokens), mel=m) for m in mel]
        return sum(len(r.tokens) for r in engine.transcribe_chunks(model, requests, one_pass))

    return decode, f"{ROWS['subwatch']} ({args.batch_size})"


def hf_generate(args: argparse.Namespace):  # noqa: ANN201
    import torch
    from transformers import GenerationMixin, WhisperConfig, WhisperForConditionalGeneration

    from tests.whisper_checkpoint import SHAPES

    dims = SHAPES[args.shape]
    config = WhisperConfig(
        vocab_size=dims.n_vocab,
        num_mel_bins=dims.n_mels,
        d_model=dims.n_text_state,
        encoder_layers=dims.n_audio_layer,
        encoder_attention_heads=dims.n_audio_head,
        decoder_layers=dims.n_text_layer,
        decoder_attention_heads=dims.n_text_head,
        encoder_ffn_dim=4 * dims.n_audio_state,
        decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx,
        max_target_positions=dims.n_text_ctx,
        pad_token_id=50257,
        eos_token_id=50257,
        decoder_start_token_id=50258,
    )
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    model = WhisperForConditionalGeneration._from_config(
        config, attn_implementation="sdpa", torch_dtype=dtype
    )
    model = model.to(args.device).eval()
    prompt = [50258, 50259, 50359]  # <|startoftranscript|><|en|><|transcribe|>, timestamps allowed

    def decode(mel, tokens: int) -> int:  # noqa: ANN001
        total = 0
        for i in range(0, len(mel), args.batch_size):
            batch = mel[i : i + args.batch_size].to(args.device, dtype)
            start = torch.tensor([prompt] * len(batch), device=args.device)
            with torch.inference_mode():
                # GenerationMixin.generate: plain greedy search, without Whisper's long-form
                # logic, forced to exactly `tokens` new tokens like the other rows
                out = GenerationMixin.generate(
                    model,
                    input_features=batch,
                    decoder_input_ids=start,
                    do_sample=False,
                    num_beams=1,
                    min_new_tokens=tokens,
                    max_new_tokens=tokens,
                )
            total += (out.shape[1] - len(prompt)) * len(batch)
        return total

    return decode, f"{ROWS['hf-generate']} ({args.batch_size})"


def windows(count: int, n_mels: int):  # noqa: ANN201
    """Return `count` log-mel windows of 30 s: real speech from the shared test data, else noise."""
    import numpy as np
    import whisper

    clips = sorted(SHARED.glob("fleurs/*.ogg")) + sorted(SHARED.glob("librispeech/*.flac"))
    if clips:
        audio = np.concatenate([whisper.load_audio(str(c)) for c in clips])
    else:
        audio = (np.random.default_rng(0).standard_normal(16000 * 600) * 0.05).astype(np.float32)
    step = 480000
    reps = -(-count * step // len(audio))
    audio = np.tile(audio, reps)
    from daemon.engine import log_mel

    return log_mel([audio[i * step : (i + 1) * step] for i in range(count)], n_mels, "cpu")


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


# ----------------------------------------------------------------------------- report


def machine(args: argparse.Namespace) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    threads = args.threads or torch.get_num_threads()
    return (
        f"\nmachine: {cpu}, {os.cpu_count()} cores (torch threads {threads}), GPU {gpu}; "
        f"torch {torch.__version__}\n"
        f"work: shape {args.shape}, device {args.device}, {args.windows} windows x {args.tokens} tokens, "
        f"batch {args.batch_size}, best of {args.repeats} run(s)\n"
    )


def table(results: list[dict], args: argparse.Namespace) -> str:
    memory = "GPU peak MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    lines = [f"| implementation | x realtime | tokens/s | {memory} | note |", "|---|---:|---:|---:|---|"]
    for r in results:
        if "seconds" not in r:
            lines.append(f"| {ROWS[r['row']]} | – | – | – | {r['note']} |")
            continue
        lines.append(
            f"| {r['label']} | {r['realtime']:,.1f} | {r['tokens_per_second']:,.0f} | {r['peak_mib']:,.0f} | "
            f"{r['note']} |"
        )
    base = next((r for r in results if r["row"] == "whisper-sequential" and "seconds" in r), None)
    ours = next((r for r in results if r["row"] == "subwatch" and "seconds" in r), None)
    peers = [r for r in results if r["row"] != "subwatch" and "seconds" in r]
    if base and ours:
        lines.append(f"\nsubwatch vs one window at a time: {ours['realtime'] / base['realtime']:.1f}x")
    if peers and ours:
        best = max(peers, key=lambda r: r["realtime"])
        lines.append(f"subwatch vs best peer ({best['label']}): {ours['realtime'] / best['realtime']:.1f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
