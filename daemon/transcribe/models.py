"""Where a model comes from: Whisper names, .pt checkpoints, faster-whisper and Hugging Face folders.

`model:` in the config names one of four sources, told apart here and nowhere else:

- a Whisper name (`base`, `turbo`, …): openai-whisper's checkpoint, downloaded once
  into `models_dir`;
- a `.pt` file: an OpenAI-format checkpoint (`{"dims", "model_state_dict"}`);
- a CTranslate2 folder (`model.bin` + `config.json`), as faster-whisper, subgen,
  Bazarr and WhisperX setups keep them (`Systran/faster-whisper-*`);
- a Hugging Face transformers folder (`config.json` + `model.safetensors`).

The two folder kinds are converted once into an OpenAI-format checkpoint in
`models_dir/converted/`, named by a hash of the source's content, so a changed
folder is converted again and an unchanged one is loaded like any checkpoint.
The tensors map one to one onto openai-whisper's: only the fused projections
(q/k/v, cross-attention k/v) are split. Word alignment heads travel with them.

torch is imported inside functions: `check-config` and `status` stay instant.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from whisper.model import Whisper

SourceKind = Literal["name", "checkpoint", "ctranslate2", "transformers"]

FASTER_WHISPER_FILES = "model.bin and config.json (a faster-whisper / CTranslate2 model)"
TRANSFORMERS_FILES = "config.json and model.safetensors (a Hugging Face transformers Whisper model)"
HEAD_DIM = 64  # every Whisper model's attention head width; used when a file does not say


class ModelNotFound(Exception):
    """The model named in the config is neither readable where it points nor available to download."""


@dataclass(frozen=True)
class ModelSource:
    """What `model:` points at. For a name, `path` is where its checkpoint is (or will be) cached."""

    spec: str
    kind: SourceKind
    path: Path | None


def is_model_path(spec: str) -> bool:
    """Return True if `spec` is a path (a .pt file or a folder), False if it is a Whisper model name."""
    return spec.endswith(".pt") or "/" in spec or os.sep in spec


def resolve(spec: str, models_dir: Path) -> ModelSource:
    """Given `model:` as configured, return which source it is.

    Raise ModelNotFound, naming the path and what was expected there, if a
    path does not exist or a folder holds neither kind of model.
    """
    if not is_model_path(spec):
        return ModelSource(spec, "name", _named_checkpoint(spec, models_dir))
    path = Path(spec).expanduser()
    if path.is_file():
        return ModelSource(spec, "checkpoint", path)
    if path.is_dir():
        kind = folder_kind(path)
        if kind is None:
            raise ModelNotFound(
                f"model folder {path} holds no Whisper model: expected {FASTER_WHISPER_FILES}, or "
                f"{TRANSFORMERS_FILES}; point `model:` at such a folder, a .pt checkpoint or a Whisper name"
            )
        return ModelSource(spec, kind, path)
    what = "file" if spec.endswith(".pt") else "folder"
    raise ModelNotFound(
        f"model {what} {path} does not exist; set `model:` to an existing .pt checkpoint, a faster-whisper "
        "or Hugging Face model folder, or a Whisper name (tiny, base, small, medium, large-v3, turbo)"
    )


def folder_kind(path: Path) -> SourceKind | None:
    """Return "ctranslate2" or "transformers" for a model folder, None if it is neither."""
    if not (path / "config.json").is_file():
        return None
    if (path / "model.bin").is_file() or (path / "model.bin.part1").is_file():
        return "ctranslate2"
    if _safetensors_files(path):
        return "transformers"
    return None


def _named_checkpoint(spec: str, models_dir: Path) -> Path | None:
    import whisper

    url = whisper._MODELS.get(spec)  # the names and URLs are whisper's own table
    return models_dir / os.path.basename(url) if url else None


def source_bytes(source: ModelSource) -> int:
    """Return the size on disk of the source's weights (0 when not there yet): for memory estimates."""
    if source.path is None:
        return 0
    files = [source.path] if source.kind in ("name", "checkpoint") else _weight_files(source)
    try:
        return sum(f.stat().st_size for f in files)
    except OSError:
        return 0


# ----------------------------------------------------------------------------- loading


def load(source: ModelSource, models_dir: Path, device: str) -> Whisper:
    """Given a resolved source, return the openai-whisper model on `device`.

    Folders are converted on first use (see the module docstring). Raise
    ModelNotFound with the path and what to do if the source cannot be read.
    """
    if source.kind == "name":
        return _load_named(source, models_dir, device)
    if source.kind == "checkpoint":
        return load_checkpoint(source.path, device)  # type: ignore[arg-type]
    return load_checkpoint(converted_checkpoint(source, models_dir), device)


