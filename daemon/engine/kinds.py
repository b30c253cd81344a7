"""Which engine a loaded model belongs to, asked of the model itself.

A CTranslate2 model carries `subwatch_engine = "ctranslate2"` (engine.ct2.Ct2Whisper); openai-whisper's
carries nothing. The encoder and the scheduler ask here, so neither imports the CTranslate2
engine, which imports the encoder's log-mel.
"""

from __future__ import annotations

from typing import Any

CTRANSLATE2 = "ctranslate2"


def is_ct2(model: Any) -> bool:
    """True for a model CTranslate2 decodes (engine.ct2), False for openai-whisper's."""
    return getattr(model, "subwatch_engine", None) == CTRANSLATE2
