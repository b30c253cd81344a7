"""Accuracy with real weights: subwatch against openai-whisper and faster-whisper, same model, same audio.

Every row transcribes the shared test speech with the real multilingual
Whisper base (tests/real_weights.py): the short clips of five languages
(FLEURS en/de/es/fr/pt, plus LibriSpeech and jfk.flac for English, language
given) and the long file of issue #10 (the English clips three times over, 1 s
of silence between). Each row runs in its own process and prints JSON; the
parent scores the text (tests/speech.py: whisper's normalizers, corpus WER with jiwer), checks
which utterances of the long file got a subtitle, and prints the table last.

    python bench/accuracy.py --quick      # smoke: 2 clips per language, the long file once
    python bench/accuracy.py              # everything, 12 rows
    python bench/accuracy.py --threads 1  # on a machine busier than its cores (see bench/README.md)
    python bench/accuracy.py --rows subwatch-greedy faster-greedy

Rows (each at beam 1 = greedy and beam 5):
  subwatch            daemon.transcribe: transcribe_many over groups of up to 16 clips (as the
                      daemon batches a backlog), transcribe on the long file, cues from
                      subtitles.build_cues as the .srt would hold them; the daemon's default
                      engine on a CPU (engine: auto = CTranslate2, float32)
  subwatch int8       the same with engine: ctranslate2-int8
  subwatch torch      the same with engine: torch (openai-whisper's model, fp32)
  subwatch child      the same in a decoder child process, as the daemon runs it (issue #24)
  openai-whisper      whisper.transcribe() per file (beam 5 with best_of 5)
  faster-whisper      WhisperModel(folder, device="cpu", compute_type="int8"), unbatched
  faster-whisper batched  BatchedInferencePipeline, batch_size 8 (its own silero VAD)

faster-whisper runs from its own virtual environment, bench/.venv-faster-whisper,
made on first use (pip install faster-whisper==1.2.1, torch forbidden), so the
main environment never gets it or its dependencies.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import accuracy_noise  # noqa: E402
from accuracy_rows import FASTER_BATCH, IMPLEMENTATIONS, SUBWATCH_GROUP, versions  # noqa: E402
from accuracy_yardstick import clip_regions, long_text, overlapping, save, spoken  # noqa: E402

from daemon.transcribe.coverage import merge, subtract, total  # noqa: E402
from tests.speech import word_error_rate  # noqa: E402

# row -> (implementation, beam size)
ROWS: dict[str, tuple[str, int]] = {
    "subwatch-greedy": ("subwatch", 1),
    "subwatch-beam5": ("subwatch", 5),
    "subwatch-int8-greedy": ("subwatch int8", 1),
    "subwatch-int8-beam5": ("subwatch int8", 5),
    "subwatch-torch-greedy": ("subwatch torch", 1),
    "subwatch-torch-beam5": ("subwatch torch", 5),
    "subwatch-child-greedy": ("subwatch child", 1),
    "subwatch-child-beam5": ("subwatch child", 5),
    "whisper-greedy": ("openai-whisper", 1),
    "whisper-beam5": ("openai-whisper", 5),
    "faster-greedy": ("faster-whisper", 1),
    "faster-beam5": ("faster-whisper", 5),
    "faster-batched-greedy": ("faster-whisper batched", 1),
    "faster-batched-beam5": ("faster-whisper batched", 5),
}
LANGUAGES = ("en", "de", "es", "fr", "pt")
RATE = 16000
VENV = ROOT / "bench" / ".venv-faster-whisper"
FASTER_WHISPER = "faster-whisper==1.2.1"



def main() -> int:
    args = parse_args()
    if args.row:
        print(json.dumps(run_row(args)), flush=True)
        return 0
    started = time.time()
    work = prepare(args)
    faster = faster_whisper_python() if any(ROWS[r][0].startswith("faster") for r in args.rows) else None
    results = []
    for row in args.rows:
        print(f"running {row} …", file=sys.stderr, flush=True)
        python = faster if ROWS[row][0].startswith("faster") else Path(sys.executable)
        results.append(run_in_child(row, python, args))
        print(progress(results[-1]), file=sys.stderr, flush=True)
        # kept as it goes: a long run on a shared machine can be cut short and still be read
        (args.workdir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    print(header(args, work, results, time.time() - started))
    scored = [score(r, work) for r in results]
    if "speech" in args.parts:
        print(table(scored) + "\n")
    print(accuracy_noise.table(scored, ROWS, lambda r: long_across(r, work)))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--clips", type=int, default=None, help="clips per language (default all)")
    parser.add_argument("--repeat", type=int, default=3, help="times the long file holds its sequence (3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: --clips 2 --repeat 1")
    parser.add_argument(
        "--parts", nargs="+", choices=("speech", "noise"), default=["speech", "noise"],
        help="speech: the clips and the long file; noise: speech under a music bed and non-speech files",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per row (default: all cores)")
    parser.add_argument(
        "--workdir", type=Path, default=Path("/tmp/subwatch-accuracy"), help="model, audio, long file"
    )
    parser.add_argument("--row", choices=list(ROWS), help=argparse.SUPPRESS)  # internal: one row
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)  # internal: the prepared work
    args = parser.parse_args()
    if args.quick:
        args.clips, args.repeat = args.clips or 2, 1
    return args


# ----------------------------------------------------------------------------- the work, in the parent


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Write the model folders, the clips as 16 kHz float32 .npy, the long file and its speech; describe them.

    Every row reads the same decoded samples, so audio decoding is in no row's
    timing and no implementation hears a different resampling.
    """
    from daemon.transcribe.engines import ct2_folder
    from daemon.transcribe.models import resolve
    from tests.real_weights import assemble_base, converted

    folder = args.workdir / "base-ct2"
    if not (folder / "model.bin").is_file():
        assemble_base(folder)
    pt = converted(folder, args.workdir / "models")
    # the CTranslate2 conversion too, here: no row's peak memory holds the one-time conversion
    ct2_folder(resolve(str(pt), args.workdir / "models"), args.workdir / "models")
    audio_dir = args.workdir / "audio"
    work: dict[str, Any] = {"ct2": str(folder), "pt": str(pt)}
    if "speech" in args.parts:
        work |= prepare_speech(args, audio_dir)
    if "noise" in args.parts:
        work |= accuracy_noise.prepare(args)
    args.work = args.workdir / "work.json"
    args.work.write_text(json.dumps(work, indent=1), encoding="utf-8")
    return work


