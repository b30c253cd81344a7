"""Real recorded speech from tests/data (its README gives origins and licences), with its transcripts,
for tests and benchmarks.

`clips(lang)` lists a language's clips with their reference text; `long_file`
joins clips into one long recording and says where each one landed, so a test
(or bench/accuracy.py) can ask of every utterance whether a subtitle covers it;
`mixed_file` puts clips between noise, music and silence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TESTDATA = Path(__file__).resolve().parent / "data"  # in the repository: a clone tests itself
SPEECH = TESTDATA / "speech"
LANGUAGES = ("en", "de", "es", "fr", "pt")
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Clip:
    """One recorded utterance and what is said in it."""

    path: Path
    language: str
    text: str


@dataclass(frozen=True)
class Placed:
    """A clip inside a long recording: from `start` to `end` seconds."""

    clip: Clip
    start: float
    end: float


def fleurs(language: str) -> list[Clip]:
    """Return the ten FLEURS clips of `language` with their transcripts, in order."""
    folder = SPEECH / "fleurs"
    return [
        Clip(ogg, language, ogg.with_suffix(".txt").read_text(encoding="utf-8").strip())
        for ogg in sorted(folder.glob(f"fleurs-{language}-*.ogg"))
    ]


def librispeech() -> list[Clip]:
    """Return the four LibriSpeech utterances with their (upper-case) transcripts."""
    folder = SPEECH / "librispeech"
    texts = {}
    for listing in sorted(folder.glob("*.trans.txt")):
        for line in listing.read_text(encoding="utf-8").splitlines():
            key, _, text = line.partition(" ")
            texts[key] = text.strip()
    return [Clip(folder / f"{key}.flac", "en", text) for key, text in sorted(texts.items())]


def jfk() -> Clip:
    return Clip(SPEECH / "jfk.flac", "en", JFK_TEXT)


def clips(language: str) -> list[Clip]:
    """Every clip of `language`: FLEURS, plus LibriSpeech and jfk.flac for English."""
    return fleurs(language) + (librispeech() + [jfk()] if language == "en" else [])


def load(clip: Clip):  # -> numpy float32 array at 16 kHz
    """Return the clip decoded to 16 kHz mono float32 by ffmpeg (whisper.load_audio)."""
    import whisper

    return whisper.load_audio(str(clip.path))


def long_file(
    path: Path, sequence: Sequence[Clip], repeat: int = 3, gap: float = 1.0
) -> list[Placed]:
    """Write `sequence` `repeat` times over, `gap` seconds of silence between clips, as a 16 kHz WAV.

    Return where each clip landed, in order. This is the long file of issue #10:
    many utterances sharing Whisper's 30 s windows.
    """
    import numpy as np

    from tests.media_factory import write_samples

    silence = np.zeros(round(gap * SAMPLE_RATE), dtype=np.float32)
    decoded = {clip.path: load(clip) for clip in sequence}
    pieces, placed, at = [silence], [], gap
    for _ in range(repeat):
        for clip in sequence:
            samples = decoded[clip.path]
            pieces += [samples, silence]
            placed.append(Placed(clip, at, at + len(samples) / SAMPLE_RATE))
            at += len(samples) / SAMPLE_RATE + gap
    write_samples(path, np.concatenate(pieces))
    return placed


def mixed_file(path: Path, parts: Sequence[Clip | Any]) -> list[Placed]:
    """Write `parts` back to back as a 16 kHz WAV: each a Clip or other sound as 16 kHz
    float samples (noise, music, silence from media_factory.lavfi_samples or numpy).

    Return where each clip landed, in order.
    """
    import numpy as np

    from tests.media_factory import write_samples

    pieces, placed, at = [], [], 0.0
    for part in parts:
        samples = load(part) if isinstance(part, Clip) else np.asarray(part, dtype=np.float32)
        if isinstance(part, Clip):
            placed.append(Placed(part, at, at + len(samples) / SAMPLE_RATE))
        pieces.append(samples)
        at += len(samples) / SAMPLE_RATE
    write_samples(path, np.concatenate(pieces))
    return placed


def normalise(text: str, language: str) -> str:
    """Return `text` as word error rates compare it: whisper's own normalisers (English's spells out
    numbers and spellings; the basic one drops case, punctuation and diacritics' variants)."""
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    normaliser = EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()
    return " ".join(normaliser(text).split())


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], language: str) -> float:
    """Return the corpus word error rate of `hypotheses` against `references`, both normalised."""
    import jiwer

    refs = [normalise(text, language) for text in references]
    hyps = [normalise(text, language) for text in hypotheses]
    return jiwer.wer(refs, hyps)



def bed_file(
    path: Path, sequence: Sequence[Clip], ratio_db: float, seed: int = 0, intro: float = 8.0
) -> list[Placed]:
    """Write `sequence` over a continuous music bed (tests.sounds.music_bed), each clip `ratio_db`
    over the bed, 1 to 3 s of bed alone between clips and `intro` seconds before the first, as a
    16 kHz WAV. Return where each clip landed, in order.

    The bed runs under everything, as under a film's action scene: the pauses
    and the intro are music a subtitle must stay off.
    """
    import numpy as np

    from tests.media_factory import write_samples
    from tests.sounds import music_bed, under_bed

    rng = np.random.default_rng(seed)
    decoded = [load(clip) for clip in sequence]
    gaps = [intro] + list(rng.uniform(1.0, 3.0, len(sequence)))
    length = sum(gaps) + sum(len(s) for s in decoded) / SAMPLE_RATE
    bed = music_bed(length + 1.0)
    mixed, placed, at = bed.copy(), [], 0.0
    for clip, samples, gap in zip(sequence, decoded, gaps, strict=False):
        at += gap
        start = round(at * SAMPLE_RATE)
        stretch = slice(start, start + len(samples))
        mixed[stretch] = under_bed(samples, bed[stretch], ratio_db)
        placed.append(Placed(clip, at, at + len(samples) / SAMPLE_RATE))
        at += len(samples) / SAMPLE_RATE
    write_samples(path, mixed[: round((at + gaps[-1]) * SAMPLE_RATE)])
    return placed
