"""Two real `subwatch run` daemons as two nodes of one PostgreSQL queue (a real server, tests/postgres.py),
watching the same folder: a node killed or frozen while it holds files loses them to the other once
its lease lapses; every file ends done exactly once, with its words in one .srt and one .vtt and
one notification; a frozen node that wakes after losing its lease writes nothing for those files.

Both daemons run on this machine with the same paths (per-host path maps are not built yet)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import speech
from tests.harness import REPO, Daemon, NotificationSink, status, write_config
from tests.postgres import PostgresServer
from tests.said import text_of, word_error_rate

LEASE = 10  # the shortest lease the config allows: the takeover comes 10 to 12 s after the last beat


def _config(root: Path, name: str, url: str, sink: NotificationSink, model: Path, inbox: Path) -> Path:
    return write_config(root / f"{name}.yaml", f"""
        state_dir: {root / name}
        database: "{url}"
        node: {{name: {name}, lease_seconds: {LEASE}}}
        defaults: {{model: {model}, beam_size: 1, device: cpu, settle_seconds: 1, language: en}}
        notify: {{urls: ["{sink.url}"], burst: 100}}
        folders: [{{path: {inbox}}}]
    """)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.3)


def _clips() -> dict[str, speech.Clip]:
    """Five English recordings under names of their own."""
    chosen = [speech.jfk(), *speech.librispeech()]
    return {f"Recording {i}.flac": clip for i, clip in enumerate(chosen)}


def _all_done(config: Path) -> bool:
    jobs = status(config)
    return len(jobs) == len(_clips()) and all(j["state"] == "done" for j in jobs)


def _done_lines(*logs: str) -> Counter[str]:
    """How often each file was logged done, over the daemons' logs."""
    return Counter(m for log in logs for m in re.findall(r"done\s+(Recording \d\.flac)", log))


def _assert_each_done_once(config: Path, inbox: Path, clips: dict[str, speech.Clip],
                           sink: NotificationSink, *logs: str) -> list[dict]:
    jobs = sorted(status(config), key=lambda j: j["path"])
    assert [(Path(j["path"]).name, j["state"]) for j in jobs] == [(name, "done") for name in sorted(clips)]
    assert _done_lines(*logs) == Counter(dict.fromkeys(clips, 1))
    for name, clip in clips.items():
        srt = inbox / name.replace(".flac", ".en.srt")
        assert word_error_rate(clip.text, srt) <= 0.35, (name, text_of(srt))
        assert text_of(srt.with_suffix(".vtt")) == text_of(srt)
    assert sorted(p.name for p in inbox.iterdir() if p.suffix in (".srt", ".vtt")) == sorted(
        name.replace(".flac", f".en{ext}") for name in clips for ext in (".srt", ".vtt"))
    _wait(lambda: len(sink.messages()) >= len(clips), 30, "a notification for each file")
    time.sleep(1.0)  # a second one, if any were sent, would have come by now
    titles = Counter(m["title"] for m in sink.messages())
    assert titles == Counter({f"Subtitles ready: {name.removesuffix('.flac')}": 1 for name in clips})
    return jobs


@pytest.fixture
def cluster(postgres_server: PostgresServer, tiny_en_checkpoint: Path, tmp_path: Path):  # noqa: ANN201
    url = postgres_server.fresh_url()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sink = NotificationSink()
    configs = {name: _config(tmp_path, name, url, sink, tiny_en_checkpoint, inbox) for name in ("a", "b")}
    (tmp_path / "twin").mkdir()
    configs["a-twin"] = _config(tmp_path / "twin", "a", url, sink, tiny_en_checkpoint, inbox)
    yield configs, inbox, sink
    sink.close()


def _first_node_holds_files(spawn, configs: dict[str, Path], inbox: Path) -> tuple[Daemon, list[str]]:  # noqa: ANN001
    """Start node a, drop the recordings, and return it once it holds some of them (claimed)."""
    a = spawn(configs["a"])
    a.wait_log("watching 1 folder(s)", timeout=120)
    for name, clip in _clips().items():
        shutil.copy(clip.path, inbox / name)
    held: list[str] = []

    def holding() -> bool:
        held[:] = [Path(j["path"]).name for j in status(configs["a"]) if j["state"] == "running"]
        return bool(held)

    _wait(holding, 60, "node a claims a file")
    return a, held


def test_a_killed_nodes_files_are_finished_by_the_other_after_its_lease(cluster, spawn) -> None:  # noqa: ANN001
    configs, inbox, sink = cluster
    a, held = _first_node_holds_files(spawn, configs, inbox)
    b = spawn(configs["b"])
    b.wait_log("watching 1 folder(s)", timeout=120)
    a.kill(signal.SIGKILL)  # its decoder child goes with it (PDEATHSIG)
    _wait(lambda: _all_done(configs["b"]), 240, "every file done")
    jobs = _assert_each_done_once(configs["b"], inbox, _clips(), sink, a.log(), b.log())
    by_node = {Path(j["path"]).name: j["node"] for j in jobs}
    done_by_a = set(_done_lines(a.log()))
    lapsed = r"requeued\s+(Recording \d\.flac)\s+node a stopped renewing its lease"
    takeovers = set(re.findall(lapsed, b.log()))
    assert takeovers and takeovers.isdisjoint(done_by_a)  # what a held when it died, and only that
    assert set(held) <= takeovers | done_by_a
    assert {by_node[name] for name in takeovers} == {"b"}
    assert all(j["attempts"] == 1 for j in jobs if Path(j["path"]).name in takeovers)  # a's try not counted
    assert b.stop() == 0


def test_a_frozen_node_that_lost_its_lease_writes_nothing_when_it_wakes(cluster, spawn) -> None:  # noqa: ANN001
    configs, inbox, sink = cluster
    a, held = _first_node_holds_files(spawn, configs, inbox)
    a.process.send_signal(signal.SIGSTOP)  # a network cut, a swap storm, a VM paused
    try:
        b = spawn(configs["b"])
        b.wait_log("watching 1 folder(s)", timeout=120)
        _wait(lambda: _all_done(configs["b"]), 240, "every file done by b")
        srts = {p.name: p.read_bytes() for p in inbox.glob("*.srt")}
    finally:
        a.process.send_signal(signal.SIGCONT)
    # a wakes holding files whose leases lapsed and were taken: whatever it finishes is discarded.
    _wait(lambda: "discarded" in a.log(), 60, "a notices it lost its leases")
    time.sleep(3.0)
    assert {p.name: p.read_bytes() for p in inbox.glob("*.srt")} == srts  # nothing rewritten by a
    _assert_each_done_once(configs["b"], inbox, _clips(), sink, a.log(), b.log())
    assert a.stop() == 0 and b.stop() == 0


def test_two_daemons_under_one_node_name_are_refused(cluster, spawn) -> None:  # noqa: ANN001
    configs, _, _ = cluster
    a = spawn(configs["a"])
    a.wait_log("watching 1 folder(s)", timeout=120)
    second = subprocess.run([sys.executable, "-m", "daemon", "run", "--config", str(configs["a-twin"])],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0
    assert "another subwatch daemon (subwatch a on " in second.stderr
    assert "already runs as node 'a' on the job database postgresql://subwatch@127.0.0.1" in second.stderr
    assert "give each daemon its own node.name" in second.stderr
    assert a.process.poll() is None and a.stop() == 0
    b = spawn(configs["b"])  # another name on the same database is welcome
    b.wait_log("watching 1 folder(s)", timeout=120)
    assert b.stop() == 0
