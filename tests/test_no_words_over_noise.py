"""No words over sound that is not speech (#20): the battery of tests/sounds.py (noise of every colour
and level, room tone, mains hum, a fan, traffic, rain, music with and without a beat, a crowd's
murmur, silence) gets no segment from the real multilingual base model, decoded as `subwatch
transcribe` decodes on a CPU (CTranslate2, beam 5), and no speech map but over the murmur.

Before the file's first stream was warmed up on its own sound (transcribe.vad._stream_batch), silero heard
the step from its digital-silence warm-up into steady hum as 0.5 s of speech at 0.0 s, and base wrote
"Thank you." there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.datatypes import Audio
from daemon.engine.ct2 import Ct2Whisper
from daemon.transcribe import TranscribeOptions, transcribe_many
from daemon.transcribe.coverage import CoverageOptions
from daemon.transcribe.vad import map_speech_many
from tests import speech
from tests.sounds import battery

RATE = 16000


@pytest.fixture(scope="module")
def sounds(testdata: Path) -> dict[str, np.ndarray]:
    return battery([speech.load(clip) for clip in speech.fleurs("de")[:6]])


def test_no_speech_is_mapped_in_sound_without_speech(sounds: dict[str, np.ndarray]) -> None:
    # A crowd's murmur is voices, played backwards: silero rightly hears them (the model's own
    # evidence keeps words off it, in the test below); everything else is no voice at all.
    sounds = {name: samples for name, samples in sounds.items() if not name.startswith("crowd")}
    maps = map_speech_many([Audio(samples, RATE) for samples in sounds.values()])

    found = {name: (m.chunks, m.faint) for name, m in zip(sounds, maps, strict=True) if m.chunks}
    assert found == {}
    # nothing a coverage round would decode either
    too_long = {name: m.faint for name, m in zip(sounds, maps, strict=True)
                if sum(b - a for a, b in m.faint) >= CoverageOptions().min_seconds}
    assert too_long == {}


def test_real_base_writes_nothing_over_sound_without_speech(
    sounds: dict[str, np.ndarray], base_ct2: Ct2Whisper
) -> None:
    options = TranscribeOptions("base", "en", beam_size=5)  # as `subwatch transcribe --language en`

    transcripts = transcribe_many([(Audio(samples, RATE), options) for samples in sounds.values()], base_ct2)

    written = {name: [(s.start, s.end, s.text) for s in t.segments]
               for name, t in zip(sounds, transcripts, strict=True) if t.segments}
    assert written == {}
    # and no speech found or left uncovered but in the murmur, whose voices the model rightly
    # writes nothing for
    speech_found = {name: (t.speech_seconds, t.uncovered_seconds)
                    for name, t in zip(sounds, transcripts, strict=True)
                    if (t.speech_seconds or t.uncovered_seconds) and not name.startswith("crowd")}
    assert speech_found == {}
