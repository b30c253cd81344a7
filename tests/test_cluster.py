"""Two real `subwatch run` daemons as two hosts of one PostgreSQL queue (a real server, tests/postgres.py),
watching the same media under different paths, as a NAS and a desktop that mounts it do: node a sees
it at inbox/, node b through a symlink at mnt/media, and both store it as /srv/media (node.path_map).

Sixty files dropped are each done exactly once, by both nodes, with one .srt, one .vtt and one
notification each; a node killed or frozen while it holds files loses them to the other once its
lease lapses; a frozen node that wakes after losing its lease writes nothing for those files."""

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

from tests import media_factory, speech
from tests.harness import REPO, Daemon, NotificationSink, queue_of, status, write_config
from tests.postgres import PostgresServer
from tests.said import text_of, word_error_rate

PASSWORD = "pw-4-test-never-shown"
LEASE = 10  # the shortest lease the config allows: the takeover comes 10 to 12 s after the last beat


STORED = "/srv/media"  # where the queue says the media is; neither node has it there


def _config(root: Path, name: str, url: str, sink: NotificationSink, model: Path, media: Path) -> Path:
    """Node `name`'s config: its own state, the shared database, its view of the media (`media`)."""
    return write_config(root / f"{name}.yaml", f"""
        state_dir: {root / name}
        database: "{url}"
        node: {{name: {name}, lease_seconds: {LEASE}, path_map: {{"{STORED}": "{media}"}}}}
        defaults: {{model: {model}, beam_size: 1, device: cpu, settle_seconds: 1, language: en}}
        notify: {{urls: ["{sink.url}"], burst: 1000}}
        folders: [{{path: {media}}}]
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


def _done_lines(*logs: str, pattern: str = r"done\s+(Recording \d\.flac)") -> Counter[str]:
    """How often each file was logged done, over the daemons' logs."""
    return Counter(m for log in logs for m in re.findall(pattern, log))


def _assert_each_done_once(config: Path, inbox: Path, clips: dict[str, speech.Clip],
                           sink: NotificationSink, *logs: str) -> list[dict]:
    jobs = sorted(status(config), key=lambda j: j["path"])
    assert [(Path(j["path"]).name, j["state"]) for j in jobs] == [(name, "done") for name in sorted(clips)]
    assert _done_lines(*logs) == Counter(dict.fromkeys(clips, 1))
    for name, clip in clips.items():
        srt = inbox / name.replace(".flac", ".en.srt")
        assert word_error_rate(clip.text, srt) <= 0.35, (name, text_of(srt))
        assert text_of(srt.with_suffix(".vtt")) == text_of(srt)
    _assert_two_sidecars_and_one_notification_each(inbox, list(clips), sink)
    return jobs


def _assert_two_sidecars_and_one_notification_each(inbox: Path, names: list[str],
                                                   sink: NotificationSink) -> None:
    """Each file named has one .en.srt and one .en.vtt beside it (and nothing else does), and one
    notification; no second one comes within a second of the last."""
    stems = [Path(name).stem for name in names]
    assert sorted(p.name for p in inbox.iterdir() if p.suffix in (".srt", ".vtt")) == sorted(
        f"{stem}.en{ext}" for stem in stems for ext in (".srt", ".vtt"))
    _wait(lambda: len(sink.messages()) >= len(names), 30, "a notification for each file")
    time.sleep(1.0)  # a second one, if any were sent, would have come by now
    titles = Counter(m["title"] for m in sink.messages())
    assert titles == Counter({f"Subtitles ready: {stem}": 1 for stem in stems})


@pytest.fixture
def cluster(postgres_server: PostgresServer, tiny_en_checkpoint: Path, tmp_path: Path):  # noqa: ANN201
    # With a password (the test server lets any in): no refusal or journal line may show it.
    url = postgres_server.fresh_url().replace("subwatch@", f"subwatch:{PASSWORD}@")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    mount = tmp_path / "mnt" / "media"  # node b's view of the same folder
    mount.parent.mkdir()
    mount.symlink_to(inbox, target_is_directory=True)
    sink = NotificationSink()
    configs = {"a": _config(tmp_path, "a", url, sink, tiny_en_checkpoint, inbox),
               "b": _config(tmp_path, "b", url, sink, tiny_en_checkpoint, mount)}
    (tmp_path / "twin").mkdir()
    configs["a-twin"] = _config(tmp_path / "twin", "a", url, sink, tiny_en_checkpoint, inbox)
    yield configs, inbox, sink
    sink.close()


COLOURS = ("red", "green", "yellow", "black", "white")
ANIMALS = ("horse", "rabbit", "tiger", "monkey")
PLACES = ("river", "garden", "station")


def _sentences(count: int) -> dict[str, str]:
    """`count` different sentences (60 at most), by the name of the file that says them."""
    said = [f"The {c} {a} is sleeping near the {p} today." for p in PLACES for a in ANIMALS for c in COLOURS]
    return {f"Clip {i:02d}.wav": text for i, text in enumerate(said[:count])}


def test_thirty_files_are_each_done_once_by_both_nodes_under_their_paths(cluster, spawn, tmp_path) -> None:  # noqa: ANN001
    # bench/cluster.py runs the long campaign (300 files); thirty keep the suite short
    configs, inbox, sink = cluster
    mount = tmp_path / "mnt" / "media"
    a, b = spawn(configs["a"]), spawn(configs["b"])
    for node in (a, b):
        node.wait_log("watching 1 folder(s)", timeout=120)
    sentences = _sentences(30)
    staging = tmp_path / "staging"
    for name, text in sentences.items():
        media_factory.speak(text, staging / name)
    for name in sentences:  # each arrives whole (a rename), half to each node's view of the folder
        (staging / name).rename((inbox if int(name[5:7]) % 2 else mount) / name)

    def done() -> bool:
        jobs = status(configs["a"])
        return len(jobs) == len(sentences) and all(j["state"] == "done" for j in jobs)

    # Seen from either host, the cluster shows each node's devices and the files in its model now.
    working: dict[str, set[str]] = {"a": set(), "b": set()}
    workers: dict[str, list[str]] = {}

    def both_seen_working() -> bool:
        for node in _nodes(configs["b"]):
            assert not node["gone"], node
            working[node["name"]] |= {Path(p).name for p in node["transcribing"]}
            workers[node["name"]] = node["workers"]
        return all(working.values()) or done()

    _wait(both_seen_working, 400, "both nodes seen transcribing")
    assert working["a"] and working["b"] and working["a"].isdisjoint(working["b"]), working
    assert workers == {"a": ["cpu"], "b": ["cpu"]}, workers
    assert working["a"] | working["b"] <= set(sentences)
    _wait(done, 400, "every file done")
    seen_by = {node: sorted((Path(j["path"]), j["id"], j["node"]) for j in status(configs[node]))
               for node in ("a", "b")}
    # One job per file, each node seeing it under its own path; the queue stores it as /srv/media.
    assert [(p.name, i, n) for p, i, n in seen_by["a"]] == [(p.name, i, n) for p, i, n in seen_by["b"]]
    assert {p.parent for p, _, _ in seen_by["a"]} == {inbox}
    assert {p.parent for p, _, _ in seen_by["b"]} == {mount}
    assert _stored_paths(configs["a"]) == {f"{STORED}/{name}" for name in sentences}
    by_node = Counter(n for _, _, n in seen_by["a"])
    assert set(by_node) == {"a", "b"}, by_node  # both took work
    done_lines = _done_lines(a.log(), b.log(), pattern=r"done\s+(Clip \d\d\.wav)")
    assert done_lines == Counter(dict.fromkeys(sentences, 1))
    errors = []
    for name, text in sentences.items():  # espeak's voice through tiny.en: a word or two may slip
        srt = inbox / name.replace(".wav", ".en.srt")
        errors.append(word_error_rate(text, srt))
        assert errors[-1] <= 0.6 and text.split()[2] in text_of(srt), (name, text_of(srt))  # its animal
        assert text_of(srt.with_suffix(".vtt")) == text_of(srt)
    assert sum(errors) / len(errors) <= 0.15
    _assert_two_sidecars_and_one_notification_each(inbox, list(sentences), sink)
    bodies = {m["title"].removeprefix("Subtitles ready: "): m["message"] for m in sink.messages()}
    by_name = {p.name: n for p, _, n in seen_by["a"]}
    for name in sentences:  # each node names the file as it sees it
        assert str((inbox if by_name[name] == "a" else mount) / name) in bodies[name.removesuffix(".wav")]
    assert a.stop() == 0 and b.stop() == 0


def _nodes(config: Path) -> list[dict]:
    """The nodes as `subwatch status --json --nodes` shows them (read in this process)."""
    from daemon.jobsjson import nodes_json

    with queue_of(config) as jobs:
        return nodes_json(jobs)


def _stored_paths(config: Path) -> set[str]:
    """The job paths as the shared database holds them, read without any path map."""
    from daemon.config import load_config
    from daemon.queue import JobQueue

    jobs = JobQueue(load_config(config).queue_at, node="reader")
    try:
        return {str(job.path) for job in jobs.jobs()}
    finally:
        jobs.close()


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
    assert ("already runs as node 'a' on the job database postgresql://subwatch:****@127.0.0.1"
            in second.stderr)
    assert "give each daemon its own node.name" in second.stderr
    assert PASSWORD not in second.stderr + second.stdout
    assert a.process.poll() is None  # the first goes on
    b = spawn(configs["b"])  # another name on the same database is welcome, beside it
    b.wait_log("watching 1 folder(s)", timeout=120)
    assert a.stop() == 0
    restarted = spawn(configs["a-twin"])  # the name's lock went with the first daemon
    restarted.wait_log("watching 1 folder(s)", timeout=120)
    assert restarted.stop() == 0 and b.stop() == 0
    for daemon in (a, b, restarted):
        assert PASSWORD not in daemon.log()
