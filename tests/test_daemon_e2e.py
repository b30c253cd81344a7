"""The spine end to end: a real `subwatch run` process, real folders, real media, real Apprise.

One daemon serves the scenarios of this module in separate folders, so torch
and the model load once; the restart test starts its own.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import srt
import webvtt

from tests.harness import Daemon, NotificationSink, status, wait_for_state, write_config
from tests.media_factory import duration_of, make_media

SETTLE = 1.5


@pytest.fixture(scope="module")
def sink() -> Iterator[NotificationSink]:
    server = NotificationSink()
    yield server
    server.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, sink: NotificationSink):  # noqa: ANN201
    root = tmp_path_factory.mktemp("e2e")
    for name in ("movies", "shows", "nomodel"):
        (root / name).mkdir()
    config = write_config(root / "config.yaml", f"""
        state_dir: {root / "state"}
        log_level: info
        defaults:
          model: {tiny_checkpoint}
          device: cpu
          settle_seconds: {SETTLE}
          language: en
        notify:
          # The second target refuses connections: delivery to it must never stall the jobs.
          urls: ["{sink.url}", "json://127.0.0.1:9/"]
          burst: 50
        folders:
          - path: {root / "movies"}
          - path: {root / "shows"}
            language: auto
          - path: {root / "nomodel"}
            model: {root / "missing" / "model.pt"}
    """)
    daemon = Daemon(config)
    daemon.wait_log("watching 3 folder(s)", timeout=120)
    yield root, config, daemon
    assert daemon.stop() == 0, daemon.log()


def slow_copy(source: Path, target: Path, chunks: int = 6, pause: float = SETTLE / 2) -> float:
    """Copy `source` to `target` in chunks with pauses shorter than the settle time; return the end time."""
    data = source.read_bytes()
    step = len(data) // chunks + 1
    with open(target, "wb") as out:
        for start in range(0, len(data), step):
            out.write(data[start:start + step])
            out.flush()
            time.sleep(pause)
    return time.time()


def parse_srt(path: Path) -> list[srt.Subtitle]:
    return list(srt.parse(path.read_text(encoding="utf-8")))


def vtt_seconds(stamp: str) -> float:
    """webvtt-py's *_in_seconds are truncated to whole seconds; read its HH:MM:SS.mmm text instead."""
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def assert_cues_valid(srt_path: Path, vtt_path: Path, media_duration: float) -> list[srt.Subtitle]:
    """Both sidecars parse with independent parsers, agree, and every cue lies inside the media."""
    cues = parse_srt(srt_path)
    assert cues, f"{srt_path} has no cues"
    vtt = list(webvtt.read(str(vtt_path)))
    assert vtt_path.read_text(encoding="utf-8").startswith("WEBVTT")
    assert len(vtt) == len(cues)
    previous_end = 0.0
    for cue, vcue in zip(cues, vtt, strict=True):
        start, end = cue.start.total_seconds(), cue.end.total_seconds()
        assert 0 <= start < end <= media_duration + 0.001, (start, end, media_duration)
        assert start >= previous_end - 1e-6
        previous_end = end
        assert cue.content.strip()
        assert (vtt_seconds(vcue.start), vtt_seconds(vcue.end)) == pytest.approx((start, end), abs=0.0015)
        assert vcue.text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">") == cue.content
    return cues


def test_slow_copy_is_taken_once_after_it_finishes(world, sink: NotificationSink, tmp_path: Path) -> None:  # noqa: ANN001
    root, config, _ = world
    speech = "Hello there. The copy is slow today."
    source = make_media(tmp_path / "Movie (2009).mkv", speech=speech, seconds=6)
    finished = slow_copy(source, root / "movies" / "Movie (2009).mkv")
    job = wait_for_state(config, "Movie (2009).mkv", {"done", "failed"})
    assert job["state"] == "done", job
    assert job["created_at"] >= finished + SETTLE - 0.3, "queued before the copy had settled"
    assert job["attempts"] == 1 and job["language"] == "en"
    srt_path = root / "movies" / "Movie (2009).en.srt"
    vtt_path = root / "movies" / "Movie (2009).en.vtt"
    assert sorted(job["outputs"]) == sorted([str(srt_path), str(vtt_path)])
    assert_cues_valid(srt_path, vtt_path, duration_of(source))
    note = sink.wait_for(lambda m: "Movie (2009)" in m.get("title", ""))
    assert note["title"] == "Subtitles ready: Movie (2009)"
    assert "Movie (2009).mkv" in note["message"] and "English (en)" in note["message"]
    assert "0:06" in note["message"]  # the media's duration
    time.sleep(SETTLE + 0.5)
    assert [m["title"] for m in sink.messages()].count("Subtitles ready: Movie (2009)") == 1


