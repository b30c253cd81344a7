"""Bazarr's two endpoints: whisper-asr-webservice's `/asr` and `/detect-language`, as its `whisperai`
provider calls them.

Bazarr decodes the video's audio itself and sends it as raw PCM (signed 16-bit
little-endian, 16 kHz, mono) in the multipart field `audio_file`, with
`encode=false`; other clients send any file ffmpeg reads, with `encode=true`
(the default). `/asr` answers the subtitle text (text/plain; json output:
application/json), `/detect-language` `{"detected_language", "language_code",
"confidence"}`. A request that names `video_file` (a path as Bazarr sees it,
mapped by `path_map`) whose file is done is answered from its stored transcript.

Anyone on the network may call these two (Bazarr cannot send a key), so everything about a
request is bounded (daemon.http.uploads): its body streams to disk under a byte limit and a
minimum rate; its audio is capped at `http.max_audio_hours`; at most `http.decode_slots` are
decoded at once, by ffmpeg that reads only single-file media (daemon.media); the audio waiting for
a worker is capped at `http.max_queued_audio_hours` (past it: 503 with Retry-After); a request
whose client has gone is dropped before it is decoded or transcribed. A stored transcript answers
`video_file` only for a caller with the key, or one whose audio is as long as that file's (it
holds the file). Bad input is a 400, 413 or 422 with a one-line reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from daemon.asr import (
    OUTPUTS,
    SAMPLE_RATE,
    TASKS,
    AsrError,
    AsrRequest,
    AsrService,
    LaneFull,
    map_path,
    webservice_output,
)
from daemon.config import Config, HttpRules
from daemon.http.app import has_key
from daemon.http.body import BodyRefused
from daemon.http.ratelimit import RateLimitedLog
from daemon.http.uploads import (
    MULTIPART_OVERHEAD,
    DecodePool,
    Upload,
    UploadGate,
    saved_upload,
    unless_gone,
)
from daemon.languages import LANGUAGES, WHISPER_CODES

log = logging.getLogger("subwatch.http")
_refusals = RateLimitedLog(log)

FIELD = "audio_file"
ENGINE = "subwatch"  # whisper-asr-webservice's Asr-Engine header names its backend


PCM_BYTES_PER_SECOND = 2 * SAMPLE_RATE  # Bazarr's raw s16le mono
READ_BYTES = 1024 * 1024
UPLOAD_LIMIT = "limit (http.max_audio_hours of 16 kHz 16-bit audio)"


class BadRequest(Exception):
    """The request cannot be answered as sent; `status` is 400 (bad audio), 413 (too long) or 422
    (bad parameters)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestLimits:
    """What one request may bring, from the `http:` section: its audio's length, its body's size and
    how long its decode may take."""

    max_seconds: float
    max_upload_bytes: int
    decode_seconds: float

    @classmethod
    def of(cls, http: HttpRules) -> RequestLimits:
        seconds = http.max_audio_hours * 3600
        # Raw PCM is the largest form of the audio anyone sends (Bazarr's); compressed files are smaller.
        return cls(seconds, int(seconds * PCM_BYTES_PER_SECOND) + MULTIPART_OVERHEAD,
                   # Past the time limits of its probe and decode (daemon.media.tool), with room.
                   300 + seconds / 5)


