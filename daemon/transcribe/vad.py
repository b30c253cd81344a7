"""Speech detection: where in a file people talk, cut into chunks Whisper can decode in one window.

Silero VAD scores every 32 ms of audio; speech regions are joined into chunks of
at most 30 s (Whisper's window), cut at pauses, so silence, music and credits are
never decoded: Whisper hallucinates "Thanks for watching" over exactly those.

Chunk-relative times go back onto the file's timeline in one place,
`SpeechChunk.to_timeline`, which the transcription stage uses for every
segment and word.

torch and silero_vad are imported lazily: the CLI's quick commands stay quick.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from daemon.datatypes import Audio
from daemon.transcribe.coverage import merge

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger("subwatch.vad")

SAMPLE_RATE = 16000
WINDOW = 512  # samples silero scores at once at 16 kHz (32 ms)


@dataclass(frozen=True)
class VadOptions:
    """How speech is found and grouped into chunks.

    threshold:        silero speech probability at or above which a window is speech (0.5).
    min_speech_ms:    speech shorter than this is dropped as a click or cough (250).
    min_silence_ms:   a pause must last this long to end a speech region (300).
    speech_pad_ms:    kept either side of each region so word onsets are not clipped (200).
    max_chunk_s:      longest chunk, Whisper's 30 s window; longer speech is cut at its
                      longest pause (30.0).
    max_merge_gap_s:  regions closer than this form one span, pause included; longer pauses
                      are cut out, so Whisper never decodes long silence (3.0).
    pack:             put several spans back to back in one window (True): a window costs
                      the encoder the same 30 s of work however little speech it holds.
    faint_threshold:  probability above which audio may be speech silero is unsure of (0.3).
                      Nothing is decoded for it alone, but speech there that got no words
                      is decoded again (see daemon.transcribe.coverage): silero misses the first
                      seconds of quiet speakers at 0.5, the very lines a viewer needs.
    level_window_s:   silero hears audio levelled over this many seconds (see
                      level_gains); 0 hears it as it is (3.0).
    stream_s, min_stream_s, warmup_s: the file is scored as parallel streams of at
                      most `stream_s` seconds (shorter for short files, down to
                      `min_stream_s`, so that even a one-minute clip is a batch), each
                      started `warmup_s` early so silero's recurrent state has settled at
                      the stream's first window (30.0, 8.0, 2.0). One stream per file
                      scores ~100x realtime on two cores; batched streams ~2,000x, with
                      the same regions on the FLEURS and JFK clips.
    """

    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 300
    speech_pad_ms: int = 200
    max_chunk_s: float = 30.0
    max_merge_gap_s: float = 3.0
    pack: bool = True
    faint_threshold: float = 0.3
    level_window_s: float = 3.0
    stream_s: float = 30.0
    min_stream_s: float = 8.0
    warmup_s: float = 2.0


@dataclass(frozen=True)
class SpeechChunk:
    """One Whisper window: stretches of the file (`spans`) played back to back, 30 s at most in all.

    Pauses up to max_merge_gap_s stay inside a span; longer silence, music and
    credits between spans are cut out, so a window is full of speech and the
    encoder (a fixed 30 s of work per window) is not spent on quiet. `regions`
    are silero's speech regions inside the spans. All times are file seconds.
    """

    spans: tuple[tuple[float, float], ...]
    regions: tuple[tuple[float, float], ...] = ()

    @property
    def start(self) -> float:
        return self.spans[0][0]

    @property
    def end(self) -> float:
        return self.spans[-1][1]

    @property
    def duration(self) -> float:
        """Seconds of audio in the window (the spans' lengths, not end - start)."""
        return sum(end - start for start, end in self.spans)

    def to_timeline(self, t: float) -> float:
        """Given seconds since the window's start, return seconds on the file's timeline.

        The one place window times become file times. A time inside the k-th
        span's stretch of the window maps into that span; past the window's end
        (where the decoder saw only zero padding) it is clamped to the last span's end.
        """
        offset = 0.0
        for start, end in self.spans:
            if t < offset + (end - start):
                return start + max(float(t) - offset, 0.0)
            offset += end - start
        return self.end

    def interval_to_timeline(self, a: float, b: float) -> tuple[float, float]:
        """Given a word's start and end in window seconds, return it on the file's timeline, in one span.

        A word the aligner stretched across the junction of two spans would
        otherwise cover the music or noise cut out between them (base put
        "Stuff" over 6 s of traffic before its sentence). It is kept in the
        span that holds its end: the aligner stretches a word's start back over
        whatever came before it, not its end (whisper shortens a first word
        after a pause from its start, too).
        """
        offset = 0.0
        for start, end in self.spans:
            length = end - start
            if b <= offset + length or (start, end) == self.spans[-1]:
                return start + min(max(a - offset, 0.0), length), start + min(max(b - offset, 0.0), length)
            offset += length
        return self.end, self.end

    def samples(self, audio: Audio) -> np.ndarray:
        """Return the window's audio: its spans of `audio` back to back (a view when there is one span)."""
        import numpy as np

        rate = audio.sample_rate
        # A slice of samples on disk is read into a new array; of a numpy array, it is a view.
        pieces = [audio.samples[round(start * rate) : round(end * rate)] for start, end in self.spans]  # type: ignore[index]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


_model_lock = threading.Lock()  # silero's model keeps recurrent state between calls


@functools.lru_cache(maxsize=1)
def _silero_model() -> Any:
    """Return silero's TorchScript VAD (shipped in the wheel; nothing is downloaded)."""
    import torch

    # silero_vad's model module calls torch.set_num_threads(1) when imported, which
    # would silently make Whisper use one core for the rest of the process.
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():  # importlib/jit deprecation notices, not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            from silero_vad import load_silero_vad

            return load_silero_vad(onnx=False)
    finally:
        torch.set_num_threads(threads)


def speech_probabilities(
    signals: Sequence[Any], options: VadOptions = VadOptions()
) -> list[np.ndarray]:
    """Given 16 kHz mono signals (numpy arrays, or daemon.samples.DiskSamples: anything else is
    made a numpy array), return silero's speech probability for each 512-sample window of each.

    Every signal is cut into parallel streams (see VadOptions.stream_s) and the
    streams of all signals share batches, a batch per model call: one call per
    32 ms window, not per window per file, is what makes VAD fast.
    """
    import numpy as np
    import torch

    from daemon.samples import DiskSamples

    # Samples on disk (daemon.samples) stay there and are read a stream at a time; anything else
    # becomes a float32 array (it may be read-only: bytes buffers).
    audio = [s if isinstance(s, DiskSamples) else np.asarray(s, dtype=np.float32) for s in signals]
    gains = [level_gains(a, options.level_window_s) for a in audio]
    windows = [-(-len(a) // WINDOW) for a in audio]
    total = sum(len(a) for a in audio) / SAMPLE_RATE
    seconds = min(options.stream_s, max(options.min_stream_s, total / 32))
    stream = max(1, min(round(seconds * SAMPLE_RATE / WINDOW), max(windows, default=1))) * WINDOW
    warmup = round(options.warmup_s * SAMPLE_RATE / WINDOW) * WINDOW
    streams = [(i, start) for i, n in enumerate(windows) for start in range(0, n * WINDOW, stream)]
    scored = []
    # optimized_execution(False): TorchScript's profiling executor otherwise spends
    # seconds re-optimising for every new batch shape, for no gain at this size.
    with _model_lock, _one_thread(), torch.inference_mode(), torch.jit.optimized_execution(False):
        model = _silero_model()
        for first in range(0, len(streams), 128):  # 128 streams per call: the fastest batch measured
            batch = _stream_batch(audio, gains, streams[first : first + 128], stream, warmup)
            model.reset_states()
            scores = [model(batch[:, i : i + WINDOW], SAMPLE_RATE) for i in range(0, batch.shape[1], WINDOW)]
            del batch  # 128 streams of 32 s are 260 MB: never two batches at once
            scored += list(torch.cat(scores, dim=1)[:, warmup // WINDOW :].numpy())
    per_signal: list[list[np.ndarray]] = [[] for _ in audio]
    for (i, _), probs in zip(streams, scored, strict=True):
        per_signal[i].append(probs)
    return [
        np.concatenate(parts)[:n] if parts else np.zeros(0, np.float32)
        for parts, n in zip(per_signal, windows, strict=True)
    ]


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run silero on one intra-op thread, then give torch its threads back.

    silero makes thousands of tiny calls; on two threads each waits for the
    other, and on a machine busier than its cores (a home server transcoding
    meanwhile) that wait is a descheduled thread: 139 s of audio took 26 s on
    two threads under load and 0.4 s on one (2.3 s and 0.4 s when quieter).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _stream_batch(
    audio: Sequence[Any],
    gains: Sequence[np.ndarray],
    streams: Sequence[tuple[int, int]],
    stream: int,
    warmup: int,
) -> torch.Tensor:
    """Return a (streams, warmup + stream) tensor: each stream with the audio before it as warm-up,
    levelled by its gains (applied piece by piece: a whole film's worth would double its memory).

    A file's first stream has no audio before it; its warm-up is the file's own opening played
    backwards, so silero's state settles on the file's sound. Warmed up on digital silence, silero
    heard the step from silence into steady room tone or mains hum as 0.5 s of speech at 0.0 s (up
    to 0.76), which no plain silero run hears, and Whisper wrote "Thank you." there (#20).
    """
    import numpy as np
    import torch

    batch = np.zeros((len(streams), warmup + stream), dtype=np.float32)
    for row, (signal, start) in enumerate(streams):
        lead = min(warmup, start)
        piece = audio[signal][start - lead : start + stream]
        frames = np.arange(start - lead, start - lead + len(piece)) // LEVEL_FRAME
        levelled = np.clip(piece * gains[signal][np.minimum(frames, len(gains[signal]) - 1)], -1.0, 1.0)
        batch[row, warmup - lead : warmup - lead + len(piece)] = levelled
        if lead < warmup and len(levelled):
            batch[row, : warmup - lead] = _mirrored(levelled[: warmup - lead], warmup - lead)
    return torch.from_numpy(batch)


def _mirrored(opening: np.ndarray, length: int) -> np.ndarray:
    """Return `length` samples that end where `opening` begins: it backwards, repeated if it is short."""
    import numpy as np

    backwards = opening[::-1]
    return np.tile(backwards, -(-length // len(backwards)))[-length:]


LEVEL_FRAME = 320  # samples per loudness frame (20 ms)
LEVEL_TARGET = 0.05  # RMS the loudest frame near any moment is brought to (about -26 dBFS)
LEVEL_FLOOR = 3e-4  # RMS below which a stretch is silence: it is not amplified past target / floor


def level_gains(samples: Any, window_s: float) -> np.ndarray:
    """Given 16 kHz samples (a numpy array or DiskSamples: anything sliced into arrays), return a
    gain per 20 ms frame that brings the loudest frame within ±window_s/2 to LEVEL_TARGET: an
    automatic gain control for speech detection alone.

    silero misses quiet speech, and not only a little: on FLEURS recordings
    (peaks near -40 dBFS) it heard a speaker only 4 s into her sentence, and
    Whisper, never given those seconds, never wrote them. Levelling over a few
    seconds lifts a quiet speaker without lifting silence past the floor; it
    found no speech in noise or music that it did not find before (tests/test_vad.py).
    Whisper still decodes the original audio. A window of 0 turns it off.
    """
    import numpy as np

    frames = -(-len(samples) // LEVEL_FRAME)
    if window_s <= 0 or frames == 0:
        return np.ones(max(frames, 1), np.float32)
    rms = np.sqrt(_frame_energy(samples) / LEVEL_FRAME)
    half = max(1, round(window_s * SAMPLE_RATE / LEVEL_FRAME / 2))
    around = np.lib.stride_tricks.sliding_window_view(np.pad(rms, half, mode="edge"), 2 * half + 1)
    return (LEVEL_TARGET / np.maximum(around.max(axis=1), LEVEL_FLOOR)).astype(np.float32)


LEVEL_BLOCK = LEVEL_FRAME * 4096  # samples read at once for the energy (82 s, 5 MB)


def _frame_energy(samples: Any) -> np.ndarray:
    """Return the sum of squares of each LEVEL_FRAME samples (the last frame may be shorter),
    a block at a time: a whole film's worth is never in memory, nor squared in a copy."""
    import numpy as np

    whole = len(samples) // LEVEL_FRAME
    parts = []
    for start in range(0, whole * LEVEL_FRAME, LEVEL_BLOCK):
        block = np.asarray(samples[start : min(start + LEVEL_BLOCK, whole * LEVEL_FRAME)])
        view = block.reshape(-1, LEVEL_FRAME)
        parts.append(np.einsum("ij,ij->i", view, view))
    tail = np.asarray(samples[whole * LEVEL_FRAME :])
    if len(tail):
        parts.append(np.array([np.dot(tail, tail)]))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def speech_regions(probs: np.ndarray, n_samples: int, options: VadOptions) -> list[tuple[float, float]]:
    """Given per-window probabilities, return speech regions as (start, end) seconds.

    Regions longer than max_chunk_s are cut at their longest pause by silero's own rules.
    """
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    stamps = get_speech_timestamps_from_probs(
        [float(p) for p in probs],
        sampling_rate=SAMPLE_RATE,
        threshold=options.threshold,
        min_speech_duration_ms=options.min_speech_ms,
        max_speech_duration_s=options.max_chunk_s,
        min_silence_duration_ms=options.min_silence_ms,
        speech_pad_ms=options.speech_pad_ms,
        audio_length_samples=n_samples,
    )
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


def group_regions(regions: Sequence[tuple[float, float]], options: VadOptions) -> list[SpeechChunk]:
    """Given sorted speech regions, return them packed into windows of at most max_chunk_s seconds.

    Regions closer than max_merge_gap_s join into one span with their pause;
    spans are then packed back to back into windows (with `pack`), in order.
    """
    chunks: list[SpeechChunk] = []
    window: list[list[tuple[float, float]]] = []
    for span in _spans(regions, options):
        length = span[-1][1] - span[0][0]
        used = sum(s[-1][1] - s[0][0] for s in window)
        if window and (not options.pack or used + length > options.max_chunk_s):
            chunks.append(_chunk(window))
            window = []
        window.append(span)
    if window:
        chunks.append(_chunk(window))
    return chunks


def _spans(regions: Sequence[tuple[float, float]], options: VadOptions) -> list[list[tuple[float, float]]]:
    """Join regions closer than max_merge_gap_s into spans of at most max_chunk_s; return each
    span's regions.

    A span that would grow too long is cut at its widest pause in its second half, not at
    whatever pause came last: a window that ends inside a sentence makes Whisper drop the
    sentence's start or invent its end, and the retry then decodes a fragment.
    """
    spans: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for start, end in regions:
        region = (start, min(end, start + options.max_chunk_s))
        if current and start - current[-1][1] > options.max_merge_gap_s:
            spans.append(current)
            current = []
        elif current and region[1] - current[0][0] > options.max_chunk_s:
            cut = _widest_pause(current, options.max_chunk_s / 2)
            spans.append(current[:cut])
            current = current[cut:]
            if current and region[1] - current[0][0] > options.max_chunk_s:
                spans.append(current)
                current = []
        current.append(region)
    if current:
        spans.append(current)
    return spans


def _widest_pause(span: list[tuple[float, float]], after_s: float) -> int:
    """Return the index of the region after the span's widest pause that starts at least `after_s`
    into the span (the whole span's length if there is none)."""
    candidates = [k for k in range(1, len(span)) if span[k][0] - span[0][0] >= after_s]
    if not candidates:
        return len(span)
    return max(candidates, key=lambda k: (span[k][0] - span[k - 1][1], k))


def _chunk(spans: list[list[tuple[float, float]]]) -> SpeechChunk:
    return SpeechChunk(tuple((s[0][0], s[-1][1]) for s in spans), tuple(r for s in spans for r in s))


@dataclass(frozen=True)
class SpeechMap:
    """What speech detection found in one file.

    chunks: the windows to decode (speech at `threshold`, packed).
    faint: every stretch that may be speech (at `faint_threshold`), a superset
        of the chunks' regions: the speech that must end up with words.
    """

    chunks: tuple[SpeechChunk, ...]
    faint: tuple[tuple[float, float], ...]


def map_speech_many(audios: Sequence[Audio], options: VadOptions = VadOptions()) -> list[SpeechMap]:
    """Given several files' 16 kHz audio, return each one's SpeechMap; they are scored together.

    Raise ValueError if any audio is not 16 kHz (the media stage resamples).
    """
    for audio in audios:
        if audio.sample_rate != SAMPLE_RATE:
            raise ValueError(f"speech detection needs {SAMPLE_RATE} Hz audio, got {audio.sample_rate} Hz")
    import numpy as np

    signals = [a.samples for a in audios]
    probs = speech_probabilities(signals, options)  # type: ignore[arg-type]
    # What silero hears in the audio as it is, too: under a music bed, levelling lifts the bed
    # between lines as much as the speech, and silero, hearing the lifted bed, lost a third of the
    # speech under music as loud as it; the raw signal found most of it. A stretch only the raw
    # signal hears is faint speech that a coverage round decodes if no word covers it. Stretches
    # both hear keep the levelled bounds: a retry window that grew into the music after a line
    # read "The cab is used to change the color" for "The cabbage juice changes color".
    raw = probs
    if options.level_window_s:
        raw = speech_probabilities(signals, replace(options, level_window_s=0))  # type: ignore[arg-type]
    faint_options = replace(options, threshold=options.faint_threshold)
    maps = []
    for p, r, audio in zip(probs, raw, audios, strict=True):
        n = len(audio.samples)  # type: ignore[arg-type]
        chunks = group_regions(speech_regions(p, n, options), options)
        faint = merge([*speech_regions(p, n, faint_options), *(x for c in chunks for x in c.regions)])
        faint += [x for x in speech_regions(r, n, faint_options) if not _touches(x, faint)]
        maps.append(SpeechMap(tuple(chunks), tuple(_with_onsets(merge(faint), np.maximum(p, r), options))))
    return maps


def _touches(region: tuple[float, float], others: Sequence[tuple[float, float]]) -> bool:
    return any(a < region[1] and b > region[0] for a, b in others)


ONSET_THRESHOLD = 0.05  # silero's probability on the rise into a sentence, before it calls it speech
ONSET_MAX_S = 1.0  # the most a stretch's start moves back to its onset


def _with_onsets(
    faint: list[tuple[float, float]], probs: Any, options: VadOptions
) -> list[tuple[float, float]]:
    """Return the stretches with each start moved back to where silero's probability began to rise.

    Under music silero calls a sentence speech up to half a second after its first
    word; a coverage retry reaching back for that word had the aligner put it over
    the music before it. Where the probability climbed (above ONSET_THRESHOLD,
    without a break, at most ONSET_MAX_S) is where the word starts: the stretch
    begins there, padded as silero pads, and words snapped onto it start no earlier.
    """
    pad = options.speech_pad_ms / 1000
    step = WINDOW / SAMPLE_RATE
    moved = []
    for start, end in faint:
        frame = min(int((start + pad) / step), len(probs))  # where the probability crossed, unpadded
        first, limit = frame, max(0, frame - round(ONSET_MAX_S / step))
        while first > limit and probs[first - 1] >= ONSET_THRESHOLD:
            first -= 1
        moved.append((max(0.0, min(start, first * step - pad)), end))
    return merge(moved)


def find_speech(audio: Audio, options: VadOptions = VadOptions()) -> list[SpeechChunk]:
    """Given 16 kHz mono audio, return the chunks of it that contain speech, in order.

    Raise ValueError if the audio is not 16 kHz (the media stage resamples).
    """
    return find_speech_many([audio], options)[0]


def find_speech_many(audios: Sequence[Audio], options: VadOptions = VadOptions()) -> list[list[SpeechChunk]]:
    """Given several files' 16 kHz audio, return each one's speech chunks; they are scored together.

    Raise ValueError if any audio is not 16 kHz (the media stage resamples).
    """
    return [list(found.chunks) for found in map_speech_many(audios, options)]
