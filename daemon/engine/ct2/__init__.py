"""The CPU engine: Whisper decoded by CTranslate2 (int8), behind the torch engine's contract.

On a CPU, CTranslate2's int8 kernels encode and decode Whisper several times faster
than PyTorch's fp32 (bench/RESULTS.md). subwatch keeps everything around the model
its own: speech detection, window packing, coverage rounds, cross-file batches and
cue timing call the same functions whichever engine decodes.

- `convert`: an openai-whisper model written once as a CTranslate2 folder.
- `model`: `Ct2Whisper`, the loaded model, with the encoder and language detection.
- `decode`: `transcribe_chunks` with the torch engine's requests, guards and results.
"""

from daemon.engine.ct2.convert import write_ct2
from daemon.engine.ct2.decode import transcribe_chunks
from daemon.engine.ct2.model import Ct2Whisper, is_ct2

__all__ = ["Ct2Whisper", "is_ct2", "transcribe_chunks", "write_ct2"]
