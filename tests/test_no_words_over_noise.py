"""No words over sound that is not speech (#20): room tone, mains hum, noise of every colour and level,
a beating chord, rain-like clicks and silence get no speech map and no segment from the real
multilingual base model, decoded as `subwatch transcribe` decodes on a CPU (CTranslate2, beam 5).

Before the file's first stream was warmed up on its own sound (daemon.vad._stream_batch), silero heard
the step from its digital-silence warm-up into steady hum as 0.5 s of speech at 0.0 s, and base wrote
"Thank you." there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from daemon.coverage import CoverageOptions
from daemon.datatypes import Audio
from daemon.engine.ct2 import Ct2Whisper, write_ct2
from daemon.transcribe import TranscribeOptions, transcribe_many
from daemon.vad import map_speech_many
from tests.media_factory import lavfi_samples

RATE = 16000


def at_dbfs(samples: np.ndarray, dbfs: float) -> np.ndarray:
    """Return the samples scaled to an RMS of `dbfs`."""
    return (samples / np.sqrt(np.mean(samples**2)) * 10 ** (dbfs / 20)).astype(np.float32)


def hum(seconds: float, mains: float, amplitudes: list[float], noise_dbfs: float) -> np.ndarray:
    """Mains hum (the mains frequency and its harmonics) over faint pink noise."""
    t = np.arange(round(seconds * RATE)) / RATE
    tones = sum(a * np.sin(2 * np.pi * mains * (k + 1) * t) for k, a in enumerate(amplitudes))
    pink = at_dbfs(lavfi_samples("anoisesrc=c=pink:r=16000:seed=1", seconds), noise_dbfs)
    return (tones + pink[: len(t)]).astype(np.float32)


def rain(seconds: float) -> np.ndarray:
    """Faint noise with 40 short bursts a second, like rain on a window."""
    rng = np.random.default_rng(1)
    samples = rng.standard_normal(round(seconds * RATE)) * 0.003
    for start in rng.integers(0, len(samples) - 80, round(40 * seconds)):
        samples[start : start + 80] += rng.standard_normal(80) * rng.uniform(0.02, 0.2) * np.hanning(80)
    return samples.astype(np.float32)


def battery() -> dict[str, np.ndarray]:
    """Twenty kinds of sound with no speech in them, 8 to 12 s each."""
    sounds = {
        f"{colour} {dbfs} dBFS": at_dbfs(lavfi_samples(f"anoisesrc=c={colour}:r=16000:seed=7", 8), dbfs)
        for colour in ("white", "pink", "brown")
        for dbfs in (-50, -35, -26, -12)
    }
    room = lavfi_samples("anoisesrc=c=brown:r=16000:seed=3,lowpass=f=800,highpass=f=40", 8)
    chord = "aevalsrc='0.2*sin(2*PI*220*t)+0.2*sin(2*PI*223*t)+0.15*sin(2*PI*277*t)+0.15*sin(2*PI*330*t)'"
    return sounds | {
        "room tone -26 dBFS": at_dbfs(room, -26),
        "hum 50 Hz": hum(12, 50, [0.1, 0.05, 0.03, 0.02], -40),
        "hum 60 Hz": hum(12, 60, [0.05, 0.1, 0.05, 0.05], -60),  # silero heard 0.0-0.52 s as speech
        "faint hum 60 Hz": hum(12, 60, [0.02] * 4, -60),  # and base wrote "Thank you." there
        "chord with a beat": lavfi_samples(f"{chord}:s=16000", 10),
        "rain": rain(10),
        "silence": np.zeros(8 * RATE, np.float32),
    }


@pytest.fixture(scope="module")
def sounds() -> dict[str, np.ndarray]:
    return battery()


def test_no_speech_is_mapped_in_sound_without_speech(sounds: dict[str, np.ndarray]) -> None:
    maps = map_speech_many([Audio(samples, RATE) for samples in sounds.values()])

    found = {name: (m.chunks, m.faint) for name, m in zip(sounds, maps, strict=True) if m.chunks}
    assert found == {}
    # nothing a coverage round would decode either
    too_long = {name: m.faint for name, m in zip(sounds, maps, strict=True)
                if sum(b - a for a, b in m.faint) >= CoverageOptions().min_seconds}
    assert too_long == {}


@pytest.fixture(scope="module")
def ct2_base(base_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Ct2Whisper:
    folder: Path = write_ct2(base_model, tmp_path_factory.mktemp("ct2") / "base")
    return Ct2Whisper(folder, threads=torch.get_num_threads(), compute_type="float32")


def test_real_base_writes_nothing_over_sound_without_speech(
    sounds: dict[str, np.ndarray], ct2_base: Ct2Whisper
) -> None:
    options = TranscribeOptions("base", "en", beam_size=5)  # as `subwatch transcribe --language en`

    transcripts = transcribe_many([(Audio(samples, RATE), options) for samples in sounds.values()], ct2_base)

    written = {name: [(s.start, s.end, s.text) for s in t.segments]
               for name, t in zip(sounds, transcripts, strict=True) if t.segments}
    assert written == {}
    assert all(t.speech_seconds == 0.0 and t.uncovered_seconds == 0.0 for t in transcripts)
