"""The status page, /api and /metrics on a real queue database, in process (Starlette's TestClient).

tests/test_daemon_status.py runs them through a real daemon and browser; these cover what a
few-second job cannot show (a transcription in progress, a 30-day chart) and the key's edges.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from daemon.config import Config, load_config
from daemon.datatypes import JobResult, JobState
from daemon.decoders import DecoderPool, Settings
from daemon.http import DaemonView, HttpContext, build_app
from daemon.http.page import day_chart, hours_text
from daemon.jobsjson import json_text
from daemon.queue import JobQueue
from daemon.subtitles import SidecarLedger
from daemon.transcribers import Activity

KEY = "page-" + "0123456789abcdef" * 2


@dataclass
class Setup:
    root: Path
    config: Config
    jobs: JobQueue
    activity: Activity
    woken: list[bool]
    client: TestClient


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    tv = tmp_path / "tv"
    tv.mkdir()
    (tmp_path / "config.yaml").write_text(
        f"state_dir: {tmp_path / 'state'}\nfolders: [{{path: {tv}, language: de}}]\n"
        f"http: {{api_key: {KEY}}}\n")
    config = load_config(tmp_path / "config.yaml")
    jobs = JobQueue(config.db_path)
    for name in ("a.mkv", "b.mkv", "c.mkv", "d.mkv"):
        (tv / name).write_bytes(name.encode() * 1000)
        jobs.enqueue(tv / name, tv)
    done = jobs.claim()
    assert done is not None
    jobs.finish(done.id, JobResult("de", 0.98, 5400.0, 120.0, (tv / "a.de.srt",)))
    failed = jobs.claim()
    assert failed is not None
    jobs.fail(failed.id, "not a media file, or corrupt\n(ffprobe said: invalid data)", permanent=True)
    running = jobs.claim()
    assert running is not None
    # Half of 6,000 s of audio in 100 s: 30x, and still 30x when the test reaches the page a second
    # or so later on a loaded machine (with 600 s in 10 s, 0.35 s of delay showed 29x).
    activity = Activity(current="c.mkv", job_ids=(running.id,), progress=0.5, seconds=6000.0,
                        since=time.monotonic() - 100.0)
    woken: list[bool] = []
    view = DaemonView(jobs=jobs, ledger=SidecarLedger(jobs), models=no_decoders(tmp_path),
                      activities=lambda: [("cpu", activity)], wake=lambda: woken.append(True))
    app = build_app(HttpContext(config=lambda: config, healthy=lambda: True, intake=None,  # type: ignore[arg-type]
                                daemon=view))
    with TestClient(app, base_url="http://subwatch.lan:9000") as client:
        yield Setup(tmp_path, config, jobs, activity, woken, client)
    jobs.close()


def no_decoders(root: Path) -> DecoderPool:
    """The daemon's decoder children, none started (the page shows no model and no decoder)."""
    return DecoderPool(Settings(root, 300.0, None, "auto"), threading.Event())


def state_of(setup: Setup, name: str) -> str:
    db = sqlite3.connect(setup.config.db_path)
    try:
        sql = "SELECT state FROM jobs WHERE CAST(path AS TEXT) LIKE ?"
        return db.execute(sql, (f"%{name}",)).fetchone()[0]
    finally:
        db.close()


