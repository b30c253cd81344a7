"""`subwatch migrate-db` (the real command) from a SQLite queue into a real PostgreSQL database: done,
failed and pending jobs, a stored transcript, sidecar records, an owed notification and a media
server update all arrive, `subwatch status --json` is the same before and after, a copy of the
done file is matched to the migrated transcript, and a database that holds jobs is refused. The paths
arrive in the form node.path_map gives them (other hosts map them to theirs)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from daemon.datatypes import JobResult, JobState
from daemon.pathmap import PathMap
from daemon.queue import JobQueue
from tests.harness import subwatch, write_config
from tests.postgres import PostgresServer
from tests.test_queue import KEY, awkward_transcript


def _configs(tmp_path: Path, url: str) -> tuple[Path, Path]:
    media = tmp_path / "media"
    media.mkdir()
    sqlite = write_config(tmp_path / "sqlite.yaml", f"""
        state_dir: {tmp_path / "state"}
        node: {{name: nas, path_map: {{"/srv/media": "{media}"}}}}
        folders: [{{path: {media}}}]
    """)
    shared = write_config(tmp_path / "shared.yaml", sqlite.read_text() + f'database: "{url}"\n')
    return sqlite, shared


def _status(config: Path) -> list[dict]:
    done = subwatch("status", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_sqlite_queue_moves_to_postgresql_with_nothing_lost(postgres_server: PostgresServer,
                                                              tmp_path: Path) -> None:
    url = postgres_server.fresh_url()
    sqlite_config, shared_config = _configs(tmp_path, url)
    media = tmp_path / "media"
    films = [media / f"Film {i}.mkv" for i in range(3)]
    for i, film in enumerate(films):
        film.write_bytes(f"film {i}".encode() * 100)
    old = JobQueue(tmp_path / "state" / "jobs.sqlite3", node="nas")
    done, failed, pending = (old.enqueue(film, media).job for film in films)
    assert old.claim().id == done.id
    srt = media / "Film 0.en.srt"
    transcript = awkward_transcript()
    old.finish(done.id, replace(JobResult("en", 0.9, 61.5, 4.2, (srt,)), transcript=transcript,
                                transcript_key=KEY))
    old.record_sidecar(srt, "ab" * 32, done.id)
    old.server_updates.owe(done.id, ["jellyfin http://jf.lan:8096"], [srt])
    assert old.claim().id == failed.id
    old.fail(failed.id, "ffprobe: invalid data found", permanent=True)
    before = _status(sqlite_config)
    owed = old.notices()
    old.close()
    assert [j["state"] for j in before] == ["done", "failed", "pending"]

    moved = subwatch("migrate-db", "--to", url, "--config", str(sqlite_config))
    assert moved.returncode == 0, moved.stderr
    assert "3 jobs, 1 sidecars, 1 transcripts, 2 outbox" in moved.stdout
    assert "1 server_updates" in moved.stdout

    assert _status(shared_config) == before  # every field of every job, ids included
    raw = JobQueue(url, node="nas")  # no path map: the paths as the database holds them
    assert [str(j.path) for j in raw.jobs()] == [f"/srv/media/Film {i}.mkv" for i in range(3)]
    assert raw.get(done.id).outputs == (Path("/srv/media/Film 0.en.srt"),)
    assert raw.sidecars_of(done.id) == [Path("/srv/media/Film 0.en.srt")]
    assert {n.path for n in raw.notices()} == {Path("/srv/media/Film 0.mkv"), Path("/srv/media/Film 1.mkv")}
    assert raw.server_updates_of(done.id)[0].paths == (Path("/srv/media/Film 0.en.srt"),)
    raw.close()
    new = JobQueue(url, node="nas", paths=PathMap((("/srv/media", os.fspath(media)),)))
    assert new.notices() == owed
    assert new.sidecar_hash(srt) == "ab" * 32
    assert [(u.server, u.paths, u.state) for u in new.server_updates_of(done.id)] == [
        ("jellyfin http://jf.lan:8096", (srt,), "owed")]
    assert new.transcript_of(done.id) == transcript
    copy = media / "Film 0 (copy).mkv"
    copy.write_bytes(films[0].read_bytes())
    outcome = new.enqueue(copy, media)  # the same content: matched to the migrated job and transcript
    assert outcome.action == "copied" and outcome.copy_of == films[0]
    assert outcome.job.id > pending.id  # ids go on after the copied ones
    assert new.transcript(outcome.job.fingerprint, KEY) == transcript
    assert new.counts()[JobState.PENDING] == 2
    new.close()

    again = subwatch("migrate-db", "--to", url, "--config", str(sqlite_config))
    assert again.returncode != 0
    assert "already holds jobs" in again.stderr and "postgresql://subwatch@127.0.0.1" in again.stderr
    assert len(_status(shared_config)) == 4  # the refused run changed nothing
