"""node.path_map: hosts that see the same media under different paths share one job per file.

Two JobQueues on one real PostgreSQL database stand for two hosts: a NAS that has the media at
nas/media and a desktop that mounts it at desktop/mnt (a symlink here). Both store it as /srv/media.
Every path a host gives is its own and every path it gets back is its own; the database holds the
stored form."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from daemon.datatypes import JobResult, JobState
from daemon.pathmap import PathMap, map_prefix
from daemon.queue import JobQueue
from tests.postgres import PostgresServer

STORED = "/srv/media"


def test_a_prefix_matches_whole_folder_names_and_the_longest_wins() -> None:
    pairs = (("/srv/media", "/mnt/nas"), ("/srv/media/tv", "/mnt/tv"), ("/", "/root-of-it"))
    assert map_prefix("/srv/media/film.mkv", pairs) == "/mnt/nas/film.mkv"
    assert map_prefix("/srv/media/tv/show/e1.mkv", pairs) == "/mnt/tv/show/e1.mkv"
    assert map_prefix("/srv/mediathek/film.mkv", pairs) == "/root-of-it/srv/mediathek/film.mkv"
    assert map_prefix("/srv/media", pairs) == "/mnt/nas"
    assert map_prefix("/other/film.mkv", (("/srv/media", "/mnt/nas"),)) == "/other/film.mkv"


def test_a_path_map_turns_stored_paths_into_this_hosts_and_back() -> None:
    paths = PathMap((("/srv/media", "/mnt/nas/media/"),))
    here = Path("/mnt/nas/media/Films/Heat (1995).mkv")
    assert paths.stored(here) == "/srv/media/Films/Heat (1995).mkv"
    assert paths.here(paths.stored(here)) == here
    assert paths.stored(Path("/mnt/nas/mediathek/x.mkv")) == "/mnt/nas/mediathek/x.mkv"  # not under it
    odd = Path(os.fsdecode(b"/mnt/nas/media/caf\xe9.mkv"))  # not UTF-8: survives both ways
    assert paths.here(paths.stored(odd)) == odd


@pytest.fixture
def hosts(postgres_server: PostgresServer, tmp_path: Path):  # noqa: ANN201
    """(nas queue, its media folder, desktop queue, its view of the same folder)."""
    url = postgres_server.fresh_url()
    nas_media = tmp_path / "nas" / "media"
    nas_media.mkdir(parents=True)
    desktop_media = tmp_path / "desktop" / "mnt"
    desktop_media.parent.mkdir()
    desktop_media.symlink_to(nas_media, target_is_directory=True)
    nas = JobQueue(url, node="nas", paths=PathMap(((STORED, str(nas_media)),)))
    desktop = JobQueue(url, node="desktop", paths=PathMap(((STORED, str(desktop_media)),)))
    yield nas, nas_media, desktop, desktop_media
    nas.close()
    desktop.close()


def _raw(url_of: JobQueue, sql: str) -> list[tuple]:
    with psycopg.connect(str(url_of.target)) as conn:
        return conn.execute(sql).fetchall()


def test_one_file_seen_by_two_hosts_under_their_own_paths_is_one_job(hosts) -> None:  # noqa: ANN001
    nas, nas_media, desktop, desktop_media = hosts
    (nas_media / "Heat (1995).mkv").write_bytes(b"a film")
    (nas_media / "empty.mkv").write_bytes(b"")  # identified by its name alone: the stored one
    first = nas.enqueue(nas_media / "Heat (1995).mkv", nas_media)
    again = desktop.enqueue(desktop_media / "Heat (1995).mkv", desktop_media)
    assert first.action == "queued" and again.action == "duplicate" and again.job.id == first.job.id
    assert again.job.path == desktop_media / "Heat (1995).mkv" and again.job.folder == desktop_media
    empty = nas.enqueue(nas_media / "empty.mkv", nas_media).job
    assert desktop.enqueue(desktop_media / "empty.mkv", desktop_media).job.id == empty.id
    stored = {bytes(p).decode() for (p,) in _raw(nas, "SELECT path FROM jobs")}
    assert stored == {f"{STORED}/Heat (1995).mkv", f"{STORED}/empty.mkv"}
    assert {bytes(f).decode() for (f,) in _raw(nas, "SELECT folder FROM jobs")} == {STORED}


def test_a_host_claims_by_its_own_folders_and_every_record_reads_back_in_each_hosts_paths(
    hosts,  # noqa: ANN001
) -> None:
    nas, nas_media, desktop, desktop_media = hosts
    (nas_media / "Heat (1995).mkv").write_bytes(b"a film")
    job = nas.enqueue(nas_media / "Heat (1995).mkv", nas_media).job
    nas.serve([nas_media / "elsewhere"])  # not a folder of this job: the NAS leaves it
    assert nas.claim() is None
    desktop.serve([desktop_media])
    claimed = desktop.claim()
    assert claimed.id == job.id and claimed.path == desktop_media / "Heat (1995).mkv"
    srt = desktop_media / "Heat (1995).en.srt"
    desktop.record_sidecar(srt, "f" * 64, job.id)
    desktop.finish(job.id, JobResult(language="en", language_probability=0.9, media_duration=60.0,
                                     elapsed=3.0, outputs=(srt,)))
    desktop.server_updates.owe(job.id, ["jellyfin http://jf:8096"], [srt])
    # The NAS reads every record of the desktop's work in its own paths.
    done = nas.get(job.id)
    assert done.state is JobState.DONE and done.node == "desktop"
    assert done.path == nas_media / "Heat (1995).mkv" and done.outputs == (nas_media / "Heat (1995).en.srt",)
    assert nas.sidecar_hash(nas_media / "Heat (1995).en.srt") == "f" * 64
    assert nas.sidecars_of(job.id) == [nas_media / "Heat (1995).en.srt"]
    assert [u.paths for u in nas.server_updates_of(job.id)] == [(nas_media / "Heat (1995).en.srt",)]
    assert [n.path for n in desktop.notices()] == [desktop_media / "Heat (1995).mkv"]
    assert [c.folder for c in nas.stats.by_folder()] == [nas_media]
    assert nas.find(nas_media / "Heat (1995).mkv").id == job.id
    stored = {bytes(p).decode() for (p,) in _raw(nas, "SELECT path FROM sidecars")}
    assert stored == {f"{STORED}/Heat (1995).en.srt"}
    assert _raw(nas, "SELECT outputs FROM jobs") == [(f'["{STORED}/Heat (1995).en.srt"]',)]
    # A rename seen by the NAS moves the one job and its sidecar record for both hosts.
    (nas_media / "Heat (1995).mkv").rename(nas_media / "Heat.mkv")
    nas.move(nas_media / "Heat (1995).mkv", nas_media / "Heat.mkv")
    assert nas.move_sidecar(nas_media / "Heat (1995).en.srt", nas_media / "Heat.en.srt")
    assert desktop.get(job.id).path == desktop_media / "Heat.mkv"
    assert desktop.get(job.id).outputs == (desktop_media / "Heat.en.srt",)


def test_a_copy_is_not_taken_for_a_move_because_this_host_cannot_see_the_others_share(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.fresh_url()
    nas_media, desktop_only = tmp_path / "nas" / "media", tmp_path / "desktop" / "downloads"
    nas_media.mkdir(parents=True)
    desktop_only.mkdir(parents=True)
    nas = JobQueue(url, node="nas", paths=PathMap(((STORED, str(nas_media)),)))
    # The desktop does not mount the NAS's media at all: its map points where nothing is.
    desktop = JobQueue(url, node="desktop", paths=PathMap(((STORED, str(tmp_path / "not-mounted")),)))
    (nas_media / "Heat (1995).mkv").write_bytes(b"a film")
    job = nas.enqueue(nas_media / "Heat (1995).mkv", nas_media).job
    nas.claim()
    nas.finish(job.id, JobResult(language="en", language_probability=0.9, media_duration=60.0, elapsed=3.0))
    (desktop_only / "Heat.mkv").write_bytes(b"a film")  # the same film in the desktop's own folder
    outcome = desktop.enqueue(desktop_only / "Heat.mkv", desktop_only)
    assert outcome.action == "copied" and outcome.job.id != job.id  # its own job, from the transcript
    assert nas.get(job.id).path == nas_media / "Heat (1995).mkv"  # the NAS's job stays where it is
    nas.close()
    desktop.close()


def test_a_path_map_that_would_read_a_watched_folder_back_elsewhere_is_refused(tmp_path: Path) -> None:
    from daemon.config import ConfigError, load_config
    from tests.harness import write_config

    config = write_config(tmp_path / "subwatch.yaml", f"""
        state_dir: {tmp_path / "state"}
        database: postgresql://subwatch@nas.lan/subwatch
        node: {{path_map: {{"{tmp_path}/media": "/mnt/media"}}}}
        folders: [{{path: {tmp_path}/media/music}}]
    """)
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    said = str(refused.value)
    assert "at 'node.path_map'" in said and f"{tmp_path}/media/music" in said
    assert "/mnt/media/music" in said  # what it would read back as
