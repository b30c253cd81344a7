"""The batched engine against openai-whisper itself: same tokens, same word timings, on CPU in fp32.

Whisper with random weights emits one token over and over until the sample
length, so every window would finish at the same step and the batch would
never change shape. The model here is random too, but with unit layer-norm
gains, no biases and a louder end-of-text embedding, so the audio decides
when a window ends: windows in one batch finish at different steps (some
after 1 token, some at the limit), leave the batch, and waiting windows take
their slots.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import whisper
from whisper.decoding import DecodingOptions
from whisper.timing import add_word_timestamps

from daemon import engine
from daemon.engine.scheduler import Scheduler
from tests.engine_decode import decode
from tests.whisper_checkpoint import random_whisper

EOT = 50257
CLIPS = ["jfk.flac"] + [f"fleurs/fleurs-{lang}-000.ogg" for lang in ("de", "en", "es", "fr", "pt")]


@pytest.fixture(scope="module")
def model() -> whisper.Whisper:
    """A random 'test'-shape model in which the audio decides how long a window's text is."""
    model = random_whisper("test", seed=2).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif name.endswith(("ln.weight", "_ln.weight", "ln_post.weight")):
                param.fill_(1.0)
        model.decoder.token_embedding.weight[EOT] *= 4
    return model


@pytest.fixture(scope="module")
def windows(testdata: Path) -> tuple[torch.Tensor, list[float]]:
    """Log-mels of 30 s windows of real speech (6 clips), a constant one and a noise one; their durations."""
    audio = [whisper.load_audio(str(testdata / "speech" / clip)) for clip in CLIPS]
    mels = [whisper.log_mel_spectrogram(whisper.pad_or_trim(a)) for a in audio]
    generator = torch.Generator().manual_seed(0)
    mels += [torch.full((80, 3000), -0.5), torch.randn(80, 3000, generator=generator)]
    durations = [min(30.0, len(a) / 16000) for a in audio] + [30.0, 30.0]
    return torch.stack(mels), durations


def options(**kwargs: object) -> DecodingOptions:
    return DecodingOptions(fp16=False, **kwargs)  # type: ignore[arg-type]


