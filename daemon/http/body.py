"""Request bodies read under a cap: a declared length over it is refused before a byte is read, and
a body sent in chunks (or longer than it said) is cut off as soon as it passes the cap. A body must
also come at LAN speed: slower than MIN_BYTES_PER_SECOND on average after GRACE_SECONDS, it is cut
off (a body dripped a byte at a time would otherwise hold its connection for ever).

Starlette's `request.body()` and `request.form()` read whatever comes, and its multipart parser
spools file parts to disk without a limit; everything here reads through `read_body` first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

GRACE_SECONDS = 30.0
MIN_BYTES_PER_SECOND = 64 * 1024


class BodyRefused(Exception):
    """The body cannot be taken: `status` 413 (too large), 408 (too slow), 400 (a malformed length, a
    sender gone) or 503 (no turn to send it; `retry_after` seconds)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def check_declared_length(request: Request, limit: int, too_large: str) -> None:
    """Raise BodyRefused(413, `too_large`) if the request's Content-Length says more than `limit`,
    before a byte is read; BodyRefused(400) if it is not a number."""
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            raise BodyRefused(400, "the Content-Length header is not a number")
        if len(declared) > 18 or int(declared) > limit:
            raise BodyRefused(413, too_large)


async def limited_stream(request: Request, limit: int, too_large: str) -> AsyncIterator[bytes]:
    """Yield the request body's chunks. Raise BodyRefused: 413 (`too_large`) past `limit` bytes,
    declared or sent; 408 when the body comes slower than MIN_BYTES_PER_SECOND on average after
    GRACE_SECONDS; 400 when the sender goes away mid-body."""
    check_declared_length(request, limit, too_large)
    started = time.monotonic()
    received = 0
    chunks = request.stream().__aiter__()
    while True:
        allowed = started + GRACE_SECONDS + received / MIN_BYTES_PER_SECOND - time.monotonic()
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), max(allowed, 0.001))
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyRefused(408, "the body arrived too slowly; send it at LAN speed") from None
        except ClientDisconnect:
            raise BodyRefused(400, "the sender went away before the body was complete") from None
        received += len(chunk)
        if received > limit:  # chunked, or longer than it said: stop reading now
            raise BodyRefused(413, too_large)
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """Given a request and the most bytes its body may have, return the body.

    Raise BodyRefused as `limited_stream` does: 413 if its Content-Length says more than `limit`
    (nothing is read then) or if more than `limit` bytes come, 408 if it comes too slowly, 400 if
    Content-Length is not a number or the sender went away mid-body.
    """
    return b"".join([chunk async for chunk in limited_stream(request, limit, _too_large(limit))])


async def read_form(request: Request, limit: int, *, max_fields: int, max_files: int,
                    max_part_size: int) -> FormData:
    """Given a multipart or urlencoded request and the most bytes its body may have, return its
    fields (close the form's files when done: `await form.close()`).

    The whole body is read under `limit` first (see `read_body`), so the parser spools no more than
    that to disk. Raise BodyRefused as `read_body` does, and BodyRefused(400) if the form is malformed
    or has more fields, files or bigger parts than allowed.
    """
    body = await read_body(request, limit)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(
            max_fields=max_fields, max_files=max_files, max_part_size=max_part_size)
    except HTTPException as exc:  # Starlette's answer to a malformed or oversized form
        raise BodyRefused(400, f"the form cannot be read: {exc.detail}") from None
    except (ValueError, UnicodeError) as exc:
        raise BodyRefused(400, f"the form cannot be read: {exc}") from None


def _too_large(limit: int) -> str:
    return f"the body is larger than the {limit // 1024} kB this endpoint takes"
