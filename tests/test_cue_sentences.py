"""build_cues keeps sentences apart across pauses and sets short exchanges as dashed dialogue (issue #20)."""

from __future__ import annotations

import random

import pytest

from daemon.datatypes import Cue, Segment, Word
from daemon.subtitles import CueRules, build_cues

RULES = CueRules()
DASH = "- "
PAUSE = 0.3  # the sentence pause: a sentence end and this much silence always end a cue


def segment(words: list[tuple[float, float, str]]) -> Segment:
    """Given (start, end, text) words, return a segment holding them, each text after a space."""
    timed = tuple(Word(start, end, " " + text) for start, end, text in words)
    return Segment(timed[0].start, timed[-1].end, "".join(w.text for w in timed), timed)


def said(text: str, start: float, word: float = 0.3, gap: float = 0.05) -> list[tuple[float, float, str]]:
    """Given text, return its words as (start, end, text), each `word` s long with `gap` s between."""
    result, t = [], start
    for piece in text.split():
        result.append((round(t, 3), round(t + word, 3), piece))
        t += word + gap
    return result


def cue_texts(cues: list[Cue]) -> list[str]:
    """Given cues, return each cue's words as one line, dialogue dashes removed."""
    return [" ".join(line.removeprefix(DASH) for line in cue.lines) for cue in cues]


def cue_word_lists(cues: list[Cue]) -> list[list[str]]:
    return [text.split() for text in cue_texts(cues)]


PREACHER = "And so the old preacher stood up in front of the whole village and read to them from his gospel."
DETECTIVE = "The detective noticed a second set of footprints in the snow."


def test_a_sentence_end_and_a_pause_always_end_the_cue() -> None:
    # The cue: "his gospel. The detective noticed / a second set of footprints in the snow."
    first = said(PREACHER, 1.0)
    t = first[-1][1] + 0.6
    second = said(DETECTIVE, t)
    cues = build_cues([segment(first), segment(second)], RULES)

    texts = cue_texts(cues)
    assert " ".join(texts) == f"{PREACHER} {DETECTIVE}"
    assert not any("gospel." in text and "The detective" in text for text in texts), texts
    gospel = next(cue for cue in cues if "gospel." in cue.lines[-1])
    detective = next(cue for cue in cues if cue.lines[0].startswith("The detective"))
    assert gospel.end <= detective.start - RULES.min_gap + 1e-6
    assert detective.start == pytest.approx(t)  # not shown before it is said


def test_the_same_sentence_end_inside_one_segment_also_ends_the_cue() -> None:
    words = said("Fine.", 0.0) + said("Then we leave at dawn.", 0.65)
    cues = build_cues([segment(words)], RULES)

    assert cue_texts(cues) == ["Fine.", "Then we leave at dawn."]


def test_sentences_without_a_pause_keep_todays_layout() -> None:
    first = said(PREACHER, 1.0)
    second = said(DETECTIVE, first[-1][1] + 0.1)
    cues = build_cues([segment(first), segment(second)], RULES)

    # 0.1 s apart the sentences may share a cue as before (a quick reply reads well joined):
    # the cost-based cut of before this rule, no dashes.
    assert [c.lines for c in cues] == [
        ("And so the old preacher stood up in front", "of the whole village and read to them"),
        ("from his gospel. The detective noticed", "a second set of footprints in the snow."),
    ]


def test_an_abbreviation_and_a_pause_do_not_end_a_sentence() -> None:
    words = [(0.0, 0.3, "Then"), (0.35, 0.7, "Mr."), (1.2, 1.6, "Smith"), (1.65, 2.1, "arrived.")]
    cues = build_cues([segment(words)], RULES)

    assert [c.lines for c in cues] == [("Then Mr. Smith arrived.",)]


@pytest.mark.parametrize("initials", [["J.", "R.", "R."], ["e.g."], ["Dr."]])
def test_initials_and_dotted_abbreviations_are_not_sentence_ends(initials: list[str]) -> None:
    words, t = [], 0.0
    for text in ["Ask", *initials, "Tolkien", "about", "it."]:
        words.append((t, t + 0.3, text))
        t += 0.3 + 0.4  # a 0.4 s pause after every word
    cues = build_cues([segment(words)], RULES)

    assert [c.lines for c in cues] == [(" ".join(["Ask", *initials, "Tolkien", "about", "it."]),)]


def test_a_real_sentence_end_with_the_same_pause_does_end_the_cue() -> None:
    words = [(0.0, 0.3, "Ask"), (0.35, 0.7, "him."), (1.1, 1.5, "Tolkien"), (1.55, 2.0, "knows.")]
    cues = build_cues([segment(words)], RULES)

    assert [c.lines for c in cues] == [("Ask him.",), ("Tolkien knows.",)]


def test_two_short_exchanges_share_a_cue_as_dashed_lines() -> None:
    question = said("Are you coming?", 0.0, word=0.2)
    answer = said("In a minute.", question[-1][1] + 0.1, word=0.2)
    cues = build_cues([segment(question), segment(answer)], RULES)

    assert [c.lines for c in cues] == [("- Are you coming?", "- In a minute.")]
    assert cues[0].start == pytest.approx(0.0)
    assert cues[0].end >= cues[0].start + RULES.min_duration


