"""How text is written, as far as cutting it into lines goes: scripts, display widths, punctuation.

Lengths are display columns: a CJK or Hangul character takes two, combining
marks none. Scripts written without spaces between words are recognised by
their characters.
"""

from __future__ import annotations

import functools
import unicodedata

# Scripts written without spaces between words. CJK ideographs and kana can be
# broken between any two characters; the South-East Asian scripts cannot (a
# Thai word broken in two is a misspelling), so they are only cut by character
# when a run is too long for a line.
_CJK_RANGES = (
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x2FA1F),  # CJK extensions B to F, compatibility supplement
)
_CJK_PUNCTUATION_RANGES = ((0x3000, 0x303F), (0xFF00, 0xFF65))
_HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))
_SOUTHEAST_ASIAN_RANGES = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
)
_UNSPACED_LANGUAGES = frozenset({"ja", "zh", "yue", "th", "lo", "km", "my", "bo"})

# Thai and Lao vowels written before the consonant they follow in speech; a
# break right after one would strand it.
_LEADING_VOWELS = frozenset(chr(c) for c in (*range(0x0E40, 0x0E45), *range(0x0EC0, 0x0EC5)))

_SENTENCE_END = frozenset(".!?…。！？．؟")
# Words whose full stop marks an abbreviation, not a sentence's end (English
# titles mostly: "Mr. | Smith" must not be cut as two sentences). Compared
# casefolded. "etc." is left out: it ends sentences as often as not.
_ABBREVIATIONS = frozenset(
    "mr. mrs. ms. dr. prof. st. jr. sr. mt. no. vs. fig. gen. col. capt. lt. sgt. rev. gov. sen. rep.".split()
)
_CLAUSE_END = frozenset(",;:—–、，；：،؛")
_PHRASE_END = _SENTENCE_END | _CLAUSE_END
# Punctuation that belongs to the preceding character and must never start a line.
_CLOSING = frozenset(".,!?;:…)]}»”’。、，．！？；：」』）】〉》〕］｝،؛؟")
_OPENING = frozenset("([{«“‘¿¡「『（【〈《〔［｛")
_QUOTES_AND_BRACKETS = "\"'”’»)]}」』）】〉》〕］｝"

# English words a line or cue should not end on ("the | house"), and words a
# new line reads well starting with. Other languages simply get no hint.
_WEAK_ENDINGS = frozenset(
    "a an the to of and or but in on at for with from by as my your his her its our their this that"
    " these those i we you he she they is are was were be not if so".split()
)
_GOOD_STARTS = frozenset("and but or because which who when where while if so then to that".split())


def _in_ranges(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in ranges)


def _is_cjk(ch: str) -> bool:
    return _in_ranges(ch, _CJK_RANGES)


def _is_hangul(ch: str) -> bool:
    return _in_ranges(ch, _HANGUL_RANGES)


def _is_southeast_asian(ch: str) -> bool:
    return _in_ranges(ch, _SOUTHEAST_ASIAN_RANGES)


def _is_unspaced(ch: str, hangul_unspaced: bool) -> bool:
    """Given a character, return True if it belongs to text written without spaces."""
    return (
        _is_cjk(ch)
        or _is_southeast_asian(ch)
        or _in_ranges(ch, _CJK_PUNCTUATION_RANGES)
        or (hangul_unspaced and _is_hangul(ch))
    )


@functools.lru_cache(maxsize=4096)
def _char_width(ch: str) -> int:
    """Given a character, return the columns it takes: 0 for marks, 2 for wide East Asian, else 1."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(_char_width(ch) for ch in text)


def _graphemes(text: str) -> list[str]:
    """Given text, return its user-perceived characters (base plus marks, joined emoji)."""
    clusters: list[str] = []
    for ch in text:
        joins = clusters and (
            _char_width(ch) == 0 or clusters[-1].endswith("\u200d") or clusters[-1][-1] in _LEADING_VOWELS
        )
        if joins:
            clusters[-1] += ch
        else:
            clusters.append(ch)
    return clusters



def _is_abbreviation(word: str) -> bool:
    """Given a word ending in a full stop, return True if the stop marks an abbreviation.

    The rule is kept simple: a known title ("Mr.", "Dr."), a single letter
    (an initial: "J." in "J. R. R. Tolkien"), or a word with another full stop
    inside ("e.g.", "U.S.") is an abbreviation. "U.S." at a sentence's end is
    therefore not seen as one; a missed end only costs a better break.
    """
    word = word.lstrip(_QUOTES_AND_BRACKETS + "\"'“‘«([{¿¡")
    if not word.endswith("."):
        return False
    body = word.rstrip(".")
    return word.casefold() in _ABBREVIATIONS or (len(body) == 1 and body.isalpha()) or "." in body


def ends_sentence(text: str) -> bool:
    """Given a word's text, return True if it ends a sentence: its last mark (quotes and brackets
    aside) is sentence punctuation, and a full stop is not an abbreviation's ("Mr.")."""
    tail = text.rstrip(_QUOTES_AND_BRACKETS)
    return bool(tail) and tail[-1] in _SENTENCE_END and not _is_abbreviation(tail)
