"""The hooks against what a hostile or broken sender sends, through a real `subwatch run`.

Issue #19: a path with a lone surrogate, a 300-character name and 100,000 nested `[` each made a
hook answer 500. Every kind of bad path and body here must get a 400, 413 or 422 with a one-line
reason, the daemon must go on (a good hook is still taken after them all), nothing it logs is a
traceback, and a refusal repeated many times is logged once. No model is loaded: no file here is
transcribed (the model named does not exist, so a queued one fails at once).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from daemon.config import load_config
from daemon.http import HttpContext, build_app
from daemon.http.hooks import MAX_BODY
from daemon.intake import Intake
from daemon.queue import JobQueue, engines
from tests.harness import Daemon, status, wait_until, write_config
from tests.media_factory import make_media
from tests.test_daemon_http import free_port

API_KEY = "h0stile-" + "0123456789abcdef" * 2
HEADERS = {"X-Api-Key": API_KEY}


@dataclass
class World:
    root: Path
    tv: Path
    config: Path
    daemon: Daemon
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("hostile")
    tv = root / "tv"
    (tv / "Show").mkdir(parents=True)
    port = free_port()
    config = write_config(root / "config.yaml", f"""
        state_dir: {root / "state"}
        defaults: {{model: {root / "no-such-model.pt"}, device: cpu, settle_seconds: 0.3, language: en}}
        folders:
          - path: {tv}
        http:
          listen: 127.0.0.1:{port}
          api_key: "{API_KEY}"
    """)
    daemon = Daemon(config)
    daemon.wait_log("watching 1 folder(s)", timeout=120)
    yield World(root, tv, config, daemon, port)
    assert daemon.stop() == 0, daemon.log()


def post(world: World, sender: str, body: bytes | str, **headers: str) -> httpx.Response:
    content = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return httpx.post(f"{world.url}/hooks/{sender}", content=content, timeout=30,
                      headers={**HEADERS, "Content-Type": "application/json", **headers})


def emby(path: Any) -> str:
    return json.dumps({"Event": "library.new", "Item": {"Path": path}})


def sonarr(path: Any) -> str:
    return json.dumps({"eventType": "Download", "series": {"path": "/x"}, "episodeFile": {"path": path}})


def radarr_rename(previous: Any, path: Any) -> str:
    return json.dumps({"eventType": "Rename", "movie": {"folderPath": "/x"},
                       "renamedMovieFiles": [{"previousPath": previous, "path": path}]})


def raw_request(world: World, sender: str, headers: str, body: bytes = b"") -> str:
    """Send a POST to a hook as bytes on a socket and return the answer's status line (10 s at most)."""
    head = f"POST /hooks/{sender} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: {API_KEY}\r\n{headers}\r\n"
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


def refused_reason(answer: httpx.Response) -> str:
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["accepted"] == [] and len(body["refused"]) == 1, body
    reason = body["refused"][0]["reason"]
    assert "\n" not in reason and len(reason) < 1000, reason
    return reason


# ---------------------------------------------------------------- paths


def test_paths_that_cannot_name_a_file_here_are_422_with_the_reason(world: World) -> None:
    tv = world.tv
    long_name = str(tv / ("n" * 300 + ".mkv"))
    cases: list[tuple[Any, str]] = [
        (f"{tv}/\udcff.mkv", "no such file here"),  # JSON's "\udcff": the byte 0xff, no such file
        (f"{tv}/\ud800.mkv", "not valid text"),  # a surrogate that stands for no byte
        (long_name, "(File name too long)"),
        (f"{tv}/a\x00.mkv", "NUL byte"),
        ("Show/a.mkv", "not an absolute path"),
        (5, "not text"),
        (["/a"], "not text"),
        ("/" + "d/" * 2500 + "a.mkv", "longer than any path here"),
    ]
    for path, says in cases:
        for sender, body in (("emby", emby(path)), ("sonarr", sonarr(path))):
            answer = post(world, sender, body)
            reason = refused_reason(answer)
            assert says in reason, (sender, repr(path)[:60], reason)
    # The reason names the path, on one line, shortened where it is very long.
    assert "n" * 100 in refused_reason(post(world, "emby", emby(long_name)))
    assert "a\\x00.mkv" in refused_reason(post(world, "emby", emby(f"{tv}/a\x00.mkv")))
    # JSON writes the name that is not UTF-8 as /api/jobs would (\udcff), so the answer is valid.
    surrogate = post(world, "emby", emby(f"{tv}/\udcff.mkv"))
    assert '\\udcff.mkv"' in surrogate.text and surrogate.json()["refused"][0]["path"] == f"{tv}/\udcff.mkv"
    for sender, body in (("emby", emby("")), ("sonarr", sonarr(""))):  # no path at all
        assert post(world, sender, body).status_code == 400


