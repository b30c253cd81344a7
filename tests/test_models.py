"""Model folders with real weights: faster-whisper (CTranslate2) and Hugging Face transformers.

Each folder kind is converted by daemon.transcribe.models into openai-whisper's model and
must transcribe jfk.flac word for word. The transformers folder is made here
with transformers itself, from the OpenAI-format base checkpoint, and proven a
working Whisper by transformers' own forward pass before subwatch reads it;
loaded back through subwatch, every tensor must equal the checkpoint's.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import whisper

from daemon.transcribe import load_model
from daemon.transcribe.models import ModelNotFound, ModelSource, content_hash, converted_checkpoint, resolve
from tests.speech import JFK_TEXT, jfk

# ----------------------------------------------------------------------------- helpers


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, to compare transcripts."""
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def transcribed(model: Any) -> str:
    return whisper.transcribe(model, str(jfk().path), language="en", fp16=False)["text"]


def heads_of(model: Any) -> list[list[int]]:
    """The (layer, head) pairs marked in a loaded model's alignment_heads buffer."""
    return sorted(model.alignment_heads.to_dense().nonzero().tolist())


def whisper_table_heads(name: str, n_layers: int, n_heads: int) -> list[list[int]]:
    """The alignment heads openai-whisper itself ships for a named model (its base85/gzip bitmap)."""
    bitmap = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name])), dtype=bool)
    return sorted(torch.from_numpy(bitmap.copy()).reshape(n_layers, n_heads).nonzero().tolist())