def prepare_speech(args: argparse.Namespace, audio_dir: Path) -> dict[str, Any]:
    """Write the clips and the long file; return their part of work.json."""
    from tests import speech

    languages = {
        lang: [clip_entry(c, audio_dir) for c in speech.clips(lang)[: args.clips]] for lang in LANGUAGES
    }
    sequence = speech.clips("en")  # always all of them: --clips only shortens the short-clip part
    long_path = args.workdir / f"long-{len(sequence)}x{args.repeat}.wav"
    placed = speech.long_file(long_path, sequence, repeat=args.repeat)
    long_samples = speech.load(speech.Clip(long_path, "en", ""))
    long_npy = save(long_samples, long_path.with_suffix(".npy"))
    regions = clip_regions(sequence)
    return {
        "languages": languages,
        "long": {
            "npy": str(long_npy),
            "seconds": len(long_samples) / RATE,
            "utterances": [
                {
                    "start": p.start,
                    "end": p.end,
                    "text": p.clip.text,
                    "speech": [(p.start + a, p.start + b) for a, b in regions[p.clip.path]],
                }
                for p in placed
            ],
        },
    }


def clip_entry(clip: Any, audio_dir: Path) -> dict[str, Any]:  # clip: tests.speech.Clip
    from tests import speech

    npy = audio_dir / f"{clip.path.stem}.npy"
    samples = speech.load(clip)
    save(samples, npy)
    return {"name": clip.path.name, "npy": str(npy), "seconds": len(samples) / RATE, "text": clip.text}


def faster_whisper_python() -> Path | None:
    """Return the python of bench/.venv-faster-whisper, making it on first use; None if that fails.

    A separate environment keeps CTranslate2, onnxruntime and PyAV out of the
    main one. The constraint `torch<0` makes pip refuse anything that would
    pull torch (a CUDA build is gigabytes); faster-whisper itself needs none.
    """
    python = VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import faster_whisper"]).returncode == 0:
        return python
    print(f"installing {FASTER_WHISPER} into {VENV} …", file=sys.stderr, flush=True)
    constraints = VENV / "no-torch.txt"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        constraints.write_text("torch<0\n", encoding="utf-8")
        install = [python, "-m", "pip", "install", "--quiet", "-c", constraints, FASTER_WHISPER]
        subprocess.run(install, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"could not install {FASTER_WHISPER}: {exc}", file=sys.stderr)
        return None
    return python


