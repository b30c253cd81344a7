"""The one language table: Whisper's languages with their ISO 639 codes and names, and the stages
that read language tags through it (media's stream choice, notifications, config hints)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from daemon import languages
from daemon.media import choose_audio_stream, probe
from tests.test_subtitles_files import whisper_tokenizer


def test_a_stream_tagged_with_the_terminology_code_is_picked_by_its_two_letter_code(tmp_path: Path) -> None:
    path = tmp_path / "dual.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error",
                    "-f", "lavfi", "-i", "sine=frequency=300:duration=2",
                    "-f", "lavfi", "-i", "sine=frequency=900:duration=2",
                    "-map", "0", "-map", "1", "-c:a", "aac",
                    "-metadata:s:a:0", "language=ces", "-disposition:a:0", "default",
                    "-metadata:s:a:1", "language=slk", "-disposition:a:1", "0", str(path)], check=True)
    info = probe(path)
    assert [(s.index, s.language, s.default) for s in info.audio_streams] == [
        (0, "ces", True), (1, "slk", False)]

    assert choose_audio_stream(info, "sk").index == 1  # `audio_language: sk`
    assert choose_audio_stream(info, "slo").index == 1  # the bibliographic code names it too
    assert choose_audio_stream(info, "cs").index == 0
    assert choose_audio_stream(info, "hu").index == 0  # no such stream: the default


def test_the_table_is_whispers() -> None:
    tokenizer = whisper_tokenizer()
    assert languages.WHISPER_CODES == set(tokenizer.LANGUAGES)
    for code, name in tokenizer.LANGUAGES.items():
        assert languages.LANGUAGES[code].names[0] == name, code
    for name, code in tokenizer.TO_LANGUAGE_CODE.items():  # Whisper's other names: "castilian", "burmese"
        assert name in languages.LANGUAGES[code].names, name


def test_every_language_has_its_three_letter_codes() -> None:
    for lang in languages.LANGUAGES.values():
        assert len(lang.iso2b) == len(lang.iso2t) == 3 and lang.iso2b.isalpha() and lang.iso2t.islower()
    bibliographic = {lang.iso2b for lang in languages.LANGUAGES.values()}
    terminology = {lang.iso2t for lang in languages.LANGUAGES.values()}
    # Where ISO 639-2 has two codes, B and T differ: German, French, Chinese, Czech, Slovak...
    assert {"ger", "fre", "chi", "cze", "slo", "dut", "gre"} <= bibliographic - terminology
    assert {"deu", "fra", "zho", "ces", "slk", "nld", "ell"} <= terminology - bibliographic


@pytest.mark.parametrize(
    ("tag", "code"),
    [
        ("sk", "sk"), ("slk", "sk"), ("slo", "sk"), ("Slovak", "sk"), ("SLK", "sk"),
        ("de", "de"), ("deu", "de"), ("ger", "de"), ("German", "de"),
        ("zh", "zh"), ("chi", "zh"), ("zho", "zh"), ("Mandarin", "zh"), ("zh-Hant", "zh"),
        ("yue", "yue"), ("Cantonese", "yue"),  # its own code only: "chi" is Chinese
        ("jw", "jw"), ("jv", "jw"), ("jav", "jw"),  # Whisper's old code for Javanese
        ("haw", "haw"), ("pt-BR", "pt"), ("en_US", "en"), (" fra ", "fr"), ("Haitian Creole", "ht"),
        ("nb", "no"), ("iw", "he"), ("fil", "tl"),
        ("und", None), ("klingon", None), ("", None), ("x-y", None),
    ],
)
def test_from_any_reads_every_spelling(tag: str, code: str | None) -> None:
    assert languages.from_any(tag) == code


def test_names() -> None:
    assert languages.name_of("en") == "English"
    assert languages.name_of("slk") == "Slovak"
    assert languages.name_of("ht") == "Haitian Creole"
    assert languages.name_of("yue") == "Cantonese"
    assert languages.name_of("xx") is None
