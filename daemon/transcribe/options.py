"""`TranscribeOptions`: a folder's rules for decoding, as the config turns them into this stage's share."""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.engine import EngineOptions
from daemon.loops import MAX_REPEATS
from daemon.transcribe.coverage import CoverageOptions
from daemon.transcribe.vad import VadOptions


@dataclass(frozen=True)
class RecheckOptions:
    """Which lines read with little confidence are decoded again alone (see transcribe.recheck).

    below_logprob: a line whose words' mean log-probability is under this is
        decoded again alone (-0.25); None never rechecks.
    min_words: lines with fewer words are left as they are (3): a word or two
        carries too little evidence either way.
    join_s: speech regions closer than this are one line (0.5): a pause that short
        is inside a sentence, and half a sentence alone reads worse than whole.
    min_gain: the new reading is kept only if its mean word log-probability is
        this much higher (0.15). Lines misread for their window gained 0.18 to
        0.4 alone; under a loud music bed two readings of a line differ by less
        than 0.1 and neither is the better one more often.
    pad_s: the line's window reaches this far either side of it (0.5), short of
        the speech next to it: silero's region can end before a word's last sound
        ("hidden in express" for "hidden and expressed").
    """

    below_logprob: float | None = -0.25
    min_words: int = 3
    join_s: float = 0.5
    min_gain: float = 0.15
    pad_s: float = 0.5


@dataclass(frozen=True)
class TranscribeOptions:
    """The per-folder rules that shape decoding.

    model: Whisper name (tiny … large-v3, turbo) or path to a .pt checkpoint.
    language: ISO 639-1 code of the speech; None detects it by a vote over up
        to `language_windows` speech chunks spread through the file.
    task: "transcribe", or "translate" (to English).
    prompt: names, jargon, spelling; given to every chunk as its previous text.
    beam_size: None decodes greedily; a number uses beam search with that many
        beams (and that many samples when a chunk is decoded again hotter).
    word_timestamps: align each word (the subtitle stage times cues by words).
    temperatures, compression_ratio_threshold, logprob_threshold,
    no_speech_threshold: whisper's quality guards (see engine.EngineOptions).
    batch_size: chunks decoded at once; None sizes it from free GPU memory.
    max_repeated_lines: a line said more than this many times in a row is a
        decoding loop and is kept once (2).
    language_windows: speech chunks that vote on the language (5).
    vad: how speech is found and cut into chunks (see vad.VadOptions).
    coverage: how speech that no decoded word covers is decoded again (see
        coverage.CoverageOptions).
    recheck: which lines read with little confidence are decoded again alone
        (see RecheckOptions).
    """

    model: str
    language: str | None
    task: str = "transcribe"
    prompt: str | None = None
    beam_size: int | None = None
    word_timestamps: bool = True
    # The guards' defaults are the engine's, written once there.
    temperatures: tuple[float, ...] = EngineOptions.temperatures
    compression_ratio_threshold: float | None = EngineOptions.compression_ratio_threshold
    logprob_threshold: float | None = EngineOptions.logprob_threshold
    no_speech_threshold: float | None = EngineOptions.no_speech_threshold
    batch_size: int | None = EngineOptions.batch_size
    max_repeated_lines: int = MAX_REPEATS
    language_windows: int = 5
    vad: VadOptions = field(default_factory=VadOptions)
    coverage: CoverageOptions = field(default_factory=CoverageOptions)
    recheck: RecheckOptions = field(default_factory=RecheckOptions)
