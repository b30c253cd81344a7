"""The `http:` and `media_servers:` sections: their contract, their documented defaults, and their secrets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from daemon.config import Config, ConfigError, HttpRules, Secret, load_config, map_path
from daemon.http import HttpContext, build_app
from tests.harness import REPO

KEY = "s3cret-" + "a1b2c3d4" * 4
TOKEN = "tok-9f8e7d6c5b4a"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_sections_are_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"""
        folders: [{{path: /srv/tv}}]
        http:
          listen: "[::1]:9123"
          api_key: {KEY}
          path_map: {{"/tv/": "/srv/tv"}}
          accept_unwatched: true
        media_servers:
          - {{kind: plex, url: "http://plex.lan:32400/", token: {TOKEN}, path_map: {{"/srv": "/data"}}}}
    """))
    assert config.http == HttpRules(host="::1", port=9123, api_key=Secret(KEY),
                                    path_map=(("/tv/", "/srv/tv"),), accept_unwatched=True)
    assert config.http.listen == "[::1]:9123"
    (server,) = config.media_servers
    assert (server.kind, server.url, server.token.reveal(), server.path_map) == (
        "plex", "http://plex.lan:32400", TOKEN, (("/srv", "/data"),))
    # accept_unwatched: a file outside every folder takes the defaults; a watched one its folder's.
    assert config.folder_for(Path("/elsewhere/a.mkv")) is config.unwatched is not None
    assert config.watched_folder_for(Path("/elsewhere/a.mkv")) is None
    assert config.folder_for(Path("/srv/tv/a.mkv")) is config.folders[0]
    for text in (repr(config), str(config)):
        assert KEY not in text and TOKEN not in text


def test_no_section_no_listener(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "folders: [{path: /srv/tv}]\n"))
    assert config.http is None and config.media_servers == () and config.unwatched is None
    assert config.folder_for(Path("/elsewhere/a.mkv")) is None


def test_invalid_values_name_their_key(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        folders: [{{path: /srv/tv}}]
        http: {{listen: "9000", api_key: k3yX9z, path_map: {{"tv": "/srv/tv"}}, acept_unwatched: true}}
        media_servers:
          - {{kind: jelyfin, url: "http://h:8096", token: {TOKEN}}}
          - {{kind: emby, url: "ftp://h", token: {TOKEN}}}
          - {{kind: plex, url: "http://h:99999", token: ""}}
          - {{kind: plex, url: "http://user:{TOKEN}@h:32400", token: {TOKEN}}}
    """)
    problems = problems_of(path)
    assert problems == [
        "at 'http.listen': got '9000'; write host:port, e.g. 127.0.0.1:9000, 0.0.0.0:9000 for every "
        "address, or [::1]:9000",
        "at 'http.api_key': the key is too short; use 32 or more random characters (e.g. the output of "
        "`openssl rand -hex 24`)",
        "at 'http.path_map': map absolute paths to absolute paths; got 'tv': '/srv/tv'",
        "at 'http.acept_unwatched': unknown key; did you mean 'accept_unwatched'?",
        "at 'media_servers[0].kind': got 'jelyfin'; input should be 'jellyfin', 'emby' or 'plex'",
        "at 'media_servers[1].url': got 'ftp://h'; write the server's address as http://HOST:PORT "
        "(https:// for TLS), e.g. http://127.0.0.1:8096",
        "at 'media_servers[2].url': got 'http://h:99999'; the port must be a number from 1 to 65535",
        "at 'media_servers[2].token': the token is empty; copy the server's API key (Jellyfin/Emby: "
        "Dashboard > API Keys; Plex: X-Plex-Token)",
        "at 'media_servers[3].url': the address takes no query, fragment or user: put the token "
        "under `token`",
    ]
    assert "k3yX9z" not in str(problems) and TOKEN not in str(problems)


def test_a_listener_beyond_this_machine_needs_a_key(tmp_path: Path) -> None:
    path = write(tmp_path, "folders: [{path: /srv/tv}]\nhttp: {listen: 0.0.0.0:9000}\n")
    (problem,) = problems_of(path)
    assert problem.startswith("at 'http.api_key': required when http.listen is not a loopback address")
    load_config(write(tmp_path, "folders: [{path: /srv/tv}]\nhttp: {listen: localhost:9000}\n"))