def _load_named(source: ModelSource, models_dir: Path, device: str) -> Whisper:
    import whisper

    if source.spec not in whisper.available_models():
        raise ModelNotFound(
            f"unknown model {source.spec!r}; use one of {', '.join(whisper.available_models())}, a .pt "
            "checkpoint, or a faster-whisper or Hugging Face model folder"
        )
    models_dir.mkdir(parents=True, exist_ok=True)
    return whisper.load_model(source.spec, device=device, download_root=str(models_dir))


def load_checkpoint(path: Path, device: str) -> Whisper:
    """Given an OpenAI-format checkpoint, return its model on `device`, with any alignment heads it carries.

    Raise ModelNotFound naming the file if it is not a readable checkpoint.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**checkpoint["dims"])
        state = checkpoint["model_state_dict"]
    except (
        OSError, RuntimeError, KeyError, TypeError, EOFError, ValueError, struct.error, pickle.UnpicklingError
    ) as exc:
        # torch's unpickling text advises weights_only=False: wrong for a file that is no checkpoint at all
        detail = "not a PyTorch file of tensors" if isinstance(exc, pickle.UnpicklingError) else exc
        raise ModelNotFound(
            f"model file {path} is not a readable Whisper checkpoint ({type(exc).__name__}: {detail}); "
            "replace it with an OpenAI-format .pt file or point `model:` at a model folder"
        ) from None
    model = Whisper(dims)
    model.load_state_dict(state)
    if checkpoint.get("alignment_heads"):
        set_alignment_heads(model, checkpoint["alignment_heads"])
    return model.to(device)


def set_alignment_heads(model: Whisper, heads: list[list[int]]) -> None:
    """Mark the (layer, head) pairs whose cross-attention times words, as whisper's own table does."""
    import torch

    dims = model.dims
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)


# ----------------------------------------------------------------------------- conversion and its cache


def converted_checkpoint(source: ModelSource, models_dir: Path) -> Path:
    """Given a model folder, return the OpenAI-format checkpoint made from it, converting it if needed.

    The file is named by the hash of the folder's model files, so the same
    content converts once however many folders or paths hold it.
    """
    assert source.path is not None and source.kind in ("ctranslate2", "transformers")
    digest = content_hash(source)[:16]
    # The folder's name is only there for people reading the directory: any name with this hash will do.
    cached = sorted((models_dir / "converted").glob(f"*-{digest}.pt"))
    if cached:
        return cached[0]
    target = models_dir / "converted" / f"{source.path.name}-{digest}.pt"
    convert = _read_ctranslate2 if source.kind == "ctranslate2" else _read_transformers
    dims, state, heads = convert(source.path)
    _check_complete(dims, state, source)
    _save_atomically(target, {"dims": asdict(dims), "model_state_dict": state, "alignment_heads": heads})
    return target


def _check_complete(dims: Any, state: dict[str, torch.Tensor], source: ModelSource) -> None:
    """Raise ModelNotFound naming the folder if `state` lacks a tensor of the model `dims` describe,
    holds one more, or one of another shape: caught here, not as a RuntimeError when the cached file loads."""
    import torch
    from whisper.model import AudioEncoder, TextDecoder

    with torch.device("meta"):  # shapes only: nothing is allocated
        encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                               dims.n_audio_layer)
        decoder = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head,
                              dims.n_text_layer)
    expected = {
        **{f"encoder.{name}": tensor.shape for name, tensor in encoder.state_dict().items()},
        **{f"decoder.{name}": tensor.shape for name, tensor in decoder.state_dict().items()},
    }
    files = FASTER_WHISPER_FILES if source.kind == "ctranslate2" else TRANSFORMERS_FILES
    missing = [name for name in expected if name not in state]
    if missing:
        raise ModelNotFound(
            f"the model in {source.path} is not a complete Whisper model: it lacks {missing[0]}"
            f"{f' and {len(missing) - 1} more tensors' if len(missing) > 1 else ''}; expected {files}"
        )
    extra = [name for name in state if name not in expected]
    if extra:
        raise ModelNotFound(
            f"the model in {source.path} holds {extra[0]}, which a Whisper model of its dimensions has no "
            f"place for: it is not a model subwatch can read (expected {files})"
        )
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise ModelNotFound(
                f"the model in {source.path} is inconsistent: {name} has shape {tuple(state[name].shape)} "
                f"where its dimensions call for {tuple(shape)}; download or copy the model folder again"
            )


