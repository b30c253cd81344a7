"""The CPU engine (daemon.engine.ct2) against the reference: real Whisper base weights throughout.

At float32 CTranslate2 must give the torch engine's (and so whisper.decode's) tokens
exactly, which proves the weight conversion and the decoding options map one to one.
`engine: ctranslate2-int8-encoder` loads the model as two halves, an int8 encoder beside the
float32 decoder: each half must compute what the whole model computes at its precision, and
the words must still be the speech's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from whisper.decoding import DecodingOptions
from whisper.tokenizer import get_tokenizer

from daemon.datatypes import Audio
from daemon.engine import ChunkRequest, EngineOptions, log_mel, transcribe_chunks
from daemon.engine.ct2 import Ct2Whisper, write_ct2
from daemon.engine.ct2.convert import DIMS_FILE
from daemon.transcribe import TranscribeOptions, load_model, transcribe_many
from tests import speech

RATE = 16000
NO_GUARDS = EngineOptions(
    temperatures=(0.0,), compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None
)


@pytest.fixture(scope="module")
def ct2_folder(base_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct2(base_model, tmp_path_factory.mktemp("ct2") / "base")


@pytest.fixture(scope="module")
def exact(ct2_folder: Path) -> Ct2Whisper:
    return Ct2Whisper(ct2_folder, threads=torch.get_num_threads(), compute_type="float32")


@pytest.fixture(scope="module")
def int8(ct2_folder: Path) -> Ct2Whisper:
    return Ct2Whisper(ct2_folder, threads=torch.get_num_threads())


@pytest.fixture(scope="module")
def halves(base_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Ct2Whisper:
    """engine: ctranslate2-int8-encoder: the encoder half in int8, the decoder half in float32."""
    root = tmp_path_factory.mktemp("halves")
    encoder = write_ct2(base_model, root / "encoder", "encoder")
    decoder = write_ct2(base_model, root / "decoder", "decoder")
    threads = torch.get_num_threads()
    return Ct2Whisper(decoder, threads=threads, compute_type="float32", encoder=(encoder, "int8"))


@pytest.fixture(scope="module")
def clips() -> list[speech.Clip]:
    # two clips of each language: the language is detected, as the daemon does when it is not given
    return [clip for language in speech.LANGUAGES for clip in speech.fleurs(language)[:2]]


def requests(clips: list[speech.Clip], **options: Any) -> list[ChunkRequest]:
    decoding = DecodingOptions(language=None, fp16=False, **options)
    loaded = [speech.load(clip) for clip in clips]
    return [ChunkRequest(decoding, samples=s, duration=len(s) / RATE, word_timestamps=True) for s in loaded]


@pytest.mark.parametrize(
    ("beam_size", "prompt"), [(None, "Names: Giancarlo Fisichella, Cintra, Lord Byron."), (5, None)]
)
def test_float32_gives_the_torch_engines_tokens_languages_and_scores(
    base_model: Any, exact: Ct2Whisper, clips: list[speech.Clip], beam_size: int | None, prompt: str | None
) -> None:
    # greedy with a folder's prompt (<|startofprev|> text before the start tokens), and beam search;
    # one clip of each language, the torch reference being the slow half of the test
    clips = clips[::2]
    work = requests(clips, beam_size=beam_size, prompt=prompt)

    reference = transcribe_chunks(base_model, work, NO_GUARDS)
    ours = transcribe_chunks(exact, work, NO_GUARDS)

    assert [r.language for r in ours] == [c.language for c in clips]
    for ref, got in zip(reference, ours, strict=True):
        assert got.tokens == ref.tokens, (ref.text, got.text)
        assert got.avg_logprob == pytest.approx(ref.avg_logprob, abs=1e-3)
        assert got.no_speech_prob == pytest.approx(ref.no_speech_prob, abs=1e-3)
        assert got.language_probs[got.language] == pytest.approx(ref.language_probs[ref.language], abs=1e-3)
        ref_words = [w for s in ref.segments for w in s.words]
        got_words = [w for s in got.segments for w in s.words]
        assert [w.text for w in got_words] == [w.text for w in ref_words]
        # CTranslate2 aligns in C++ (its own DTW); words land on the same 20 ms steps but for a rare tie
        starts = np.array([w.start for w in got_words]) - np.array([w.start for w in ref_words])
        assert np.mean(np.abs(starts) <= 0.02) >= 0.95, starts
        assert np.max(np.abs(starts)) <= 0.5


def test_each_half_computes_what_the_whole_model_computes_at_its_precision(
    halves: Ct2Whisper, int8: Ct2Whisper, exact: Ct2Whisper, ct2_folder: Path, clips: list[speech.Clip]
) -> None:
    loaded = [speech.load(clip) for clip in clips[::5]]  # English and Spanish
    mel = log_mel(loaded, 80, "cpu")

    encoded = halves.encode(mel)
    # the same encoder output, decoded by the float32 decoder half and by the whole float32 model
    work = [
        ChunkRequest(
            DecodingOptions(language=None, beam_size=5, fp16=False), features=f, duration=len(s) / RATE
        )
        for f, s in zip(encoded, loaded, strict=True)
    ]
    ours, whole = transcribe_chunks(halves, work, NO_GUARDS), transcribe_chunks(exact, work, NO_GUARDS)

    assert torch.equal(encoded, int8.encode(mel))  # the int8 encoder half is the whole int8 model's encoder
    assert not torch.equal(encoded, exact.encode(mel))  # and it is int8, not float32
    assert [r.tokens for r in ours] == [r.tokens for r in whole]
    assert [r.language_probs for r in ours] == [r.language_probs for r in whole]
    assert halves.ct2.compute_type == "float32" and halves.encoder_ct2.compute_type.startswith("int8")
    whole_size = (ct2_folder / "model.bin").stat().st_size
    for half in (halves.folder, halves.encoder_folder):
        assert (half / "model.bin").stat().st_size < whole_size  # each holds one stack, not both


def test_the_int8_encoder_keeps_the_words_of_every_language(
    halves: Ct2Whisper, clips: list[speech.Clip]
) -> None:
    options = TranscribeOptions(model="base", language=None, beam_size=5)
    mine = clips[::2]  # one clip of each language: the opt-in engine's words, at half the suite's cost
    audios = [Audio(speech.load(clip), RATE) for clip in mine]

    transcripts = transcribe_many([(audio, options) for audio in audios], halves)  # type: ignore[arg-type]

    assert {clip.language for clip in mine} == set(speech.LANGUAGES)
    for clip, transcript in zip(mine, transcripts, strict=True):
        said = " ".join(s.text for s in transcript.segments)
        assert transcript.language == clip.language
        # the same bound as the torch engine's test of these clips (tests/test_transcribe.py)
        assert speech.word_error_rate([clip.text], [said], clip.language) < 0.5, (clip.path.name, said)
        assert transcript.uncovered_seconds < 1.0


def test_a_window_encoded_short_keeps_its_words_and_their_times(
    exact: Ct2Whisper, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a coverage or recheck window: 11 s of speech, encoded as 16 s (rounds.RETRY_ENCODER_PAD_S), not 30
    clip = speech.jfk()
    samples = speech.load(clip)
    shapes: list[tuple[int, ...]] = []
    encode = exact.encode
    monkeypatch.setattr(exact, "encode", lambda mel: shapes.append(tuple(mel.shape)) or encode(mel))
    options = DecodingOptions(language="en", beam_size=5, fp16=False)
    whole, short = transcribe_chunks(
        exact,
        [
            ChunkRequest(options, samples=samples, duration=len(samples) / RATE, word_timestamps=True),
            ChunkRequest(options, samples=samples, duration=len(samples) / RATE, word_timestamps=True,
                         encoder_seconds=16),
        ],
        NO_GUARDS,
    )

    assert shapes == [(1, 80, 3000), (1, 80, 1600)]
    assert speech.word_error_rate([clip.text], [short.text], "en") <= 0.05, short.text
    whole_words = [w for s in whole.segments for w in s.words]
    short_words = [w for s in short.segments for w in s.words]
    # the same words; punctuation may differ (" so," encoded as 16 s, " so" as 30 s)
    assert [_bare(w.text) for w in short_words] == [_bare(w.text) for w in whole_words]
    starts = np.array([w.start for w in short_words]) - np.array([w.start for w in whole_words])
    assert np.max(np.abs(starts)) <= 0.3, starts
    assert short_words[-1].end <= len(samples) / RATE + 0.02


def _bare(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def test_a_window_failing_the_guards_is_decoded_again_hotter(
    halves: Ct2Whisper, clips: list[speech.Clip]
) -> None:
    # a log probability above 0 is impossible: every temperature is tried, the last result kept
    hot = EngineOptions(temperatures=(0.0, 0.4, 0.8), logprob_threshold=0.0, no_speech_threshold=None)

    results = transcribe_chunks(halves, requests(clips[:2], beam_size=5), hot)

    assert [r.temperature for r in results] == [0.8, 0.8]
    assert all(r.text and not r.silent for r in results)


def test_silence_is_judged_as_the_torch_engine_judges_it(base_model: Any, exact: Ct2Whisper) -> None:
    quiet = np.random.default_rng(0).normal(0, 1e-4, 10 * RATE).astype(np.float32)
    speech_clip = speech.load(speech.jfk())
    work = [
        ChunkRequest(DecodingOptions(language="en", fp16=False), samples=s, duration=len(s) / RATE)
        for s in (quiet, speech_clip)
    ]

    reference = transcribe_chunks(base_model, work, EngineOptions(temperatures=(0.0,)))
    ours = transcribe_chunks(exact, work, EngineOptions(temperatures=(0.0,)))

    assert [r.silent for r in ours] == [r.silent for r in reference] == [True, False]
    assert ours[0].segments == () and "ask not" in ours[1].text


def test_the_folder_names_whispers_tokens_as_ctranslate2_looks_them_up(
    base_model: Any, ct2_folder: Path
) -> None:
    tokenizer = get_tokenizer(True, num_languages=base_model.num_languages)
    vocabulary = json.loads((ct2_folder / "vocabulary.json").read_text(encoding="utf-8"))
    config = json.loads((ct2_folder / "config.json").read_text(encoding="utf-8"))

    assert len(vocabulary) == base_model.dims.n_vocab
    assert vocabulary[tokenizer.sot] == "<|startoftranscript|>"
    assert vocabulary[tokenizer.eot] == "<|endoftext|>"
    assert vocabulary[tokenizer.no_timestamps] == "<|notimestamps|>"
    assert vocabulary[tokenizer.timestamp_begin] == "<|0.00|>" and vocabulary[-1] == "<|30.00|>"
    assert vocabulary[tokenizer.to_language_token("de")] == "<|de|>"
    assert vocabulary[tokenizer.encode(" Hello")[0]] == "ĠHello"  # byte-level names, as Hugging Face's
    assert config["lang_ids"] == sorted(tokenizer.all_language_tokens)
    assert config["alignment_heads"] == base_model.alignment_heads.indices().T.tolist()
    assert tokenizer.sot in config["suppress_ids"] and tokenizer.eot not in config["suppress_ids"]


def test_auto_loads_ctranslate2_on_the_cpu_converting_once(base_model_dir: Path, tmp_path: Path) -> None:
    model = load_model(str(base_model_dir), tmp_path, "cpu")
    int8 = load_model(str(base_model_dir), tmp_path, "cpu", "ctranslate2-int8")
    split = load_model(str(base_model_dir), tmp_path, "cpu", "ctranslate2-int8-encoder")
    folders = [p for p in (tmp_path / "converted").iterdir() if p.is_dir()]
    written = {p: (p / "model.bin").stat().st_mtime_ns for p in folders}

    again = load_model(str(base_model_dir), tmp_path, "cpu", "auto")
    torch_model = load_model(str(base_model_dir), tmp_path, "cpu", "torch")

    assert isinstance(model, Ct2Whisper) and isinstance(again, Ct2Whisper)
    # auto on the CPU: float32; one whole folder serves float32 and int8
    assert model.ct2.compute_type == "float32" and int8.ct2.compute_type.startswith("int8")
    assert model.folder == int8.folder == model.encoder_folder == again.folder
    assert model.ct2 is model.encoder_ct2
    # the int8 encoder half beside the float32 decoder half, each converted once beside the whole folder
    assert split.ct2.compute_type == "float32" and split.encoder_ct2.compute_type.startswith("int8")
    assert "-ctranslate2-decoder-" in split.folder.name
    assert "-ctranslate2-encoder-" in split.encoder_folder.name
    assert sorted(folders) == sorted({model.folder, split.folder, split.encoder_folder})
    for p, t in written.items():
        assert (p / DIMS_FILE).is_file() and (p / "model.bin").stat().st_mtime_ns == t
    assert not isinstance(torch_model, Ct2Whisper) and torch_model.dims == model.dims
    assert [p.name for p in (tmp_path / "converted").iterdir() if p.name.startswith(".")] == []
