"""The HTTP side through a real `subwatch run`: webhooks in, media servers told.

One daemon (real tiny.en weights, greedy: these tests are about the plumbing) listens on
127.0.0.1; Sonarr's, Radarr's, Jellyfin's, Plex's and Emby's requests are built field for field
as their webhook code builds them (Sonarr's and Radarr's WebhookBase). Stand-in Jellyfin, Emby
and Plex servers on 127.0.0.1 record what subwatch sends them; a fourth server is down. The
movies folder is polled once an hour, so only a hook can bring a file there to the daemon's notice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Daemon, status, status_cli, wait_for_state, wait_until, write_config
from tests.media_factory import make_media
from tests.said import assert_says

SETTLE = 0.5
API_KEY = "k3y-" + "0123456789abcdef" * 2
JELLYFIN_TOKEN = "jf-token-5f1c0e7d9a8b"
EMBY_TOKEN = "emby-token-77aa01"
PLEX_TOKEN = "plex-token-Qx9z"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # with the query, as sent
    headers: dict[str, str]  # names in lower case
    body: bytes


class StandIn:
    """A media server on 127.0.0.1 that records every request and answers from `answers`
    (request path without query -> JSON), else 204."""

    def __init__(self, answers: dict[str, Any] | None = None, port: int = 0) -> None:
        self.requests: list[Recorded] = []
        self.answers = answers or {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stand_in.requests.append(Recorded(self.command, self.path,
                                                  {k.lower(): v for k, v in self.headers.items()}, body))
                answer = stand_in.answers.get(self.path.split("?")[0])
                if answer is None:
                    self.send_response(204)
                    self.end_headers()
                    return
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Recorded]:
        assert wait_until(lambda: len(self.requests) >= count, timeout), self.requests
        return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class World:
    root: Path
    tv: Path  # watched with inotify; Sonarr sees it as /data/tv
    movies: Path  # polled hourly: only hooks bring files here; Radarr and Plex see it as /data/movies
    config: Path
    daemon: Daemon
    url: str
    jellyfin: StandIn
    emby: StandIn
    plex: StandIn


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_en_checkpoint: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("http")
    tv, movies = root / "tv", root / "movies"
    tv.mkdir()
    movies.mkdir()
    item = {"Name": "Pilot", "Id": "f00d", "Path": "/data/movies/Jelly.mkv"}
    jellyfin = StandIn({"/Items": {"Items": [item], "TotalRecordCount": 1, "StartIndex": 0}})
    emby = StandIn()
    plex = StandIn({
        "/library/sections": {"MediaContainer": {"size": 2, "Directory": [
            {"key": "1", "type": "show", "title": "TV", "Location": [{"id": 1, "path": "/data/tv"}]},
            {"key": "2", "type": "movie", "title": "Movies", "Location": [{"id": 2, "path": "/data/movies"}]},
        ]}},
        "/library/metadata/77": {"MediaContainer": {"size": 1, "Metadata": [
            {"ratingKey": "77", "type": "movie", "title": "Plexed",
             "Media": [{"id": 5, "Part": [{"id": 6, "file": "/data/movies/Plexed.mkv"}]}]}]}},
    })
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    port = free_port()
    config = write_config(root / "config.yaml", f"""
        state_dir: {root / "state"}
        defaults: {{model: {tiny_en_checkpoint}, beam_size: 1, device: cpu, settle_seconds: {SETTLE},
                    language: en, formats: [srt]}}
        folders:
          - path: {tv}
          - path: {movies}
            poll: true
            poll_interval: 3600
        http:
          listen: 127.0.0.1:{port}
          api_key: "{API_KEY}"
          path_map: {{"/data/tv": "{tv}", "/data/movies": "{movies}"}}
        media_servers:
          - {{kind: jellyfin, url: "{jellyfin.url}/", token: "{JELLYFIN_TOKEN}",
              path_map: {{"{tv}": "/data/tv", "{movies}": "/data/movies"}}}}
          - {{kind: emby, url: "{emby.url}", token: "{EMBY_TOKEN}", path_map: {{"{root}": "/mnt"}}}}
          - {{kind: plex, url: "{plex.url}", token: "{PLEX_TOKEN}",
              path_map: {{"{tv}": "/data/tv", "{movies}": "/data/movies"}}}}
          - {{kind: jellyfin, url: "{down}", token: "{JELLYFIN_TOKEN}"}}
    """)
    daemon = Daemon(config)
    daemon.wait_log("watching 2 folder(s)", timeout=120)
    yield World(root, tv, movies, config, daemon, f"http://127.0.0.1:{port}", jellyfin, emby, plex)
    assert daemon.stop() == 0, daemon.log()
    assert "stopped" in daemon.log()
    for server in (jellyfin, emby, plex):
        server.close()


def post(world: World, path: str, payload: Any, key: str | None = API_KEY, **kwargs: Any) -> httpx.Response:
    headers = {"X-Api-Key": key} if key else {}
    return httpx.post(world.url + path, json=payload, headers=headers, timeout=30, **kwargs)


def server_updates(world: World, name: str) -> dict[str, tuple[str, str | None]]:
    """Return {server label: (state, error)} of the newest update of each server for the job at `name`."""
    db = sqlite3.connect(world.root / "state" / "jobs.sqlite3")
    try:
        rows = db.execute(
            "SELECT u.server, u.state, u.error FROM server_updates u JOIN jobs j ON j.id = u.job_id "
            "WHERE CAST(j.path AS TEXT) LIKE ? ORDER BY u.id", (f"%{name}",)).fetchall()
    finally:
        db.close()
    return {server: (state, error) for server, state, error in rows}


# ---------------------------------------------------------------- Sonarr's and Radarr's payloads
# Field for field as WebhookBase builds them (System.Text.Json, camelCase).


def sonarr_series(path: str) -> dict[str, Any]:
    return {"id": 3, "title": "Show", "titleSlug": "show", "path": path, "tvdbId": 81189, "tvMazeId": 169,
            "tmdbId": 1396, "imdbId": "tt0903747", "type": "standard", "year": 2008, "genres": ["Drama"],
            "images": [], "tags": []}


def sonarr_episode_file(series_path: str, relative: str) -> dict[str, Any]:
    return {"id": 11, "relativePath": relative, "path": f"{series_path}/{relative}", "quality": "HDTV-720p",
            "qualityVersion": 1, "releaseGroup": "GRP", "sceneName": "Show.S01E01.720p.HDTV-GRP",
            "size": 1234, "dateAdded": "2026-12-01T18:00:00Z", "languages": [{"id": 1, "name": "English"}],
            "mediaInfo": {"audioChannels": 2, "audioCodec": "AAC", "audioLanguages": ["eng"],
                          "height": 720, "width": 1280, "subtitles": [], "videoCodec": "x264",
                          "videoDynamicRange": "", "videoDynamicRangeType": ""}}


def sonarr_download(series_path: str, relative: str) -> dict[str, Any]:
    return {
        "eventType": "Download", "instanceName": "Sonarr", "applicationUrl": "",
        "series": sonarr_series(series_path),
        "episodes": [{"id": 21, "episodeNumber": 1, "seasonNumber": 1, "title": "Pilot", "overview": "",
                      "airDate": "2008-01-20", "airDateUtc": "2008-01-21T02:00:00Z", "seriesId": 3,
                      "tvdbId": 349232}],
        "episodeFile": sonarr_episode_file(series_path, relative),
        "release": {"quality": "HDTV-720p", "qualityVersion": 1, "releaseGroup": "GRP",
                    "releaseTitle": "Show.S01E01.720p.HDTV-GRP", "indexer": "Indexer", "size": 1234,
                    "customFormatScore": 0, "customFormats": []},
        "isUpgrade": False, "downloadClient": "qBittorrent", "downloadClientType": "qBittorrent",
        "downloadId": "A1B2C3", "customFormatInfo": {"customFormats": [], "customFormatScore": 0},
    }


SONARR_TEST = {  # BuildTestPayload
    "eventType": "Test", "instanceName": "Sonarr", "applicationUrl": "",
    "series": {"id": 1, "title": "Test Title", "path": "C:\\testpath", "tvdbId": 1234, "tvMazeId": 0,
               "tmdbId": 0, "type": "standard", "year": 0, "tags": ["test-tag"]},
    "episodes": [{"id": 123, "episodeNumber": 1, "seasonNumber": 1, "title": "Test title", "seriesId": 0,
                  "tvdbId": 0}],
}


def radarr_movie(folder: str) -> dict[str, Any]:
    return {"id": 7, "title": "Movie", "year": 2020, "releaseDate": "2020-05-01", "folderPath": folder,
            "tmdbId": 550, "imdbId": "tt0137523", "overview": "", "genres": [], "images": [], "tags": []}


def radarr_movie_file(folder: str, relative: str) -> dict[str, Any]:
    return {"id": 9, "relativePath": relative, "path": f"{folder}/{relative}", "quality": "Bluray-1080p",
            "qualityVersion": 1, "releaseGroup": "GRP", "sceneName": "Movie.2020.1080p.BluRay-GRP",
            "indexerFlags": "0", "size": 4321, "dateAdded": "2026-12-01T18:00:00Z", "languages": [],
            "mediaInfo": {"audioChannels": 2, "audioCodec": "AAC", "audioLanguages": ["eng"], "height": 1080,
                          "width": 1920, "subtitles": [], "videoCodec": "x264",
                          "videoDynamicRange": "", "videoDynamicRangeType": ""}}


def radarr_download(folder: str, relative: str) -> dict[str, Any]:
    return {
        "eventType": "Download", "instanceName": "Radarr", "applicationUrl": "",
        "movie": radarr_movie(folder),
        "remoteMovie": {"tmdbId": 550, "imdbId": "tt0137523", "title": "Movie", "year": 2020},
        "movieFile": radarr_movie_file(folder, relative),
        "release": {"quality": "Bluray-1080p", "qualityVersion": 1, "releaseGroup": "GRP",
                    "releaseTitle": "Movie.2020.1080p.BluRay-GRP", "indexer": "Indexer", "size": 4321,
                    "customFormatScore": 0, "customFormats": []},
        "isUpgrade": False, "downloadClient": "qBittorrent", "downloadClientType": "qBittorrent",
        "downloadId": "D4E5F6", "customFormatInfo": {"customFormats": [], "customFormatScore": 0},
    }


def radarr_rename(folder: str, previous: str, relative: str) -> dict[str, Any]:
    renamed = {**radarr_movie_file(folder, relative), "previousRelativePath": previous,
               "previousPath": f"{folder}/{previous}"}
    return {"eventType": "Rename", "instanceName": "Radarr", "applicationUrl": "",
            "movie": radarr_movie(folder), "renamedMovieFiles": [renamed]}


RADARR_TEST = {  # BuildTestPayload
    "eventType": "Test", "instanceName": "Radarr", "applicationUrl": "",
    "movie": {"id": 1, "title": "Test Title", "year": 1970, "folderPath": "C:\\testpath",
              "releaseDate": "1970-01-01", "tmdbId": 0, "tags": ["test-tag"]},
    "remoteMovie": {"tmdbId": 1234, "imdbId": "5678", "title": "Test title", "year": 1970},
    "release": {"quality": "Test Quality", "qualityVersion": 1, "releaseGroup": "Test Group",
                "releaseTitle": "Test Title", "indexer": "Test Indexer", "size": 9999999,
                "customFormatScore": 0},
}


# ---------------------------------------------------------------- the tests


def test_key_is_asked_except_on_healthz(world: World) -> None:
    assert httpx.get(world.url + "/healthz", timeout=10).json() == {"status": "ok"}
    assert post(world, "/hooks/sonarr", SONARR_TEST, key=None).status_code == 401
    assert post(world, "/hooks/sonarr", SONARR_TEST, key="wrong-" + API_KEY).status_code == 401
    wrong = httpx.post(world.url + "/hooks/radarr?apikey=nope", json=RADARR_TEST, timeout=10)
    assert wrong.status_code == 401
    # Sonarr: the key in the URL; Radarr: as a custom header.
    answer = httpx.post(world.url + f"/hooks/sonarr?apikey={API_KEY}", json=SONARR_TEST, timeout=10)
    assert (answer.status_code, answer.json()) == (200, {"event": "Test", "result": "ok"})
    answer = post(world, "/hooks/radarr", RADARR_TEST)
    assert (answer.status_code, answer.json()) == (200, {"event": "Test", "result": "ok"})
    world.daemon.wait_log("radarr: test webhook received from Radarr; the hook works")
    assert world.daemon.log().count("sonarr: test webhook received from Sonarr; the hook works") == 1
    grab = post(world, "/hooks/sonarr", {**SONARR_TEST, "eventType": "Grab"})
    assert grab.status_code == 200 and grab.json()["result"].startswith("ignored")
    assert API_KEY not in world.daemon.log()


def test_sonarr_download_is_transcribed_and_every_server_told(world: World) -> None:
    season = world.tv / "Show" / "Season 01"
    season.mkdir(parents=True)
    # Written elsewhere, then moved in as Sonarr's import does, and the hook sent at once.
    source = make_media(world.root / "import.mkv", speech="The pilot starts in the desert.", seconds=4)
    os.rename(source, season / "Show - S01E01.mkv")
    answer = post(world, "/hooks/sonarr", sonarr_download("/data/tv/Show", "Season 01/Show - S01E01.mkv"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"event": "Download", "accepted": [str(season / "Show - S01E01.mkv")],
                             "ignored": [], "refused": []}
    job = wait_for_state(world.config, "Show - S01E01.mkv", {"done", "failed"}, timeout=180)
    assert job["state"] == "done", job
    done_at = time.time()
    sidecar = season / "Show - S01E01.en.srt"
    assert job["outputs"] == [str(sidecar)]
    assert_says(sidecar, "pilot", "desert")

    (update,) = world.jellyfin.wait_for(1)
    assert (update.method, update.path) == ("POST", "/Library/Media/Updated")
    assert update.headers["authorization"] == f'MediaBrowser Token="{JELLYFIN_TOKEN}"'
    assert update.headers["content-type"] == "application/json"
    assert "x-emby-token" not in update.headers
    assert json.loads(update.body) == {"Updates": [
        {"Path": "/data/tv/Show/Season 01/Show - S01E01.en.srt", "UpdateType": "Created"}]}
    (update,) = world.emby.wait_for(1)
    assert (update.method, update.path) == ("POST", "/Library/Media/Updated")
    assert update.headers["x-emby-token"] == EMBY_TOKEN and "authorization" not in update.headers
    assert json.loads(update.body) == {"Updates": [
        {"Path": "/mnt/tv/Show/Season 01/Show - S01E01.en.srt", "UpdateType": "Created"}]}
    sections, refresh = world.plex.wait_for(2)
    assert (sections.method, sections.path, sections.body) == ("GET", "/library/sections", b"")
    assert (refresh.method, refresh.path, refresh.body) == (
        "GET", "/library/sections/1/refresh?path=%2Fdata%2Ftv%2FShow%2FSeason%2001", b"")
    for request in (sections, refresh):
        assert request.headers["x-plex-token"] == PLEX_TOKEN
        assert request.headers["accept"] == "application/json"

    # The job records who was told; the server that is down is still being retried, and held
    # nothing back: the job was done and the others told meanwhile.
    # (recorded just after each server answers: wait for the record, not only the request)
    wait_until(lambda: list(server_updates(world, "Show - S01E01.mkv").values()).count(("told", None)) == 3)
    told = server_updates(world, "Show - S01E01.mkv")
    assert told[f"jellyfin {world.jellyfin.url}"] == ("told", None)
    assert told[f"emby {world.emby.url}"] == ("told", None)
    assert told[f"plex {world.plex.url}"] == ("told", None)
    down = next(label for label in told if label not in (f"jellyfin {world.jellyfin.url}",
                                                         f"emby {world.emby.url}", f"plex {world.plex.url}"))
    assert told[down] == ("owed", None)
    (listed,) = [j for j in status_cli(world.config) if j["path"].endswith("Show - S01E01.mkv")]
    assert {s["server"]: (s["state"], s["error"]) for s in listed["media_servers"]} == told
    assert time.time() - done_at < 15
    world.daemon.wait_log(f"telling {down} failed (attempt 1 of 6")
    for secret in (JELLYFIN_TOKEN, EMBY_TOKEN, PLEX_TOKEN, API_KEY):
        assert secret not in world.daemon.log()


def test_radarr_download_and_rename_in_a_folder_nobody_watches_live(world: World) -> None:
    folder = world.movies / "Movie (2020)"
    folder.mkdir()
    make_media(folder / "movie.mkv", speech="Welcome to the fight club.", seconds=4)
    for server in (world.jellyfin, world.emby, world.plex):
        server.requests.clear()
    answer = post(world, "/hooks/radarr", radarr_download("/data/movies/Movie (2020)", "movie.mkv"))
    assert answer.status_code == 200 and answer.json()["accepted"] == [str(folder / "movie.mkv")]
    job = wait_for_state(world.config, "movie.mkv", {"done", "failed"}, timeout=180)
    assert job["state"] == "done", job
    assert_says(folder / "movie.en.srt", "fight club")
    world.plex.wait_for(2)
    world.jellyfin.wait_for(1)
    for server in (world.jellyfin, world.emby, world.plex):
        server.requests.clear()

    # Radarr renames the file and says so; the polled folder's watcher cannot have seen it.
    os.rename(folder / "movie.mkv", folder / "Movie (2020).mkv")
    answer = post(world, "/hooks/radarr", radarr_rename("/data/movies/Movie (2020)", "movie.mkv",
                                                        "Movie (2020).mkv"))
    assert answer.status_code == 200 and answer.json()["accepted"] == [str(folder / "Movie (2020).mkv")]
    assert wait_until(lambda: (folder / "Movie (2020).en.srt").exists(), 15)
    assert not (folder / "movie.en.srt").exists()
    assert_says(folder / "Movie (2020).en.srt", "fight club")
    (moved,) = [j for j in status(world.config) if j["path"].endswith("Movie (2020).mkv")]
    assert moved["id"] == job["id"] and moved["state"] == "done"
    (update,) = world.jellyfin.wait_for(1)
    assert json.loads(update.body) == {"Updates": [
        {"Path": "/data/movies/Movie (2020)/Movie (2020).en.srt", "UpdateType": "Created"}]}
    _, refresh = world.plex.wait_for(2)
    assert refresh.path == "/library/sections/2/refresh?path=%2Fdata%2Fmovies%2FMovie%20%282020%29"


def sonarr_rename(series_path: str, previous: str, relative: str) -> dict[str, Any]:
    renamed = {**sonarr_episode_file(series_path, relative), "previousRelativePath": previous,
               "previousPath": f"{series_path}/{previous}"}
    return {"eventType": "Rename", "instanceName": "Sonarr", "applicationUrl": "",
            "series": sonarr_series(series_path), "renamedEpisodeFiles": [renamed]}


def test_a_rename_that_did_not_happen_here_moves_nothing(world: World) -> None:
    """Issue #19: a Rename naming a real done file and a made-up new path moved the file's
    sidecars there and dropped its job. A rename is followed only when the old path is gone and
    the new one is a file here; otherwise it is refused, and nothing moves."""
    season = world.tv / "Show" / "Season 01"
    episode, sidecar = season / "Show - S01E01.mkv", season / "Show - S01E01.en.srt"
    job = wait_for_state(world.config, "Show - S01E01.mkv", {"done"}, timeout=180)
    (season / "notes.txt").write_text("not media, but a file\n")
    for new, says in (("Made Up.mkv", "the new path: no such file here; nothing moved"),
                      ("notes.txt", f"the old path {episode} is still there, so this is no rename here")):
        answer = post(world, "/hooks/sonarr", sonarr_rename("/data/tv/Show", "Season 01/Show - S01E01.mkv",
                                                            f"Season 01/{new}"))
        assert answer.status_code == 422, answer.text
        (refused,) = answer.json()["refused"]
        assert refused["path"] == str(season / new) and refused["reason"].startswith(says), refused
    time.sleep(SETTLE + 1.0)  # a rename let through would have moved the sidecars by now
    assert sorted(p.name for p in season.iterdir() if p.name.startswith(("Show", "Made", "notes"))) == [
        "Show - S01E01.en.srt", "Show - S01E01.mkv", "notes.txt"]
    assert_says(sidecar, "pilot", "desert")
    (still,) = [j for j in status(world.config) if j["path"] == str(episode)]
    assert (still["id"], still["state"], still["outputs"]) == (job["id"], "done", [str(sidecar)])
    assert not [j for j in status(world.config) if j["path"].endswith(("Made Up.mkv", "notes.txt"))]


def test_a_path_outside_every_folder_is_refused(world: World) -> None:
    elsewhere = world.root / "elsewhere"
    elsewhere.mkdir()
    make_media(elsewhere / "Stray.mkv", seconds=1)
    answer = post(world, "/hooks/sonarr", sonarr_download(str(elsewhere), "Stray.mkv"))
    assert answer.status_code == 422
    (refused,) = answer.json()["refused"]
    assert refused["path"] == str(elsewhere / "Stray.mkv")
    assert refused["reason"].startswith("outside every watched folder")
    missing = post(world, "/hooks/radarr", radarr_download("/data/movies/Nope", "nope.mkv"))
    assert missing.status_code == 422
    assert missing.json()["refused"][0]["reason"].startswith("no such file here")
    time.sleep(SETTLE + 0.5)
    assert not [j for j in status(world.config) if j["path"].endswith(("Stray.mkv", "nope.mkv"))]


def test_jellyfin_plex_and_emby_hooks_queue_their_item(world: World) -> None:
    # Copies of the episode's content: their sidecars come from its stored transcript.
    episode = world.tv / "Show" / "Season 01" / "Show - S01E01.mkv"
    wait_for_state(world.config, "Show - S01E01.mkv", {"done"}, timeout=180)
    for name in ("Jelly.mkv", "Plexed.mkv", "Embied.mkv"):
        shutil.copyfile(episode, world.movies / name)
    world.jellyfin.requests.clear()
    world.plex.requests.clear()

    answer = post(world, "/hooks/jellyfin", {
        "ServerId": "abc", "ServerName": "jf", "ServerVersion": "10.10.3", "ServerUrl": world.jellyfin.url,
        "NotificationType": "ItemAdded", "Timestamp": "2026-12-01T18:00:00.0000000Z",
        "UtcTimestamp": "2026-12-01T18:00:00.0000000Z", "Name": "Pilot", "ItemId": "f00d",
        "ItemType": "Movie", "Year": 2020})
    assert answer.status_code == 200 and answer.json()["accepted"] == [str(world.movies / "Jelly.mkv")]
    lookup = world.jellyfin.requests[0]
    assert (lookup.method, lookup.path) == ("GET", "/Items?ids=f00d&Fields=Path")
    assert lookup.headers["authorization"] == f'MediaBrowser Token="{JELLYFIN_TOKEN}"'

    plex_event = {"event": "library.new", "user": True, "owner": True,
                  "Account": {"id": 1, "title": "me"}, "Server": {"title": "plex", "uuid": "u"},
                  "Metadata": {"librarySectionType": "movie", "ratingKey": "77", "type": "movie",
                               "key": "/library/metadata/77", "title": "Plexed", "librarySectionID": 2}}
    answer = httpx.post(world.url + "/hooks/plex", headers={"X-Api-Key": API_KEY}, timeout=30,
                        data={"payload": json.dumps(plex_event)}, files={"thumb": ("thumb.jpg", b"\xff\xd8")})
    assert answer.status_code == 200 and answer.json()["accepted"] == [str(world.movies / "Plexed.mkv")]
    lookup = world.plex.requests[0]
    assert (lookup.method, lookup.path, lookup.body) == ("GET", "/library/metadata/77", b"")
    assert lookup.headers["x-plex-token"] == PLEX_TOKEN and lookup.headers["accept"] == "application/json"

    answer = post(world, "/hooks/emby", {
        "Title": "Embied added", "Date": "2026-12-01T18:00:00.0000000Z", "Event": "library.new",
        "Severity": "Info", "Server": {"Name": "emby", "Id": "e", "Version": "4.8.10.0"},
        "Item": {"Name": "Embied", "Id": "99", "Path": "/data/movies/Embied.mkv", "Type": "Movie",
                 "IsFolder": False}})
    assert answer.status_code == 200 and answer.json()["accepted"] == [str(world.movies / "Embied.mkv")]

    # Sonarr's import-complete form: the same eventType, the files as a list.
    for name in ("Pack - S01E02.mkv", "Pack - S01E03.mkv"):
        shutil.copyfile(episode, world.movies / name)
    pack = {key: value for key, value in sonarr_download("/data/movies", "x").items()
            if key not in ("episodeFile", "isUpgrade", "customFormatInfo")}
    pack.update(episodeFiles=[sonarr_episode_file("/data/movies", name)
                              for name in ("Pack - S01E02.mkv", "Pack - S01E03.mkv")],
                sourcePath="/downloads/Show.S01.720p", destinationPath="/data/movies")
    answer = post(world, "/hooks/sonarr", pack)
    assert answer.status_code == 200
    assert answer.json()["accepted"] == [str(world.movies / "Pack - S01E02.mkv"),
                                         str(world.movies / "Pack - S01E03.mkv")]

    for name in ("Jelly.mkv", "Plexed.mkv", "Embied.mkv", "Pack - S01E02.mkv", "Pack - S01E03.mkv"):
        job = wait_for_state(world.config, name, {"done", "failed"}, timeout=60)
        assert job["state"] == "done", job
        assert_says(world.movies / name.replace(".mkv", ".en.srt"), "pilot", "desert")


def test_accept_unwatched_takes_a_file_outside_every_folder_after_a_reload(world: World) -> None:
    episode = world.tv / "Show" / "Season 01" / "Show - S01E01.mkv"
    wait_for_state(world.config, "Show - S01E01.mkv", {"done"}, timeout=180)
    outside = world.root / "outside"
    outside.mkdir()
    shutil.copyfile(episode, outside / "Loose.mkv")
    loose = {"Event": "library.new", "Item": {"Path": str(outside / "Loose.mkv")}}
    assert post(world, "/hooks/emby", loose).status_code == 422
    text = world.config.read_text()
    assert '\n  path_map: {"/data/tv"' in text
    world.config.write_text(text.replace('\n  path_map: {"/data/tv"',
                                         '\n  accept_unwatched: true\n  path_map: {"/data/tv"', 1))
    world.daemon.process.send_signal(signal.SIGHUP)
    world.daemon.wait_log("reloaded")
    answer = post(world, "/hooks/emby", loose)
    assert answer.status_code == 200 and answer.json()["accepted"] == [str(outside / "Loose.mkv")]
    job = wait_for_state(world.config, "Loose.mkv", {"done", "failed"}, timeout=60)
    assert job["state"] == "done", job
    assert_says(outside / "Loose.en.srt", "pilot", "desert")  # the defaults' formats: srt only
    assert not (outside / "Loose.en.vtt").exists()