def converted_files(models_dir: Path) -> list[Path]:
    folder = models_dir / "converted"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def copy_folder(source: Path, target: Path, model_bin: bytes | None = None) -> Path:
    """Copy a CTranslate2 folder; its model.bin is hard-linked (never written) unless new bytes are given."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name == "model.bin":
            if model_bin is None:
                os.link(path, target / "model.bin")
            else:
                (target / "model.bin").write_bytes(model_bin)
        else:
            shutil.copy(path, target / path.name)
    return target


# ----------------------------------------------------------------------------- faster-whisper (CTranslate2)


@pytest.fixture(scope="module")
def ct2_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ct2-models")


@pytest.fixture(scope="module")
def ct2_base(base_model_dir: Path, ct2_models_dir: Path) -> Any:
    """base, loaded from its faster-whisper folder the way the daemon loads it."""
    return load_model(str(base_model_dir), ct2_models_dir, "cpu", "torch")


def test_faster_whisper_folder_transcribes_word_for_word(ct2_base: Any) -> None:
    assert ct2_base.is_multilingual
    assert (ct2_base.dims.n_text_layer, ct2_base.dims.n_text_head, ct2_base.dims.n_vocab) == (6, 8, 51865)
    assert words(transcribed(ct2_base)) == words(JFK_TEXT)


def test_faster_whisper_alignment_heads_come_from_its_config(ct2_base: Any, base_model_dir: Path) -> None:
    config = json.loads((base_model_dir / "config.json").read_text())
    expected = sorted(config["alignment_heads"])
    assert heads_of(ct2_base) == expected
    # ... which are openai-whisper's own heads for base, not its default (every head of the last 3 layers)
    assert expected == whisper_table_heads("base", 6, 8)


def test_faster_whisper_folder_converts_once_per_content(
    ct2_base: Any, base_model_dir: Path, ct2_models_dir: Path, tmp_path: Path
) -> None:
    [cached] = converted_files(ct2_models_dir)
    assert cached.name.startswith(base_model_dir.name + "-")
    written = cached.stat().st_mtime_ns

    again = load_model(str(base_model_dir), ct2_models_dir, "cpu", "torch")
    assert converted_files(ct2_models_dir) == [cached] and cached.stat().st_mtime_ns == written
    assert torch.equal(again.decoder.token_embedding.weight, ct2_base.decoder.token_embedding.weight)

    # The same files under another folder name are the same content: the cached file serves them too.
    renamed = copy_folder(base_model_dir, tmp_path / "faster-whisper-base-copy")
    source = resolve(str(renamed), ct2_models_dir)
    assert converted_checkpoint(source, ct2_models_dir) == cached
    assert converted_files(ct2_models_dir) == [cached] and cached.stat().st_mtime_ns == written

    # Changed content (other alignment heads in config.json) converts to a new file, and they take effect.
    changed = copy_folder(base_model_dir, tmp_path / "changed")
    config = json.loads((changed / "config.json").read_text())
    config["alignment_heads"] = [[0, 0], [5, 7]]
    (changed / "config.json").write_text(json.dumps(config))
    model = load_model(str(changed), ct2_models_dir, "cpu", "torch")
    assert heads_of(model) == [[0, 0], [5, 7]]
    files = converted_files(ct2_models_dir)
    assert len(files) == 2 and cached in files and cached.stat().st_mtime_ns == written
    [new] = [f for f in files if f != cached]
    assert new.name.startswith("changed-")

    # So do changed weights: one byte of model.bin is enough to change the key.
    data = bytearray((base_model_dir / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    retrained = copy_folder(base_model_dir, tmp_path / "retrained", model_bin=bytes(data))
    assert content_hash(resolve(str(retrained), ct2_models_dir)) != content_hash(source)


def test_tiny_en_folder_is_english_only(tiny_en_dir: Path, tmp_path: Path) -> None:
    model = load_model(str(tiny_en_dir), tmp_path, "cpu", "torch")
    assert not model.is_multilingual
    assert (model.dims.n_vocab, model.dims.n_text_layer, model.dims.n_text_state) == (51864, 4, 384)
    config = json.loads((tiny_en_dir / "config.json").read_text())
    assert heads_of(model) == sorted(config["alignment_heads"]) == whisper_table_heads("tiny.en", 4, 6)
    assert words(transcribed(model)) == words(JFK_TEXT)
    assert len(converted_files(tmp_path)) == 1
    assert sorted(p.name for p in tiny_en_dir.iterdir()) == [  # read in place, nothing written there
        "config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]


# ----------------------------------------------------------------------------- Hugging Face transformers

# openai-whisper's tensor names → transformers', written here from the two model
# classes (not from daemon.transcribe.models); transformers' own forward pass below proves it.
_TO_TRANSFORMERS = [
    (r"\.blocks\.", ".layers."),
    (r"\.mlp\.0\.", ".fc1."),
    (r"\.mlp\.2\.", ".fc2."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
    (r"\.cross_attn\.query\.", ".encoder_attn.q_proj."),
    (r"\.cross_attn\.key\.", ".encoder_attn.k_proj."),
    (r"\.cross_attn\.value\.", ".encoder_attn.v_proj."),
    (r"\.cross_attn\.out\.", ".encoder_attn.out_proj."),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"\.attn\.query\.", ".self_attn.q_proj."),
    (r"\.attn\.key\.", ".self_attn.k_proj."),
    (r"\.attn\.value\.", ".self_attn.v_proj."),
    (r"\.attn\.out\.", ".self_attn.out_proj."),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"^encoder\.ln_post\.", "encoder.layer_norm."),
    (r"^decoder\.ln\.", "decoder.layer_norm."),
    (r"^decoder\.token_embedding\.", "decoder.embed_tokens."),
    (r"^(encoder|decoder)\.positional_embedding$", r"\1.embed_positions.weight"),
]


def transformers_name(name: str) -> str:
    for pattern, replacement in _TO_TRANSFORMERS:
        name = re.sub(pattern, replacement, name)
    return "model." + name


def save_transformers_folder(
    dims: dict[str, int],
    state: dict[str, torch.Tensor],
    folder: Path,
    alignment_heads: list[list[int]] | None,
    **save_options: Any,
) -> Path:
    """Write an OpenAI-format model as a transformers Whisper folder, with transformers' own classes."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=dims["n_vocab"], num_mel_bins=dims["n_mels"], d_model=dims["n_audio_state"],
        encoder_layers=dims["n_audio_layer"], encoder_attention_heads=dims["n_audio_head"],
        decoder_layers=dims["n_text_layer"], decoder_attention_heads=dims["n_text_head"],
        encoder_ffn_dim=4 * dims["n_audio_state"], decoder_ffn_dim=4 * dims["n_text_state"],
        max_source_positions=dims["n_audio_ctx"], max_target_positions=dims["n_text_ctx"],
    )
    model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict({transformers_name(k): v for k, v in state.items()}, strict=False)
    # every tensor placed; proj_out is tied to the token embedding (one tensor, as in the published models)
    assert result.unexpected_keys == [] and result.missing_keys == ["proj_out.weight"], result
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    if alignment_heads is not None:
        model.generation_config = GenerationConfig(alignment_heads=alignment_heads)
    model.save_pretrained(folder, **save_options)  # transformers 5 writes safetensors only
    return folder


