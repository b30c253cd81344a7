"""Rechecks: which lines are decoded again alone, which reading is kept, and where its words land."""

from __future__ import annotations

import numpy as np

from daemon.datatypes import Audio, Segment, Word
from daemon.engine import ChunkDecoding
from daemon.transcribe.options import RecheckOptions, TranscribeOptions
from daemon.transcribe.placement import placed
from daemon.transcribe.recheck import better, mean_logprob, recheck_round, words_of
from daemon.transcribe.state import Decoded, File
from daemon.transcribe.vad import SpeechChunk

# One window packing two spans; the second span holds two lines 1 s apart.
WINDOW = SpeechChunk(((1.0, 4.0), (10.0, 18.0)), ((1.0, 4.0), (10.0, 13.0), (14.0, 18.0)))


def file_of(chunks: list[SpeechChunk], recheck: RecheckOptions | None = None) -> File:
    options = TranscribeOptions(model="base", language="en", recheck=recheck or RecheckOptions())
    faint = tuple(region for chunk in chunks for region in chunk.regions)
    return File(Audio(np.zeros(20 * 16000, np.float32), 16000), options, chunks, faint)


def words(start: float, texts: str, probability: float, step: float = 0.5) -> tuple[Word, ...]:
    spoken = enumerate(texts.split())
    return tuple(Word(start + i * step, start + i * step + 0.4, f" {t}", probability) for i, t in spoken)


def decoding(*segments: Segment) -> ChunkDecoding:
    text = "".join(s.text for s in segments)
    return ChunkDecoding((), text, "en", None, -0.3, 0.01, 0.0, 1.2, segments=segments)


def segment(ws: tuple[Word, ...]) -> Segment:
    return Segment(ws[0].start, ws[-1].end, "".join(w.text for w in ws), ws)


def first_round() -> Decoded:
    # window seconds: span one is 0-3 s, span two 3-11 s (file 10-18 s)
    sure = words(0.2, "He could wait no longer.", 0.95)
    unsure = words(3.2, "As white pollution would not", 0.5)  # file 10.2-12.6 s
    fine = words(7.2, "They are usually located in cities.", 0.9)  # file 14.2-17.2 s
    return Decoded(WINDOW, decoding(segment(sure), segment(unsure + fine)))


def test_only_unsure_lines_of_several_words_in_a_shared_window_are_rechecked() -> None:
    file = file_of([WINDOW, SpeechChunk(((19.0, 19.9),), ((19.0, 19.9),))])
    alone = Decoded(file.chunks[1], decoding(segment(words(0.1, "Yes it was", 0.3, step=0.25))))

    work = recheck_round([file], [[first_round(), alone]])

    # the unsure line (10-13 s) only: the sure ones stay, and the line with a window to itself too;
    # its window reaches 0.5 s either side, where no other speech is
    assert work == [(0, SpeechChunk(((9.5, 13.5),), ((10.0, 13.0),)), (9.5, 13.5))]
    assert recheck_round([file_of([WINDOW], RecheckOptions(below_logprob=None))], [[first_round()]]) == []
    assert recheck_round([file_of([WINDOW], RecheckOptions(min_words=6))], [[first_round()]]) == []


def test_a_line_window_stops_short_of_the_speech_beside_it() -> None:
    close = SpeechChunk(((1.0, 12.0),), ((1.0, 4.0), (4.8, 9.0), (9.6, 12.0)))
    file = file_of([close], RecheckOptions(pad_s=1.0))
    unsure = Decoded(close, decoding(segment(words(5.0, "As white pollution would not", 0.5))))

    [(_, chunk, window)] = recheck_round([file], [[unsure]])

    assert window == (4.0, 9.6) and chunk.spans == (window,)  # not the lines' either side: they are sure


def test_a_surer_reading_replaces_the_line_and_nothing_else() -> None:
    file = file_of([WINDOW])
    earlier = [first_round()]
    [work] = recheck_round([file], [earlier])
    line = SpeechChunk(((9.5, 13.5),), ((10.0, 13.0),))
    again = Decoded(line, decoding(segment(words(0.7, "As light pollution was not", 0.9))), (9.5, 13.5))

    kept = better(file, words_of(file, earlier), work, again)

    assert kept is not None and kept.replaces == (9.5, 13.5)
    result = placed(file, earlier + [kept])
    said = [(round(w.start, 1), w.text.strip()) for s in result for w in s.words]
    assert said == [
        (1.2, "He"), (1.7, "could"), (2.2, "wait"), (2.7, "no"), (3.2, "longer."),
        (10.2, "As"), (10.7, "light"), (11.2, "pollution"), (11.7, "was"), (12.2, "not"),
        (14.2, "They"), (14.7, "are"), (15.2, "usually"), (15.7, "located"), (16.2, "in"), (16.7, "cities."),
    ]
    # the first round's segment lost its middle: what is left after the line is a segment of its own
    assert [s.text for s in result] == [
        " He could wait no longer.", " As light pollution was not", " They are usually located in cities.",
    ]


def test_a_reading_not_clearly_surer_or_silent_keeps_the_first() -> None:
    file = file_of([WINDOW])
    earlier = [first_round()]
    [work] = recheck_round([file], [earlier])
    line = SpeechChunk(((9.5, 13.5),), ((10.0, 13.0),))

    def reading(text: str, probability: float) -> Decoded:
        return Decoded(line, decoding(segment(words(0.7, text, probability))), (9.5, 13.5))

    silent = Decoded(line, ChunkDecoding((), "", "en", None, -2.0, 0.9, 0.0, 1.0, silent=True), (9.5, 13.5))
    first = words_of(file, earlier)
    assert better(file, first, work, reading("As what pollution would knot", 0.4)) is None
    # surer, but by less than min_gain (log 0.55 - log 0.5 = 0.095): as likely wrong as the first
    assert better(file, first, work, reading("As white pollution was not", 0.55)) is None
    assert better(file, first, work, reading("As white pollution was not", 0.6)) is not None  # 0.18
    assert better(file, first, work, silent) is None


def test_mean_logprob() -> None:
    assert mean_logprob(words(0, "a b", 1.0)) == 0.0
    assert round(mean_logprob(words(0, "a b", np.exp(-0.5))), 6) == -0.5
    assert mean_logprob(()) == float("-inf")
