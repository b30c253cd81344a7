"""What a stranger's connections and bodies may take, on a real uvicorn server (subwatch's HttpServer)
over real sockets on 127.0.0.1: request heads under a deadline, connections under a cap that drops
the longest-idle one, bodies under a byte limit and a minimum rate, the Host header checked, browser
POSTs from other sites refused, and refusals logged once a minute."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.config import HttpRules, Secret
from daemon.http import body as http_body
from daemon.http import server as http_server
from daemon.http import uploads
from daemon.http.app import ApiKeyGate
from daemon.http.ratelimit import RateLimitedLog
from daemon.http.server import HttpServer

KEY = "bounds-" + "0123456789abcdef" * 2


def _app(rules: HttpRules, work_dir: Path):  # noqa: ANN202 - a Starlette app
    from starlette.applications import Starlette

    async def echo(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def upload(request: Request) -> Response:
        try:
            async with uploads.saved_upload(request, "audio_file", 1000, "test limit", work_dir) as saved:
                return JSONResponse({"size": saved.size, "name": saved.filename,
                                     "content": saved.path.read_bytes().decode()})
        except http_body.BodyRefused as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    app = Starlette(routes=[Route("/healthz", echo), Route("/asr", upload, methods=["POST"]),
                            Route("/api/retry", echo, methods=["POST"])])
    app.add_middleware(ApiKeyGate, config=lambda: _Config(rules))
    return app


class _Config:
    def __init__(self, http: HttpRules) -> None:
        self.http = http


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setattr(http_server, "HEADER_SECONDS", 1.0)
    monkeypatch.setattr(http_server, "MAX_CONNECTIONS", 40)
    monkeypatch.setattr(http_body, "GRACE_SECONDS", 1.0)
    monkeypatch.setattr(http_body, "MIN_BYTES_PER_SECOND", 100)
    rules = HttpRules(port=0, allowed_hosts=("subwatch.lan",))
    server = HttpServer(_app(rules, tmp_path / "work"), rules)
    server.start()
    yield f"http://127.0.0.1:{server.port}", server.port
    server.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b"" or True  # any answer (a 408/400) or EOF: the server let go
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_connection_that_sends_no_request_head_is_closed(served: tuple[str, int]) -> None:
    url, port = served
    idle = _connect(port)
    slow = _connect(port)
    slow.sendall(b"GET /healthz HTTP/1.1\r\n")
    for _ in range(4):  # a header line now and then: never a whole head
        time.sleep(0.3)
        slow.sendall(b"X-A: b\r\n")
    assert _closed_by_server(idle, 5.0)
    assert _closed_by_server(slow, 5.0)
    assert httpx.get(f"{url}/healthz", timeout=5).json() == {"ok": True}


def test_a_flood_of_idle_sockets_never_locks_out_a_client_that_talks(served: tuple[str, int]) -> None:
    url, port = served
    flood = [_connect(port) for _ in range(120)]  # three times the cap
    try:
        answer = httpx.get(f"{url}/healthz", timeout=5)
        assert answer.status_code == 200 and answer.json() == {"ok": True}
        # The cap closed the oldest idle sockets as new ones came.
        assert _closed_by_server(flood[0], 2.0)
    finally:
        for sock in flood:
            sock.close()


def test_an_oversized_head_is_refused(served: tuple[str, int]) -> None:
    url, _ = served
    answer = httpx.get(f"{url}/healthz", headers={"X-Big": "a" * 40_000}, timeout=5)
    assert answer.status_code == 431
    _, port = served
    dripped = _connect(port)  # a head that never ends, in pieces: h11 gives up past its limit
    dripped.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: ")
    answer = b""
    try:
        for _ in range(10):
            dripped.sendall(b"a" * 4000)
            time.sleep(0.05)
        dripped.settimeout(5)
        answer = dripped.recv(1024)
    except (ConnectionResetError, BrokenPipeError):  # it answered 400 and closed while we still sent
        answer = b"HTTP/1.1 400 (reset)"
    assert answer.startswith(b"HTTP/1.1 400"), answer


def test_a_body_is_refused_by_its_declared_length_before_it_is_read(served: tuple[str, int]) -> None:
    _, port = served
    sock = _connect(port)
    sock.sendall(b"POST /asr HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                 b"Content-Length: 10000000000\r\n\r\n")
    sock.settimeout(5)
    answer = b""
    while b"}" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"the body is 9537 MiB, over the 1000 bytes test limit" in answer


def test_a_body_past_its_limit_without_a_length_is_cut_off(served: tuple[str, int]) -> None:
    url, _ = served

    def chunks() -> Iterator[bytes]:
        yield b"--x\r\nContent-Disposition: form-data; name=\"audio_file\"; filename=\"a\"\r\n\r\n"
        for _ in range(50):
            yield b"z" * 100
        yield b"\r\n--x--\r\n"

    answer = httpx.post(f"{url}/asr", content=chunks(), timeout=10,
                        headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert answer.status_code == 413 and "test limit" in answer.json()["detail"]
    small = httpx.post(f"{url}/asr", files={"audio_file": ("a.raw", b"hello")}, timeout=10)
    assert small.json() == {"size": 5, "name": "a.raw", "content": "hello"}


def test_a_body_dripped_slower_than_the_minimum_rate_is_cut_off(served: tuple[str, int]) -> None:
    _, port = served
    sock = _connect(port)
    body = b"--x\r\nContent-Disposition: form-data; name=\"audio_file\"; filename=\"a\"\r\n\r\n" + b"z" * 900
    sock.sendall(b"POST /asr HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:80])
    answer = b""
    sock.settimeout(0.4)
    for byte in body[80:]:  # one byte every 0.4 s: far under 100 bytes/s
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            sock.sendall(bytes([byte]))
            continue
        break
    assert answer.startswith(b"HTTP/1.1 408"), answer
    sock.settimeout(5)
    while b"}" not in answer:  # the head and the body may come in separate packets
        more = sock.recv(4096)
        if not more:
            break
        answer += more
    assert b"too slowly" in answer, answer


def test_the_host_header_must_name_this_server(served: tuple[str, int]) -> None:
    url, port = served
    for host in ("evil.example", f"evil.example:{port}", "10.9.8.7", "localhost.evil.example"):
        answer = httpx.get(f"{url}/healthz", headers={"Host": host}, timeout=5)
        assert answer.status_code == 400, host
        assert "does not name this server" in answer.json()["error"]
        assert "http.allowed_hosts" in answer.json()["error"]
    for host in ("localhost", f"127.0.0.1:{port}", "[::1]:9000", "subwatch.lan", f"SUBWATCH.lan:{port}",
                 socket.gethostname()):
        assert httpx.get(f"{url}/healthz", headers={"Host": host}, timeout=5).status_code == 200, host


def test_browser_posts_from_another_site_are_refused_everywhere(served: tuple[str, int]) -> None:
    url, port = served
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        for path in ("/asr", "/api/retry"):
            answer = httpx.post(f"{url}{path}", headers=headers, files={"audio_file": ("a", b"x")}, timeout=5)
            assert answer.status_code == 403, (path, headers)
    same = httpx.post(f"{url}/api/retry", headers={"Origin": f"http://127.0.0.1:{port}",
                                                   "Sec-Fetch-Site": "same-origin"}, timeout=5)
    assert same.status_code == 200
    # Bazarr sends neither header.
    assert httpx.post(f"{url}/asr", files={"audio_file": ("a", b"x")}, timeout=5).status_code == 200


def test_the_key_is_asked_and_refusals_are_logged_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = HttpRules(port=0, api_key=Secret(KEY))
    server = HttpServer(_app(rules, tmp_path), rules)
    server.start()
    caplog.set_level(logging.WARNING, logger="subwatch.http")
    try:
        url = f"http://127.0.0.1:{server.port}"
        codes = [httpx.post(f"{url}/api/retry", timeout=5).status_code for _ in range(30)]
        assert codes == [401] * 30
        assert httpx.post(f"{url}/api/retry", headers={"X-Api-Key": KEY}, timeout=5).status_code == 200
        assert httpx.post(f"{url}/api/retry", params={"apikey": KEY}, timeout=5).status_code == 200
    finally:
        server.stop()
    refusals = [r for r in caplog.records if "missing or wrong API key" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert KEY not in caplog.text


def test_a_rate_limited_log_counts_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("subwatch.test-ratelimit")
    limited = RateLimitedLog(logger, per_seconds=0.5)
    caplog.set_level(logging.WARNING, logger=logger.name)
    for n in range(5):
        limited.warning("k", "refused %d", n)
    limited.warning("other", "another kind")
    time.sleep(0.6)
    limited.warning("k", "refused %d", 9)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused 0", "another kind", "refused 9 (and 4 more like it since the last such line)"]


def test_waiting_for_an_upload_turn_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "SLOT_WAIT_SECONDS", 0.2)

    async def scenario() -> int:
        gate = uploads.UploadGate(at_once=1)
        async with gate.turn():
            try:
                async with gate.turn():
                    return 200
            except http_body.BodyRefused as exc:
                assert exc.retry_after == 30
                return exc.status

    assert asyncio.run(scenario()) == 503


def test_healthz_says_503_when_request_decoding_is_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from starlette.testclient import TestClient

    from daemon.http.app import HttpContext, build_app

    monkeypatch.setattr(uploads, "WEDGED_GRACE_SECONDS", 0.0)
    pool = uploads.DecodePool(1)
    release = threading.Event()
    stuck = pool.submit(release.wait, 30, limit_s=0.2)  # a decode that runs past its own limit
    context = HttpContext(config=lambda: _Config(HttpRules()), healthy=lambda: True, intake=None,  # type: ignore[arg-type]
                          requests_healthy=lambda: not pool.wedged())
    client = TestClient(build_app(context), base_url="http://localhost")
    try:
        assert client.get("/healthz").json() == {"status": "ok"}
        time.sleep(0.3)
        answer = client.get("/healthz")
        assert answer.status_code == 503
        stuck_detail = "decoding HTTP requests is stuck: a decode ran far past its time limit"
        assert answer.json() == {"status": "wedged", "detail": stuck_detail}
        release.set()
        stuck.result(5)
        assert client.get("/healthz").json() == {"status": "ok"}
    finally:
        release.set()
        pool.shutdown()