def test_the_page_shows_the_work_now_and_asks_for_the_key_once(setup: Setup) -> None:
    client = setup.client
    asked = client.get("/")
    assert asked.status_code == 401 and 'id="key-prompt"' in asked.text and "c.mkv" not in asked.text
    wrong = client.post("/key", data={"apikey": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and 'id="wrong-key"' in wrong.text
    # /?apikey=KEY keeps the key in the cookie and takes it off the address bar.
    opened = client.get(f"/?apikey={KEY}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    cookie = opened.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and KEY not in cookie
    page = client.get("/")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    now = re.search(r'<section id="now">(.*?)</section>', page.text, re.S)
    assert now is not None
    text = " ".join(re.sub(r"<[^>]+>", " ", now.group(1)).split())
    # 30x (see the fixture); the language is the folder's, not yet detected.
    assert "c.mkv on cpu de · 50% · 30x realtime" in text, text
    assert "d.mkv" in text  # the queue
    assert '<meta http-equiv="refresh" content="5">' in page.text  # work runs: it reloads itself
    failed = re.search(r'<section id="failed"(.*?)</section>', page.text, re.S)
    assert failed is not None and "not a media file, or corrupt" in failed.group(1)
    assert "ffprobe said" not in failed.group(1)  # one line


def test_the_key_is_not_asked_without_one_and_metrics_may_go_without_it(setup: Setup) -> None:
    assert setup.client.get("/metrics").status_code == 401
    http = setup.config.http
    assert http is not None
    opened = replace(setup.config, http=replace(http, metrics_without_key=True))
    app = build_app(HttpContext(config=lambda: opened, healthy=lambda: True, intake=None,  # type: ignore[arg-type]
                                daemon=_view(setup)))
    with TestClient(app) as client:
        answer = client.get("/metrics")
        assert answer.status_code == 200
        assert client.get("/api/jobs").status_code == 401  # only /metrics
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    counts = {s.labels["state"]: s.value for s in families["subwatch_jobs"].samples}
    assert counts == {"pending": 1, "running": 1, "done": 1, "failed": 1, "skipped": 0}
    oldest = families["subwatch_queue_oldest_pending_seconds"].samples[0].value
    assert 0 <= oldest < 60


def _view(setup: Setup) -> DaemonView:
    return DaemonView(jobs=setup.jobs, ledger=SidecarLedger(setup.jobs), models=no_decoders(setup.root),
                      activities=lambda: [], wake=lambda: None)


def test_actions_from_the_page_and_from_other_sites(setup: Setup) -> None:
    client = setup.client
    client.get(f"/?apikey={KEY}", follow_redirects=False)  # the cookie
    tv = setup.config.folders[0].path
    # Another site's page, with the browser's cookie: refused, nothing changed.
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "same-site"}):
        refused = client.post("/api/retry", data={"all_failed": "true"}, headers=headers,
                              follow_redirects=False)
        assert refused.status_code == 403, headers
    assert state_of(setup, "b.mkv") == "failed" and setup.woken == []
    # This site's own page: done, and back to the page saying so.
    back = client.post("/api/retry", data={"path": str(tv / "b.mkv")},
                       headers={"Origin": "http://subwatch.lan:9000", "Sec-Fetch-Site": "same-origin"},
                       follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == "/?said=retried&n=1"
    assert state_of(setup, "b.mkv") == "pending" and setup.woken == [True]
    assert "1 job queued again" in client.get(back.headers["location"]).text
    # JSON with the key: forget refuses the running job, forgets a done one; unknown paths say so.
    headers = {"X-Api-Key": KEY}
    busy = client.post("/api/forget", json={"path": str(tv / "c.mkv")}, headers=headers)
    assert busy.status_code == 409 and "being transcribed now" in busy.json()["error"]
    assert client.post("/api/forget", json={"path": str(tv / "a.mkv")}, headers=headers).json() == {
        "forgot": str(tv / "a.mkv")}
    assert client.post("/api/forget", json={"path": str(tv / "a.mkv")}, headers=headers).status_code == 404
    assert client.post("/api/retry", json={"path": "relative.mkv"}, headers=headers).status_code == 400
    assert client.post("/api/retry", content=b"[1]", headers=headers).status_code == 400
    assert client.get("/api/jobs?state=bogus", headers=headers).status_code == 400


def test_the_day_chart_and_hour_labels() -> None:
    per_day = [(f"2026-11-{day:02d}", 0.0) for day in range(2, 31)] + [("2026-12-01", 5400.0)]
    chart = day_chart(per_day)
    assert len(chart["bars"]) == 30 and chart["top"] == "2 h" and chart["total"] == "1.5 h"
    today = chart["bars"][-1]
    assert today.value == 1.5 and today.height == pytest.approx((chart["base"] - chart["pad_top"]) * 0.75)
    assert [bar.height for bar in chart["bars"][:-1]] == [0.0] * 29
    assert [tick[1] for tick in chart["ticks"]] == ["11-03", "11-10", "11-17", "11-24", "12-01"]
    assert (hours_text(0), hours_text(0.25), hours_text(7 / 3600), hours_text(12.5)) == (
        "0 h", "15 min", "7 s", "12.5 h")


def test_media_seconds_per_day_reads_finished_at(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    try:
        now = time.time()
        for index, (name, days_ago) in enumerate((("old.mkv", 40), ("week.mkv", 7), ("today.mkv", 0))):
            path = tmp_path / name
            path.write_bytes(b"x" * (100 + index))
            jobs.enqueue(path, tmp_path)
            job = jobs.claim()
            assert job is not None
            jobs.finish(job.id, JobResult("en", None, 3600.0 * (index + 1), 60.0))
            db = sqlite3.connect(tmp_path / "jobs.sqlite3")
            db.execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (now - days_ago * 86400, job.id))
            db.commit()
            db.close()
        per_day = dict(jobs.stats.media_seconds_per_day(30, now))
        assert len(per_day) == 30
        assert per_day[time.strftime("%Y-%m-%d", time.localtime(now))] == 3 * 3600
        assert per_day[time.strftime("%Y-%m-%d", time.localtime(now - 7 * 86400))] == 2 * 3600
        assert sum(per_day.values()) == 5 * 3600  # 40 days ago is not in the chart
    finally:
        jobs.close()


def test_a_name_that_is_not_utf8_shows_and_retries_from_the_page(setup: Setup) -> None:
    tv = setup.config.folders[0].path
    odd = Path(os.fsdecode(bytes(tv) + b"/caf\xe9.mkv"))
    odd.write_bytes(b"odd" * 1000)
    setup.jobs.enqueue(odd, tv)
    setup.jobs.fail(setup.jobs.find(odd).id, "not a media file, or corrupt", permanent=True)  # type: ignore[union-attr]
    client = setup.client
    client.get(f"/?apikey={KEY}", follow_redirects=False)
    page = client.get("/")
    assert page.status_code == 200 and "caf\\xe9.mkv" in page.text
    quoted = re.findall(r'name="qpath" value="([^"]*caf[^"]*)"', page.text)
    assert quoted and quoted[0].endswith("/caf%E9.mkv")
    back = client.post("/api/retry", data={"qpath": quoted[0]}, follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == "/?said=retried&n=1"
    assert setup.jobs.find(odd).state.value == "pending"  # type: ignore[union-attr]
    body = json_text({"path": os.fsdecode(odd)}).encode()  # as /api/jobs writes it: \udce9
    gone = client.post("/api/retry", content=body, headers={"X-Api-Key": KEY})
    assert gone.status_code == 404 and gone.json() == {"error": f"no failed job for {tv}/caf\\xe9.mkv"}


def test_the_page_says_only_its_own_messages_for_the_codes_an_action_sends_back(setup: Setup) -> None:
    client = setup.client
    client.get(f"/?apikey={KEY}", follow_redirects=False)  # the cookie
    # A link anyone can send: none of its text reaches the page, escaped or not.
    for said in ("<script>alert(1)</script>", "Your key is wrong", "retried<b>"):
        page = client.get("/", params={"said": said, "n": "3"})
        assert page.status_code == 200 and 'id="said"' not in page.text
        assert "alert(1)" not in page.text and "Your key is wrong" not in page.text
    for count in ("x", "-1", "1e3", "9" * 12, ""):
        assert 'id="said"' not in client.get("/", params={"said": "retried", "n": count}).text
    assert "2 jobs queued again" in client.get("/?said=retried&n=2").text
    # A refusal comes back as a code too: its message is the page's, not the path sent.
    tv = setup.config.folders[0].path
    page_headers = {"Origin": "http://subwatch.lan:9000", "Sec-Fetch-Site": "same-origin"}
    for data, code, message in [
            ({"path": str(tv / "<i>nope</i>.mkv")}, "no-such-job", "no such job"),
            ({"path": "relative.mkv"}, "not-understood", "the request was not understood"),
            ({"path": str(tv / "c.mkv")}, "being-transcribed", "being transcribed now")]:
        action = "/api/forget" if code == "being-transcribed" else "/api/retry"
        back = client.post(action, data=data, headers=page_headers, follow_redirects=False)
        assert back.status_code == 303 and back.headers["location"] == f"/?said={code}", data
        page = client.get(back.headers["location"]).text
        assert message in page and "nope" not in page
    back = client.post("/api/rescan", data={"path": "/elsewhere"}, headers=page_headers,
                       follow_redirects=False)
    assert back.headers["location"] == "/?said=not-watched"
    assert "that path is in no watched folder" in client.get(back.headers["location"]).text


def test_api_bodies_and_paths_that_cannot_be_taken(setup: Setup) -> None:
    client, headers = setup.client, {"X-Api-Key": KEY, "Content-Type": "application/json"}
    tv = setup.config.folders[0].path
    big = b'{"path": "' + b"a" * 70_000 + b'"}'
    answer = client.post("/api/retry", content=big, headers=headers)
    assert answer.status_code == 413 and "larger than" in answer.json()["error"]
    chunked = client.post("/api/retry", content=iter([b'{"path": "', b"a" * 70_000, b'"}']), headers=headers)
    assert chunked.status_code == 413
    assert client.post("/api/retry", content=b"[" * 60_000, headers=headers).status_code == 400
    for raw in (f'"{tv}/a\\u0000.mkv"', f'"{tv}/\\ud800.mkv"', '"/' + "a/" * 3000 + '"'):
        answer = client.post("/api/retry", content=b'{"path": ' + raw.encode() + b"}", headers=headers)
        assert answer.status_code == 400, (raw[:40], answer.text)
        answer = client.post("/api/rescan", content=b'{"path": ' + raw.encode() + b"}", headers=headers)
        assert answer.status_code == 400, (raw[:40], answer.text)
    assert state_of(setup, "b.mkv") == "failed"  # nothing above retried anything


def test_the_key_form_is_read_under_a_cap(setup: Setup) -> None:
    client = setup.client
    big = client.post("/key", content=b"apikey=" + b"k" * 10_000, follow_redirects=False,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413 and "subwatch_key=" not in big.headers.get("set-cookie", "")
    many = client.post("/key", data={f"f{n}": "x" for n in range(20)}, follow_redirects=False)
    assert many.status_code == 400
    right = client.post("/key", data={"apikey": KEY}, follow_redirects=False)
    assert right.status_code == 303 and "subwatch_key=" in right.headers["set-cookie"]


def test_a_done_job_without_speech_shows_its_note_on_the_page_and_in_the_api(setup: Setup) -> None:
    running = setup.jobs.claim()  # d.mkv
    assert running is not None
    setup.jobs.finish(running.id, JobResult("de", None, 20.0, 2.0, note="no speech found"))
    client = setup.client
    client.get(f"/?apikey={KEY}", follow_redirects=False)
    done = re.search(r'<section id="done"(.*?)</section>', client.get("/").text, re.S)
    assert done is not None
    rows = {" ".join(re.sub(r"<[^>]+>", " ", row).split())
            for row in re.findall(r'<tr class="done-job">(.*?)</tr>', done.group(1), re.S)}
    assert any(row.startswith("d.mkv") and row.endswith("no speech found") for row in rows), rows
    assert any(row.startswith("a.mkv") and row.endswith("a.de.srt") for row in rows), rows  # no note
    jobs = {Path(j["path"]).name: j for j in client.get("/api/jobs", headers={"X-Api-Key": KEY}).json()}
    quiet = jobs["d.mkv"]
    assert (quiet["state"], quiet["note"], quiet["error"]) == ("done", "no speech found", None)
    assert quiet["outputs"] == []
    assert jobs["a.mkv"]["note"] is None and jobs["b.mkv"]["note"] is None  # done with sidecars; failed
    assert jobs["b.mkv"]["error"].startswith("not a media file")  # a failure's error is unchanged


def test_the_page_shows_each_node_its_workers_and_what_is_in_its_model(setup: Setup) -> None:
    running = next(j for j in setup.jobs.jobs([JobState.RUNNING]))
    setup.jobs.enter_model([running.id])
    setup.jobs.renew(["cpu"])  # this node's heartbeat, with its workers
    setup.jobs.nodes.beat("gpu-box", 60.0, ["cuda:0", "cuda:1"])  # another host on the same queue
    page = setup.client.get(f"/?apikey={KEY}")
    nodes = re.search(r'<ul class="plain" id="nodes">(.*?)</ul>', page.text, re.S)
    assert nodes is not None
    items = re.findall(r"<li.*?</li>", nodes.group(1))
    lines = [" ".join(re.sub(r"<[^>]+>", "", li).split()) for li in items]
    this = setup.jobs.node
    lines = sorted(re.sub(r"last heartbeat \d+ s ago", "last heartbeat N s ago", line) for line in lines)
    assert lines == sorted([
        f"node {this} (this one): last heartbeat N s ago, workers cpu, transcribing c.mkv, holds 1 file(s)",
        "node gpu-box: last heartbeat N s ago, workers cuda:0, cuda:1",
    ])
