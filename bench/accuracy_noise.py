"""bench/accuracy.py's second part (#20): speech under a music bed, and files with no speech at all.

- Three bed files: every English clip over a continuous music-and-room-noise bed
  (tests.sounds.music_bed, with 8 s of bed alone first and 1 to 3 s between clips),
  at a speech-to-bed ratio of 10, 3 and -2 dB. Scored like the long file: WER,
  sentences without a cue, and cues that hold the end of one sentence and the
  start of the next across a pause.
- The non-speech battery (tests.sounds.battery: noise of each colour and level, room
  tone, hum, a fan, traffic, rain, music, a crowd murmuring without words,
  silence): how many files get a cue, and the text written over them.

Each row transcribes every file alone, as `subwatch transcribe` would, with the
row's own long-file function (language given).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from accuracy_yardstick import clip_regions, long_text, overlapping, save, spoken

BED_RATIOS = (10.0, 3.0, -2.0)
MIN_PAUSE = 0.3  # a cue must not join two sentences across a pause this long
HOLDS = 0.2  # seconds of a sentence's speech a cue must overlap to hold part of it

Cues = list[tuple[float, float, str]]


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Write the bed files and the battery as 16 kHz float32 .npy; return their part of work.json.

    Each utterance's speech is where silero finds it in the clip alone, as for the long file.
    """
    from tests import sounds, speech

    sequence = speech.clips("en")
    found = clip_regions(sequence)
    beds = []
    for ratio in BED_RATIOS:
        wav = args.workdir / "noise" / f"bed-{ratio:+.0f}dB.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        placed = speech.bed_file(wav, sequence, ratio)
        samples = speech.load(speech.Clip(wav, "en", ""))
        beds.append({
            "ratio": ratio,
            "npy": str(save(samples, wav.with_suffix(".npy"))),
            "seconds": len(samples) / sounds.RATE,
            "utterances": [
                {"start": p.start, "end": p.end, "text": p.clip.text,
                 "speech": [(p.start + a, p.start + b) for a, b in found[p.clip.path]]}
                for p in placed
            ],
        })
    voices = [speech.load(c) for c in speech.fleurs("de")[:6]]  # the murmur: German played backwards
    battery = [
        {"name": name, "npy": str(save(samples, args.workdir / "noise" / f"{slug(name)}.npy")),
         "seconds": len(samples) / sounds.RATE}
        for name, samples in sounds.battery(voices).items()
    ]
    return {"beds": beds, "battery": battery}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def run(work: dict[str, Any], long_file: Callable[[Any], Cues]) -> dict[str, Any]:
    """In a row's child: transcribe each bed file and each battery file alone; return the cues and timing."""
    import time

    import numpy as np

    started = time.perf_counter()
    beds = [long_file(np.load(bed["npy"])) for bed in work["beds"]]
    beds_wall = time.perf_counter() - started
    battery = {entry["name"]: long_file(np.load(entry["npy"])) for entry in work["battery"]}
    return {
        "beds": beds,
        "beds_wall": beds_wall,
        "beds_seconds": sum(bed["seconds"] for bed in work["beds"]),
        "battery": {name: [c for c in cues if c[2].strip()] for name, cues in battery.items()},
    }


# ----------------------------------------------------------------------------- scoring, in the parent


def score(result: dict[str, Any], work: dict[str, Any]) -> dict[str, Any]:
    """Add each bed's WER, sentences without a cue and cues across sentences, and the battery's count."""
    if "beds" not in result:
        return result
    beds = []
    for bed, cues in zip(work["beds"], result["beds"], strict=True):
        utterances = bed["utterances"]
        wer, lost = long_text([u["text"] for u in utterances], [c[2] for c in cues])
        said = [c for c in cues if c[2].strip()]
        spans = [spoken(u) for u in utterances]
        beds.append({
            "ratio": bed["ratio"],
            "wer": wer,
            "lost": lost,
            "without_cue": sum(not overlapping(s, [(a, b) for a, b, _ in said]) for s in spans),
            "across": across(cues, spans),
            "over_bed": sum(not any(min(b, y) - max(a, x) > 0 for x, y in spans) for a, b, _ in said),
        })
    with_cue = {name: cues for name, cues in result["battery"].items() if cues}
    return {**result, "bed_scores": beds, "with_cue": with_cue}


def across(cues: Cues, spans: list[tuple[float, float]]) -> int:
    """Return how many cues hold the end of one sentence and the start of the next, a pause of
    MIN_PAUSE or more between them (each held by at least HOLDS seconds of overlap)."""
    count = 0
    for start, end, text in cues:
        if not text.strip():
            continue
        held = [i for i, (a, b) in enumerate(spans) if min(end, b) - max(start, a) >= HOLDS]
        count += any(spans[j][0] - spans[i][1] >= MIN_PAUSE for i, j in zip(held, held[1:], strict=False))
    return count


def table(results: list[dict[str, Any]], rows: dict[str, tuple[str, int]], long_across: Callable[[Any], int]
          ) -> str:
    """The bed rows and the non-speech column, one line per implementation, and the battery's cues."""
    scored = [r for r in results if "bed_scores" in r]
    if not scored:
        return ""
    ratios = [f"{b['ratio']:+.0f} dB" for b in scored[0]["bed_scores"]]
    lines = [
        "| row | beam | " + " | ".join(f"WER bed {r}" for r in ratios)
        + " | bed: sentences without a cue | bed: cues across sentences | long: cues across sentences "
        "| bed: cues over the bed alone | non-speech files with a cue | x realtime beds |",
        "|---|---:|" + "---:|" * (len(ratios) + 6),
    ]
    for r in scored:
        implementation, beam = rows[r["row"]]
        beds = r["bed_scores"]
        lines.append(
            f"| {implementation} | {beam} | "
            + " | ".join(f"{100 * b['wer']:.1f} %" for b in beds)
            + " | " + " / ".join(str(b["without_cue"]) for b in beds)
            + " | " + " / ".join(str(b["across"]) for b in beds)
            + f" | {long_across(r)} | " + " / ".join(str(b["over_bed"]) for b in beds)
            + f" | {len(r['with_cue'])} of {len(r['battery'])} | {r['beds_seconds'] / r['beds_wall']:.1f} |"
        )
    lines.append("\nText over non-speech files, per row:")
    for r in scored:
        for name, cues in r["with_cue"].items():
            said = "; ".join(f"{a:.1f}-{b:.1f} {t.strip()!r}" for a, b, t in cues[:3])
            lines.append(f"- {rows[r['row']][0]} beam {rows[r['row']][1]}, {name}: {said}")
    return "\n".join(lines)
