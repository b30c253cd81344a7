"""Build Whisper checkpoints with random weights, in the real checkpoint format.

No Whisper weights can be downloaded on the machines that run the tests, so the
tests and benchmarks make a checkpoint through whisper's own `ModelDimensions`
and `Whisper` classes and save it the way OpenAI's files are laid out
(`{"dims": ..., "model_state_dict": ...}`). `whisper.load_model(path)` and
therefore subwatch's model loader read it through the same code path as a real
model; only the words it emits are nonsense.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from whisper.model import ModelDimensions, Whisper

# Shapes of the published models (n_vocab 51865 = multilingual, 51866 = large-v3/turbo
# with 128 mel bins and 100 languages), plus a very small one for the tests.
SHAPES: dict[str, ModelDimensions] = {
    "test": ModelDimensions(80, 1500, 64, 2, 2, 51865, 448, 64, 2, 2),
    "tiny": ModelDimensions(80, 1500, 384, 6, 4, 51865, 448, 384, 6, 4),
    "base": ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6),
    "small": ModelDimensions(80, 1500, 768, 12, 12, 51865, 448, 768, 12, 12),
    "medium": ModelDimensions(80, 1500, 1024, 16, 24, 51865, 448, 1024, 16, 24),
    "large-v3": ModelDimensions(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 32),
    "turbo": ModelDimensions(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 4),
}


def random_whisper(shape: str = "test", seed: int = 0) -> Whisper:
    """Given a shape name from SHAPES, return a Whisper model with seeded random weights."""
    dims = SHAPES[shape]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Whisper(dims)
        # Whisper's own init leaves several tensors at torch.empty garbage; give
        # every parameter a small, reproducible random value instead.
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0.0, 0.02)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def save_checkpoint(model: Whisper, path: Path) -> Path:
    """Write `model` as an OpenAI-format checkpoint at `path` and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": asdict(model.dims), "model_state_dict": model.state_dict()}, path)
    return path


def make_checkpoint(path: Path, shape: str = "test", seed: int = 0) -> Path:
    """Given a target path, write a random checkpoint of `shape` there and return it."""
    return save_checkpoint(random_whisper(shape, seed), path)