def test_dialogue_needs_two_lines_allowed() -> None:
    question = said("Are you coming?", 0.0, word=0.2)
    answer = said("In a minute.", question[-1][1] + 0.1, word=0.2)
    cues = build_cues([segment(question), segment(answer)], CueRules(max_lines=1))

    assert all(DASH not in line for cue in cues for line in cue.lines)
    assert cue_texts(cues) == ["Are you coming? In a minute."]


def test_one_speaker_saying_two_sentences_gets_no_dashes() -> None:
    # One segment: one speaker. Two sentences there share a line as before.
    words = said("Are you coming?", 0.0, word=0.2)
    words += said("In a minute.", words[-1][1] + 0.1, word=0.2)
    cues = build_cues([segment(words)], RULES)

    assert [c.lines for c in cues] == [("Are you coming? In a minute.",)]


def test_long_lines_of_dialogue_are_not_dashed() -> None:
    # Each said slowly enough to be read alone: no reason to dash them together.
    question = said("Are you coming with us tonight?", 0.0, word=0.45)
    answer = said("In a minute, I said.", question[-1][1] + 0.1, word=0.45)
    cues = build_cues([segment(question), segment(answer)], RULES)

    assert all(DASH not in line for cue in cues for line in cue.lines)


def sentence_end(text: str) -> bool:
    return text[-1] in ".!?"


@pytest.mark.parametrize("seed", range(40))
def test_random_timings_never_join_sentences_across_a_pause(seed: int) -> None:
    rng = random.Random(seed)
    segments, t, n = [], rng.uniform(0.0, 2.0), 0
    for _ in range(rng.randint(1, 6)):
        words = []
        for _ in range(rng.randint(1, 25)):
            # Unique words ("w17") so no loop is collapsed; a third end a sentence.
            text = f"w{n}" + (rng.choice(".!?") if rng.random() < 0.3 else rng.choice(["", "", ","]))
            length = rng.uniform(0.05, 0.6)
            words.append((round(t, 3), round(t + length, 3), text))
            t += length + rng.choice([0.0, 0.05, 0.1, 0.25, 0.29, 0.31, 0.5, 0.9, 1.5])
            n += 1
        segments.append(segment(words))
    every = [w for s in segments for w in s.words]
    cues = build_cues(segments, RULES)

    lists = cue_word_lists(cues)
    assert [w for words in lists for w in words] == [w.text.strip() for w in every]  # each once, in order
    position = 0
    for words in lists:
        own = every[position : position + len(words)]
        position += len(words)
        for left, right in zip(own, own[1:], strict=False):
            assert not (sentence_end(left.text) and right.start - left.end >= PAUSE - 1e-9), (
                seed, left, right, words)
    for cue, following in zip(cues, cues[1:], strict=False):
        assert cue.start < cue.end <= following.start - RULES.min_gap + 1e-6
    for cue in cues:
        dashed = [line.startswith(DASH) for line in cue.lines]
        assert all(dashed) == any(dashed) and len(cue.lines) <= RULES.max_lines


def placed_words(words: list[tuple[float, float, str]], faint: tuple[tuple[float, float], ...]) -> list[Word]:
    """Place one decoded window (a single span from 0 s) holding `words` on a file whose speech
    map is `faint`; return the words as the transcript holds them."""
    import numpy as np

    from daemon.datatypes import Audio
    from daemon.engine import ChunkDecoding
    from daemon.transcribe import TranscribeOptions
    from daemon.transcribe.placement import placed
    from daemon.transcribe.state import Decoded, File
    from daemon.transcribe.vad import SpeechChunk

    seg = segment(words)
    result = ChunkDecoding((), seg.text, "en", None, -0.2, 0.0, 0.0, 1.0, segments=(seg,))
    chunk = SpeechChunk(((0.0, 10.0),), faint)
    file = File(Audio(np.zeros(160_000, np.float32), 16000), TranscribeOptions("base", "en"), [chunk], faint)
    return [w for s in placed(file, [Decoded(chunk, result)]) for w in s.words]


def test_a_word_stretched_over_a_pause_stays_with_its_sentence() -> None:
    # The aligner ran "longer" on to where "for" starts, and "that." on to "The": one cue held both
    # sentences across a second of silence. Each word keeps to one stretch of speech.
    faint = ((0.0, 2.0), (3.2, 6.0), (7.0, 9.0))
    words = placed_words([(0.2, 0.6, "he"), (0.6, 1.2, "could"), (1.2, 3.2, "longer"), (3.2, 3.6, "for"),
                          (3.6, 4.0, "an"), (4.0, 6.9, "that."), (6.9, 7.5, "The"), (7.5, 8.0, "end.")],
                         faint)

    spans = {w.text.strip(): (w.start, w.end) for w in words}
    assert spans["longer"] == (1.2, 2.0)  # most of it lies in the first stretch
    assert spans["that."] == (4.0, 6.0)  # a sentence's last word keeps the stretch it starts in
    assert spans["The"] == (7.0, 7.5)  # the next sentence's first word the one it ends in
    cues = build_cues([Segment(words[0].start, words[-1].end, "", tuple(words))], RULES, 10.0, "en")
    assert [c.lines for c in cues] == [("he could longer",), ("for an that.",), ("The end.",)]
