"""An openai-whisper model written as a CTranslate2 Whisper folder, once per model, for the CPU engine.

The tensors map one to one (the inverse of daemon.transcribe.models' reading of faster-whisper
folders): self-attention's q|k|v and cross-attention's k|v are fused, the key
projections (which have no bias) get a zero one, and the output projection is the
token embedding, as Whisper ties them. The vocabulary is written with the byte-level
names Hugging Face gives Whisper's tokens, so CTranslate2 finds the special tokens
(`<|startoftranscript|>`, `<|notimestamps|>`, `<|nospeech|>`, `<|0.00|>` …) by name.
Weights are stored as float16; CTranslate2 quantizes them to int8 when loading on
the CPU. The folder is written beside itself and renamed into place, so a folder
that exists is complete.

A folder may also hold one half of the model (`part`): the encoder whole with one decoder
layer, or the decoder whole with one encoder layer (CTranslate2 loads no stack without a
layer). The CPU engine loads the halves at two precisions, int8 for the encoder and float32
for the decoder (see daemon.transcribe.engines), and each instance holds only its half.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from whisper.model import Whisper

DIMS_FILE = "subwatch-dims.json"  # the openai-whisper ModelDimensions, read back by Ct2Whisper

Part = Literal["whole", "encoder", "decoder"]


def write_ct2(model: Whisper, folder: Path, part: Part = "whole") -> Path:
    """Given a loaded openai-whisper model, write it (or one half of it) as a CTranslate2 Whisper
    folder at `folder`."""
    from ctranslate2.specs import whisper_spec

    d = model.dims
    layers = {
        "encoder": d.n_audio_layer if part != "decoder" else 1,
        "decoder": d.n_text_layer if part != "encoder" else 1,
    }
    spec = whisper_spec.WhisperSpec(layers["encoder"], d.n_audio_head, layers["decoder"], d.n_text_head)
    for name, value in _tensors(model).items():
        if _kept(name, layers):
            _assign(spec, name, value)
    tokens, config = _vocabulary_and_config(model)
    spec.register_vocabulary(tokens)
    for key, value in config.items():
        setattr(spec.config, key, value)
    spec.validate()
    spec.optimize(quantization="float16")
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    spec.save(str(partial))
    (partial / DIMS_FILE).write_text(json.dumps(vars(d)), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder


def _tensors(model: Whisper) -> dict[str, Any]:
    """Every CTranslate2 variable name and its numpy value, from the model's state dict."""
    import torch

    s = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    t: dict[str, Any] = {
        "encoder/conv1/weight": s["encoder.conv1.weight"],
        "encoder/conv1/bias": s["encoder.conv1.bias"],
        "encoder/conv2/weight": s["encoder.conv2.weight"],
        "encoder/conv2/bias": s["encoder.conv2.bias"],
        "encoder/position_encodings/encodings": s["encoder.positional_embedding"],
        "decoder/embeddings/weight": s["decoder.token_embedding.weight"],
        "decoder/position_encodings/encodings": s["decoder.positional_embedding"],
        "decoder/projection/weight": s["decoder.token_embedding.weight"],
    }
    _norm(t, "encoder/layer_norm", s, "encoder.ln_post")
    _norm(t, "decoder/layer_norm", s, "decoder.ln")
    zeros = torch.zeros
    for i in range(model.dims.n_audio_layer):
        _block(t, f"encoder/layer_{i}", s, f"encoder.blocks.{i}", zeros)
    for i in range(model.dims.n_text_layer):
        ours, theirs = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _block(t, ours, s, theirs, zeros)
        _linear(t, f"{ours}/attention/linear_0", s, f"{theirs}.cross_attn.query")
        _fused(t, f"{ours}/attention/linear_1", s, f"{theirs}.cross_attn", ("key", "value"), zeros)
        _linear(t, f"{ours}/attention/linear_2", s, f"{theirs}.cross_attn.out")
        _norm(t, f"{ours}/attention/layer_norm", s, f"{theirs}.cross_attn_ln")
    return {name: value.contiguous().numpy() for name, value in t.items()}


