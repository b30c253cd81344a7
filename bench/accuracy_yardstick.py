"""bench/accuracy.py's yardsticks, shared by its two parts (accuracy.py, accuracy_noise.py).

Where speech is in each clip (silero on the clip alone, not subwatch's detection of
the long file), where an utterance is spoken, whether cues overlap it, the long
text's WER and the utterances it lost, and the audio saved as .npy for the rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.speech import normalise

RATE = 16000
Span = tuple[float, float]


def save(samples: Any, path: Path) -> Path:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(samples, dtype=np.float32))
    return path


def clip_regions(clips: Iterable[Any]) -> dict[Path, list[Span]]:
    """Return silero's speech regions (daemon.transcribe.vad on each clip alone), in clip seconds.

    Found per clip, not on the long file, so that what counts as speech does
    not depend on subwatch's own detection of the long file.
    """
    from daemon.datatypes import Audio
    from daemon.transcribe.vad import find_speech
    from tests import speech

    regions = {}
    for clip in clips:
        if clip.path not in regions:
            chunks = find_speech(Audio(speech.load(clip), RATE))
            regions[clip.path] = [r for chunk in chunks for r in chunk.regions]
    return regions


def long_text(references: list[str], texts: list[str]) -> tuple[float, int]:
    """Return the long file's WER (all references joined against all text) and the utterances lost.

    An utterance is lost when fewer than half of its words are hits in the
    alignment of the whole text to the joined references. Unlike coverage by
    time, this does not favour coarse segments: a 30 s segment overlaps every
    utterance in it, whether or not its text says them.
    """
    import jiwer

    words = [normalise(r, "en").split() for r in references]
    owner = [i for i, utterance in enumerate(words) for _ in utterance]
    aligned = jiwer.process_words(" ".join(w for u in words for w in u), normalise(" ".join(texts), "en"))
    hits = [0] * len(words)
    for chunk in aligned.alignments[0]:
        if chunk.type == "equal":
            for k in range(chunk.ref_start_idx, chunk.ref_end_idx):
                hits[owner[k]] += 1
    return aligned.wer, sum(h < len(u) / 2 for h, u in zip(hits, words, strict=True))


def spoken(utterance: dict[str, Any]) -> Span:
    """Return where the utterance is spoken: its first speech region's start to its last one's end.

    Not the clip's bounds: FLEURS clips open with up to a second of silence,
    where the previous utterance's cue may linger without covering anything.
    """
    regions = utterance["speech"] or [(utterance["start"], utterance["end"])]
    return regions[0][0], regions[-1][1]


def overlapping(span: Span, segments: list[Span]) -> bool:
    return any(start < span[1] and end > span[0] for start, end in segments)
