"""Progress of a transcription: fractions by seconds of audio, and an optional tqdm bar."""

from __future__ import annotations

from collections.abc import Callable


class Progress:
    """Turns settled chunks into progress fractions (by seconds of audio) and an optional bar.

    Coverage rounds add work as they find it (`add`); the fraction never goes back.
    """

    def __init__(self, callback: Callable[[float], None] | None, bar: bool) -> None:
        self.callback = callback
        self.seconds: list[float] = []
        self.done, self.shown = 0.0, 0.0
        self.bar = None
        if bar:
            import tqdm

            self.bar = tqdm.tqdm(total=0, unit="s", desc="transcribing", leave=False)

    def add(self, seconds: list[float]) -> int:
        """Count more windows of work; return the index of the first of them."""
        first = len(self.seconds)
        self.seconds += seconds
        if self.bar is not None:
            self.bar.total = round(sum(self.seconds))
            self.bar.refresh()
        return first

    def report(self, fraction: float) -> None:
        self.shown = max(self.shown, min(1.0, fraction))
        if self.callback is not None:
            self.callback(self.shown)

    def chunk_done(self, index: int) -> None:
        self.done += self.seconds[index]
        if self.bar is not None:
            self.bar.update(round(self.done) - self.bar.n)
        self.report(0.02 + 0.98 * self.done / max(sum(self.seconds), 1e-9))  # 2 %: speech detection

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
