"""Text shared by the log, the notifications and the CLI: names made safe for one line, lengths, speeds."""

from __future__ import annotations

import unicodedata

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Marks that reorder the text shown after them: a name holding U+202E could make a
# log line or a notification read differently from what it says.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """Given text from a filename or an error, return it on one line with control characters escaped.

    A newline in a filename would otherwise forge a second log line, or a
    "\\nMAINPID=1" assignment in a systemd notify message. Bytes that were not
    valid UTF-8 (Python keeps them as lone surrogates) become \\xNN.
    """
    if text.isprintable():
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") or char in _BIDI_CONTROLS:
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def format_speed(media_duration: float, elapsed: float) -> str | None:
    """Given media length and job time in seconds, return the speed like "164x" or "0.3x"
    (never "0x": a big model on a CPU runs slower than realtime), or None if unknown."""
    if elapsed <= 0 or media_duration <= 0:
        return None
    factor = media_duration / elapsed
    return f"{factor:.0f}x" if factor >= 9.95 else f"{factor:.1f}x"


def format_duration(seconds: float) -> str:
    """Given a length of media in seconds, return it as H:MM:SS, e.g. "0:00:06" or "1:52:10".

    One form everywhere (journal, notifications, command line, error messages), so a
    length reads the same wherever it is shown and greps alike.
    """
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
