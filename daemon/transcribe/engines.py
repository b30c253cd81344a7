"""Which engine decodes on a device, and a model loaded for it.

`engine:` in the config is `auto`, `torch`, `ctranslate2`, `ctranslate2-int8-encoder` or
`ctranslate2-int8`:

- torch: openai-whisper's model, decoded by daemon.engine's batched decoder; on a GPU
  it keeps the card busy (fp16, continuous batching across files);
- ctranslate2: the same weights converted once into a CTranslate2 folder in
  `models_dir/converted/` and decoded by daemon.engine.ct2, float32 on a CPU (the same
  tokens as torch, several times faster there) and float16 on a GPU;
- ctranslate2-int8-encoder: on a CPU, the encoder in int8 and the decoder in float32, each
  loaded from its half of the model (two folders converted once): the same words within a
  point in every language (int8 in the decoder too put text over crowd murmur), about 15 %
  faster than float32, but some 300 MB more at its peak with base (bench/RESULTS.md, issue
  #22); float16 on a GPU;
- ctranslate2-int8: int8 weights throughout, faster again on a CPU but not word for word
  (measured with real base: better in some languages, a point or three worse in others);
- auto: ctranslate2 on the CPU, torch on a GPU, as measured (bench/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from daemon.transcribe import models

if TYPE_CHECKING:
    from daemon.engine.ct2 import Ct2Whisper
    from daemon.engine.ct2.convert import Part

Engine = Literal["auto", "torch", "ctranslate2", "ctranslate2-int8-encoder", "ctranslate2-int8"]
ENGINES: tuple[str, ...] = ("auto", "torch", "ctranslate2", "ctranslate2-int8-encoder", "ctranslate2-int8")
SPLIT = "ctranslate2-int8-encoder"
DEFAULT_ENGINE: Engine = "auto"

log = logging.getLogger("subwatch.transcribe")


def engine_for(engine: str, device: str) -> str:
    """Given the configured engine and a resolved device, return the engine that decodes there."""
    if engine == "auto":
        return "torch" if device.startswith("cuda") else "ctranslate2"
    return engine


def load_ct2(source: models.ModelSource, models_dir: Path, device: str, engine: str) -> Ct2Whisper:
    """Given a resolved source and a CTranslate2 engine, return the model loaded on `device`, converting
    it on first use: float32, the int8 encoder beside the float32 decoder, or int8 throughout on the CPU;
    float16 on a GPU unless int8 is asked."""
    import torch

    from daemon.engine.ct2 import Ct2Whisper

    threads = torch.get_num_threads()
    if engine == SPLIT and device == "cpu":
        encoder, decoder = ct2_folders(source, models_dir, ("encoder", "decoder"))
        return Ct2Whisper(decoder, device, threads, "float32", (encoder, "int8"))
    compute = "int8" if engine == "ctranslate2-int8" else "float32" if device == "cpu" else "float16"
    return Ct2Whisper(ct2_folder(source, models_dir), device, threads=threads, compute_type=compute)


def ct2_folder(source: models.ModelSource, models_dir: Path) -> Path:
    """Return the CTranslate2 folder made from the source's weights, writing it if it is not there."""
    return ct2_folders(source, models_dir, ("whole",))[0]


def ct2_folders(source: models.ModelSource, models_dir: Path, parts: tuple[Part, ...]) -> list[Path]:
    """Return the CTranslate2 folders made from the source's weights, one per part (the whole model or
    one half), writing those that are not there from one load of the model.

    They are named after the OpenAI-format checkpoint the source is read from (its
    path, size and time), so a replaced checkpoint is converted again.
    """
    from daemon.engine.ct2 import write_ct2
    from daemon.engine.ct2.convert import DIMS_FILE

    checkpoint = _checkpoint_file(source, models_dir)
    stat = checkpoint.stat()
    key = hashlib.sha256(f"{checkpoint.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    halves = ["" if part == "whole" else f"{part}-" for part in parts]
    folders = [models_dir / "converted" / f"{checkpoint.stem}-ctranslate2-{h}{key[:16]}" for h in halves]
    missing = [(f, p) for f, p in zip(folders, parts, strict=True) if not (f / DIMS_FILE).is_file()]
    if missing:
        model = models.load(source, models_dir, "cpu")  # once for every part still to write
        for folder, part in missing:
            log.info("converting model %s for CTranslate2 into %s (once)", source.spec, folder)
            write_ct2(model, folder, part)
    return folders


def _checkpoint_file(source: models.ModelSource, models_dir: Path) -> Path:
    """The OpenAI-format checkpoint of a source on disk: downloaded, or converted from a folder, if needed."""
    if source.kind in ("ctranslate2", "transformers"):
        return models.converted_checkpoint(source, models_dir)
    if source.path is None or not source.path.is_file():
        models.load(source, models_dir, "cpu")  # downloads a named model, or says why it cannot
    assert source.path is not None
    return source.path