def _kept(name: str, layers: dict[str, int]) -> bool:
    """Whether variable `name` ("decoder/layer_3/ffn/...") is in a folder holding `layers` of each stack."""
    stack, _, rest = name.partition("/")
    layer = rest.split("/", 1)[0]
    if not (layer.startswith("layer_") and layer[6:].isdigit()):
        return True
    return int(layer[6:]) < layers[stack]


def _block(t: dict[str, Any], ours: str, s: dict[str, Any], theirs: str, zeros: Any) -> None:
    _fused(t, f"{ours}/self_attention/linear_0", s, f"{theirs}.attn", ("query", "key", "value"), zeros)
    _linear(t, f"{ours}/self_attention/linear_1", s, f"{theirs}.attn.out")
    _norm(t, f"{ours}/self_attention/layer_norm", s, f"{theirs}.attn_ln")
    _linear(t, f"{ours}/ffn/linear_0", s, f"{theirs}.mlp.0")
    _linear(t, f"{ours}/ffn/linear_1", s, f"{theirs}.mlp.2")
    _norm(t, f"{ours}/ffn/layer_norm", s, f"{theirs}.mlp_ln")


def _linear(t: dict[str, Any], ours: str, s: dict[str, Any], theirs: str) -> None:
    t[f"{ours}/weight"], t[f"{ours}/bias"] = s[f"{theirs}.weight"], s[f"{theirs}.bias"]


def _norm(t: dict[str, Any], ours: str, s: dict[str, Any], theirs: str) -> None:
    t[f"{ours}/gamma"], t[f"{ours}/beta"] = s[f"{theirs}.weight"], s[f"{theirs}.bias"]


def _fused(
    t: dict[str, Any], ours: str, s: dict[str, Any], theirs: str, names: tuple[str, ...], zeros: Any
) -> None:
    """Fuse separate projections into one; whisper's key projection has no bias, so it gets zeros."""
    import torch

    weights = [s[f"{theirs}.{name}.weight"] for name in names]
    biases = [
        s.get(f"{theirs}.{name}.bias", zeros(w.shape[0])) for name, w in zip(names, weights, strict=True)
    ]
    t[f"{ours}/weight"], t[f"{ours}/bias"] = torch.cat(weights), torch.cat(biases)


def _assign(spec: Any, name: str, value: Any) -> None:
    """Set the spec variable `name` ("decoder/layer_3/ffn/linear_0/weight") to `value`."""
    node = spec
    *path, last = name.split("/")
    for part in path:
        base, _, index = part.rpartition("_")
        if index.isdigit() and isinstance(getattr(node, base, None), list):
            node = getattr(node, base)[int(index)]
        else:
            node = getattr(node, part)
    setattr(node, last, value)


def _vocabulary_and_config(model: Whisper) -> tuple[list[str], dict[str, Any]]:
    """Whisper's tokens by name, and the config CTranslate2 reads (suppressed ids, languages, heads)."""
    from whisper.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
    encoding = tokenizer.encoding
    special = {rank: name for name, rank in encoding._special_tokens.items()}
    byte_names = _bytes_to_unicode()
    tokens = []
    for rank in range(model.dims.n_vocab):
        if rank in special:
            tokens.append(special[rank])
        else:
            tokens.append("".join(byte_names[b] for b in encoding.decode_single_token_bytes(rank)))
    heads = model.alignment_heads.indices().T.tolist()
    config = {
        # whisper's "-1" set, as DecodingTask builds it: symbols, and the task and start tokens
        "suppress_ids": sorted({*tokenizer.non_speech_tokens, *_task_tokens(tokenizer)}),
        "suppress_ids_begin": [tokenizer.encode(" ")[0], tokenizer.eot],
        "lang_ids": sorted(tokenizer.all_language_tokens),
        "alignment_heads": [[int(layer), int(head)] for layer, head in heads],
    }
    return tokens, config


def _task_tokens(tokenizer: Any) -> list[int]:
    names = ("transcribe", "translate", "sot", "sot_prev", "sot_lm", "no_speech")
    return [token for token in (getattr(tokenizer, name) for name in names) if token is not None]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table: how byte-level BPE tokens are written as strings."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
