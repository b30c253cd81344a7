"""Whisper as a service: audio that comes with a request (Bazarr's), through the daemon's own models.

A request carries its audio in memory (16 kHz mono float32) and waits in an
`AsrLane`; each transcriber worker looks there before it takes its next queued
file (daemon.transcribers), so a request goes ahead of the backlog (a batch
already in the model is finished first). Requests that wait together are
taken together, as many as share a model and fit a batch (workers.pick_batch),
and their speech is decoded in the same batches (transcribe_many). A request
is never refused for being queued: it waits until a worker is free.

`AsrService` is what the HTTP side calls: `submit` a transcription (answered
from a finished job's stored transcript when the request names its video),
`submit_detect` a language detection. `webservice_output` writes a transcript
the way whisper-asr-webservice answers (srt, vtt, txt, tsv, json).

torch and whisper are imported inside functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from daemon import subtitles
from daemon.datatypes import Audio, JobState, Transcript
from daemon.options import FolderRules, build_rules
from daemon.pathmap import map_prefix
from daemon.text import printable
from daemon.transcribe.options import TranscribeOptions
from daemon.transcribers.workers import Waiting, pick_batch

if TYPE_CHECKING:
    from whisper.model import Whisper

    from daemon.config import Config
    from daemon.queue import JobQueue

log = logging.getLogger("subwatch.asr")

SAMPLE_RATE = 16000
TASKS = ("transcribe", "translate")
OUTPUTS = ("txt", "vtt", "srt", "tsv", "json")  # whisper-asr-webservice's `output` choices
# A stored transcript answers a request without the key only for audio this close to its length.
DURATION_PROOF_SECONDS = 1.0


class AsrError(Exception):
    """A request that cannot be answered; the message says why, for the client."""


@dataclass(frozen=True)
class AsrRequest:
    """Audio to transcribe and how, as whisper-asr-webservice's /asr takes it.

    samples: 16 kHz mono float32 (numpy); task: transcribe or translate (to English);
    language: Whisper's code of the speech, None to detect it; initial_prompt: given to
    every window as previous text; word_timestamps: words in the JSON answer's segments.
    """

    samples: Any
    task: str = "transcribe"
    language: str | None = None
    initial_prompt: str | None = None
    word_timestamps: bool = False

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class AsrResult:
    """A request's transcript, with the rules whose cue layout renders it."""

    transcript: Transcript
    rules: FolderRules
    stored: bool = False  # answered from a finished job's stored transcript, nothing decoded


@dataclass(eq=False)
class Pending:
    """A request in the lane: a transcription (its result an AsrResult) or a language detection (its
    result (code, probability))."""

    kind: Literal["transcribe", "detect"]
    request: AsrRequest
    rules: FolderRules
    future: Future = field(default_factory=Future)

    @property
    def options(self) -> TranscribeOptions:
        """The rules' decoding options with the request's task, language and prompt."""
        r = self.request
        return replace(self.rules.transcribe, task=r.task, language=r.language, prompt=r.initial_prompt)

    def waiting(self) -> Waiting:
        return Waiting(self.rules.transcribe.model, self.rules.devices, self.request.seconds)

    def fail(self, reason: str) -> None:
        with contextlib.suppress(InvalidStateError):  # the client went away meanwhile (cancelled)
            self.future.set_exception(AsrError(reason))

    def answer(self, value: Any) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(value)


