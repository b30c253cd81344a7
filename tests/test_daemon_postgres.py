"""A real `subwatch run` whose queue is a PostgreSQL database on a real server (tests/postgres.py):
the file is transcribed, its sidecars say the words, the job and its notification are recorded in
the server, `subwatch status` reads them from there, and the URL's password shows nowhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg

from tests import speech
from tests.harness import NotificationSink, subwatch, wait_for_state, write_config
from tests.media_factory import make_media
from tests.postgres import PostgresServer
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
    shown = subwatch("status", "--config", str(config))
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