def content_hash(source: ModelSource) -> str:
    """Return the sha256 of the source folder's weight and config files, in a fixed order."""
    digest = hashlib.sha256()
    for path in [*_weight_files(source), *_config_files(source.path)]:  # type: ignore[arg-type]
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def _weight_files(source: ModelSource) -> list[Path]:
    folder = source.path
    assert folder is not None
    if source.kind == "transformers":
        return _safetensors_files(folder)
    if (folder / "model.bin").is_file():
        return [folder / "model.bin"]
    parts, n = [], 1
    while (folder / f"model.bin.part{n}").is_file():
        parts.append(folder / f"model.bin.part{n}")
        n += 1
    return parts


def _config_files(folder: Path) -> list[Path]:
    return [folder / name for name in ("config.json", "generation_config.json") if (folder / name).is_file()]


def _safetensors_files(folder: Path) -> list[Path]:
    """The weight files transformers itself would read: model.safetensors, else the shards its index
    lists (those present: a missing one shows as missing tensors), else every .safetensors file.

    Other .safetensors beside model.safetensors are other copies (model.fp32-00001-of-00002.safetensors,
    written with variant="fp32") or other models (adapter_model.safetensors): not read, not hashed.
    """
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    try:
        index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return sorted(folder.glob("*.safetensors"))
    return [folder / name for name in shards if (folder / name).is_file()]


def _save_atomically(target: Path, checkpoint: dict[str, Any]) -> None:
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        torch.save(checkpoint, temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


Converted = tuple[Any, dict[str, "torch.Tensor"], list[list[int]]]


# ----------------------------------------------------------------------------- CTranslate2 (faster-whisper)

# CTranslate2's DataType enum, as model.bin stores it.
_CT2_DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}


