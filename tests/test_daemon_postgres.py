"""A real `subwatch run` whose queue is a PostgreSQL database on a real server (tests/postgres.py):
the file is transcribed, its sidecars say the words, the job and its notification are recorded in
the server, `subwatch status` reads them from there, and the URL's password shows nowhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import psycopg

from tests import speech
from tests.harness import NotificationSink, subwatch, wait_for_state, write_config
from tests.media_factory import make_media
from tests.postgres import PostgresServer, free_port
from tests.said import assert_says, text_of

PASSWORD = "pw-4-test-never-shown"  # the test server trusts 127.0.0.1, so any password opens it


def test_a_daemon_on_postgresql_transcribes_and_records_there(
    postgres_server: PostgresServer, tiny_en_checkpoint: Path, tmp_path: Path, spawn
) -> None:  # noqa: ANN001
    url = postgres_server.fresh_url().replace("subwatch@", f"subwatch:{PASSWORD}@")
    (tmp_path / "inbox").mkdir()
    sink = NotificationSink()
    try:
        config = write_config(tmp_path / "config.yaml", f"""
            state_dir: {tmp_path / "state"}
            database: "{url}"
            node: {{name: nas-gpu}}
            defaults:
              {{model: {tiny_en_checkpoint}, beam_size: 1, device: cpu, settle_seconds: 1, language: en}}
            notify: {{urls: ["{sink.url}"], burst: 50}}
            folders: [{{path: {tmp_path / "inbox"}}}]
        """)
        daemon = spawn(config)
        daemon.wait_log("watching 1 folder(s)", timeout=120)
        clip = speech.jfk()
        source = make_media(tmp_path / "Inaugural Address (1961).mkv", audio_from=clip.path)
        shutil.copy(source, tmp_path / "inbox" / source.name)
        job = wait_for_state(config, source.name, {"done", "failed"})
        assert job["state"] == "done", job
        assert_says(tmp_path / "inbox" / "Inaugural Address (1961).en.srt", "ask not what your country")
        message = sink.wait_for(lambda m: "Inaugural Address" in m.get("message", ""))
        assert message["title"] == "Subtitles ready: Inaugural Address (1961)"
        assert "Language: English (en)" in message["message"]
        [node] = json.loads(subwatch("status", "--json", "--nodes", "--config", str(config)).stdout)
        assert (node["name"], node["gone"], node["running"], node["stopped_at"], node["workers"]) == (
            "nas-gpu", False, [], None, ["cpu"])
        assert 0 <= node["silent_seconds"] <= 60 and node["lease_seconds"] == 60
        assert daemon.stop() == 0
        log = daemon.log()
    finally:
        sink.close()
    # The job lives in the server, not in a SQLite file beside the state.
    with psycopg.connect(url) as raw:
        rows = raw.execute("SELECT state, language FROM jobs").fetchall()
    assert rows == [("done", "en")]
    assert not (tmp_path / "state" / "jobs.sqlite3").exists()
    [as_json] = json.loads(subwatch("status", "--json", "--config", str(config)).stdout)
    assert (as_json["state"], as_json["node"]) == ("done", "nas-gpu")
    [node] = json.loads(subwatch("status", "--json", "--nodes", "--config", str(config)).stdout)
    assert node["gone"] is True and node["stopped_at"] is not None  # stopped cleanly: gone at once
    shown = subwatch("status", "--config", str(config))
    assert "node nas-gpu: gone" in shown.stdout
    assert "Inaugural Address (1961).mkv" in shown.stdout and "· node nas-gpu" in shown.stdout
    assert shown.returncode == 0 and "Inaugural Address (1961).mkv" in shown.stdout
    assert "done" in shown.stdout
    checked = subwatch("check-config", "--config", str(config))
    assert checked.returncode == 0
    assert "database: postgresql://subwatch:****@127.0.0.1" in checked.stdout
    assert "password set (not shown)" in checked.stdout
    assert "node: nas-gpu; lease 60 s" in checked.stdout
    assert "queue at postgresql://subwatch:****@127.0.0.1" in log
    for said in (log, checked.stdout + checked.stderr, shown.stdout + shown.stderr):
        assert PASSWORD not in said
    assert text_of(tmp_path / "inbox" / "Inaugural Address (1961).en.vtt") == text_of(
        tmp_path / "inbox" / "Inaugural Address (1961).en.srt")


def test_the_database_going_away_is_one_line_and_a_503_until_it_is_back(
    postgres_server: PostgresServer, tiny_en_checkpoint: Path, tmp_path: Path, spawn
) -> None:  # noqa: ANN001
    url = postgres_server.fresh_url()
    port = free_port()
    (tmp_path / "inbox").mkdir()
    config = write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        database: "{url}"
        node: {{name: nas, lease_seconds: 10}}
        defaults: {{model: {tiny_en_checkpoint}, device: cpu, beam_size: 1, settle_seconds: 1, language: en}}
        folders: [{{path: {tmp_path / "inbox"}}}]
        http: {{listen: "127.0.0.1:{port}"}}
    """)
    daemon = spawn(config)
    daemon.wait_log("watching 1 folder(s)", timeout=120)
    health = f"http://127.0.0.1:{port}/healthz"
    assert httpx.get(health, timeout=10).json() == {"status": "ok"}
    # A file in hand when the server goes: it is transcribed meanwhile and recorded once it is back.
    speech.long_file(tmp_path / "staging.wav", [speech.jfk(), *speech.librispeech()], repeat=2)
    shutil.move(tmp_path / "staging.wav", tmp_path / "inbox" / "Lecture.wav")
    wait_for_state(config, "Lecture.wav", {"running"}, timeout=60)
    postgres_server.stop()
    try:
        daemon.wait_log("the job database postgresql://subwatch@127.0.0.1", timeout=60)
        answer = httpx.get(health, timeout=10)
        assert answer.status_code == 503 and "the job database cannot be reached" in answer.json()["detail"]
        assert daemon.process.poll() is None  # it goes on
    finally:
        postgres_server.start()
    daemon.wait_log("is back", timeout=60)
    assert httpx.get(health, timeout=10).json() == {"status": "ok"}
    job = wait_for_state(config, "Lecture.wav", {"done", "failed"}, timeout=120)
    assert (job["state"], job["attempts"]) == ("done", 1), job
    assert_says(tmp_path / "inbox" / "Lecture.en.srt", "what your country can do for you", "full hour")
    log = daemon.log()
    assert log.count("cannot be used:") == 1 and log.count("is back") == 1  # one line each way
    assert "psycopg" not in log  # not a line per failed reconnection
    nodes = httpx.get(f"http://127.0.0.1:{port}/api/nodes", timeout=10).json()
    assert [(n["name"], n["gone"]) for n in nodes] == [("nas", False)]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'subwatch_node_up{node="nas"} 1.0' in metrics and 'subwatch_jobs{state="done"} 1.0' in metrics
    assert daemon.stop() == 0
