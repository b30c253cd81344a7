"""build_cues on synthetic word timings: every limit on every cue, plus what each scenario is about."""

from __future__ import annotations

import itertools
import unicodedata

import pytest

from daemon.datatypes import Cue, Segment, Word
from daemon.subtitles import CueRules, build_cues

RULES = CueRules()
EPS = 1e-6
BIDI_CONTROLS = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u061c")


def spoken(text: str, start: float, word: float = 0.3, gap: float = 0.05, sentence_pause: float = 0.0,
           spaced: bool = True) -> Segment:
    """Given text, return a segment whose words last `word` s with `gap` s between them.

    Words are split on spaces (or "|" when `spaced` is False, for text written
    without spaces); sentence ends add `sentence_pause`.
    """
    words: list[Word] = []
    t = start
    for piece in text.split(" " if spaced else "|"):
        words.append(Word(round(t, 3), round(t + word, 3), (" " if spaced else "") + piece))
        t += word + gap + (sentence_pause if piece[-1] in ".?!。" else 0.0)
    return Segment(words[0].start, words[-1].end, "".join(w.text for w in words), tuple(words))


def columns(text: str) -> int:
    """Given text, return the columns it takes on screen: marks none, wide East Asian characters two."""
    marks = ("Mn", "Me", "Cf")
    return sum(
        0 if unicodedata.category(ch) in marks else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def all_words(segments: list[Segment]) -> list[Word]:
    return [w for s in segments for w in s.words]


def can_split_without_single_word(words: list[str], max_chars: int) -> bool:
    """Given a cue's words, return True if two lines of >= 2 words each, both short enough, exist."""
    for k in range(2, len(words) - 1):
        top, bottom = " ".join(words[:k]), " ".join(words[k:])
        if len(top) <= max_chars and len(bottom) <= max_chars:
            return True
    return False


def assert_cues_ok(cues: list[Cue], rules: CueRules = RULES, media: float | None = None,
                   spaced: bool = True) -> None:
    """Assert every limit of `rules` on every cue, allowing only what the speech forces.

    A cue may be shorter than min_duration or read faster than max_cps only
    when it runs up to the next cue's start minus min_gap, up to the media's
    end, or (for reading speed) for max_duration. A line may exceed
    max_line_chars (display columns) only if it is a single word. A word may stand alone on a
    line only if no other two-line split fits.
    """
    assert cues, "no cues"
    for n, cue in enumerate(cues):
        where = f"cue {n} {cue}"
        following = cues[n + 1] if n + 1 < len(cues) else None
        assert 1 <= len(cue.lines) <= rules.max_lines, where
        for line in cue.lines:
            assert line and line == line.strip() and "  " not in line and "\n" not in line, where
            assert columns(line) <= rules.max_line_chars or (spaced and " " not in line), where
            assert not BIDI_CONTROLS & set(line), where
        if spaced and len(cue.lines) == 2 and any(" " not in line for line in cue.lines):
            words = " ".join(cue.lines).split()
            long_word = any(len(w) > rules.max_line_chars for w in words)
            assert long_word or not can_split_without_single_word(words, rules.max_line_chars), where
        duration = cue.end - cue.start
        assert 0 <= cue.start < cue.end, where
        if media is not None:
            assert cue.end <= media + EPS, where
        assert duration <= rules.max_duration + EPS, where
        at_limit = (following is not None and abs(cue.end - (following.start - rules.min_gap)) < EPS) or (
            media is not None and abs(cue.end - media) < EPS
        )
        if duration < rules.min_duration - EPS:
            assert at_limit, f"{where}: {duration:.3f} s is too short and nothing stops it"
        cps = sum(len(line) for line in cue.lines) / duration
        if cps > rules.max_cps + EPS:
            assert at_limit or abs(duration - rules.max_duration) < EPS, f"{where}: {cps:.1f} cps"
        if following is not None:
            assert following.start - cue.end >= rules.min_gap - EPS, f"{where} too close to the next"


def cue_words(cues: list[Cue], words: list[Word]) -> list[list[Word]]:
    """Given cues of spaced text and the words they came from, return each cue's words."""
    result, rest = [], iter(words)
    for cue in cues:
        count = len(" ".join(cue.lines).split())
        result.append(list(itertools.islice(rest, count)))
    return result


def joined_words(words: list[Word]) -> str:
    return " ".join(w.text.strip() for w in words)


def joined_cues(cues: list[Cue]) -> str:
    return " ".join(line for cue in cues for line in cue.lines)


MONOLOGUE = (
    "So I went down to the market this morning, and the whole place was closed. Nobody could tell me why. "
    "I asked the baker, I asked the fishmonger, and even the old man who sells newspapers on the corner "
    "had no idea what was going on. Strange, isn't it? Anyway, I came back home and made some tea, "
    "because what else can you do on a morning like that, when the rain will not stop and the radio only "
    "plays the same three songs? Then my sister called. She said the market had moved to the other side "
    "of the river years ago, and that I should really read the local paper once in a while."
)


def test_long_monologue_keeps_every_word_in_order_within_limits() -> None:
    segments = [spoken(MONOLOGUE, 0.5, word=0.28, gap=0.04, sentence_pause=0.25)]
    words = all_words(segments)
    cues = build_cues(segments, RULES)

    assert_cues_ok(cues)
    assert joined_cues(cues) == joined_words(words)
    assert cues[0].start == pytest.approx(words[0].start)
    assert len(cues) >= 8  # about 540 characters cannot fit in fewer
    for cue, own in zip(cues, cue_words(cues, words), strict=True):
        # Cue times track the speech: in with the first word, out shortly after the last.
        assert cue.start >= own[0].start - EPS
        reading = max(RULES.min_duration, sum(len(x) for x in cue.lines) / RULES.max_cps)
        assert cue.end <= max(own[-1].end + RULES.linger + 0.5, cue.start + reading) + 0.002


def test_lines_break_at_punctuation_and_balance() -> None:
    cues = build_cues([spoken(MONOLOGUE, 0.0)], RULES)

    assert cues[0].lines == ("So I went down to the market this morning,", "and the whole place was closed.")
    two_line = [c for c in cues if len(c.lines) == 2]
    assert two_line
    for cue in two_line:
        top, bottom = (len(x) for x in cue.lines)
        assert abs(top - bottom) <= 20, cue  # balanced, not one full line and a word
    assert not any(c.lines[0].endswith((" the", " a", " to")) for c in two_line)


def test_pause_of_two_seconds_ends_a_cue_and_times_track_the_words() -> None:
    first = spoken("We should go now.", 1.0)
    second = spoken("Wait for me!", first.end + 2.0)
    cues = build_cues([first, second], RULES)

    assert_cues_ok(cues)
    assert [c.lines for c in cues] == [("We should go now.",), ("Wait for me!",)]
    assert cues[0].start == pytest.approx(1.0)
    assert cues[0].end == pytest.approx(first.end + RULES.linger)
    assert cues[1].start == pytest.approx(second.start)
    assert cues[1].end == pytest.approx(second.end + RULES.linger)


def test_pause_inside_a_segment_also_splits() -> None:
    words = [Word(0.0, 0.4, " Hello."), Word(0.5, 0.9, " Anyone?"), Word(3.0, 3.4, " Hello?")]
    cues = build_cues([Segment(0.0, 3.4, "".join(w.text for w in words), tuple(words))], RULES)

    assert [c.lines for c in cues] == [("Hello. Anyone?",), ("Hello?",)]
    assert cues[1].start == pytest.approx(3.0)


def test_short_cue_is_extended_for_reading_but_not_into_the_next() -> None:
    # Eight words spoken in 1.2 s need 2.1 s at 20 cps; the silence after allows it.
    fast = spoken("I told you I would be back before noon.", 0.0, word=0.12, gap=0.03)
    later = spoken("Sure.", 6.0)
    cues = build_cues([fast, later], RULES)

    assert_cues_ok(cues)
    text = cues[0].lines[0]
    assert cues[0].end == pytest.approx(len(text) / RULES.max_cps, abs=0.002)
    assert cues[0].end > fast.end + RULES.linger


def test_rapid_dialogue_groups_lines_and_keeps_gaps() -> None:
    segments, t = [], 0.0
    for line in ["Yes.", "No!", "Where?", "Over there.", "Now?", "Right now!", "Okay.", "Go."]:
        segments.append(spoken(line, t, word=0.2, gap=0.05))
        t = segments[-1].end + 0.1
    cues = build_cues(segments, RULES)

    assert_cues_ok(cues)
    assert joined_cues(cues) == joined_words(all_words(segments))
    assert 1 < len(cues) < len(segments)  # 0.3 s lines cannot each be a cue
    assert all(c.end - c.start >= RULES.min_duration - EPS for c in cues[:-1])
    for cue, own in zip(cues, cue_words(cues, all_words(segments)), strict=True):
        assert cue.start == pytest.approx(own[0].start)  # gaps come out of the ends, not the starts


def test_single_word_is_not_stranded_on_a_line() -> None:
    segment = spoken("Nobody told us about the change in plans. Absolutely.", 0.0, word=0.2, gap=0.03)
    cues = build_cues([segment], RULES)

    assert_cues_ok(cues)
    assert [c.lines for c in cues] == [("Nobody told us about", "the change in plans. Absolutely.")]


@pytest.mark.parametrize("word", [0.18, 0.2, 0.25])
@pytest.mark.parametrize("skip", [0, 1, 28, 70])
def test_no_line_starts_with_the_last_word_of_a_phrase(skip: int, word: float) -> None:
    # "going | on." leaves a word dangling. Whisper segments often start
    # mid-sentence, so try the monologue from several words in, at several paces.
    text = " ".join(MONOLOGUE.split()[skip:])
    cues = build_cues([spoken(text, 0.0, word=word, gap=0.03)], RULES)

    lines = [line for cue in cues for line in cue.lines]
    for before, line in itertools.pairwise(lines):
        first = line.split()[0]
        assert before[-1] in ".?!," or first[-1] not in ".?!,", (before, line)


def test_segment_boundary_is_preferred_for_a_break_when_there_is_no_punctuation() -> None:
    first = spoken("we went to the market early and bought some apples and pears", 0.0, word=0.2, gap=0.03)
    second = spoken("my brother cooked dinner for the whole family", first.end + 0.1, word=0.2, gap=0.03)
    cues = build_cues([first, second], RULES)

    assert_cues_ok(cues)
    assert [" ".join(c.lines) for c in cues] == [first.text.strip(), second.text.strip()]


def test_very_long_word_is_kept_whole_on_its_own_line() -> None:
    long_word = "Pneumonoultramicroscopicsilicovolcanoconiosis"  # 45 characters
    segment = spoken(f"Doctors call it {long_word} in the textbooks.", 0.0)
    cues = build_cues([segment], RULES)

    assert_cues_ok(cues)
    assert joined_cues(cues) == joined_words(list(segment.words))
    lines = [line for c in cues for line in c.lines]
    assert long_word in lines


def test_long_run_without_pause_is_split_into_several_cues() -> None:
    segment = spoken(" ".join(["blah"] * 80), 0.0, word=0.12, gap=0.02)  # 80 words in 11 s, no punctuation
    cues = build_cues([segment], RULES)

    assert_cues_ok(cues)
    assert len(cues) >= 4
    assert joined_cues(cues) == joined_words(list(segment.words))


def test_word_longer_than_max_duration_is_capped() -> None:
    words = (Word(0.0, 12.0, " Aaaaah!"), Word(12.5, 12.9, " Help."))
    cues = build_cues([Segment(0.0, 12.9, " Aaaaah! Help.", words)], RULES)

    assert_cues_ok(cues)
    assert cues[0].lines == ("Aaaaah!",) and cues[0].end == pytest.approx(RULES.max_duration)


JAPANESE = (
    "今日は|とても|いい|天気|です|ね。|明日|も|晴れる|と|いい|な|と|思い|ます。"
    "|でも|週末|は|雨|が|降る|らしい|です。"
)


def test_japanese_words_are_cut_by_character_without_spaces() -> None:
    first = spoken(JAPANESE, 0.0, word=0.25, spaced=False)
    second = spoken("それ|は|残念|です|ね。", first.end + 0.3, word=0.25, spaced=False)
    cues = build_cues([first, second], RULES)

    assert_cues_ok(cues, spaced=False)
    text = "".join(w.text for w in all_words([first, second]))
    assert "".join(line for c in cues for line in c.lines) == text
    assert not any(" " in line for c in cues for line in c.lines)
    # 42 columns hold 21 wide characters.
    assert all(len(line) <= RULES.max_line_chars // 2 for c in cues for line in c.lines)
    assert not any(line.startswith(("。", "、")) for c in cues for line in c.lines)


@pytest.mark.parametrize("late", [0.0, 0.6, 1.5])
def test_punctuation_tokens_never_start_a_line(late: float) -> None:
    # Whisper usually glues punctuation to the word before it, but not always,
    # and a lone "。" may be timed after a pause.
    pieces = "今日|は|本当|に|いい|天気|です|ね|。|明日|も|晴れる|と|いい|です|ね|、"
    pieces += "|でも|雨|らしい|です|よ|。"
    words, t = [], 0.0
    for piece in pieces.split("|"):
        t += late if piece in "。、" else 0.0
        words.append(Word(t, t + 0.2, piece))
        t += 0.22
    segment = Segment(0.0, t, pieces.replace("|", ""), tuple(words))
    cues = build_cues([segment], CueRules(max_line_chars=16))

    lines = [line for c in cues for line in c.lines]
    assert "".join(lines) == segment.text
    assert not any(line.startswith(("。", "、")) for line in lines), lines


def test_punctuation_token_that_would_overflow_a_full_line_takes_a_word_along() -> None:
    words = [Word(0.22 * k, 0.22 * k + 0.2, p) for k, p in enumerate("今日|は|本当|に|暑い".split("|"))]
    # "。" comes after a pause, which alone would make a break before it look good.
    words += [Word(1.7 + 0.22 * k, 1.9 + 0.22 * k, p) for k, p in enumerate("。|明日|も".split("|"))]
    segment = Segment(0.0, words[-1].end, "".join(w.text for w in words), tuple(words))
    cues = build_cues([segment], CueRules(max_line_chars=16, max_lines=1))  # 8 wide characters

    assert [c.lines for c in cues] == [("今日は本当に",), ("暑い。明日も",)]


def test_chinese_without_word_timings_is_split_by_characters() -> None:
    text = "我们今天去公园散步，天气非常好，很多人在那里放风筝。然后我们去吃了晚饭，回家的时候已经很晚了。"
    cues = build_cues([Segment(0.0, 10.0, text)], RULES)

    assert_cues_ok(cues, spaced=False)
    assert "".join(line for c in cues for line in c.lines) == text
    assert len(cues) >= 2 and cues[0].start == 0.0
    assert cues[0].lines[0] == "我们今天去公园散步，"  # broken at the comma


def test_chinese_segments_join_without_a_space() -> None:
    cues = build_cues([Segment(0.0, 1.0, "你好。"), Segment(1.0, 2.0, " 我很好。")], RULES, language="zh")

    assert [c.lines for c in cues] == [("你好。我很好。",)]


def test_hangul_without_spaces_is_detected_and_cut_by_character() -> None:
    text = "오늘은날씨가아주좋아서우리는공원에산책하러갔습니다그리고저녁을먹었습니다"
    cues = build_cues([Segment(0.0, 6.0, text)], RULES)

    assert_cues_ok(cues, spaced=False)
    assert "".join(line for c in cues for line in c.lines) == text
    assert all(len(line) <= 21 for c in cues for line in c.lines)


def test_hangul_segments_without_spaces_join_without_one() -> None:
    cues = build_cues([Segment(0.0, 1.0, "안녕하세요."), Segment(1.0, 2.0, " 반갑습니다.")], RULES)

    assert [c.lines for c in cues] == [("안녕하세요.반갑습니다.",)]


def test_korean_with_spaces_breaks_between_words() -> None:
    text = " 오늘은 날씨가 아주 좋아서 우리는 공원에 산책하러 갔습니다 그리고 저녁을 먹었습니다"
    cues = build_cues([Segment(0.0, 6.0, text)], RULES, language="ko")

    assert_cues_ok(cues)
    assert joined_cues(cues) == text.strip()


def test_thai_is_never_given_spaces() -> None:
    text = "วันนี้อากาศดีมาก เราไปเดินเล่นที่สวนสาธารณะ แล้วก็ไปกินข้าวเย็นด้วยกัน"
    cues = build_cues([Segment(0.0, 6.0, text)], RULES, language="th")

    assert_cues_ok(cues, spaced=False)
    assert " ".join(line for c in cues for line in c.lines) == text


def test_arabic_is_left_intact() -> None:
    text = "مرحبا بكم في برنامجنا اليوم، سنتحدث عن تاريخ المدينة القديمة وأسواقها الجميلة. هل أنتم مستعدون؟"
    segment = spoken(text, 0.0)
    cues = build_cues([segment], RULES)

    assert_cues_ok(cues)
    assert joined_cues(cues) == text
    assert cues[0].lines[0].startswith("مرحبا بكم في برنامجنا اليوم،")


def test_repeated_hallucination_lines_collapse_to_one() -> None:
    segments = [spoken("Thank you.", 2.0 * i) for i in range(10)]
    segments.append(spoken("Goodbye.", 25.0))
    cues = build_cues(segments, RULES)

    assert_cues_ok(cues)
    assert [c.lines for c in cues] == [("Thank you.",), ("Goodbye.",)]
    assert cues[0].start == 0.0 and cues[0].end < 2.0


def test_repeated_sentence_inside_one_segment_collapses() -> None:
    segment = spoken("I am here. " * 6 + "Where are you?", 0.0)
    cues = build_cues([segment], RULES)

    assert joined_cues(cues) == "I am here. Where are you?"


def test_a_line_said_twice_is_kept() -> None:
    cues = build_cues([spoken("No.", 0.0), spoken("No.", 1.0), spoken("Stop it.", 2.0)], RULES)

    assert joined_cues(cues) == "No. No. Stop it."


def test_a_loop_of_a_line_without_words_collapses_too() -> None:
    # The rule is daemon.loops', shared with the transcribe stage: letters and digits compared, a
    # line with none ("♪") as written.
    music = [spoken("♪", 2.0 * i) for i in range(4)]

    assert joined_cues(build_cues([*music, spoken("Hello.", 9.0)], RULES)) == "♪ Hello."
    assert joined_cues(build_cues([*music[:2], spoken("Hello.", 9.0)], RULES)) == "♪ ♪ Hello."


def test_segments_past_media_end_never_leave_the_media() -> None:
    # Random-weight models emit segments past the audio's end.
    inside = spoken("This part is real.", 0.5)
    beyond = spoken("And this is not there at all.", 4.8)
    later = spoken("Neither is this.", 12.0)
    cues = build_cues([inside, beyond, later], RULES, media_duration=5.0)

    assert_cues_ok(cues, media=5.0)
    assert cues[-1].end == pytest.approx(5.0)
    assert all(c.end <= 5.0 for c in cues)
    # Only words that start before the end are shown: "And" at 4.8 s, not "this" at 5.15 s.
    assert joined_cues(cues) == "This part is real. And"


def test_segment_entirely_past_media_end_gives_no_cue() -> None:
    assert build_cues([Segment(30.0, 40.0, " Nothing here.")], RULES, media_duration=20.0) == []


def test_words_with_negative_or_backwards_times_are_repaired() -> None:
    words = (Word(-0.5, 0.2, " Start"), Word(0.1, 0.05, " here"), Word(0.6, 1.0, " please."))
    cues = build_cues([Segment(-0.5, 1.0, " Start here please.", words)], RULES, media_duration=10.0)

    assert_cues_ok(cues, media=10.0)
    assert cues[0].start == 0.0 and cues[0].lines == ("Start here please.",)


def test_zero_media_duration_means_unknown() -> None:
    cues = build_cues([spoken("Still shown.", 0.0)], RULES, media_duration=0.0)

    assert [c.lines for c in cues] == [("Still shown.",)]


def test_segment_without_words_is_spread_over_its_time() -> None:
    cues = build_cues([Segment(1.0, 5.0, " Hello there, how are you doing today?")], RULES)

    assert_cues_ok(cues)
    assert [c.lines for c in cues] == [("Hello there, how are you doing today?",)]
    assert cues[0].start == pytest.approx(1.0)
    assert cues[0].end == pytest.approx(5.0 + RULES.linger)


def test_long_segment_without_words_is_split_proportionally() -> None:
    text = " " + MONOLOGUE
    cues = build_cues([Segment(0.0, 40.0, text), Segment(41.0, 42.0, " The end.")], RULES)

    assert_cues_ok(cues)
    assert joined_cues(cues) == text.strip() + " The end."
    assert cues[0].start == 0.0
    assert cues[-1].lines == ("The end.",) and cues[-1].start == pytest.approx(41.0)
    # Proportional: the middle of the text is near the middle of the time.
    middle = next(c for c in cues if "Nobody" in " ".join(c.lines))
    share = MONOLOGUE.index("Nobody") / len(MONOLOGUE) * 40.0
    assert abs(middle.start - share) < 3.0


def test_mixed_segments_with_and_without_words() -> None:
    segments = [spoken("First with words.", 0.0), Segment(3.0, 4.0, " Then without.")]
    cues = build_cues(segments, RULES)

    assert_cues_ok(cues)
    assert [c.lines for c in cues] == [("First with words.",), ("Then without.",)]


def test_stricter_rules_are_followed() -> None:
    rules = CueRules(max_line_chars=32, max_lines=1, min_duration=1.0, max_duration=4.0, max_cps=15.0)
    cues = build_cues([spoken(MONOLOGUE, 0.0, word=0.3, gap=0.05)], rules)

    assert_cues_ok(cues, rules)
    assert all(len(c.lines) == 1 for c in cues)


def test_no_segments_give_no_cues() -> None:
    assert build_cues([], RULES) == []
    assert build_cues([Segment(0.0, 1.0, "  ")], RULES) == []


@pytest.mark.parametrize(
    "kwargs", [{"max_lines": 0}, {"min_duration": 8.0}, {"max_cps": 0.0}, {"min_gap": -0.1}]
)
def test_bad_rules_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CueRules(**kwargs)  # type: ignore[arg-type]
