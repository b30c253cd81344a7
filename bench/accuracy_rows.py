"""bench/accuracy.py's rows: each implementation's functions for short clips and for one long file.

Each `*_row(work, beam, threads)` loads its model and returns (short_files, long_file):
short_files maps language -> list of samples to language -> list of texts, long_file
maps one file's samples to its cues or segments as (start, end, text).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

RATE = 16000
SUBWATCH_GROUP = 16  # files per transcribe_many call, as the daemon batches a backlog
FASTER_BATCH = 8

ShortFiles = Callable[[dict[str, list[Any]]], dict[str, list[str]]]  # language -> samples -> texts
LongFile = Callable[[Any], list[tuple[float, float, str]]]  # samples -> (start, end, text)


def subwatch_row(
    work: dict[str, Any], beam: int, threads: int, engine: str = "auto"
) -> tuple[ShortFiles, LongFile]:
    import torch

    from daemon.malloc import one_arena
    from daemon.transcribe import load_model, transcribe_many

    one_arena()  # as `subwatch transcribe` and a decoder child do
    torch.set_num_threads(threads)
    # as the daemon loads it: the CTranslate2 conversion is made once, in the workdir's models/
    model = load_model(work["pt"], Path(work["pt"]).parents[1], "cpu", engine)
    return _subwatch_rows(work, beam, lambda items, names: transcribe_many(items, model))


def subwatch_child_row(work: dict[str, Any], beam: int, threads: int) -> tuple[ShortFiles, LongFile]:
    """The daemon's path: the same decoding in a supervised decoder child (daemon.decoders), audio
    handed over as file descriptors. `long_file.close` ends the child (its peak memory counts then)."""
    import threading

    from daemon.decoders import Decoder, Settings

    settings = Settings(Path(work["pt"]).parents[1], float("inf"), None, "auto", "warning", threads)
    decoder = Decoder("cpu", settings, threading.Event())
    decoder.load(work["pt"], "cpu")
    short_files, long_file = _subwatch_rows(work, beam, decoder.transcribe_many)
    long_file.close = decoder.close  # type: ignore[attr-defined]
    return short_files, long_file


def _subwatch_rows(
    work: dict[str, Any], beam: int, transcribe_group: Callable[[list[Any], list[str]], list[Any]]
) -> tuple[ShortFiles, LongFile]:
    """The subwatch rows' clips and long file, each group of (audio, options) transcribed by
    `transcribe_group(items, names)`: in this process, or in a decoder child."""
    from daemon import subtitles
    from daemon.datatypes import Audio
    from daemon.transcribe import TranscribeOptions

    def options(lang: str) -> TranscribeOptions:
        return TranscribeOptions(model=work["pt"], language=lang, beam_size=None if beam == 1 else beam)

    def cues(transcript: Any, duration: float) -> list[tuple[float, float, str]]:
        # what the .srt holds: the subtitle stage's cues, lines joined
        built = subtitles.build_cues(transcript.segments, subtitles.CueRules(), duration, transcript.language)
        return [(c.start, c.end, " ".join(c.lines)) for c in built]

    def short_files(clips: dict[str, list[Any]]) -> dict[str, list[str]]:
        texts = {}
        for lang, samples in clips.items():
            audios = [Audio(s, RATE) for s in samples]
            transcripts = []
            for i in range(0, len(audios), SUBWATCH_GROUP):
                group = audios[i : i + SUBWATCH_GROUP]
                names = [f"clip {i + n}" for n in range(len(group))]
                transcripts += transcribe_group([(a, options(lang)) for a in group], names)
            texts[lang] = [
                " ".join(c[2] for c in cues(t, a.duration)) for t, a in zip(transcripts, audios, strict=True)
            ]
        return texts

    def long_file(samples: Any) -> list[tuple[float, float, str]]:
        audio = Audio(samples, RATE)
        [transcript] = transcribe_group([(audio, options("en"))], ["long file"])
        return cues(transcript, audio.duration)

    return short_files, long_file


def whisper_row(work: dict[str, Any], beam: int, threads: int) -> tuple[ShortFiles, LongFile]:
    import torch
    import whisper

    torch.set_num_threads(threads)
    model = whisper.load_model(work["pt"], device="cpu")  # the checkpoint subwatch converted: same weights
    decoding = {"beam_size": beam, "best_of": beam} if beam > 1 else {}

    def run(samples: Any, lang: str) -> dict[str, Any]:
        return whisper.transcribe(model, samples, language=lang, fp16=False, verbose=None, **decoding)

    def short_files(clips: dict[str, list[Any]]) -> dict[str, list[str]]:
        return {lang: [run(s, lang)["text"] for s in samples] for lang, samples in clips.items()}

    def long_file(samples: Any) -> list[tuple[float, float, str]]:
        return [(s["start"], s["end"], s["text"]) for s in run(samples, "en")["segments"]]

    return short_files, long_file


def faster_row(
    work: dict[str, Any], beam: int, threads: int, batched: bool = False
) -> tuple[ShortFiles, LongFile]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(work["ct2"], device="cpu", compute_type="int8", cpu_threads=threads)
    pipeline = BatchedInferencePipeline(model) if batched else None
    extra = {"batch_size": FASTER_BATCH} if batched else {}

    def run(samples: Any, lang: str) -> list[tuple[float, float, str]]:
        transcriber = pipeline or model
        segments, _ = transcriber.transcribe(samples, language=lang, beam_size=beam, **extra)
        return [(s.start, s.end, s.text) for s in segments]  # a generator: decoding happens here

    def short_files(clips: dict[str, list[Any]]) -> dict[str, list[str]]:
        return {lang: ["".join(s[2] for s in run(a, lang)) for a in group] for lang, group in clips.items()}

    return short_files, lambda samples: run(samples, "en")


def faster_batched_row(work: dict[str, Any], beam: int, threads: int) -> tuple[ShortFiles, LongFile]:
    return faster_row(work, beam, threads, batched=True)


def subwatch_int8_row(work: dict[str, Any], beam: int, threads: int) -> tuple[ShortFiles, LongFile]:
    return subwatch_row(work, beam, threads, engine="ctranslate2-int8")


def subwatch_torch_row(work: dict[str, Any], beam: int, threads: int) -> tuple[ShortFiles, LongFile]:
    return subwatch_row(work, beam, threads, engine="torch")


IMPLEMENTATIONS: dict[str, Callable[[dict[str, Any], int, int], tuple[ShortFiles, LongFile]]] = {
    "subwatch": subwatch_row,
    "subwatch int8": subwatch_int8_row,
    "subwatch torch": subwatch_torch_row,
    "subwatch child": subwatch_child_row,
    "openai-whisper": whisper_row,
    "faster-whisper": faster_row,
    "faster-whisper batched": faster_batched_row,
}


def versions(implementation: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    faster = implementation.startswith("faster")
    names = ("faster-whisper", "ctranslate2") if faster else ("torch", "openai-whisper", "ctranslate2")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