def run_in_child(row: str, python: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """Run one row in a fresh process (its own peak RSS); return its JSON or a note why there is none."""
    if python is None:
        return {"row": row, "note": f"skipped: {FASTER_WHISPER} is not installed"}
    command = [str(python), __file__, "--row", row, "--work", str(args.work)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    load = os.getloadavg()[0]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        sys.stderr.write(done.stderr[-4000:])
        return {"row": row, "note": f"failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    result = json.loads(lines[-1])
    result.update(load_before=load, load_after=os.getloadavg()[0], row_wall=time.time() - started)
    return result


def progress(result: dict[str, Any]) -> str:
    if "note" in result:
        return f"  {result['row']}: {result['note']}"
    said = f"  {result['row']}: {result['row_wall']:.0f} s"
    if "texts" in result:
        said += (
            f", clips {result['short_seconds']:.0f} s of audio in {result['short_wall']:.0f} s, "
            f"long file {result['long_seconds']:.0f} s in {result['long_wall']:.0f} s"
        )
    if "beds" in result:
        said += f", bed files {result['beds_seconds']:.0f} s in {result['beds_wall']:.0f} s"
    return said


# ----------------------------------------------------------------------------- one row, in the child


def run_row(args: argparse.Namespace) -> dict[str, Any]:
    """Load the row's model, warm it up, then time the short clips and the long file; return what it wrote."""
    import numpy as np

    work = json.loads(args.work.read_text(encoding="utf-8"))
    implementation, beam = ROWS[args.row]
    probe_before = memory_probe()
    threads = args.threads or os.cpu_count() or 1
    short_file, long_file = IMPLEMENTATIONS[implementation](work, beam, threads)
    warm = np.load(work["battery"][0]["npy"]) if "battery" in work else None
    if "languages" in work:
        clips = {lang: [np.load(c["npy"]) for c in entries] for lang, entries in work["languages"].items()}
        warm = next(iter(clips.values()))[0]
    short_file({"en": [warm[: 5 * RATE]]})  # warm-up: allocator, kernels, tokenizer
    done: dict[str, Any] = {"row": args.row}
    if "languages" in work:
        long_audio = np.load(work["long"]["npy"])
        texts, short_wall, short_cpu = timed(short_file, clips)
        segments, long_wall, long_cpu = timed(long_file, long_audio)
        done |= {
            "texts": texts,
            "short_seconds": sum(len(a) for group in clips.values() for a in group) / RATE,
            "short_wall": short_wall,
            "short_cpu": short_cpu,
            "segments": segments,
            "long_seconds": len(long_audio) / RATE,
            "long_wall": long_wall,
            "long_cpu": long_cpu,
        }
    if "beds" in work:
        done |= accuracy_noise.run(work, long_file)
    getattr(long_file, "close", lambda: None)()  # a decoder child ends: its peak is the children's
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if hasattr(long_file, "close") else 0
    return {
        **done,
        # kilobytes on Linux; with a decoder child, the row's and its child's peaks added (both live at once)
        "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + children) / 1024,
        "threads": threads,
        "versions": versions(implementation),
        "probe": (probe_before, memory_probe()),
    }


def memory_probe() -> float:
    """Return milliseconds for a fixed memory-bound numpy loop (median of 5): how busy the machine is.

    Other workers on a shared machine slow this process down even in CPU
    time (memory bandwidth, caches), by several times at worst; the probe
    before and after a row says how much that row suffered.
    """
    import numpy as np

    a = np.ones(4_000_000, np.float32)
    b = np.empty_like(a)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20):
            np.multiply(a, 1.0001, out=b)
            np.add(b, 0.5, out=a)
        times.append(1000 * (time.perf_counter() - started))
    return sorted(times)[2]


def timed(function: Callable[[Any], Any], argument: Any) -> tuple[Any, float, float]:
    """Return function(argument), the wall seconds it took and the CPU seconds this process spent.

    CPU seconds leave out time spent waiting for a core on a shared machine,
    though not the slowdown other workers cause by sharing caches and memory
    (see memory_probe).
    """
    cpu = time.process_time()
    started = time.perf_counter()
    result = function(argument)
    return result, time.perf_counter() - started, time.process_time() - cpu


# ----------------------------------------------------------------------------- scoring, in the parent


def score(result: dict[str, Any], work: dict[str, Any]) -> dict[str, Any]:
    """Add WER per language, the long file's coverage and WER, and x realtime to a row's result
    (and the bed files' and the battery's scores: accuracy_noise.score)."""
    result = accuracy_noise.score(result, work)
    if "texts" not in result:
        return result
    wer = {
        lang: word_error_rate([c["text"] for c in work["languages"][lang]], result["texts"][lang], lang)
        for lang in result["texts"]
    }
    utterances = work["long"]["utterances"]
    segments = [(s[0], s[1]) for s in result["segments"] if s[2].strip()]
    speech = [sum(b - a for a, b in u["speech"]) for u in utterances]
    covered = merge(segments)  # peers' segments may overlap; subtract wants them disjoint
    uncovered = [total(subtract(merge(u["speech"]), covered)) for u in utterances]
    long_wer, lost = long_text([u["text"] for u in utterances], [s[2] for s in result["segments"]])
    return {
        **result,
        "wer": wer,
        "without_subtitle": sum(not overlapping(spoken(u), segments) for u in utterances),
        "utterances": len(utterances),
        "speech": sum(speech),
        "uncovered": sum(uncovered),
        "long_wer": long_wer,
        "lost": lost,
        "short_realtime": result["short_seconds"] / result["short_wall"],
        "long_realtime": result["long_seconds"] / result["long_wall"],
    }


def long_across(result: dict[str, Any], work: dict[str, Any]) -> str:
    """The long file's cues that join two sentences across a pause (accuracy_noise.across), or n/a."""
    if "segments" not in result:
        return "n/a"
    spans = [spoken(u) for u in work["long"]["utterances"]]
    return str(accuracy_noise.across([tuple(s) for s in result["segments"]], spans))


# ----------------------------------------------------------------------------- report


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(args: argparse.Namespace, work: dict[str, Any], results: list[dict[str, Any]], wall: float) -> str:
    from importlib.metadata import version

    found: dict[str, str] = {"torch": version("torch"), "openai-whisper": version("openai-whisper")}
    for r in results:
        found.update(r.get("versions", {}))
    clips = {lang: len(entries) for lang, entries in work.get("languages", {}).items()}
    long = work.get("long") or {"utterances": [], "seconds": 0.0}
    threads = args.threads or os.cpu_count()
    return (
        f"\nmachine: {cpu_model()}, {os.cpu_count()} cores ({threads} thread(s) per row); "
        f"{datetime.date.today()}; "
        + ", ".join(f"{k} {v}" for k, v in found.items())
        + f"\nwork: Whisper base (multilingual), clips per language {clips}, long file "
        f"{len(long['utterances'])} utterances ({long['seconds'] / 60:.1f} min, repeat {args.repeat}); "
        f"the run took {wall / 60:.1f} min\n"
    )


def table(results: list[dict[str, Any]]) -> str:
    langs = [lang for lang in LANGUAGES if any(lang in r.get("wer", {}) for r in results)]
    lines = [
        "| row | beam | " + " | ".join(f"WER {lang}" for lang in langs)
        + " | long: no subtitle | long: speech s uncovered | long: lost by text | long WER "
        "| x realtime clips | x realtime long "
        "| peak RSS MiB | notes |",
        "|---|---:|" + "---:|" * (len(langs) + 7) + "---|",
    ]
    for r in results:
        implementation, beam = ROWS[r["row"]]
        if "wer" not in r:
            lines.append(f"| {implementation} | {beam} | " + "– | " * (len(langs) + 7) + f"{r['note']} |")
            continue
        lines.append(
            f"| {implementation} | {beam} | "
            + " | ".join(f"{100 * r['wer'][lang]:.1f} %" for lang in langs)
            + f" | {r['without_subtitle']} of {r['utterances']} | {r['uncovered']:.1f} of {r['speech']:.0f} "
            f"| {r['lost']} of {r['utterances']} | {100 * r['long_wer']:.1f} % "
            f"| {r['short_realtime']:.1f} | {r['long_realtime']:.1f} "
            f"| {r['peak_mib']:,.0f} | {notes(r)} |"
        )
    return "\n".join(lines)


def notes(r: dict[str, Any]) -> str:
    implementation, _ = ROWS[r["row"]]
    said = {
        "subwatch": f"CTranslate2 float32; transcribe_many over groups of ≤{SUBWATCH_GROUP} clips; "
        "word alignment on; cues",
        "subwatch int8": "CTranslate2 int8; as subwatch",
        "subwatch torch": "engine torch (fp32); as subwatch",
        "subwatch child": "as subwatch, in a decoder child (the daemon's path; CPU s are the parent's only)",
        "openai-whisper": "transcribe() per file",
        "faster-whisper": "int8, unbatched",
        "faster-whisper batched": f"int8, batch {FASTER_BATCH}, its VAD",
    }[implementation]
    return (
        f"{said}; {len(r['segments'])} segments/cues on the long file; "
        f"CPU s clips {r['short_cpu']:.0f}, long {r['long_cpu']:.0f}; "
        f"row wall {r['row_wall']:.0f} s, load {r['load_before']:.1f}→{r['load_after']:.1f}, "
        f"probe {r['probe'][0]:.0f}→{r['probe'][1]:.0f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
