"""pydantic's errors in words a user acts on: the key path, what is allowed, a likely fix."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# Whisper's own tables, copied so that loading a config does not import torch.
# tests/test_config.py asserts they equal whisper.available_models() / tokenizer.LANGUAGES.
from daemon.config.schema import (
    _ConfigModel,
    _did_you_mean,
)

# ---------------------------------------------------------------- error wording


def _describe(error: Any) -> str:
    loc = _key_path(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(error["loc"])
        return f"at '{loc}': unknown key{_did_you_mean(str(error['loc'][-1]), allowed)}"
    if kind == "missing":
        return f"at '{loc}': required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    if kind in ("literal_error", "enum"):
        message = f"got {error.get('input')!r}; {message}"
    return f"at '{loc}': {message}"


def _key_path(loc: tuple[Any, ...]) -> str:
    """Turn pydantic's ('folders', 0, 'langauge') into folders[0].langauge."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("bool", "str", "float", "int", "literal['auto']") or str(part).startswith("literal["):
            continue  # union branch names pydantic adds; the user never wrote them
        else:
            text += f".{part}" if text else str(part)
    return text


def _allowed_keys(loc: tuple[Any, ...]) -> tuple[str, ...]:
    parents = [p for p in loc[:-1] if not isinstance(p, int)]
    model: type[BaseModel] = _ConfigModel
    for name in parents:
        annotation = model.model_fields[name].annotation
        model = _model_in(annotation) or model
    return tuple(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None


# Country codes people write for languages (jp for Japanese, …); other spellings of a language
# ("eng", "German") are read by languages.from_any.