def test_what_is_no_regular_file_is_refused_or_ignored(world: World) -> None:
    tv = world.tv
    os.mkfifo(tv / "Show" / "pipe.mkv")
    (tv / "Show" / "loop.mkv").symlink_to(tv / "Show" / "loop.mkv")
    assert "not a regular file" in refused_reason(post(world, "emby", emby(str(tv / "Show" / "pipe.mkv"))))
    loop = refused_reason(post(world, "emby", emby(str(tv / "Show" / "loop.mkv"))))
    assert "symbolic links" in loop and "loop.mkv" in loop
    folder = post(world, "emby", emby(str(tv / "Show")))
    assert folder.status_code == 200 and folder.json()["ignored"][0]["reason"].startswith("a folder")
    below_a_file = refused_reason(post(world, "emby", emby(str(tv / "Show" / "pipe.mkv" / "x.mkv"))))
    assert below_a_file.startswith("no such file here")


def test_a_rename_with_bad_paths_moves_nothing(world: World) -> None:
    tv = world.tv
    real = make_media(tv / "Show" / "Real.mkv", seconds=1)
    cases = [
        (str(real), str(tv / "Show" / "Made Up.mkv"), "the new path: no such file here"),
        (str(real), f"{tv}/\ud800.mkv", "not valid text"),
        (str(real), str(tv / "Show" / ("x" * 300)), "File name too long"),
        (f"{tv}/a\x00", str(real), "NUL byte"),
        (str(tv / "Show" / ("y" * 300)), str(real), "the old path: cannot look at"),
        (str(tv / "Show"), str(real), "is still there, so this is no rename here"),
        (str(tv / "Show" / "Gone.mkv"), str(tv / "Show"), "the new path is not a file here"),
        (7, str(real), "not text"),
    ]
    for old, new, says in cases:
        reason = refused_reason(post(world, "radarr", radarr_rename(old, new)))
        assert says in reason, (repr(old)[:50], repr(new)[:50], reason)
    assert real.is_file() and not (tv / "Show" / "Made Up.mkv").exists()


# ---------------------------------------------------------------- bodies


def test_bodies_that_are_not_json_are_400(world: World) -> None:
    tv = world.tv
    cases: list[tuple[bytes | str, str]] = [
        ("[" * 100_000, "nested too deeply"),
        ('{"Event": ' + "1" * 100_000 + "}", "not JSON"),
        (b'{"Event": "library.new", "Item": {"Path": "' + os.fsencode(tv) + b'/\xff.mkv"}}', "not JSON"),
        ("1e999999", "not a JSON object"),
        ('"just text"', "not a JSON object"),
        ("", "not JSON"),
        ("{", "not JSON"),
    ]
    for sender in ("emby", "sonarr", "radarr", "jellyfin"):
        for body, says in cases:
            answer = post(world, sender, body)
            assert answer.status_code == 400, (sender, body[:30], answer.text)
            assert says in answer.json()["error"], (sender, body[:30], answer.text)
    many = json.dumps({"eventType": "Download", "episodeFiles": [{"path": f"/{n}"} for n in range(1001)]})
    assert post(world, "sonarr", many).status_code == 400
    not_a_list = json.dumps({"eventType": "Download", "episodeFiles": "x"})
    assert post(world, "sonarr", not_a_list).status_code == 400
    for item_id in ("\ud800", "../../etc/passwd", "a" * 65, 5):
        answer = post(world, "jellyfin", json.dumps({"NotificationType": "ItemAdded", "ItemId": item_id}))
        assert answer.status_code == 400 and "item id" in answer.json()["error"], item_id
    strange_event = post(world, "radarr", json.dumps({"eventType": "\udcff" * 10_000}))
    assert strange_event.status_code == 200 and len(strange_event.text) < 1_000


def test_a_declared_length_over_the_cap_is_413_before_the_body_is_read(world: World) -> None:
    for sender in ("emby", "plex"):
        headers = "Content-Type: application/json\r\nContent-Length: 1000000000\r\n"
        status_line = raw_request(world, sender, headers)
        assert status_line.startswith("HTTP/1.1 413"), status_line  # no byte of the body was sent


def test_a_chunked_body_is_cut_off_once_it_passes_the_cap(world: World) -> None:
    chunk = b"x" * 65_536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // len(chunk) + 2))
    for sender, kind in (("sonarr", "application/json"), ("plex", "multipart/form-data; boundary=b")):
        # No last chunk: a server that waited for the whole body would never answer.
        headers = f"Content-Type: {kind}\r\nTransfer-Encoding: chunked\r\n"
        status_line = raw_request(world, sender, headers, chunks)
        assert status_line.startswith("HTTP/1.1 413"), (sender, status_line)


