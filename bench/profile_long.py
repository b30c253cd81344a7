"""Where the CPU engine's time and memory go on the long file of bench/accuracy.py (issue #22).

    python bench/profile_long.py --workdir /tmp/acc                 # engine auto, retries as configured
    python bench/profile_long.py --workdir /tmp/acc --engine ctranslate2-int8-encoder
    python bench/profile_long.py --workdir /tmp/acc --retry-pad 100 # retries encoded as 30 s, as before #22
    python bench/profile_long.py --workdir /tmp/acc --layout        # the decoder's batch and thread layouts
    python bench/profile_long.py --workdir /tmp/acc --many-arenas   # glibc's malloc arenas left as they are

The workdir is one bench/accuracy.py prepared (its work.json, long-15x3.npy and converted models).
The first form transcribes the long file once, as the accuracy row does (beam 5, language given),
and prints the wall and CPU seconds of each round (first round, rechecks, coverage rounds), of each
CTranslate2 call (encode, generate, align) and the peak resident memory. `--layout` times encode +
beam-5 generate on 16 windows of the long file at decode batches of 4, 8 and 16, and one call at a
time on 2 intra threads against two calls of 4 or 8 windows at once on 2 inter threads. The process
keeps to one malloc arena, as `subwatch transcribe` does, unless `--many-arenas`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

Stats = dict[str, list[float]]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True, help="a bench/accuracy.py --workdir")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retry-pad", type=float, default=None, help="rounds.RETRY_ENCODER_PAD_S to use")
    parser.add_argument("--layout", action="store_true", help="time decode batch sizes and thread layouts")
    parser.add_argument("--many-arenas", action="store_true", help="leave glibc's malloc arenas as they are")
    args = parser.parse_args()
    import torch

    from daemon.malloc import one_arena

    if not args.many_arenas:
        one_arena()  # as `subwatch transcribe` and a decoder child do
    torch.set_num_threads(args.threads)
    if args.layout:
        layout(args.workdir)
    else:
        profile(args)
    return 0


def timed(
    stats: Stats, key: str, function: Callable[..., Any], count: Callable[..., int]
) -> Callable[..., Any]:
    """`function`, adding its calls, items (by `count`), CPU and wall seconds to stats[key]."""

    def run(*args: Any, **kwargs: Any) -> Any:
        cpu, wall = time.process_time(), time.perf_counter()
        result = function(*args, **kwargs)
        entry = stats.setdefault(key, [0, 0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += count(*args)
        entry[2] += time.process_time() - cpu
        entry[3] += time.perf_counter() - wall
        return result

    return run


class Timed:
    """A CTranslate2 Whisper whose encode, generate and align calls are timed; the rest passes through."""

    def __init__(self, inner: Any, stats: Stats, prefix: str) -> None:
        self._inner = inner
        self.encode = timed(stats, f"{prefix}encode", inner.encode, lambda features, **_: features.shape[0])
        self.generate = timed(
            stats, f"{prefix}generate", inner.generate, lambda features, prompts, **_: len(prompts)
        )
        self.align = timed(stats, f"{prefix}align", inner.align, lambda features, *_: features.shape[0])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def profile(args: argparse.Namespace) -> None:
    import numpy as np

    import daemon.transcribe as stage
    from daemon.datatypes import Audio
    from daemon.transcribe import TranscribeOptions, load_model, rounds

    if args.retry_pad is not None:
        rounds.RETRY_ENCODER_PAD_S = args.retry_pad
    work = json.loads((args.workdir / "work.json").read_text())
    model = load_model(work["pt"], Path(work["pt"]).parents[1], "cpu", args.engine)
    stats: Stats = {}
    shared = model.encoder_ct2 is model.ct2
    model.ct2 = Timed(model.ct2, stats, "")
    model.encoder_ct2 = model.ct2 if shared else Timed(model.encoder_ct2, stats, "")
    stage._decode_round = timed(stats, "round", stage._decode_round, lambda model, files, work, *_: len(work))
    rounds_before: list[list[float]] = []
    real_round = stage._decode_round

    def each_round(*a: Any, **k: Any) -> Any:
        before = list(stats.get("round", [0, 0, 0.0, 0.0]))
        result = real_round(*a, **k)
        rounds_before.append([b - a for a, b in zip(before, stats["round"], strict=True)])
        return result

    stage._decode_round = each_round
    audio = Audio(np.load(args.workdir / "long-15x3.npy"), 16000)
    options = TranscribeOptions(model=work["pt"], language="en", beam_size=5)
    cpu, wall = time.process_time(), time.perf_counter()
    transcript = stage.transcribe(audio, options, model)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"engine {args.engine}, retry pad {rounds.RETRY_ENCODER_PAD_S:g} s, "
          f"long file {audio.duration:.0f} s: wall {wall:.1f} s, CPU {cpu:.1f} s, "
          f"{audio.duration / wall:.1f}x realtime, "
          f"{len(transcript.segments)} segments, peak RSS {peak:,} MiB")
    print("| round | windows | CPU s | wall s |\n|---|---:|---:|---:|")
    # the first round decodes every speech window; then the rechecks (when a line was read unsure),
    # then the coverage rounds
    for n, (_, windows, c, w) in enumerate(rounds_before, 1):
        print(f"| {n} | {windows:.0f} | {c:.1f} | {w:.1f} |")
    print("| CTranslate2 call | calls | windows | CPU s | wall s |\n|---|---:|---:|---:|---:|")
    for key in ("encode", "generate", "align"):
        calls, items, c, w = stats.get(key, [0, 0, 0.0, 0.0])
        print(f"| {key} | {calls:.0f} | {items:.0f} | {c:.1f} | {w:.1f} |")


def layout(workdir: Path) -> None:
    import ctranslate2
    import numpy as np

    from daemon.engine.ct2.model import _storage
    from daemon.engine.encoder import log_mel

    [folder] = [
        p for p in (workdir / "models" / "converted").iterdir()
        if p.is_dir() and "-ctranslate2-" in p.name
        and not p.name.split("-ctranslate2-")[1].startswith(("encoder-", "decoder-"))  # the whole model
    ]
    samples = np.load(workdir / "long-15x3.npy")
    windows = 16
    mels = log_mel([samples[i * 480000 : (i + 1) * 480000] for i in range(windows)], 80, "cpu").numpy()
    sot = [50258, 50259, 50359]  # <|startoftranscript|><|en|><|transcribe|>

    def decode(model: Any, part: Any) -> int:
        features = np.concatenate([np.array(model.encode(_storage(part[i : i + 4]), to_cpu=True))
                                   for i in range(0, len(part), 4)])
        out = model.generate(_storage(features), [sot] * len(part), beam_size=5, max_length=224)
        return sum(len(o.sequences_ids[0]) for o in out)

    print("| layout | wall s | CPU s | tokens |\n|---|---:|---:|---:|")
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=2)
    decode(model, mels[:1])
    for size in (4, 8, 16):
        cpu, wall = time.process_time(), time.perf_counter()
        tokens = sum(decode(model, mels[i : i + size]) for i in range(0, windows, size))
        print(f"| {size} windows at once, 2 intra threads | {time.perf_counter() - wall:.1f} | "
              f"{time.process_time() - cpu:.1f} | {tokens} |")
    model = ctranslate2.models.Whisper(
        str(folder), device="cpu", compute_type="float32", intra_threads=1, inter_threads=2
    )
    decode(model, mels[:1])
    for size in (4, 8):
        cpu, wall = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            parts = [mels[i : i + size] for i in range(0, windows, size)]
            tokens = sum(pool.map(decode, [model] * len(parts), parts))
        print(f"| {size} windows at once, two calls at once on 2 inter threads | "
              f"{time.perf_counter() - wall:.1f} | {time.process_time() - cpu:.1f} | {tokens} |")


if __name__ == "__main__":
    raise SystemExit(main())
