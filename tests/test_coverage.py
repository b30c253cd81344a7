"""Coverage arithmetic: which speech no word covers, and which of it is worth decoding again."""

from __future__ import annotations

import pytest

from daemon.coverage import CoverageOptions, inside, merge, split_long, subtract, total, uncovered, untried


def test_merge_and_subtract_intervals() -> None:
    assert merge([(5, 6), (0, 2), (1, 3), (3, 4), (7, 7)]) == [(0, 4), (5, 6)]
    assert subtract([(0, 10), (20, 30)], [(2, 3), (9, 21), (25, 26)]) == [(0, 2), (3, 9), (21, 25), (26, 30)]
    assert subtract([(0, 5)], []) == [(0, 5)]
    assert subtract([(0, 5)], [(-1, 6)]) == []
    assert total([(0, 2), (5, 5.5)]) == 2.5


def test_speech_without_words_is_uncovered_beyond_the_margin() -> None:
    options = CoverageOptions(min_seconds=1.0, margin_s=0.5)
    speech = [(0.0, 10.0), (12.0, 20.0), (25.0, 25.8)]
    words = [(0.5, 1.0), (1.1, 2.0), (12.3, 13.0), (18.6, 19.9)]  # nothing from 2 s to 10 s, 13 s to 18.6 s

    assert uncovered(speech, words, options) == [(2.5, 10.0), (13.5, 18.1)]
    # the 0.8 s region at 25 s is shorter than min_seconds: a cough, not a missed line
    assert uncovered(speech, [], options) == [(0.0, 10.0), (12.0, 20.0)]
    assert uncovered(speech, [(0, 30)], options) == []


def test_a_stretch_tried_alone_is_not_tried_again_but_a_remainder_is() -> None:
    tried = [(10.0, 20.0)]
    assert untried([(10.0, 20.0), (10.02, 19.5)], tried) == []  # the same audio again
    assert untried([(15.0, 20.0)], tried) == [(15.0, 20.0)]  # the words stopped half way: new start
    assert untried([(30.0, 31.5)], tried) == [(30.0, 31.5)]


def test_long_stretches_are_cut_into_windows() -> None:
    assert split_long((0.0, 20.0), 30.0) == [(0.0, 20.0)]
    pieces = split_long((10.0, 75.0), 30.0)
    assert len(pieces) == 3 and pieces[0][0] == 10.0 and pieces[-1][1] == 75.0
    assert all(b - a <= 30.0 for a, b in pieces)
    assert all(pieces[i][1] == pytest.approx(pieces[i + 1][0]) for i in range(2))


def test_a_word_belongs_to_the_stretch_its_middle_is_in() -> None:
    assert inside((9.9, 10.5), (10.0, 20.0))
    assert not inside((8.0, 9.0), (10.0, 20.0))
    assert inside((19.9, 20.3), (10.0, 20.0))