class LaneFull(AsrError):
    """The lane holds as much audio as it may (http.max_queued_audio_hours); `retry_after` in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AsrLane:
    """Requests waiting for a worker, in arrival order. Thread-safe.

    `max_seconds()` caps the audio waiting (None: no cap); a request the client gave up on (its
    future cancelled) is dropped when the workers next look, never transcribed.
    """

    def __init__(self, max_seconds: Callable[[], float | None] = lambda: None) -> None:
        self._items: list[Pending] = []
        self._lock = threading.Lock()
        self._max_seconds = max_seconds

    def __len__(self) -> int:
        with self._lock:
            self._drop_cancelled()
            return len(self._items)

    def seconds(self) -> float:
        """Seconds of audio waiting."""
        with self._lock:
            self._drop_cancelled()
            return sum(item.request.seconds for item in self._items)

    def full(self) -> bool:
        """Whether no more audio may wait now."""
        cap = self._max_seconds()
        return cap is not None and self.seconds() >= cap

    def put(self, item: Pending) -> None:
        """Add a request. Raise LaneFull if its audio does not fit beside what waits (an empty lane
        takes any request: the length of one is capped where it arrives)."""
        cap = self._max_seconds()
        with self._lock:
            self._drop_cancelled()
            waiting = sum(i.request.seconds for i in self._items)
            if cap is not None and self._items and waiting + item.request.seconds > cap:
                raise LaneFull(f"{waiting / 3600:.1f} h of audio already wait for a worker "
                               f"(http.max_queued_audio_hours); try again later", _retry_after(waiting))
            self._items.append(item)

    def take(self, worker: str, leave_to: Sequence[str] = ()) -> list[Pending]:
        """Remove and return the worker's next batch: the first request it serves and every later one
        with the same model, within a batch's bounds (workers.pick_batch); [] if there is none."""
        with self._lock:
            self._drop_cancelled()
            picked = pick_batch(worker, [item.waiting() for item in self._items], leave_to=leave_to)
            batch = [self._items[i] for i in picked]
            for i in reversed(picked):
                del self._items[i]
            return batch

    def drain(self) -> list[Pending]:
        """Remove and return everything waiting (at shutdown)."""
        with self._lock:
            items, self._items = self._items, []
            return items

    def _drop_cancelled(self) -> None:
        gone = [item for item in self._items if item.future.cancelled()]
        if gone:
            log.info("dropped %d HTTP request(s) whose client went away before a worker took them", len(gone))
            self._items = [item for item in self._items if not item.future.cancelled()]


def queued_seconds_cap(config: Config) -> float | None:
    """The most audio that may wait in the lane under `config` (None without an http section)."""
    return config.http.max_queued_audio_hours * 3600 if config.http is not None else None


def _retry_after(waiting_seconds: float) -> int:
    """A guess at when the lane has room: its audio at a modest 20x realtime, from 30 s to 10 min."""
    return int(min(600, max(30, waiting_seconds / 20)))


def describe(batch: Sequence[Pending]) -> str:
    """How a status line names a batch of requests."""
    return "1 HTTP request" if len(batch) == 1 else f"{len(batch)} HTTP requests"


def run_batch(
    batch: Sequence[Pending], decoder: Any, progress: Callable[[float], None] | None = None
) -> None:
    """Given a worker's batch of requests and its decoder (daemon.decoders.Decoder, its model loaded),
    answer each: transcriptions decoded together (if that fails, one at a time, so the error lands on
    the request that causes it), then detections.

    Errors become each request's AsrError; only an exception from `progress` (a shutdown) escapes.
    """
    stopped: list[BaseException] = []  # what `progress` raised: it escapes, it is no request's error

    def report(fraction: float) -> None:
        try:
            if progress is not None:
                progress(fraction)
        except BaseException as exc:
            stopped.append(exc)
            raise

    asked = [p for p in batch if p.kind == "transcribe" and not p.future.done()]
    if len(asked) > 1:
        log.info("transcribing %d HTTP requests together", len(asked))
    if asked:
        try:
            transcripts = decoder.transcribe_many(
                [(Audio(p.request.samples, SAMPLE_RATE), p.options) for p in asked],
                [f"request {i + 1}" for i in range(len(asked))], report,
            )
        except Exception as exc:  # out of memory, audio the model cannot take, bugs
            if stopped:
                raise
            if len(asked) == 1:
                asked[0].fail(f"transcription failed: {_one_line(exc)}")
            else:
                log.warning("a batch of %d HTTP requests failed (%s); transcribing them one at a time",
                            len(asked), _one_line(exc))
                for p in asked:
                    run_batch([p], decoder, progress)
        else:
            for p, transcript in zip(asked, transcripts, strict=True):
                log.info("answered an HTTP request: %.1f s of audio, %s, %d segment(s)", p.request.seconds,
                         transcript.language, len(transcript.segments))
                p.answer(AsrResult(transcript, p.rules))
    detect = [p for p in batch if p.kind == "detect" and not p.future.done()]
    if detect:
        try:
            found = decoder.detect_languages([(p.request.samples, p.options) for p in detect])
        except Exception as exc:  # out of memory, audio the model cannot take, bugs
            for p in detect:
                p.fail(f"language detection failed: {_one_line(exc)}")
        else:
            for p, answer in zip(detect, found, strict=True):
                p.answer(answer)


def _one_line(exc: BaseException) -> str:
    from daemon.outcomes import one_line_error

    return one_line_error(exc)


