"""Coverage arithmetic: which speech no word covers, and which of it is worth decoding again."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from daemon.transcribe.coverage import (
    CoverageOptions,
    confident,
    inside,
    merge,
    retry_window,
    snap,
    split_long,
    subtract,
    total,
    uncovered,
    untried,
)


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


def test_a_retry_window_starts_just_before_its_stretch_never_before_the_words_ahead() -> None:
    options = CoverageOptions(reach_back_s=1.0, reach_forward_s=0.5)
    words = [(1.0, 1.5), (1.6, 2.0), (9.8, 10.2)]

    assert retry_window((4.0, 8.0), words, options) == (3.0, 8.5)  # 1 s back, 0.5 s on
    assert retry_window((2.3, 9.6), words, options) == (2.0, 9.8)  # never over a word already there
    assert retry_window((10.5, 12.0), words, options) == (10.2, 12.5)  # nothing after: 0.5 s on


def test_a_window_already_decoded_is_not_decoded_again() -> None:
    tried = [(10.0, 20.0)]
    assert untried([(10.0, 20.0), (10.02, 19.97)], tried) == []  # the same audio again
    assert untried([(15.0, 20.0), (30.0, 31.5)], tried) == [(15.0, 20.0), (30.0, 31.5)]


def test_a_retry_is_kept_only_when_whisper_is_sure_it_is_speech() -> None:
    options = CoverageOptions()

    @dataclass
    class Result:
        no_speech_prob: float
        avg_logprob: float

    assert confident(Result(0.08, -0.32), options)  # "to the north and within easy reach…"
    assert not confident(Result(0.86, -0.92), options)  # " Thank you." over a trailing breath
    assert not confident(Result(0.57, -0.69), options)  # " Thanks."
    assert not confident(Result(0.2, -2.3), options)  # sampled at temperature 1.0


def test_long_windows_are_cut_into_windows_whisper_can_take() -> None:
    assert split_long((0.0, 20.0), 30.0) == [(0.0, 20.0)]
    pieces = split_long((10.0, 75.0), 30.0)
    assert len(pieces) == 3 and pieces[0][0] == 10.0 and pieces[-1][1] == 75.0
    assert all(b - a <= 30.0 for a, b in pieces)
    assert all(pieces[i][1] == pytest.approx(pieces[i + 1][0]) for i in range(2))


def test_a_word_belongs_to_the_window_its_middle_is_in() -> None:
    assert inside((9.9, 10.5), (10.0, 20.0))
    assert not inside((8.0, 9.0), (10.0, 20.0))
    assert not inside((19.9, 20.3), (10.0, 20.0))


def test_word_edges_outside_speech_move_onto_it() -> None:
    speech = [(2.0, 5.0), (6.0, 9.0)]

    assert snap((1.0, 2.5), speech) == (2.0, 2.5)  # stretched back over the silence before
    assert snap((4.8, 5.6), speech) == (4.8, 5.0)
    assert snap((4.5, 6.5), speech) == (4.5, 6.5)  # across a pause, both ends in speech
    assert snap((0.5, 9.5), speech) == (2.0, 9.0)
    assert snap((3.0, 4.0), speech) == (3.0, 4.0)
    assert snap((5.2, 5.8), speech) == (5.2, 5.8)  # wholly outside: the aligner heard it, keep it