class RequestSide:
    """Bazarr's two routes and what their requests share: the turns to upload, the decode threads."""

    def __init__(self, asr: AsrService, config: Callable[[], Config], work_dir: Path) -> None:
        self._asr = asr
        self._config = config
        self._work_dir = work_dir
        self._gate = UploadGate()
        http = config().http or HttpRules()
        self._pool = DecodePool(http.decode_slots)

    def routes(self) -> list[Route]:
        return [Route("/asr", self._answer(self._transcribe), methods=["POST"]),
                Route("/detect-language", self._answer(self._detect), methods=["POST"])]

    def healthy(self) -> bool:
        """False when request decoding is stuck (a decode far past its time limit)."""
        return not self._pool.wedged()

    def close(self) -> None:
        self._pool.shutdown()

    def _http(self) -> HttpRules:
        return self._config().http or HttpRules()

    def _answer(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except (BadRequest, BodyRefused) as exc:
                return _problem(exc.status, str(exc), getattr(exc, "retry_after", None))
            except LaneFull as exc:
                return _problem(503, str(exc), exc.retry_after)
            except AsrError as exc:
                return _problem(500, str(exc))

        return endpoint

    async def _transcribe(self, request: Request) -> Response:
        params = request.query_params
        wanted = _asr_request(params)
        output = params.get("output") or "txt"
        if output not in OUTPUTS:
            raise BadRequest(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
        encode = _flag(params, "encode", True)
        http = self._http()
        video = map_path(params["video_file"], dict(http.path_map)) if params.get("video_file") else None
        keyed = has_key(request, http)
        limits = RequestLimits.of(http)
        self._refuse_if_full()
        async with self._gate.turn(), self._upload(request, limits) as upload:
            result = None
            if video is not None and keyed:
                result = await asyncio.to_thread(self._asr.stored, wanted, video)
            if result is None:
                samples = await self._decode(request, upload, encode, limits)
                if samples is None:
                    return _gone()
                if video is not None and not keyed:
                    seconds = len(samples) / SAMPLE_RATE
                    result = await asyncio.to_thread(self._asr.stored, wanted, video, seconds)
        if result is None:
            future = self._asr.submit(replace_samples(wanted, samples), video)
            result = await unless_gone(request, asyncio.wrap_future(future), future.cancel)
            if result is None:
                return _gone()
        text = await asyncio.to_thread(webservice_output, result, output, wanted.word_timestamps)
        headers = {"Asr-Engine": ENGINE,
                   "Content-Disposition": f'attachment; filename="{quote(upload.filename)}.{output}"'}
        if output == "json":
            return Response(text, media_type="application/json", headers=headers)
        return PlainTextResponse(text, headers=headers)

    async def _detect(self, request: Request) -> Response:
        encode = _flag(request.query_params, "encode", True)
        limits = RequestLimits.of(self._http())
        self._refuse_if_full()
        async with self._gate.turn(), self._upload(request, limits) as upload:
            samples = await self._decode(request, upload, encode, limits)
        if samples is None:
            return _gone()
        future = self._asr.submit_detect(samples)
        answer = await unless_gone(request, asyncio.wrap_future(future), future.cancel)
        if answer is None:
            return _gone()
        code, confidence = answer
        return JSONResponse({"detected_language": LANGUAGES[code].names[0], "language_code": code,
                             "confidence": confidence})

    def _refuse_if_full(self) -> None:
        """Answer 503 before reading a byte when the lane already holds all the audio it may."""
        if self._asr.lane.full():
            raise LaneFull("the request queue is full (http.max_queued_audio_hours); try again later",
                           retry_after=60)

    def _upload(self, request: Request, limits: RequestLimits) -> Any:
        return saved_upload(request, FIELD, limits.max_upload_bytes, UPLOAD_LIMIT,
                            self._work_dir)

    async def _decode(self, request: Request, upload: Upload, encode: bool, limits: RequestLimits) -> Any:
        """Decode the upload in the pool; return its samples, or None if the client went away first."""
        future = self._pool.submit(decode_audio, upload.path, upload.size, encode, limits, self._work_dir,
                                   limit_s=limits.decode_seconds)
        return await unless_gone(request, asyncio.wrap_future(future), future.cancel)


def _asr_request(params: Mapping[str, str]) -> AsrRequest:
    """Given /asr's query parameters, return the request they ask for (its samples still empty).
    Raise BadRequest (422) for a parameter out of its choices."""
    task = params.get("task") or "transcribe"
    if task not in TASKS:
        raise BadRequest(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    language = params.get("language") or None
    if language is not None and language not in WHISPER_CODES:
        raise BadRequest(f"language {language!r} is not a Whisper language code (en, de, es, …)")
    return AsrRequest((), task, language, params.get("initial_prompt") or None,
                      _flag(params, "word_timestamps", False))


def replace_samples(request: AsrRequest, samples: Any) -> AsrRequest:
    return AsrRequest(samples, request.task, request.language, request.initial_prompt,
                      request.word_timestamps)


def _flag(params: Mapping[str, str], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false, not {value!r}")


def decode_audio(path: Path, size: int, encode: bool, limits: RequestLimits, work_dir: Path) -> Any:
    """Given an uploaded file, return its audio as 16 kHz mono float32 samples kept on disk: raw PCM
    s16le when `encode` is False (Bazarr), any single-file media ffmpeg reads when True.

    Raise BadRequest: 400 if it is no audio (or media that names other files), 413 if it is longer
    than `limits.max_seconds`.
    """
    from daemon import media, samples

    if size == 0:
        raise BadRequest("the audio is empty", 400)
    if not encode:
        if size % 2:
            raise BadRequest("with encode=false the audio must be raw PCM, signed 16-bit little-endian, "
                             f"16 kHz mono; {size} bytes is not a whole number of samples", 400)
        if size / PCM_BYTES_PER_SECOND > limits.max_seconds:
            raise _too_long(limits)
        with open(path, "rb") as f:
            return samples.from_pcm_stream(iter(lambda: f.read(READ_BYTES), b""), "s16le", work_dir)
    try:
        return media.decode_upload(path, limits.max_seconds, work_dir)
    except media.TooLong:
        raise _too_long(limits) from None
    except media.MediaError as exc:
        raise BadRequest(f"ffmpeg cannot read the audio: {exc}", 400) from None


def _too_long(limits: RequestLimits) -> BadRequest:
    return BadRequest(f"the audio is longer than http.max_audio_hours ({limits.max_seconds / 3600:g} h); "
                      "send a shorter part, or raise the limit", 413)


def _gone() -> Response:
    """What a request whose client went away gets (nobody reads it)."""
    return Response(status_code=408)


def _problem(status: int, message: str, retry_after: int | None = None) -> Response:
    """An error answer: whisper-asr-webservice's (FastAPI's) shape, {"detail": "..."}; logged once a
    minute per status, since anyone may send these."""
    _refusals.info(status, "HTTP %d: %s", status, message)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"detail": message}, status_code=status, headers=headers)