CASES = {
    "timestamps": [options(language="en")] * 8,
    "no timestamps": [options(language="en", without_timestamps=True)] * 8,
    "language detection": [options(language=None, sample_len=64)] * 8,
    "prompt": [options(language="de", prompt="Grüezi, Zürich und Basel", sample_len=64)] * 8,
    "prompt and detection": [options(language=None, prompt="Thanks to Ana and Joaquín", sample_len=64)] * 8,
    "mixed options in one batch": [
        options(language="en"),
        options(language="fr", without_timestamps=True),
        options(language=None),
        options(language="de", prompt="a b c d e f"),
        options(language="en", sample_len=10),
        options(language=None, prompt="x"),
        options(language="es", max_initial_timestamp=None),
        options(language="en", suppress_blank=False, suppress_tokens=""),
    ],
    "beam search": [options(language="en", beam_size=3, sample_len=48)] * 8,
    "beam search, mixed": [
        options(language="en", beam_size=3, sample_len=48),
        options(language=None, beam_size=3, sample_len=30),
        options(language="de", beam_size=3, prompt="hi there", without_timestamps=True),
    ]
    * 2
    + [
        options(language="en", beam_size=3, patience=2.0),
        options(language="en", beam_size=3, length_penalty=0.5),
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_batched_decoding_returns_whispers_tokens(model, windows, case: str) -> None:
    assert_whispers_tokens(model, windows, CASES[case])


# The real model, on the six windows of real speech (a real model on the constant and noise
# windows loops to the sample length one token at a time, for minutes): its text, its language
# detection, mixed options in one batch, and beam search.
REAL_CASES = {
    "mixed options in one batch": [
        options(language="en"),
        options(language="de", without_timestamps=True),
        options(language=None),
        options(language="es", prompt="Gracias a Ana y Joaquín"),
        options(language="fr", sample_len=12),
        options(language=None, prompt="Obrigado"),
    ],
    "beam search": [  # three windows: whisper's own beam search, one window at a time, is slow
        options(language=language, beam_size=5, sample_len=48) for language in ("en", "de", "en")
    ],
}


@pytest.mark.parametrize("case", list(REAL_CASES))
def test_the_real_base_model_gives_whispers_tokens(base_model, windows, case: str) -> None:
    mel, durations = windows
    per_window = REAL_CASES[case]
    assert_whispers_tokens(base_model, (mel[: len(per_window)], durations), per_window)


def assert_whispers_tokens(model: whisper.Whisper, windows: tuple, per_window: list) -> None:
    mel, _ = windows
    expected = [whisper.decode(model, mel[i], o) for i, o in enumerate(per_window)]

    # batch of 3 for 8 windows: finished windows leave and waiting ones are admitted mid-flight
    got = decode(model, mel, per_window, batch_size=3)

    assert [list(g.tokens) for g in got] == [e.tokens for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.text == e.text
        assert g.language == e.language
        assert g.avg_logprob == pytest.approx(e.avg_logprob, abs=1e-4)
        assert g.no_speech_prob == pytest.approx(e.no_speech_prob, abs=1e-5)
        assert g.compression_ratio == pytest.approx(e.compression_ratio)


def test_checking_for_finished_windows_every_few_steps_changes_nothing(model, windows) -> None:
    # on a GPU the engine looks for finished windows every few steps, not after each one
    mel, _ = windows
    per_window = CASES["mixed options in one batch"]
    expected = [whisper.decode(model, mel[i], o).tokens for i, o in enumerate(per_window)]
    lazy = engine.EngineOptions(
        temperatures=(0.0,),
        compression_ratio_threshold=None,
        logprob_threshold=None,
        batch_size=3,
        sync_every=3,
    )

    got = engine.transcribe_chunks(
        model, [engine.ChunkRequest(o, mel=m) for o, m in zip(per_window, mel, strict=True)], lazy
    )

    assert [list(g.tokens) for g in got] == expected


def test_the_cases_cover_windows_finishing_at_different_steps(model, windows) -> None:
    mel, _ = windows
    lengths = [
        len(r.tokens) for r in decode(model, mel, CASES["mixed options in one batch"], batch_size=3)
    ]
    assert len(set(lengths)) >= 5  # e.g. [224, 14, 224, 16, 10, 7, 28, 13]
    assert min(lengths) < 20 and max(lengths) == 224


def test_word_timings_are_whispers_alignment(model, windows) -> None:
    assert_whispers_word_timings(model, windows)


def test_the_real_base_models_word_timings_are_whispers_alignment(base_model, windows) -> None:
    # the same alignment to the last float bit but for the sums: times within a microsecond
    assert_whispers_word_timings(base_model, windows, exact=False)


def assert_whispers_word_timings(model: whisper.Whisper, windows: tuple, exact: bool = True) -> None:
    mel, durations = windows
    languages = ["en", "de", "en", "es", "fr", "pt"]
    requests = [
        engine.ChunkRequest(
            options(language=lang, sample_len=40), mel=mel[i], duration=durations[i], word_timestamps=True
        )
        for i, lang in enumerate(languages)
    ]
    no_guards = engine.EngineOptions(
        temperatures=(0.0,), compression_ratio_threshold=None, logprob_threshold=None, batch_size=4
    )

    got = engine.transcribe_chunks(model, requests, no_guards)

    for i, result in enumerate(got):
        tokenizer = whisper.tokenizer.get_tokenizer(True, num_languages=99, language=languages[i])
        pieces = engine.split_segments(list(result.tokens), tokenizer, durations[i])
        expected = [dict(seek=0, start=s.start, end=s.end, tokens=t) for s, t in pieces]
        add_word_timestamps(
            segments=expected,
            model=model,
            tokenizer=tokenizer,
            mel=mel[i],
            num_frames=round(durations[i] * 100),
            last_speech_timestamp=0.0,
        )
        expected = [s for s in expected if s["end"] > s["start"]]  # whisper.transcribe drops instants too
        times = [t for s in result.segments for t in (s.start, s.end)]
        want_times = [t for s in expected for t in (s["start"], s["end"])]
        assert times == (want_times if exact else pytest.approx(want_times, abs=1e-6))
        words = [(w.text, w.start, w.end) for s in result.segments for w in s.words]
        want = [(w["word"], w["start"], w["end"]) for s in expected for w in s["words"]]
        assert [w[0] for w in words] == [w[0] for w in want]
        got_times, want_times = [t for w in words for t in w[1:]], [t for w in want for t in w[1:]]
        assert got_times == (want_times if exact else pytest.approx(want_times, abs=1e-6))
        assert [w.probability for s in result.segments for w in s.words] == pytest.approx(
            [w["probability"] for s in expected for w in s["words"]], abs=1e-5
        )
        assert words, "each window has aligned words"


def test_failing_windows_are_decoded_again_hotter(model, windows) -> None:
    mel, _ = windows
    requests = [engine.ChunkRequest(options(language="en", sample_len=32), mel=m) for m in mel[:4]]
    settled: list[int] = []

    got = engine.transcribe_chunks(
        model, requests, engine.EngineOptions(batch_size=2), on_done=settled.append
    )

    assert sorted(settled) == [0, 1, 2, 3]
    # random weights never reach a mean log probability of -1: every temperature is tried
    assert [r.temperature for r in got] == [1.0] * 4
    assert all(len(r.tokens) <= 32 for r in got)


def test_segments_are_cut_at_timestamp_pairs() -> None:
    tokenizer = whisper.tokenizer.get_tokenizer(True, num_languages=99, language="en")
    t0 = tokenizer.timestamp_begin
    hello, world, more = tokenizer.encode(" Hello"), tokenizer.encode(" world"), tokenizer.encode(" more")
    tokens = [t0, *hello, t0 + 100, t0 + 100, *world, t0 + 200, t0 + 250, *more]

    pieces = engine.split_segments(tokens, tokenizer, duration=7.5)

    assert [(s.start, s.end, s.text) for s, _ in pieces] == [
        (0.0, 2.0, " Hello"),
        (2.0, 4.0, " world"),
        (5.0, 7.5, " more"),  # no closing timestamp: it runs to the chunk's end
    ]
    assert [t for _, t in pieces] == [hello, world, more]


def test_language_vote_weights_whole_distributions() -> None:
    votes = [{"en": 0.4, "de": 0.6}, {"en": 0.9, "de": 0.1}, {"en": 0.8, "de": 0.2}]

    assert engine.vote_language(votes, [1.0, 1.0, 1.0]) == ("en", pytest.approx(0.7))
    assert engine.vote_language(votes, [10.0, 1.0, 1.0])[0] == "de"


def test_log_mel_matches_whisper_for_short_chunks(testdata: Path) -> None:
    audio = whisper.load_audio(str(testdata / "speech" / "jfk.flac"))
    expected = whisper.log_mel_spectrogram(audio, padding=480000)[:, :3000]

    got = engine.log_mel([audio], 80, "cpu")[0]

    assert torch.allclose(got, expected, atol=1e-5)


def test_out_of_memory_halves_the_batch_and_finishes(model, windows, monkeypatch) -> None:
    mel, _ = windows
    per_window = [options(language="en", sample_len=16)] * 6
    expected = [list(r.tokens) for r in decode(model, mel[:6], per_window, batch_size=4)]
    real_step, calls, capacities = Scheduler._step, {"n": 0}, []

    def step_that_runs_out_once(self: Scheduler) -> None:
        calls["n"] += 1
        capacities.append(self.capacity)
        if calls["n"] == 5 and self.capacity == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        real_step(self)

    monkeypatch.setattr(Scheduler, "_step", step_that_runs_out_once)
    got = decode(model, mel[:6], per_window, batch_size=4)

    assert [list(r.tokens) for r in got] == expected
    assert capacities[0] == 4 and capacities[-1] == 2