def _read_ctranslate2(folder: Path) -> Converted:
    """Given a CTranslate2 Whisper folder, return (dims, openai-whisper state dict, alignment heads).

    model.bin is a versioned header, then named tensors (shape, dtype, bytes),
    then aliases; a model split in parts (`model.bin.part1`, `.part2`, …) is
    read as one stream. Raise ModelNotFound naming the folder if it is
    truncated, not a Whisper model, or quantized to int8.
    """
    source = ModelSource(str(folder), "ctranslate2", folder)
    files = _weight_files(source)
    try:
        with _joined(files) as stream:
            tensors = _ct2_tensors(stream, folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelNotFound(f"cannot read the faster-whisper model in {folder}: {exc}") from None
    if any(name.endswith("weight_scale") for name in tensors):
        raise ModelNotFound(
            f"the faster-whisper model in {folder} is quantized (int8); subwatch needs its float16 or "
            "float32 conversion (ct2-transformers-converter --quantization float16)"
        )
    dims, state = _ct2_to_whisper(tensors, folder)
    return dims, state, config.get("alignment_heads") or []


def _ct2_tensors(stream: IO[bytes], folder: Path) -> dict[str, torch.Tensor]:
    import torch

    def read(n: int) -> bytes:
        data = stream.read(n)
        if len(data) != n:
            raise ModelNotFound(
                f"model.bin in {folder} is truncated (it ends inside its header or a tensor); "
                "download or copy the model folder again"
            )
        return data

    def number(fmt: str) -> int:
        return struct.unpack("<" + fmt, read(struct.calcsize(fmt)))[0]

    def text() -> str:
        return read(number("H"))[:-1].decode("utf-8")

    version = number("I")
    name = text() if version >= 2 else ""
    if name != "WhisperSpec":
        raise ModelNotFound(f"model.bin in {folder} is a CTranslate2 {name or 'model'}, not a Whisper model")
    number("I")  # the spec's revision: the tensor names below are the same in all of them
    tensors: dict[str, torch.Tensor] = {}
    for _ in range(number("I")):
        key = text()
        shape = [number("I") for _ in range(number("B"))]
        dtype = _CT2_DTYPES.get(number("B"))
        if dtype is None:
            raise ModelNotFound(f"model.bin in {folder} stores {key} in a type subwatch does not know")
        raw = read(number("I"))
        tensors[key] = torch.frombuffer(bytearray(raw), dtype=getattr(torch, dtype)).reshape(shape)
    for _ in range(number("I")):
        alias, target = text(), text()
        tensors[alias] = tensors[target]
    return tensors


class _joined(io.RawIOBase):
    """The files of a split model.bin, read as one stream (a context manager closing them all)."""

    def __init__(self, files: list[Path]) -> None:
        self.files: Iterator[Path] = iter(files)
        self.current: IO[bytes] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self.current is None:
                path = next(self.files, None)
                if path is None:
                    return 0
                self.current = open(path, "rb")  # noqa: SIM115 - closed when exhausted or on close()
            n = self.current.readinto(buffer)
            if n:
                return n
            self.current.close()
            self.current = None

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        chunks, wanted = [], size
        while wanted:
            buffer = bytearray(wanted if wanted > 0 else 1 << 20)
            n = self.readinto(buffer)
            if not n:
                break
            chunks.append(bytes(buffer[:n]))
            wanted = wanted - n if wanted > 0 else wanted
        return b"".join(chunks)

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
        super().close()


def _ct2_to_whisper(t: dict[str, torch.Tensor], folder: Path) -> tuple[Any, dict[str, torch.Tensor]]:

    try:
        dims = _ct2_dims(t)
        state: dict[str, torch.Tensor] = {
            "encoder.conv1.weight": t["encoder/conv1/weight"],
            "encoder.conv1.bias": t["encoder/conv1/bias"],
            "encoder.conv2.weight": t["encoder/conv2/weight"],
            "encoder.conv2.bias": t["encoder/conv2/bias"],
            "encoder.positional_embedding": t["encoder/position_encodings/encodings"],
            "decoder.token_embedding.weight": t["decoder/embeddings/weight"],
            "decoder.positional_embedding": t["decoder/position_encodings/encodings"],
        }
        _copy_norm(state, "encoder.ln_post", t, "encoder/layer_norm")
        _copy_norm(state, "decoder.ln", t, "decoder/layer_norm")
        for i in range(dims.n_audio_layer):
            ours, theirs = f"encoder.blocks.{i}", f"encoder/layer_{i}"
            _copy_block(state, ours, t, theirs)
        for i in range(dims.n_text_layer):
            ours, theirs = f"decoder.blocks.{i}", f"decoder/layer_{i}"
            _copy_block(state, ours, t, theirs)
            _copy_linear(state, f"{ours}.cross_attn.query", t, f"{theirs}/attention/linear_0")
            _copy_fused(state, f"{ours}.cross_attn", ("key", "value"), t, f"{theirs}/attention/linear_1")
            _copy_linear(state, f"{ours}.cross_attn.out", t, f"{theirs}/attention/linear_2")
            _copy_norm(state, f"{ours}.cross_attn_ln", t, f"{theirs}/attention/layer_norm")
    except KeyError as exc:
        raise ModelNotFound(
            f"model.bin in {folder} lacks the tensor {exc.args[0]}: it is not a complete Whisper model"
        ) from None
    return dims, state


def _ct2_dims(t: dict[str, torch.Tensor]) -> Any:
    from whisper.model import ModelDimensions

    def layers(prefix: str) -> int:
        return len({key.split("/")[1] for key in t if re.match(prefix + r"/layer_[0-9]+/", key)})

    def heads(prefix: str, width: int) -> int:
        stored = t.get(f"{prefix}/num_heads")
        return int(stored.item()) if stored is not None else width // HEAD_DIM

    audio_state = t["encoder/conv1/weight"].shape[0]
    text_state = t["decoder/embeddings/weight"].shape[1]
    return ModelDimensions(
        n_mels=t["encoder/conv1/weight"].shape[1],
        n_audio_ctx=t["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=audio_state,
        n_audio_head=heads("encoder", audio_state),
        n_audio_layer=layers("encoder"),
        n_vocab=t["decoder/embeddings/weight"].shape[0],
        n_text_ctx=t["decoder/position_encodings/encodings"].shape[0],
        n_text_state=text_state,
        n_text_head=heads("decoder", text_state),
        n_text_layer=layers("decoder"),
    )


def _copy_block(state: dict[str, Any], ours: str, t: dict[str, Any], theirs: str) -> None:
    """The parts encoder and decoder blocks share: self-attention (q|k|v fused there), MLP, norms."""
    _copy_fused(state, f"{ours}.attn", ("query", "key", "value"), t, f"{theirs}/self_attention/linear_0")
    _copy_linear(state, f"{ours}.attn.out", t, f"{theirs}/self_attention/linear_1")
    _copy_norm(state, f"{ours}.attn_ln", t, f"{theirs}/self_attention/layer_norm")
    _copy_linear(state, f"{ours}.mlp.0", t, f"{theirs}/ffn/linear_0")
    _copy_linear(state, f"{ours}.mlp.2", t, f"{theirs}/ffn/linear_1")
    _copy_norm(state, f"{ours}.mlp_ln", t, f"{theirs}/ffn/layer_norm")


def _copy_linear(state: dict[str, Any], ours: str, t: dict[str, Any], theirs: str) -> None:
    state[f"{ours}.weight"] = t[f"{theirs}/weight"]
    state[f"{ours}.bias"] = t[f"{theirs}/bias"]


def _copy_norm(state: dict[str, Any], ours: str, t: dict[str, Any], theirs: str) -> None:
    state[f"{ours}.weight"] = t[f"{theirs}/gamma"]
    state[f"{ours}.bias"] = t[f"{theirs}/beta"]


def _copy_fused(
    state: dict[str, Any], ours: str, names: tuple[str, ...], t: dict[str, Any], theirs: str
) -> None:
    """Split a fused projection (q|k|v, or k|v) into whisper's separate ones; `key` has no bias."""
    weights = t[f"{theirs}/weight"].chunk(len(names))
    biases = t[f"{theirs}/bias"].chunk(len(names))
    for name, weight, bias in zip(names, weights, biases, strict=True):
        state[f"{ours}.{name}.weight"] = weight.contiguous()
        if name != "key":
            state[f"{ours}.{name}.bias"] = bias.contiguous()


# ----------------------------------------------------------------------------- Hugging Face transformers

_HF_LAYER = {  # transformers' names inside one block → whisper's
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
_HF_TOP = {
    "encoder.conv1": "encoder.conv1",
    "encoder.conv2": "encoder.conv2",
    "encoder.embed_positions": "encoder.positional_embedding",
    "encoder.layer_norm": "encoder.ln_post",
    "decoder.embed_tokens": "decoder.token_embedding",
    "decoder.embed_positions": "decoder.positional_embedding",
    "decoder.layer_norm": "decoder.ln",
}


def _read_transformers(folder: Path) -> Converted:
    """Given a transformers Whisper folder, return (dims, openai-whisper state dict, alignment heads).

    Raise ModelNotFound naming the folder if its config or weights cannot be
    read or do not describe a Whisper model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from whisper.model import ModelDimensions

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tensors: dict[str, Any] = {}
        for path in _safetensors_files(folder):
            tensors.update(load_file(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as exc:
        raise ModelNotFound(f"cannot read the Hugging Face model in {folder}: {exc}") from None
    if config.get("model_type") != "whisper":
        raise ModelNotFound(
            f"{folder}/config.json describes a {config.get('model_type')!r} model, not Whisper"
        )
    state: dict[str, Any] = {}
    for key, tensor in tensors.items():
        name = _hf_name(key.removeprefix("model."))
        if name is not None:
            # whisper keeps the positional embeddings as plain tensors, not Embedding weights
            state[name.removesuffix(".weight") if "positional_embedding" in name else name] = tensor
    try:
        dims = ModelDimensions(
            n_mels=config["num_mel_bins"],
            n_audio_ctx=config["max_source_positions"],
            n_audio_state=config["d_model"],
            n_audio_head=config["encoder_attention_heads"],
            n_audio_layer=config["encoder_layers"],
            n_vocab=config["vocab_size"],
            n_text_ctx=config["max_target_positions"],
            n_text_state=config["d_model"],
            n_text_head=config["decoder_attention_heads"],
            n_text_layer=config["decoder_layers"],
        )
    except KeyError as exc:
        raise ModelNotFound(
            f"{folder}/config.json lacks {exc.args[0]!r}: it is not a Whisper model's config"
        ) from None
    return dims, state, _hf_alignment_heads(folder)


def _hf_name(key: str) -> str | None:
    """Map one transformers tensor name onto whisper's; None for ones whisper has no use for (proj_out)."""
    parts = key.split(".")
    if len(parts) > 3 and parts[1] == "layers":
        inner = ".".join(parts[3:-1])
        mapped = _HF_LAYER.get(inner)
        return f"{parts[0]}.blocks.{parts[2]}.{mapped}.{parts[-1]}" if mapped else None
    mapped = _HF_TOP.get(".".join(parts[:-1]))
    return f"{mapped}.{parts[-1]}" if mapped else None


def _hf_alignment_heads(folder: Path) -> list[list[int]]:
    """transformers keeps the alignment heads in generation_config.json; none there is whisper's default."""
    try:
        generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    return [list(pair) for pair in generation.get("alignment_heads") or []]