def test_check_config_never_prints_a_key_or_token(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        folders: [{{path: /srv/tv}}]
        http: {{listen: 0.0.0.0:9000, api_key: {KEY}}}
        media_servers: [{{kind: jellyfin, url: "http://127.0.0.1:8096", token: {TOKEN}}}]
    """)
    shown = subprocess.run([sys.executable, "-m", "daemon", "check-config", "--config", str(path)],
                           cwd=REPO, capture_output=True, text=True, check=True)
    output = shown.stdout + shown.stderr
    assert KEY not in output and TOKEN not in output
    assert "http: listening on 0.0.0.0:9000; api_key set (not shown)" in output
    assert "media server: jellyfin http://127.0.0.1:8096; token set (not shown)" in output
    # Nor when the file is broken elsewhere.
    path.write_text(path.read_text() + "log_level: loud\n")
    failed = subprocess.run([sys.executable, "-m", "daemon", "check-config", "--config", str(path)],
                            cwd=REPO, capture_output=True, text=True)
    assert failed.returncode != 0 and "log_level" in failed.stderr + failed.stdout
    assert KEY not in failed.stderr + failed.stdout and TOKEN not in failed.stderr + failed.stdout


@pytest.mark.parametrize(("path", "expected"), [
    ("/tv/Show/a.mkv", "/srv/media/tv/Show/a.mkv"),
    ("/tv", "/srv/media/tv"),
    ("/tvshows/a.mkv", "/tvshows/a.mkv"),  # whole components only
    ("/tv/anime/a.mkv", "/srv/anime/a.mkv"),  # the longest prefix wins
    ("/movies/a.mkv", "/movies/a.mkv"),
])
def test_path_map(path: str, expected: str) -> None:
    assert map_path(path, (("/tv/", "/srv/media/tv"), ("/tv/anime", "/srv/anime/"))) == expected


def test_healthz_answers_503_while_the_pipeline_is_wedged(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"folders: [{{path: /srv}}]\nhttp: {{api_key: {KEY}}}\n"))
    healthy = [True]
    app = build_app(HttpContext(config=lambda: config, healthy=lambda: healthy[0], intake=None))  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        healthy[0] = False
        answer = client.get("/healthz")
        assert answer.status_code == 503 and answer.json()["status"] == "wedged"
        # Bazarr's two are open unless asr_requires_key; everything else asks.
        assert client.post("/asr").status_code == 404  # not served here; not refused by the gate
        assert client.post("/hooks/emby", json={}).status_code == 401
        closed = replace(config, http=replace(config.http, asr_requires_key=True))
        app = build_app(HttpContext(config=lambda: closed, healthy=lambda: True, intake=None))  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.post("/asr").status_code == 401
        assert client.post(f"/asr?apikey={KEY}").status_code == 404


# ---------------------------------------------------------------- config.example.yaml's commented sections


def commented_section(name: str) -> str:
    """Return the commented-out `name:` section of config.example.yaml, uncommented."""
    lines = (REPO / "config.example.yaml").read_text().splitlines()
    start = lines.index(f"# {name}:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    return "\n".join(block) + "\n"


def test_example_sections_load_and_document_the_codes_defaults(tmp_path: Path) -> None:
    http_text, servers_text = commented_section("http"), commented_section("media_servers")
    example = yaml.safe_load(http_text + servers_text)
    assert set(example["http"]) == {"listen", "api_key", "path_map", "accept_unwatched", "asr_requires_key",
                                    "metrics_without_key", "allowed_hosts", "max_audio_hours",
                                    "max_queued_audio_hours", "decode_slots"}
    assert set(example["media_servers"][0]) == {"kind", "url", "token", "path_map"}
    load_config(write(tmp_path, "folders: [{path: /srv}]\n" + http_text + servers_text))

    def loaded(text: str) -> Config:
        return replace(load_config(write(tmp_path, text)), source=Path("config.yaml"))

    plain = loaded("folders: [{path: /srv}]\nhttp: {}\n")
    documented = re.findall(r"^  (\w+): (.+?)  # default$", http_text, re.MULTILINE)
    assert {key for key, _ in documented} == set(example["http"])
    for key, value in documented:
        assert loaded(f"folders: [{{path: /srv}}]\nhttp:\n  {key}: {value}\n") == plain, key
    assert loaded("folders: [{path: /srv}]\nhttp: {accept_unwatched: true}\n") != plain


def test_a_key_is_32_printable_characters_without_spaces(tmp_path: Path) -> None:
    spaces, accented = " " * 40, "é" * 40
    for key, reason in ((" " * 16, "too short"), (spaces, "printable ASCII"), (accented, "printable ASCII"),
                        ("a" * 31, "too short"), ("tab\t" + "k" * 30, "printable ASCII")):
        path = write(tmp_path, f"folders: [{{path: /srv}}]\nhttp: {{api_key: {json.dumps(key)}}}\n")
        (problem,) = problems_of(path)
        assert problem.startswith("at 'http.api_key': ") and reason in problem, (key, problem)
        assert key.strip() == "" or key not in problem
    assert load_config(write(tmp_path, f"folders: [{{path: /srv}}]\nhttp: {{api_key: {'~!' * 16}}}\n")).http


def test_allowed_hosts_are_names_or_addresses(tmp_path: Path) -> None:
    good = load_config(write(tmp_path, "folders: [{path: /srv}]\n"
                                       "http: {allowed_hosts: [Subwatch.LAN, '192.168.1.5', '[fe80::1]']}\n"))
    assert good.http is not None and good.http.allowed_hosts == ("subwatch.lan", "192.168.1.5", "fe80::1")
    path = write(tmp_path, "folders: [{path: /srv}]\nhttp: {allowed_hosts: ['http://nas:9000']}\n")
    (problem,) = problems_of(path)
    assert problem.startswith("at 'http.allowed_hosts': 'http://nas:9000' is not a host name or address")


def test_request_limits_are_bounded(tmp_path: Path) -> None:
    path = write(tmp_path, "folders: [{path: /srv}]\nhttp: {max_audio_hours: 0, decode_slots: 0}\n")
    problems = problems_of(path)
    assert [p.split(":")[0] for p in problems] == ["at 'http.max_audio_hours'", "at 'http.decode_slots'"]