def detect_languages(
    model: Whisper, items: Sequence[tuple[Any, TranscribeOptions]]
) -> list[tuple[str, float]]:
    """Given several recordings (16 kHz float32 samples) and their options, return each one's
    (language code, probability).

    Like a queued file's language: up to `language_windows` speech windows spread
    through the recording vote, weighted by their seconds of speech; with no speech
    found, its first 30 s decide (as whisper-asr-webservice does). An English-only
    model answers ("en", 1.0).
    """
    from daemon.engine import encode, language_probabilities, log_mel, prepare_model, vote_language
    from daemon.transcribe.speech import speech_maps, speech_seconds, voter_chunks

    if not model.is_multilingual:
        return [("en", 1.0) for _ in items]
    model = prepare_model(model)
    audios = [(Audio(samples, SAMPLE_RATE), options) for samples, options in items]
    windows: list[tuple[int, Any, float]] = []  # (item, samples of the window, weight)
    for index, ((audio, options), found) in enumerate(zip(audios, speech_maps(audios), strict=True)):
        chunks = list(found.chunks)
        if not chunks:
            windows.append((index, audio.samples[: 30 * SAMPLE_RATE], 1.0))
            continue
        for c in voter_chunks(chunks, options.language_windows):
            windows.append((index, chunks[c].samples(audio), speech_seconds(chunks[c])))
    distributions: list[dict[str, float]] = []
    for start in range(0, len(windows), 16):
        part = windows[start : start + 16]
        mel = log_mel([samples for _, samples, _ in part], model.dims.n_mels, model.device)
        distributions += language_probabilities(model, encode(model, mel))
    answers = []
    for index in range(len(items)):
        mine = [i for i, (owner, _, _) in enumerate(windows) if owner == index]
        code, probability = vote_language([distributions[i] for i in mine], [windows[i][2] for i in mine])
        answers.append((code, float(probability)))
    return answers


# ----------------------------------------------------------------------------- the service


def map_path(path: str, path_map: Mapping[str, str]) -> Path:
    """Given a path as another program sees it and `path_map` (its prefixes -> paths here), return the
    path here (see `pathmap`: the longest prefix matching whole components; none, it is kept)."""
    return Path(map_prefix(path, path_map.items()))


def rules_in(config: Callable[[], Config]) -> Callable[[Path | None], FolderRules]:
    """Given the config in force, return what picks a request's rules: those of the watched folder
    holding its video, else the first folder's (a request without a known video uses the model and
    devices the library uses), else the built-in defaults."""

    def rules_for(video: Path | None) -> FolderRules:
        current = config()
        found = current.folder_for(video) if video is not None else None
        if found is not None:
            return found
        return current.folders[0] if current.folders else build_rules(Path("/"), {})

    return rules_for


class AsrService:
    """Transcriptions and language detections for the HTTP side, answered by the transcriber workers.

    `lane` is the one the workers look at (Transcribers.asr); `rules_for(video)` gives a request's
    rules (model, devices, cue layout; see `rules_in`); `jobs` is the queue whose finished jobs'
    stored transcripts answer a request that names its video (None: always decode).
    """

    def __init__(self, lane: AsrLane, rules_for: Callable[[Path | None], FolderRules],
                 jobs: JobQueue | None = None) -> None:
        self.lane = lane
        self._rules_for = rules_for
        self._jobs = jobs

    def stored(self, request: AsrRequest, video: Path, seconds: float | None = None) -> AsrResult | None:
        """Given a request and the path here of the video it is for, return the answer from that file's
        stored transcript if its job is done and the transcript is in the language asked for; else None.

        With `seconds` (the length of the audio the caller sent), only a transcript of audio that long
        (within DURATION_PROOF_SECONDS) answers: a caller without the key must prove it holds the file
        by sending its audio. Blocking (reads the queue's database)."""
        if self._jobs is None:
            return None
        try:
            job = self._jobs.find(video)
            if job is None or job.state is not JobState.DONE:
                return None
            transcript = self._jobs.transcript_of(job.id)
        except Exception as exc:  # an unreadable store means decoding, never a failed request
            log.warning("no stored transcript for %s (%s); transcribing the request's audio",
                        printable(os.fsdecode(video)), exc)
            return None
        wanted = "en" if request.task == "translate" else request.language
        if transcript is None or (wanted is not None and wanted != transcript.language):
            return None
        if seconds is not None and abs(transcript.duration - seconds) > DURATION_PROOF_SECONDS:
            log.info("an HTTP request named %s but sent %.1f s of audio, not its %.1f s; transcribing what "
                     "it sent", printable(os.fsdecode(video)), seconds, transcript.duration)
            return None
        log.info("answered an HTTP request for %s from its stored transcript", printable(os.fsdecode(video)))
        return AsrResult(transcript, self._rules_for(video), stored=True)

    def submit(self, request: AsrRequest, video: Path | None = None) -> Future:
        """Queue a transcription for the workers; its future gives an AsrResult or raises AsrError.

        Raise AsrError at once if the request cannot be taken (no audio, unknown task).
        """
        check(request)
        pending = Pending("transcribe", request, self._rules_for(video))
        self.lane.put(pending)
        return pending.future

    def submit_detect(self, samples: Any) -> Future:
        """Queue a language detection; its future gives (Whisper's language code, probability)."""
        request = AsrRequest(samples)
        check(request)
        pending = Pending("detect", request, self._rules_for(None))
        self.lane.put(pending)
        return pending.future

    def transcribe(
        self, request: AsrRequest, video: Path | None = None, timeout: float | None = None
    ) -> AsrResult:
        """Blocking `submit` (with the stored answer first when `video` is given)."""
        if video is not None:
            found = self.stored(request, video)
            if found is not None:
                return found
        return self.submit(request, video).result(timeout)

    def detect_language(self, samples: Any, timeout: float | None = None) -> tuple[str, float]:
        """Blocking `submit_detect`: return (Whisper's language code, probability)."""
        return self.submit_detect(samples).result(timeout)