def test_multipart_bodies_with_too_much_in_them(world: World) -> None:
    url = f"{world.url}/hooks/plex"
    fields = {f"f{n}": "x" for n in range(100)}
    answer = httpx.post(url, headers=HEADERS, data=fields, files={"thumb": ("t.jpg", b"\xff")}, timeout=30)
    assert answer.status_code == 400 and "form cannot be read" in answer.json()["error"]
    files = {f"thumb{n}": (f"t{n}.jpg", b"\xff") for n in range(10)}
    answer = httpx.post(url, headers=HEADERS, data={"payload": "{}"}, files=files, timeout=30)
    assert answer.status_code == 400 and "form cannot be read" in answer.json()["error"]
    huge = {"thumb": ("t.jpg", b"\xff" * (MAX_BODY + 1))}
    answer = httpx.post(url, headers=HEADERS, data={"payload": "{}"}, files=huge, timeout=30)
    assert answer.status_code == 413
    answer = httpx.post(url, headers=HEADERS, data={"payload": "[" * 100_000}, timeout=30)
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]
    answer = httpx.post(url, headers=HEADERS, files={"payload": ("p.json", b"{}")}, timeout=30)
    assert answer.status_code == 400 and "no multipart `payload` field" in answer.json()["error"]
    answer = httpx.post(f"{world.url}/hooks/emby", headers=HEADERS, timeout=30,
                        files={"data": (None, emby(f"{world.tv}/\ud800.mkv"))})  # multipart
    assert "not valid text" in refused_reason(answer)
    unfinished = b'--zz\r\nContent-Disposition: form-data; name="payload"\r\n\r\n{"a"'
    broken = httpx.post(url, headers={**HEADERS, "Content-Type": "multipart/form-data; boundary=zz"},
                        content=unfinished, timeout=30)
    assert broken.status_code == 400


# ---------------------------------------------------------------- after it all


def test_a_refusal_repeated_is_logged_once_and_the_daemon_goes_on(world: World) -> None:
    for _ in range(50):
        assert post(world, "radarr", "[1, 2]").status_code == 400
    for n in range(50):
        assert post(world, "emby", emby(f"{world.tv}/nothing {n}.mkv")).status_code == 422
    log = world.daemon.log()
    assert log.count("radarr hook: bad request: the payload is not a JSON object") == 1
    assert log.count("emby hook: refused ") < 10  # one per kind of reason, not one per request

    good = make_media(world.root / "staging" / "Good.mkv", seconds=1)
    os.rename(good, world.tv / "Show" / "Good.mkv")
    answer = post(world, "sonarr", sonarr(str(world.tv / "Show" / "Good.mkv")))
    assert answer.status_code == 200 and answer.json()["accepted"] == [str(world.tv / "Show" / "Good.mkv")]
    assert wait_until(lambda: any(j["path"].endswith("/Show/Good.mkv") for j in status(world.config)), 30)
    assert httpx.get(f"{world.url}/healthz", timeout=10).json() == {"status": "ok"}
    log = world.daemon.log()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def test_a_hook_while_the_queue_is_locked_is_503_not_500(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process (Starlette's TestClient, a real Intake and SQLite file): the daemon's busy timeout is
    15 s, lowered here so that another connection's exclusive lock outlasts it in a moment."""
    monkeypatch.setattr(engines, "BUSY_TIMEOUT_S", 0.2)
    tv = tmp_path / "tv"
    tv.mkdir()
    (tmp_path / "config.yaml").write_text(f"state_dir: {tmp_path / 'state'}\nfolders: [{{path: {tv}}}]\n"
                                          f"http: {{api_key: {API_KEY}}}\n")
    config = load_config(tmp_path / "config.yaml")
    jobs = JobQueue(config.db_path)
    jobs.close_thread()  # this thread's connection would keep the lock below from being taken
    intake = Intake(config, jobs)
    app = build_app(HttpContext(config=lambda: config, healthy=lambda: True, intake=intake))
    new = make_media(tv / "New.mkv", seconds=1)
    rename = radarr_rename(str(tv / "Old.mkv"), str(new))
    locker = sqlite3.connect(config.db_path, isolation_level=None)
    try:
        locker.execute("PRAGMA locking_mode = EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")  # readers too are locked out
        with TestClient(app, raise_server_exceptions=False) as client:
            answer = client.post("/hooks/radarr", content=rename, headers=HEADERS)
            assert answer.status_code == 503, answer.text
            assert answer.json() == {"error": "the job queue cannot be used now; send it again later"}
            locker.execute("ROLLBACK")
            locker.close()
            answer = client.post("/hooks/radarr", content=rename, headers=HEADERS)
            assert answer.status_code == 200 and answer.json()["accepted"] == [str(new)], answer.text
    finally:
        locker.close()
        intake.stop()
        jobs.close()