BASE_HEADS = [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2], [5, 4], [5, 6]]


@pytest.fixture(scope="module")
def base_openai(base_checkpoint: Path) -> dict[str, Any]:
    return torch.load(base_checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def transformers_base_dir(base_openai: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Whisper base as a Hugging Face transformers folder (config.json, generation_config.json,
    model.safetensors), as `openai/whisper-base` is laid out."""
    folder = tmp_path_factory.mktemp("hf") / "whisper-base"
    return save_transformers_folder(base_openai["dims"], base_openai["model_state_dict"], folder, BASE_HEADS)


@pytest.fixture(scope="module")
def hf_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-models")


@pytest.fixture(scope="module")
def transformers_base(transformers_base_dir: Path, hf_models_dir: Path) -> Any:
    return load_model(str(transformers_base_dir), hf_models_dir, "cpu", "torch")


def test_transformers_folder_made_here_is_a_working_whisper(transformers_base_dir: Path) -> None:
    """The oracle: transformers itself, reading the folder, predicts the JFK sentence token by token."""
    from transformers import WhisperForConditionalGeneration

    assert sorted(p.name for p in transformers_base_dir.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors"]
    model = WhisperForConditionalGeneration.from_pretrained(transformers_base_dir).eval()
    tokenizer = whisper.tokenizer.get_tokenizer(True, language="en", task="transcribe")
    prompt = list(tokenizer.sot_sequence_including_notimestamps)
    reference = tokenizer.encode(" " + JFK_TEXT)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(whisper.load_audio(str(jfk().path))))
    with torch.no_grad():
        logits = model(input_features=mel[None], decoder_input_ids=torch.tensor([prompt + reference])).logits
    predicted = logits[0, len(prompt) - 1:].argmax(-1).tolist()
    assert predicted == reference + [tokenizer.eot]


def test_transformers_folder_loads_tensor_for_tensor(
    transformers_base: Any, transformers_base_dir: Path, base_openai: dict[str, Any], hf_models_dir: Path
) -> None:
    assert resolve(str(transformers_base_dir), hf_models_dir).kind == "transformers"
    original = base_openai["model_state_dict"]
    loaded = transformers_base.state_dict()
    assert sorted(loaded) == sorted(original)
    for name, tensor in original.items():
        assert loaded[name].shape == tensor.shape, name
        # fp16 in the faster-whisper file → fp32 in transformers → fp32 here: no value may change
        torch.testing.assert_close(loaded[name], tensor.float(), rtol=0, atol=0, msg=name)
    assert asdict(transformers_base.dims) == base_openai["dims"]
    assert heads_of(transformers_base) == BASE_HEADS
    [cached] = converted_files(hf_models_dir)
    assert cached.name.startswith("whisper-base-")


def test_transformers_folder_transcribes_word_for_word(transformers_base: Any) -> None:
    assert transformers_base.is_multilingual
    assert words(transcribed(transformers_base)) == words(JFK_TEXT)


def test_transformers_folder_without_generation_config_keeps_whisper_default_heads(
    tmp_path: Path,
) -> None:
    from tests.whisper_checkpoint import random_whisper

    small = random_whisper("test", seed=1)
    folder = save_transformers_folder(
        asdict(small.dims), small.state_dict(), tmp_path / "whisper-test", alignment_heads=None)
    (folder / "generation_config.json").unlink(missing_ok=True)
    model = load_model(str(folder), tmp_path / "models", "cpu", "torch")
    for name, tensor in small.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    # whisper's default: every head of the last half of the decoder's layers
    assert heads_of(model) == [[1, 0], [1, 1]]


@pytest.mark.parametrize("other", ["model.fp32-00001-of-00001.safetensors", "model_backup.safetensors"])
def test_transformers_folder_reads_model_safetensors_not_other_copies_beside_it(
    other: str, tmp_path: Path
) -> None:
    """A folder may hold model.safetensors and another copy (a variant="fp32" one, a backup):
    transformers reads model.safetensors only, and so does subwatch; the copy is not even hashed."""
    from safetensors.torch import load_file, save_file

    from tests.whisper_checkpoint import random_whisper

    small = random_whisper("test", seed=3)
    folder = save_transformers_folder(asdict(small.dims), small.state_dict(), tmp_path / "variants", None)
    source = resolve(str(folder), tmp_path / "models")
    alone = content_hash(source)
    decoy = {name: torch.zeros_like(t) for name, t in load_file(folder / "model.safetensors").items()}
    save_file(decoy, folder / other)
    assert content_hash(source) == alone
    model = load_model(str(folder), tmp_path / "models", "cpu", "torch")
    for name, tensor in small.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_sharded_transformers_folder(tmp_path: Path) -> None:
    """Shards listed in model.safetensors.index.json load as one model; a lost shard is named as missing
    tensors, not a crash."""
    from tests.whisper_checkpoint import random_whisper

    small = random_whisper("test", seed=4)
    folder = save_transformers_folder(asdict(small.dims), small.state_dict(), tmp_path / "sharded", None,
                                      max_shard_size="2MB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (folder / "model.safetensors").exists()
    model = load_model(str(folder), tmp_path / "models", "cpu", "torch")
    for name, tensor in small.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name

    (folder / shards[0]).unlink()
    assert_fails(folder, tmp_path / "models-after-loss",
                 f"the model in {folder} is not a complete Whisper model: it lacks")


# ----------------------------------------------------------------------------- errors


def assert_fails(spec: Path, models_dir: Path, *parts: str) -> str:
    """Loading `spec` as the daemon does fails with a message holding every part; nothing is cached."""
    with pytest.raises(ModelNotFound) as failure:
        load_model(str(spec), models_dir, "cpu", "torch")
    message = str(failure.value)
    for part in parts:
        assert part in message, message
    assert converted_files(models_dir) == []
    return message


@pytest.mark.parametrize("files", [[], ["config.json", "pytorch_model.bin"], ["model.bin"]])
def test_folder_of_neither_kind_names_both_layouts(files: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"{}")
    message = assert_fails(folder, tmp_path / "models", f"model folder {folder} holds no Whisper model",
                           "model.bin and config.json", "config.json and model.safetensors")
    assert "faster-whisper" in message and "Hugging Face" in message


@pytest.mark.parametrize("cut", ["inside a tensor", "inside the header"])
def test_truncated_faster_whisper_folder(cut: str, base_model_dir: Path, tmp_path: Path) -> None:
    whole = (base_model_dir / "model.bin").stat().st_size
    with open(base_model_dir / "model.bin", "rb") as f:
        head = f.read(whole // 2 if cut == "inside a tensor" else 7)
    folder = copy_folder(base_model_dir, tmp_path / "cut", model_bin=head)
    assert resolve(str(folder), tmp_path / "models").kind == "ctranslate2"
    assert_fails(folder, tmp_path / "models", f"model.bin in {folder} is truncated",
                 "copy the model folder again")


def ct2_string(text: str) -> bytes:
    """A string as CTranslate2 writes it: uint16 length with the NUL, the bytes, the NUL."""
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def test_faster_whisper_file_of_another_model_type(base_model_dir: Path, tmp_path: Path) -> None:
    """A CTranslate2 translation model (TransformerSpec) in a folder laid out like faster-whisper's."""
    header = struct.pack("<I", 6) + ct2_string("TransformerSpec") + struct.pack("<III", 7, 0, 0)
    folder = copy_folder(base_model_dir, tmp_path / "opus-mt", model_bin=header)
    assert_fails(folder, tmp_path / "models", f"model.bin in {folder} is a CTranslate2 TransformerSpec",
                 "not a Whisper model")


def test_missing_path_says_what_could_be_there(tmp_path: Path) -> None:
    missing = tmp_path / "faster-whisper-large-v3"
    message = assert_fails(missing, tmp_path / "models", f"model folder {missing} does not exist")
    assert "faster-whisper or Hugging Face model folder" in message and ".pt checkpoint" in message
    gone = tmp_path / "gone.pt"
    assert_fails(gone, tmp_path / "models", f"model file {gone} does not exist")


def test_transformers_folder_of_another_model_type(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "wav2vec2-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "wav2vec2", "hidden_size": 768}))
    save_file({"wav2vec2.feature_projection.projection.weight": torch.zeros(4, 4)},
              folder / "model.safetensors")
    assert resolve(str(folder), tmp_path / "models") == ModelSource(str(folder), "transformers", folder)
    assert_fails(folder, tmp_path / "models", f"{folder}/config.json describes a 'wav2vec2' model",
                 "not Whisper")


def test_transformers_folder_missing_a_tensor(tmp_path: Path) -> None:
    """A partial copy: the file is whole but a tensor is gone. Caught before anything is cached."""
    from safetensors.torch import load_file, save_file

    from tests.whisper_checkpoint import random_whisper

    small = random_whisper("test", seed=2)
    folder = save_transformers_folder(asdict(small.dims), small.state_dict(), tmp_path / "partial", None)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.decoder.layers.1.fc2.weight"]
    save_file(tensors, folder / "model.safetensors")
    assert_fails(folder, tmp_path / "models", f"the model in {folder} is not a complete Whisper model",
                 "lacks decoder.blocks.1.mlp.2.weight", "model.safetensors")


def test_transformers_folder_with_a_tensor_whisper_has_no_place_for(tmp_path: Path) -> None:
    """Whisper's cross-attention key has no bias: a folder with one is no model openai-whisper can hold."""
    from safetensors.torch import load_file, save_file

    from tests.whisper_checkpoint import random_whisper

    small = random_whisper("test", seed=5)
    folder = save_transformers_folder(asdict(small.dims), small.state_dict(), tmp_path / "odd", None)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.decoder.layers.0.encoder_attn.k_proj.bias"] = torch.ones(64)
    save_file(tensors, folder / "model.safetensors")
    assert_fails(folder, tmp_path / "models",
                 f"the model in {folder} holds decoder.blocks.0.cross_attn.key.bias", "model.safetensors")


def test_truncated_transformers_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "cut-hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    save_file({"model.encoder.conv1.weight": torch.zeros(64, 80, 3)}, folder / "model.safetensors")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_fails(folder, tmp_path / "models", f"cannot read the Hugging Face model in {folder}")



@pytest.mark.parametrize("kind", ["whisper.cpp ggml", "pickled objects"])
def test_file_that_is_no_checkpoint(kind: str, tmp_path: Path) -> None:
    """A whisper.cpp model, or a pickle of objects, fails the job for good, not as a retried torch error."""
    import argparse
    import pickle

    path = tmp_path / ("ggml-base.bin" if kind == "whisper.cpp ggml" else "notes.pt")
    if kind == "whisper.cpp ggml":  # magic, then n_vocab, n_audio_ctx, n_audio_state …
        path.write_bytes(struct.pack("<I", 0x67676D6C) + struct.pack("<5i", 51865, 1500, 512, 8, 6))
    else:
        path.write_bytes(pickle.dumps(argparse.Namespace(dims={"n_mels": 80}), protocol=2))
    message = assert_fails(path, tmp_path / "models",
                           f"model file {path} is not a readable Whisper checkpoint (UnpicklingError")
    assert "OpenAI-format .pt file" in message and "weights_only" not in message
