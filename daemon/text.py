"""Text that came from file names, made safe to put on one line (logs, systemd status)."""

from __future__ import annotations

import unicodedata


def printable(text: str) -> str:
    """Given text from a filename or an error, return it on one line with control characters escaped.

    A newline in a filename would otherwise forge a second log line, or a
    "\\nMAINPID=1" assignment in a systemd notify message.
    """
    if text.isprintable():
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if char == "\n":
        return "\\n"
    if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char
