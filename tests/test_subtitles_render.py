"""Renderers: output read back by independent parsers (srt, webvtt-py) and checked byte for byte."""

from __future__ import annotations

import html
import json
import re

import pytest
import srt
import webvtt

from daemon.datatypes import Cue, Segment, Transcript, Word
from daemon.subtitles import RENDERERS, CueRules, build_cues, render_json, render_srt, render_txt, render_vtt


def vtt_seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def sample_transcript() -> Transcript:
    words = (
        Word(0.5, 0.9, " Tom", 0.91),
        Word(1.0, 1.2, " &", 0.5),
        Word(1.3, 1.8, " Jerry", 0.87654321),
        Word(1.9, 2.4, " <3.", 0.7),
    )
    segments = (
        Segment(0.5, 2.4, " Tom & Jerry <3.", words),
        Segment(4.0, 6.0, " مرحبا بكم في برنامجنا اليوم"),
        Segment(8.0, 9.0, "今日はいい天気ですね。"),
    )
    return Transcript(segments=segments, language="en", language_probability=0.93, duration=12.0)


def sample_cues() -> list[Cue]:
    return build_cues(sample_transcript().segments, CueRules(), media_duration=12.0)


def test_srt_exact_format() -> None:
    cues = [Cue(1.0, 2.5, ("Hello there.",)), Cue(3.0, 4.25, ("Two", "lines"))]

    assert render_srt(cues) == (
        "1\n00:00:01,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n00:00:03,000 --> 00:00:04,250\nTwo\nlines\n"
    )


def test_srt_is_read_back_by_the_srt_package() -> None:
    cues = sample_cues()
    parsed = list(srt.parse(render_srt(cues)))

    assert [p.index for p in parsed] == list(range(1, len(cues) + 1))
    for cue, back in zip(cues, parsed, strict=True):
        assert back.start.total_seconds() == pytest.approx(cue.start, abs=1e-6)
        assert back.end.total_seconds() == pytest.approx(cue.end, abs=1e-6)
        assert back.content == "\n".join(cue.lines)
    assert parsed[0].content == "Tom & Jerry <3."  # SRT text is not escaped
    assert any("مرحبا" in p.content for p in parsed) and any("天気" in p.content for p in parsed)


def test_vtt_exact_format_and_escaping() -> None:
    cues = [Cue(1.0, 2.5, ("Tom & Jerry <3", "a -> b")), Cue(61.0, 3723.5, ("x",))]

    assert render_vtt(cues) == (
        "WEBVTT\n\n"
        "00:00:01.000 --> 00:00:02.500\nTom &amp; Jerry &lt;3\na -&gt; b\n\n"
        "00:01:01.000 --> 01:02:03.500\nx\n"
    )


def test_vtt_is_read_back_by_webvtt_py() -> None:
    cues = sample_cues()
    parsed = list(webvtt.from_string(render_vtt(cues)))

    assert len(parsed) == len(cues)
    for cue, back in zip(cues, parsed, strict=True):
        assert vtt_seconds(back.start) == pytest.approx(cue.start, abs=1e-6)
        assert vtt_seconds(back.end) == pytest.approx(cue.end, abs=1e-6)
        assert html.unescape(back.text) == "\n".join(cue.lines)


@pytest.mark.parametrize(
    ("seconds", "srt_stamp"),
    [
        (0.0, "00:00:00,000"),
        (0.0004, "00:00:00,000"),
        (0.9996, "00:00:01,000"),  # never ",1000"
        (59.9999, "00:01:00,000"),
        (3599.9996, "01:00:00,000"),
        (7322.1234, "02:02:02,123"),
        (-0.2, "00:00:00,000"),
    ],
)
def test_timestamps_round_to_the_millisecond(seconds: float, srt_stamp: str) -> None:
    text = render_srt([Cue(seconds, seconds + 1.0, ("x",))])

    assert text.splitlines()[1].startswith(srt_stamp + " --> ")
    assert render_vtt([Cue(seconds, seconds + 1.0, ("x",))]).splitlines()[2].startswith(
        srt_stamp.replace(",", ".")
    )
    assert not re.search(r"[,.]\d{4}", text)


def test_empty_renders() -> None:
    assert render_srt([]) == ""
    assert render_vtt([]) == "WEBVTT\n"
    assert render_txt([]) == ""
    assert list(webvtt.from_string(render_vtt([]))) == []


def test_txt_is_one_line_per_cue_without_spaces_added_to_cjk() -> None:
    cues = [Cue(0.0, 1.0, ("Hello there,", "my friend.")), Cue(2.0, 3.0, ("今日はいい", "天気ですね。"))]

    assert render_txt(cues) == "Hello there, my friend.\n今日はいい天気ですね。\n"


def test_json_has_language_segments_words_and_cues() -> None:
    transcript = sample_transcript()
    cues = sample_cues()
    document = json.loads(render_json(transcript, cues))

    assert document["language"] == "en" and document["language_probability"] == 0.93
    assert document["duration"] == 12.0
    assert [s["text"] for s in document["segments"]] == [s.text for s in transcript.segments]
    first = document["segments"][0]
    assert (first["start"], first["end"]) == (0.5, 2.4)
    assert first["words"][2] == {"start": 1.3, "end": 1.8, "text": " Jerry", "probability": 0.8765}
    assert document["segments"][1]["words"] == []
    assert [(c["start"], c["end"], tuple(c["lines"])) for c in document["cues"]] == [
        (c.start, c.end, c.lines) for c in cues
    ]
    assert "مرحبا" in render_json(transcript, cues)  # UTF-8, not \\u escapes


def test_renderers_table_covers_every_format() -> None:
    transcript = sample_transcript()
    cues = sample_cues()

    assert set(RENDERERS) == {"srt", "vtt", "txt", "json"}
    assert RENDERERS["srt"](cues, transcript) == render_srt(cues)
    assert RENDERERS["vtt"](cues, transcript) == render_vtt(cues)
    assert RENDERERS["txt"](cues, transcript) == render_txt(cues)
    assert RENDERERS["json"](cues, transcript) == render_json(transcript, cues)