def test_detected_language_names_the_sidecars(world, tmp_path: Path) -> None:  # noqa: ANN001
    root, config, _ = world
    shutil.copy(make_media(tmp_path / "Episode.mp4", speech="Good morning everyone.", seconds=4),
                root / "shows" / "Episode.mp4")
    job = wait_for_state(config, "Episode.mp4", {"done", "failed"})
    assert job["state"] == "done", job
    language = job["language"]
    assert language and len(language) in (2, 3)
    srt_path = root / "shows" / f"Episode.{language}.srt"
    assert [Path(p) for p in job["outputs"]] == [srt_path, srt_path.with_suffix(".vtt")]
    assert_cues_valid(srt_path, srt_path.with_suffix(".vtt"), 4.1)


def test_users_subtitle_is_never_overwritten(world, tmp_path: Path) -> None:  # noqa: ANN001
    root, config, _ = world
    folder = root / "movies" / "Mine"
    folder.mkdir()
    mine = "1\n00:00:01,000 --> 00:00:02,000\nMy own words\n"
    (folder / "Home Video.en.srt").write_text(mine)
    (folder / "Home Video.en.vtt").write_text("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nMy own words\n")
    shutil.copy(make_media(tmp_path / "Home Video.mkv", speech="Happy birthday.", seconds=3),
                folder / "Home Video.mkv")
    job = wait_for_state(config, "Home Video.mkv", {"done", "failed", "skipped"})
    assert job["state"] == "skipped" and "already has en subtitles" in job["error"], job
    assert (folder / "Home Video.en.srt").read_text() == mine
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_missing_model_fails_the_job_with_where_it_looked(world, sink, tmp_path: Path) -> None:  # noqa: ANN001
    root, config, daemon = world
    source = make_media(tmp_path / "x.mkv", speech="Where is the model?", seconds=3)
    shutil.copy(source, root / "nomodel" / "x.mkv")
    job = wait_for_state(config, "x.mkv", {"done", "failed"})
    assert job["state"] == "failed"
    missing = root / "missing" / "model.pt"
    assert job["error"].startswith(f"model {missing} does not exist; set `model:` to"), job
    note = sink.wait_for(lambda m: m.get("title") == "Subtitles failed: x")
    assert f"model {missing} does not exist" in note["message"]
    assert daemon.process.poll() is None


def test_restart_does_no_double_work(tmp_path: Path, tiny_checkpoint: Path, spawn) -> None:  # noqa: ANN001
    sink = NotificationSink()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        defaults: {{model: {tiny_checkpoint}, device: cpu, settle_seconds: 0.5, language: en}}
        notify: {{urls: ["{sink.url}"]}}
        folders: [{{path: {inbox}}}]
    """)
    # Present before the first start: picked up by backfill.
    make_media(inbox / "Before.mkv", speech="I was here first.", seconds=3)
    first = spawn(config)
    wait_for_state(config, "Before.mkv", {"done"})
    srt_path = inbox / "Before.en.srt"
    written = srt_path.stat().st_mtime_ns
    assert first.stop(signal.SIGTERM) == 0
    assert "stopped" in first.log()

    second = spawn(config)
    second.wait_log("watching 1 folder(s)")
    make_media(inbox / "After.mkv", speech="And I came later.", seconds=3)
    wait_for_state(config, "After.mkv", {"done"})
    assert second.stop(signal.SIGINT) == 0
    jobs = {Path(j["path"]).name: j for j in status(config)}
    assert jobs["Before.mkv"]["attempts"] == 1 and jobs["Before.mkv"]["state"] == "done"
    assert srt_path.stat().st_mtime_ns == written
    titles = [m["title"] for m in sink.messages()]
    assert titles.count("Subtitles ready: Before") == 1 and titles.count("Subtitles ready: After") == 1
    sink.close()
