"""`CueRules`: how cues are cut and timed. Its own module so that the cue layout (`cues`) and the
tokens it lays out (`tokens`) both import it, and not each other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CueRules:
    """How cues are cut and timed; the defaults follow Netflix's English timed-text guide.

    Lengths are display columns: a CJK or Hangul character takes two, so 42
    columns hold 21 of them (Netflix asks 16 for Japanese and Chinese) and 20
    columns per second read as 10 characters per second (Netflix: 9 for
    Chinese, 12 for Korean). Combining marks take none.
    """

    max_line_chars: int = 42  # columns per line
    max_lines: int = 2
    min_duration: float = 0.8  # seconds on screen, when the next cue leaves room (Netflix: 5/6 s)
    max_duration: float = 7.0  # seconds on screen
    max_cps: float = 20.0  # reading speed: columns per second, spaces included
    min_gap: float = 0.08  # seconds between consecutive cues (two frames at 24 fps)
    # Seconds a cue stays after its last word ends; reading speed and
    # min_duration may extend it further into silence, never into the next cue.
    linger: float = 0.5

    def __post_init__(self) -> None:
        if self.max_line_chars < 1 or self.max_lines < 1:
            raise ValueError("max_line_chars and max_lines must be at least 1")
        if not 0 < self.min_duration <= self.max_duration:
            raise ValueError("need 0 < min_duration <= max_duration")
        if self.max_cps <= 0 or self.min_gap < 0 or self.linger < 0:
            raise ValueError("max_cps must be positive; min_gap and linger must not be negative")
