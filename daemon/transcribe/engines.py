"""Which engine decodes on a device, and a model loaded for it.

`engine:` in the config is `auto`, `torch` or `ctranslate2`:

- torch: openai-whisper's model, decoded by daemon.engine's batched decoder; on a GPU
  it keeps the card busy (fp16, continuous batching across files);
- ctranslate2: the same weights converted once into a CTranslate2 folder in
  `models_dir/converted/` and decoded by daemon.engine.ct2 with int8 weights, which on
  a CPU is about twice as fast as torch's fp32 at the same words (bench/RESULTS.md);
- auto: ctranslate2 on the CPU, torch on a GPU, as measured.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from daemon import models

if TYPE_CHECKING:
    from daemon.engine.ct2 import Ct2Whisper

Engine = Literal["auto", "torch", "ctranslate2"]
ENGINES: tuple[str, ...] = ("auto", "torch", "ctranslate2")
DEFAULT_ENGINE: Engine = "auto"

log = logging.getLogger("subwatch.transcribe")


def engine_for(engine: str, device: str) -> str:
    """Given the configured engine and a resolved device, return the engine that decodes there."""
    if engine == "auto":
        return "torch" if device.startswith("cuda") else "ctranslate2"
    return engine


def load_ct2(source: models.ModelSource, models_dir: Path, device: str) -> Ct2Whisper:
    """Given a resolved source, return it loaded by CTranslate2 on `device` (int8 on the CPU, fp16 on a GPU),
    converting it on first use."""
    import torch

    from daemon.engine.ct2 import Ct2Whisper

    folder = ct2_folder(source, models_dir)
    compute = "int8" if device == "cpu" else "float16"
    return Ct2Whisper(folder, device, threads=torch.get_num_threads(), compute_type=compute)


def ct2_folder(source: models.ModelSource, models_dir: Path) -> Path:
    """Return the CTranslate2 folder made from the source's weights, writing it if it is not there.

    It is named after the OpenAI-format checkpoint the source is read from (its
    path, size and time), so a replaced checkpoint is converted again.
    """
    from daemon.engine.ct2 import write_ct2
    from daemon.engine.ct2.convert import DIMS_FILE

    checkpoint = _checkpoint_file(source, models_dir)
    stat = checkpoint.stat()
    key = hashlib.sha256(f"{checkpoint.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    folder = models_dir / "converted" / f"{checkpoint.stem}-ctranslate2-{key[:16]}"
    if not (folder / DIMS_FILE).is_file():
        log.info("converting model %s for CTranslate2 into %s (once)", source.spec, folder)
        write_ct2(models.load(source, models_dir, "cpu"), folder)
    return folder


def _checkpoint_file(source: models.ModelSource, models_dir: Path) -> Path:
    """The OpenAI-format checkpoint of a source on disk: downloaded, or converted from a folder, if needed."""
    if source.kind in ("ctranslate2", "transformers"):
        return models.converted_checkpoint(source, models_dir)
    if source.path is None or not source.path.is_file():
        models.load(source, models_dir, "cpu")  # downloads a named model, or says why it cannot
    assert source.path is not None
    return source.path