def check(request: AsrRequest) -> None:
    """Raise AsrError if a request cannot be transcribed as asked."""
    from daemon.languages import WHISPER_CODES

    if request.task not in TASKS:
        raise AsrError(f"task must be one of {', '.join(TASKS)}, not {request.task!r}")
    if request.language is not None and request.language not in WHISPER_CODES:
        raise AsrError(f"language {request.language!r} is not one of Whisper's language codes")
    if len(request.samples) == 0:
        raise AsrError("the audio is empty")


# ----------------------------------------------------------------------------- whisper-asr-webservice's text


def webservice_output(result: AsrResult, output: str, word_timestamps: bool = False) -> str:
    """Given an answer and whisper-asr-webservice's `output` (srt, vtt, txt, tsv, json), return its text.

    The layout is whisper's own writers', with whisper-asr-webservice's options; srt and vtt cues are
    subwatch's (daemon.subtitles: balanced lines, reading speed), txt and tsv one line per segment, json
    whisper's transcribe() result (text, segments, language; words with `word_timestamps`).
    """
    from whisper.utils import WriteJSON, WriteSRT, WriteTSV, WriteTXT, WriteVTT

    if output not in OUTPUTS:
        raise AsrError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
    transcript = result.transcript
    if output in ("srt", "vtt"):
        cues = subtitles.build_cues(transcript.segments, result.rules.subtitles.cues,
                                    media_duration=transcript.duration or None, language=transcript.language)
        document: dict[str, Any] = {"segments": [
            {"start": c.start, "end": c.end, "text": "\n".join(c.lines)} for c in cues
        ]}
    else:
        document = whisper_result(transcript, word_timestamps)
    writer = {"srt": WriteSRT, "vtt": WriteVTT, "txt": WriteTXT, "tsv": WriteTSV, "json": WriteJSON}[output]
    text = io.StringIO()
    options = {"max_line_width": 1000, "max_line_count": 10, "highlight_words": False}
    writer("").write_result(document, file=text, options=options)
    return text.getvalue()


def whisper_result(transcript: Transcript, word_timestamps: bool = False) -> dict[str, Any]:
    """Given a transcript, return it as whisper's transcribe() result: text, segments (id, start, end,
    text, and words when asked), language. Decoding statistics (tokens, log probabilities) are not kept
    per segment here, so they are left out."""
    segments = []
    for index, s in enumerate(transcript.segments):
        segment: dict[str, Any] = {"id": index, "start": round(s.start, 3), "end": round(s.end, 3),
                                   "text": s.text}
        if word_timestamps:
            segment["words"] = [
                {"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3),
                 "probability": round(w.probability, 4)}
                for w in s.words
            ]
        segments.append(segment)
    return {"text": "".join(s.text for s in transcript.segments), "segments": segments,
            "language": transcript.language}
