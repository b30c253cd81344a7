"""Bazarr's two endpoints: whisper-asr-webservice's `/asr` and `/detect-language`, as its `whisperai`
provider calls them.

Bazarr decodes the video's audio itself and sends it as raw PCM (signed 16-bit
little-endian, 16 kHz, mono) in the multipart field `audio_file`, with
`encode=false`; other clients send any file ffmpeg reads, with `encode=true`
(the default). `/asr` answers the subtitle text (text/plain; json output:
application/json), `/detect-language` `{"detected_language", "language_code",
"confidence"}`. A request that names `video_file` (a path as Bazarr sees it,
mapped by `path_map`) whose file is done is answered from its stored transcript.

Requests wait for a worker as long as it takes (Bazarr waits up to its own
timeout, an hour by default); bad input is a 400 or 422 with a one-line reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.datastructures import UploadFile
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
    map_path,
    webservice_output,
)
from daemon.languages import LANGUAGES, WHISPER_CODES

log = logging.getLogger("subwatch.http")

FIELD = "audio_file"
ENGINE = "subwatch"  # whisper-asr-webservice's Asr-Engine header names its backend


class BadRequest(Exception):
    """The request cannot be answered as sent; `status` is 400 (bad audio) or 422 (bad parameters)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def bazarr_routes(asr: AsrService, path_map: Mapping[str, str]) -> list[Route]:
    """Return the routes of `/asr` and `/detect-language`, answered by `asr`; `path_map` maps
    `video_file` paths as Bazarr sees them to paths here."""
    mapping = dict(path_map)

    async def transcribe(request: Request) -> Response:
        try:
            return await _asr(request, asr, mapping)
        except BadRequest as exc:
            return _problem(exc.status, str(exc))
        except AsrError as exc:
            return _problem(500, str(exc))

    async def detect(request: Request) -> Response:
        try:
            return await _detect(request, asr)
        except BadRequest as exc:
            return _problem(exc.status, str(exc))
        except AsrError as exc:
            return _problem(500, str(exc))

    return [
        Route("/asr", transcribe, methods=["POST"]),
        Route("/detect-language", detect, methods=["POST"]),
    ]


async def _asr(request: Request, asr: AsrService, path_map: Mapping[str, str]) -> Response:
    params = request.query_params
    task = params.get("task") or "transcribe"
    if task not in TASKS:
        raise BadRequest(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    language = params.get("language") or None
    if language is not None and language not in WHISPER_CODES:
        raise BadRequest(f"language {language!r} is not a Whisper language code (en, de, es, …)")
    output = params.get("output") or "txt"
    if output not in OUTPUTS:
        raise BadRequest(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
    encode = _flag(params, "encode", True)
    word_timestamps = _flag(params, "word_timestamps", False)
    prompt = params.get("initial_prompt") or None
    video = map_path(params["video_file"], path_map) if params.get("video_file") else None
    name, data = await _upload(request)
    result = None
    if video is not None:
        wanted = AsrRequest((), task, language, prompt, word_timestamps)
        result = await asyncio.to_thread(asr.stored, wanted, video)
    if result is None:
        samples = await asyncio.to_thread(decode_audio, data, encode)
        future = asr.submit(AsrRequest(samples, task, language, prompt, word_timestamps), video)
        result = await asyncio.wrap_future(future)
    text = await asyncio.to_thread(webservice_output, result, output, word_timestamps)
    headers = {"Asr-Engine": ENGINE, "Content-Disposition": f'attachment; filename="{quote(name)}.{output}"'}
    if output == "json":
        return Response(text, media_type="application/json", headers=headers)
    return PlainTextResponse(text, headers=headers)


async def _detect(request: Request, asr: AsrService) -> Response:
    encode = _flag(request.query_params, "encode", True)
    _, data = await _upload(request)
    samples = await asyncio.to_thread(decode_audio, data, encode)
    code, confidence = await asyncio.wrap_future(asr.submit_detect(samples))
    return JSONResponse({"detected_language": LANGUAGES[code].names[0], "language_code": code,
                         "confidence": confidence})


async def _upload(request: Request) -> tuple[str, bytes]:
    """Return the name and bytes of the multipart field `audio_file`. Raise BadRequest if there is none."""
    needed = f"the body must be multipart/form-data with the audio in field {FIELD!r}"
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest(needed, 400)
    try:
        form = await request.form()
    except Exception as exc:  # a broken body
        raise BadRequest(f"{needed} ({exc})", 400) from None
    try:
        upload = form.get(FIELD)
        if not isinstance(upload, UploadFile):
            raise BadRequest(f"multipart field {FIELD!r} with the audio is missing")
        return upload.filename or FIELD, await upload.read()
    finally:
        await form.close()


def _flag(params: Mapping[str, str], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false, not {value!r}")


def decode_audio(data: bytes, encode: bool) -> Any:
    """Given the uploaded bytes, return 16 kHz mono float32 samples: raw PCM s16le when `encode` is
    False (Bazarr), any file ffmpeg reads when True. Raise BadRequest (400) if they are no audio."""
    import numpy as np

    if not data:
        raise BadRequest("the audio is empty", 400)
    if not encode:
        if len(data) % 2:
            raise BadRequest("with encode=false the audio must be raw PCM, signed 16-bit little-endian, "
                             f"16 kHz mono; {len(data)} bytes is not a whole number of samples", 400)
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    return _ffmpeg_decode(data)


def _ffmpeg_decode(data: bytes) -> Any:
    from daemon import media

    handle, name = tempfile.mkstemp(prefix="subwatch-asr-")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        info = media.probe(path)
        audio = media.load_audio(path, info, media.choose_audio_stream(info))
    except media.MediaError as exc:
        raise BadRequest(f"ffmpeg cannot read the audio: {exc}", 400) from None
    finally:
        path.unlink(missing_ok=True)
    if audio.sample_rate != SAMPLE_RATE:  # load_audio resamples; a guard, never expected
        raise BadRequest(f"decoded at {audio.sample_rate} Hz, not {SAMPLE_RATE}", 400)
    return audio.samples


def _problem(status: int, message: str) -> Response:
    """An error answer: whisper-asr-webservice's (FastAPI's) shape, {"detail": "..."}."""
    log.info("HTTP %d: %s", status, message)
    return JSONResponse({"detail": message}, status_code=status)
