"""Renderers: cues as SubRip, WebVTT, plain text, and JSON with the transcript's words."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from daemon.datatypes import Cue, Transcript
from daemon.subtitles.cues import _ms
from daemon.subtitles.script import _is_unspaced


def _timestamp(seconds: float, separator: str) -> str:
    """Given seconds, return HH:MM:SS<sep>mmm, rounded to the millisecond (never 1000 ms)."""
    total = max(0, _ms(seconds))
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def render_srt(cues: Sequence[Cue]) -> str:
    """Given cues, return them as SubRip text: numbered from 1, a blank line between cues."""
    blocks = [
        f"{n}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n" + "\n".join(c.lines) + "\n"
        for n, c in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(cues: Sequence[Cue]) -> str:
    """Given cues, return them as a WebVTT file with the text escaped."""
    blocks = [
        f"\n{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n"
        + "\n".join(_vtt_escape(line) for line in c.lines)
        + "\n"
        for c in cues
    ]
    return "WEBVTT\n" + "".join(blocks)


def _cue_text(cue: Cue) -> str:
    """Given a cue, return its lines as one line, with no space added inside unspaced text."""
    text = cue.lines[0] if cue.lines else ""
    for line in cue.lines[1:]:
        glue = "" if _is_unspaced(text[-1], True) and _is_unspaced(line[0], True) else " "
        text += glue + line
    return text


def render_txt(cues: Sequence[Cue]) -> str:
    """Given cues, return plain text: one cue per line, no times."""
    return "".join(_cue_text(c) + "\n" for c in cues)


def _seconds(value: float) -> float:
    return round(value, 3)


def render_json(transcript: Transcript, cues: Sequence[Cue]) -> str:
    """Given a transcript and its cues, return JSON with the language, segments, words and cues."""
    document = {
        "language": transcript.language,
        "language_probability": transcript.language_probability,
        "duration": _seconds(transcript.duration),
        "segments": [
            {
                "start": _seconds(s.start),
                "end": _seconds(s.end),
                "text": s.text,
                "words": [
                    {"start": _seconds(w.start), "end": _seconds(w.end), "text": w.text,
                     "probability": round(w.probability, 4)}
                    for w in s.words
                ],
            }
            for s in transcript.segments
        ],
        "cues": [{"start": _seconds(c.start), "end": _seconds(c.end), "lines": list(c.lines)} for c in cues],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


Renderer = Callable[[Sequence[Cue], Transcript], str]


def _srt_renderer(cues: Sequence[Cue], transcript: Transcript) -> str:
    return render_srt(cues)


def _vtt_renderer(cues: Sequence[Cue], transcript: Transcript) -> str:
    return render_vtt(cues)


def _txt_renderer(cues: Sequence[Cue], transcript: Transcript) -> str:
    return render_txt(cues)


def _json_renderer(cues: Sequence[Cue], transcript: Transcript) -> str:
    return render_json(transcript, cues)


# Output format name (also the file extension) -> renderer taking (cues, transcript).
RENDERERS: Mapping[str, Renderer] = MappingProxyType(
    {"srt": _srt_renderer, "vtt": _vtt_renderer, "txt": _txt_renderer, "json": _json_renderer}
)

