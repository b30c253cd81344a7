"""What goes into the engine and what comes out: its options, a window's request and decoding, and the
job that carries a request through the engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.datatypes import Segment

if TYPE_CHECKING:
    from whisper.decoding import DecodingOptions
    from whisper.model import Whisper
    from whisper.tokenizer import Tokenizer

SAMPLE_RATE = 16000
N_FRAMES = 3000  # mel frames in Whisper's 30 s window
N_SAMPLES = 480000  # samples in that window
SECONDS_PER_TOKEN = 0.02  # one timestamp step, one encoder position


@dataclass(frozen=True)
class EngineOptions:
    """How chunks are decoded: quality guards, fallback temperatures and batch size.

    temperatures: tried in turn while a chunk fails a guard; above 0 tokens are
        sampled (whisper's schedule: 0.0, 0.2 … 1.0).
    compression_ratio_threshold: gzip ratio above which the text is a repetition
        loop and the chunk is decoded again (2.4).
    logprob_threshold: mean token log probability below which the chunk is
        decoded again (-1.0).
    no_speech_threshold: a chunk whose no-speech probability is above this and
        whose mean log probability is below logprob_threshold is silence: no
        retries, and its text is dropped (0.6).
    failed_no_speech_threshold: a chunk that failed a guard at every temperature
        is silence when its no-speech probability is above this (0.3): after
        the hottest try, whisper keeps whatever was sampled last, and over a
        crowd's murmur that was "Thank you very much." (no-speech 0.48, mean
        log probability -1.45 at temperature 1.0). Real speech, even under
        music louder than it, gave no-speech probabilities of 0.14 or less.
        Off when no_speech_threshold is None.
    batch_size: chunks decoded at once; None picks it from free GPU memory
        (16 on the CPU, where larger batches gain nothing measurable).
    max_batch_size: the most that batch_size=None picks on a GPU (64).
    encoder_batch_size: chunks per encoder call when admitting chunks (16).
    sync_every: decoding steps between checks for finished chunks; None is 1
        on the CPU and 4 on a GPU, where each check waits for the card and
        empties its queue of work.
    memory_limit: bytes this process may use on the model's GPU (the cap
        transcribe.ModelStore put on the card); batch_size=None picks within
        it. None: the whole card.
    """

    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    failed_no_speech_threshold: float = 0.3
    batch_size: int | None = None
    max_batch_size: int = 64
    encoder_batch_size: int = 16
    sync_every: int | None = None
    memory_limit: int | None = None


@dataclass(frozen=True)
class ChunkRequest:
    """One window to decode and how: give one of samples, mel or features.

    samples: up to 30 s of 16 kHz mono float32 audio; its log-mel is computed on
        the model's device when the chunk is admitted, so a backlog of chunks
        waits as plain audio, not as spectrograms.
    mel: a (n_mels, 3000) log-mel, as `whisper.log_mel_spectrogram` + `pad_or_trim` give.
    features: the encoder's output for the window (e.g. kept from language detection).
    duration: seconds of real audio in the window; word timings are cut there.
    word_timestamps: align words and return them in the chunk's segments.
    encoder_seconds: where given (a whole number of seconds, more than `duration`), the
        CTranslate2 engine encodes only that much of the padded window, at that fraction
        of the encoder's cost; the torch engine, whose encoder takes 30 s only, ignores it.
    """

    options: DecodingOptions
    samples: Any = None
    mel: Any = None
    features: Any = None
    duration: float = 30.0
    word_timestamps: bool = False
    encoder_seconds: float | None = None


@dataclass(frozen=True)
class ChunkDecoding:
    """What decoding one window gave, as whisper's DecodingResult, plus its segments.

    tokens are the sampled tokens without prompt and end-of-text. `segments`
    (times in seconds from the window's start) are filled by
    `transcribe_chunks`; `silent` marks a window the guards judged to be silence.
    """

    tokens: tuple[int, ...]
    text: str
    language: str
    language_probs: dict[str, float] | None
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    segments: tuple[Segment, ...] = ()
    silent: bool = False


class Config:
    """What whisper's DecodingTask derives from one DecodingOptions, kept for every chunk using it."""

    def __init__(self, model: Whisper, options: DecodingOptions, index: int) -> None:
        from whisper.decoding import DecodingTask

        task = DecodingTask(model, options)  # whisper's own reading of the options
        self.index = index
        self.row = 0  # its row in a pass's suppression masks
        self.options = options
        self.tokenizer: Tokenizer = task.tokenizer
        self.initial_tokens = list(task.initial_tokens)
        self.sot_index = task.sot_index
        self.sample_len = task.sample_len
        self.suppress = task._get_suppress_tokens() if options.suppress_tokens else ()
        self.detect = options.language is None and model.is_multilingual
        self.timestamps = not options.without_timestamps
        self.max_initial: int | None = None
        if self.timestamps and options.max_initial_timestamp:
            self.max_initial = round(options.max_initial_timestamp / SECONDS_PER_TOKEN)
        self.beam = options.beam_size if options.temperature == 0 else None
        self.patience = options.patience or 1.0


@dataclass
class Job:
    """A request on its way through the engine."""

    index: int
    request: ChunkRequest
    config: Config
    temperatures: tuple[float, ...]
    attempt: int = 0
    language: str | None = None
    language_probs: dict[str, float] | None = None

    @property
    def temperature(self) -> float:
        return self.temperatures[self.attempt]

    def start_tokens(self) -> list[int]:
        """Return the tokens its decoding starts from: the initial tokens, with the detected language."""
        tokens = list(self.config.initial_tokens)
        if self.language is not None and self.config.detect:
            tokens[self.config.sot_index + 1] = self.config.tokenizer.to_language_token(self.language)
        return tokens


def make_jobs(model: Whisper, requests: Sequence[ChunkRequest], temperatures: tuple[float, ...]) -> list[Job]:
    """One Job per request, in order; requests with equal options share one Config (and its tokenizer)."""
    configs: dict[str, Config] = {}
    jobs = []
    for index, request in enumerate(requests):
        key = repr(request.options)
        if key not in configs:
            configs[key] = Config(model, request.options, len(configs))
        jobs.append(Job(index, request, configs[key], temperatures))
    return jobs
