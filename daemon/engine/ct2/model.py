"""`Ct2Whisper`: a CTranslate2 Whisper carrying what the transcription stage reads from an openai-whisper
model (dims, multilingual, device), with the encoder and language detection on it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from daemon.engine.ct2.convert import DIMS_FILE
from daemon.engine.kinds import CTRANSLATE2, is_ct2  # noqa: F401 - is_ct2 is re-exported here

if TYPE_CHECKING:
    import numpy as np
    import torch

# Windows through the encoder at once on a CPU. Its attention holds a 1500 x 1500 score matrix
# per head per window: 16 windows at once peaked at 2.2 GB, 4 at 1.2 GB (decoding 8 at once),
# at the same speed (32 clips, base, float32, one thread: 61.5 s and 58.5 s).
ENCODER_BATCH = 4


class Ct2Whisper:
    """A Whisper model loaded by CTranslate2, standing where a whisper.model.Whisper stands in the
    transcription stage. `ct2` decodes (generate, align, language detection); `encoder_ct2` encodes:
    the same instance, or the encoder half at another precision.

    `dims`, `is_multilingual` and `num_languages` are openai-whisper's, so whisper's
    own DecodingTask reads the decoding options (tokenizer, prompt, suppressed tokens)
    exactly as for the torch engine; `device` is a torch device for the log-mels.
    """

    # whisper's DecodingTask sets up a PyTorchInference that lists the decoder's blocks; it is never run
    decoder = SimpleNamespace(blocks=())
    subwatch_engine = CTRANSLATE2  # what engine.kinds.is_ct2 asks

    def __init__(
        self,
        folder: Path,
        device: str = "cpu",
        threads: int = 0,
        compute_type: str = "int8",
        encoder: tuple[Path, str] | None = None,
    ) -> None:
        """Load `folder` at `compute_type`; `encoder`, if given, is another folder and compute type that
        encodes instead (convert.write_ct2's halves: an int8 encoder beside a float32 decoder)."""
        import torch
        from whisper.model import ModelDimensions

        self.folder = folder
        self.dims = ModelDimensions(**json.loads((folder / DIMS_FILE).read_text(encoding="utf-8")))
        self.is_multilingual = self.dims.n_vocab >= 51865
        self.num_languages = self.dims.n_vocab - 51765 - int(self.is_multilingual)
        self.device = torch.device(device)
        self.ct2 = _load(folder, device, compute_type, threads)
        self.encoder_folder = folder if encoder is None else encoder[0]
        self.encoder_ct2 = self.ct2 if encoder is None else _load(encoder[0], device, encoder[1], threads)
        halves = [(folder, compute_type)] + ([encoder] if encoder is not None else [])
        self.weight_bytes = sum(
            (f / "model.bin").stat().st_size // (2 if kind == "int8" else 1) for f, kind in halves
        )

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Given (n, n_mels, frames) log-mels (3000 for 30 s), return the encoder's (n, frames / 2, n_state)
        output on the CPU."""
        import numpy as np
        import torch

        mel = mel.detach().cpu().float()
        size = ENCODER_BATCH if self.device.type == "cpu" else len(mel)
        parts = [
            np.array(self.encoder_ct2.encode(_storage(mel[i : i + size].numpy()), to_cpu=True))
            for i in range(0, len(mel), size)
        ]
        return torch.from_numpy(np.concatenate(parts))

    def language_probabilities(self, features: torch.Tensor) -> list[dict[str, float]]:
        """Given encoder outputs, return each window's probability for every language the model knows."""
        ranked = self.ct2.detect_language(_storage(features.numpy()))
        return [{token[2:-2]: float(p) for token, p in window} for window in ranked]


def _load(folder: Path, device: str, compute_type: str, threads: int) -> Any:
    import ctranslate2

    kind, _, index = device.partition(":")
    return ctranslate2.models.Whisper(
        str(folder),
        device=kind,
        device_index=int(index or 0),
        compute_type=compute_type,
        intra_threads=threads,
    )


def _storage(array: np.ndarray) -> Any:
    import ctranslate2
    import numpy as np

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array, dtype=np.float32))

