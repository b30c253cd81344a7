"""Crashes through a real `subwatch run` with the real tiny.en model (issues #15 and #24).

A daemon killed at random moments (a power cut, a watchdog restart, an OOM
kill) must never fail the files it happened to be working on: every file ends
done exactly once. Decoding runs in a child process per worker: a file that
really does bring its decoder down every time (made so here by the test-only
SUBWATCH_TEST_CRASH_ON hook) fails after `max_attempts` crashes while it was alone
in the child, the files queued with it are done, and the daemon never dies.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.decoders.child import CRASH_ON_ENV
from tests import speech
from tests.harness import Daemon, NotificationSink, status, write_config
from tests.media_factory import duration_of
from tests.speech import SPEECH
from tests.test_daemon_e2e import assert_cues_valid

MAX_ATTEMPTS = 3
SEED = 15

# Real recordings tiny.en transcribes well, each with a word that names its topic.
CLIPS = {
    "Cabbage.ogg": (SPEECH / "fleurs" / "fleurs-en-003.ogg", "cabbage"),
    "Genetics.ogg": (SPEECH / "fleurs" / "fleurs-en-007.ogg", "genetic"),
    "Belly.flac": (SPEECH / "librispeech" / "1089-134686-0001.flac", "belly"),
    "Waiting.flac": (SPEECH / "librispeech" / "1089-134691-0000.flac", "longer"),
    "Hour.flac": (SPEECH / "librispeech" / "1089-134691-0001.flac", "hour"),
    "Capitals.ogg": (SPEECH / "fleurs" / "fleurs-en-001.ogg", "capital"),
    "Country.flac": (SPEECH / "jfk.flac", "country"),
    "Hospital.ogg": (SPEECH / "fleurs" / "fleurs-en-005.ogg", "hospital"),
    "Emergency.ogg": (SPEECH / "fleurs" / "fleurs-en-006.ogg", "emergency"),
    "Dinner.flac": (SPEECH / "librispeech" / "1089-134686-0000.flac", "dinner"),
}


@dataclass
class Setup:
    inbox: Path
    config: Path
    db: Path
    sink: NotificationSink
    logs: list[str] = field(default_factory=list)  # each daemon's part of the log, in order

    def drop(self, names: list[str]) -> None:
        """Move clips into the inbox in one step each, as a download client does."""
        for name in names:
            part = self.inbox / f".{name}.part"
            shutil.copy(CLIPS[name][0], part)
            part.rename(self.inbox / name)

    def query(self, sql: str) -> list[sqlite3.Row]:
        """Return the rows of `sql`, read straight from the daemon's database (read-only); none
        before the daemon made it."""
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=15)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # created, not migrated yet
            return []
        finally:
            conn.close()

    def jobs(self) -> dict[str, sqlite3.Row]:
        """Return each job's row by file name."""
        rows = self.query("SELECT path, state, attempts, suspect, crashes, in_model_since FROM jobs")
        return {Path(os.fsdecode(row["path"])).name: row for row in rows}

    def in_model(self, since: float = 0.0) -> list[sqlite3.Row]:
        """The jobs a daemon started at `since` (time.time()) or later put in the model and has there."""
        return [row for row in self.jobs().values() if (row["in_model_since"] or 0) >= since]

    def wait_until(self, condition, daemon: Daemon | None = None, timeout: float = 600.0) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not condition():
            if daemon is not None and daemon.process.poll() is not None:
                return  # it died (the crash hook): the caller looks at why
            assert time.monotonic() < deadline, f"not reached within {timeout} s: {self.jobs_text()}"
            time.sleep(0.05)

    def jobs_text(self) -> str:
        """The jobs in short: name, state, S if a suspect, crashes, M if in the model."""
        return ", ".join(
            f"{name} {row['state']}{' S' if row['suspect'] else ''} {row['crashes']}"
            f"{' M' if row['in_model_since'] is not None else ''}"
            for name, row in sorted(self.jobs().items())
        )

    def all_settled(self, names: list[str]) -> bool:
        jobs = self.jobs()
        return all(name in jobs and jobs[name]["state"] in ("done", "failed") for name in names)


@pytest.fixture
def setup(tmp_path: Path, tiny_en_checkpoint: Path, testdata: Path) -> Iterator[Setup]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sink = NotificationSink()
    config = write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        log_level: info
        max_attempts: {MAX_ATTEMPTS}
        defaults: {{model: {tiny_en_checkpoint}, device: cpu, settle_seconds: 0.5, language: en,
                    beam_size: 1}}
        notify: {{urls: ["{sink.url}"], burst: 1000}}
        folders: [{{path: {inbox}}}]
    """)
    from daemon.config import load_config

    yield Setup(inbox, config, load_config(config).db_path, sink)
    sink.close()


def lines(log: str, state: str, name: str) -> list[str]:
    """Return the journal lines of `log` that say `state` about file `name`, from the state on."""
    marker = f" {state}  {name}  "
    return [line[line.index(marker) + 1:] for line in log.splitlines() if marker in line]


def assert_done_once(setup: Setup, names: list[str]) -> None:
    """Each file is done, with at most one `done` line and one notification, its two sidecars and its
    topic."""
    jobs = {Path(j["path"]).name: j for j in status(setup.config)}
    everything = "".join(setup.logs)
    titles = [m["title"] for m in setup.sink.messages()]
    for name in names:
        assert jobs[name]["state"] == "done", jobs[name]
        assert not jobs[name]["suspect"] and jobs[name]["crashes"] == 0, jobs[name]
        # One `done` line at most: the line follows the commit, so a SIGKILL between the two loses
        # the line (never the job: it is done, notified once, and not transcribed again).
        assert len(lines(everything, "done", name)) <= 1, lines(everything, "done", name)
        stem = Path(name).stem
        assert titles.count(f"Subtitles ready: {stem}") == 1, titles
        srt_path, vtt_path = setup.inbox / f"{stem}.en.srt", setup.inbox / f"{stem}.en.vtt"
        assert sorted(jobs[name]["outputs"]) == [str(srt_path), str(vtt_path)]
        assert_cues_valid(srt_path, vtt_path, duration_of(setup.inbox / name))
        topic = CLIPS[name][1]
        for sidecar in (srt_path, vtt_path):
            assert topic in sidecar.read_text(encoding="utf-8").lower(), (sidecar, sidecar.read_text())


# ---------------------------------------------------------------- a file that really crashes its decoder


def decoder_deaths(log: str) -> list[str]:
    """The causes of the decoder child deaths the journal tells, in order."""
    return [line.split(" died: ")[1].split(";")[0] for line in log.splitlines() if "its child (pid" in line]


def test_a_file_that_crashes_its_decoder_fails_alone_and_the_daemon_lives(setup: Setup, spawn) -> None:  # noqa: ANN001
    innocent = ["Cabbage.ogg", "Belly.flac", "Waiting.flac", "Hour.flac"]
    # Queued in this order, so the damaged file sits between innocent ones.
    setup.drop(innocent[:2])
    shutil.copy(SPEECH / "fleurs" / "fleurs-en-004.ogg", setup.inbox / "Damaged.ogg")
    setup.drop(innocent[2:])
    names = innocent + ["Damaged.ogg"]
    daemon = spawn(setup.config, env={CRASH_ON_ENV: "Damaged.ogg"})
    pid = daemon.process.pid

    setup.wait_until(lambda: setup.all_settled(names), daemon)

    assert daemon.process.poll() is None, daemon.log()  # the daemon itself never died
    log = daemon.log()
    assert daemon.stop() == 0 and daemon.process.pid == pid
    setup.logs.append(log)
    deaths = decoder_deaths(log)
    together = [line for line in log.splitlines() if "files together" in line and "Damaged.ogg" in line]
    # Once in a batch (if it was in one: then nobody is charged), then three times alone.
    assert deaths == ["SIGABRT"] * (MAX_ATTEMPTS + (1 if together else 0)), log
    if together:
        company = int(together[0].split("transcribing ")[1].split()[0]) - 1
        assert lines(log, "requeued", "Damaged.ogg")[0] == (
            f"requeued  Damaged.ogg  in its decoder on cpu when it died (SIGABRT) with {company} other "
            "file(s); transcribed alone next, nothing charged")
    charged = [line for line in lines(log, "requeued", "Damaged.ogg") if "crash" in line]
    assert charged == [f"requeued  Damaged.ogg  its decoder on cpu died with it alone (SIGABRT): crash {n} "
                       f"of {MAX_ATTEMPTS}; transcribed alone again" for n in (1, 2)]
    error = ("the decoder crashed (SIGABRT) 3 times on this file alone; it may be damaged: check it "
             f"with ffprobe, then `subwatch retry {setup.inbox / 'Damaged.ogg'}`")
    assert lines(log, "failed", "Damaged.ogg") == [f"failed  Damaged.ogg  {error}"]
    [damaged] = [j for j in status(setup.config) if j["path"].endswith("Damaged.ogg")]
    assert (damaged["state"], damaged["error"], damaged["crashes"]) == ("failed", error, MAX_ATTEMPTS)
    failures = [m for m in setup.sink.messages() if m["title"].startswith("Subtitles failed")]
    assert [(m["title"], m["message"]) for m in failures] == [(
        "Subtitles failed: Damaged", f"Damaged.ogg\n{error}\n{setup.inbox / 'Damaged.ogg'}")]
    assert not (setup.inbox / "Damaged.en.srt").exists()
    assert_done_once(setup, innocent)
    for name in innocent:  # never charged: no crash counted, no failure
        assert "crash 1 of" not in "".join(lines(log, "requeued", name))
        assert lines(log, "failed", name) == []
    [decoder] = decoders(setup.config)
    assert (decoder["name"], decoder["restarts"], decoder["last_death"]) == ("cpu", len(deaths), "SIGABRT")


def decoders(config: Path) -> list[dict]:
    """`subwatch status --json --decoders`, as a user would run it."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "daemon", "status", "--json", "--decoders", "--config",
                          str(config)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def child_pid(log_of: Callable[[], str], after: int = 0) -> int:
    """The pid of the decoder child the daemon started last (its debug line), waiting for one."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = [int(line.rsplit("pid ", 1)[1]) for line in log_of().splitlines()
                   if "child started, pid" in line]
        if len(started) > after:
            return started[-1]
        time.sleep(0.05)
    raise AssertionError("no decoder child started")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_child_killed_mid_batch_costs_the_daemon_nothing(setup: Setup, spawn, sig: int) -> None:  # noqa: ANN001
    names = ["Cabbage.ogg", "Belly.flac", "Waiting.flac"]
    text = setup.config.read_text().replace("log_level: info", "log_level: debug")
    setup.config.write_text(text)
    setup.drop(names)
    spawned = time.time()
    daemon = spawn(setup.config)
    pid = daemon.process.pid
    setup.wait_until(lambda: len(setup.in_model(spawned)) > 1, daemon)
    os.kill(child_pid(daemon.log), sig)

    setup.wait_until(lambda: setup.all_settled(names), daemon)
    setup.drop(["Hour.flac"])  # still watching
    setup.wait_until(lambda: setup.all_settled(names + ["Hour.flac"]), daemon)

    log = daemon.log()
    assert daemon.process.poll() is None and daemon.stop() == 0 and daemon.process.pid == pid
    setup.logs.append(log)
    name = signal.Signals(sig).name
    assert decoder_deaths(log) == [name], log
    in_batch = [n for n in names if lines(log, "requeued", n) or lines(log, "released", n)]
    assert in_batch, log
    for n in in_batch:  # retried; a SIGSEGV makes suspects, a SIGKILL from outside nothing at all
        said = " ".join(lines(log, "requeued", n) + lines(log, "released", n))
        assert ("nothing charged" in said) and ("crash" not in said.replace("nothing charged", "")), said
        if sig == signal.SIGKILL:
            assert f"its decoder on cpu was stopped ({name})" in said, said
    assert_done_once(setup, names + ["Hour.flac"])


def test_a_hung_decoder_is_killed_and_the_file_charged_alone(setup: Setup, spawn) -> None:  # noqa: ANN001
    from daemon.decoders.supervisor import STALL_ENV

    setup.drop(["Cabbage.ogg"])
    shutil.copy(SPEECH / "fleurs" / "fleurs-en-004.ogg", setup.inbox / "Stuck.ogg")
    daemon = spawn(setup.config, env={CRASH_ON_ENV: "Stuck.ogg:hang", STALL_ENV: "3"})
    setup.wait_until(lambda: setup.all_settled(["Cabbage.ogg", "Stuck.ogg"]), daemon)
    log = daemon.log()
    assert daemon.stop() == 0
    setup.logs.append(log)
    assert set(decoder_deaths(log)) == {"no progress for 3 s"}, log
    [stuck] = [j for j in status(setup.config) if j["path"].endswith("Stuck.ogg")]
    assert stuck["state"] == "failed" and stuck["error"].startswith(
        "the decoder stopped making progress on this file alone 3 times (no progress for 3 s)"), stuck
    assert_done_once(setup, ["Cabbage.ogg"])


def test_out_of_memory_alone_is_tried_with_smaller_batches_first(setup: Setup, spawn) -> None:  # noqa: ANN001
    # The child's address space is capped (RLIMIT_AS) 300 MiB above what it has once tiny.en is loaded:
    # a 2.5-minute file's batch of windows needs about 360 MiB more, one window at a time about 240.
    from daemon.decoders.child import MEMORY_CAP_ENV

    speech.long_file(setup.inbox / ".Long.wav.part", speech.clips("en"), repeat=1)
    (setup.inbox / ".Long.wav.part").rename(setup.inbox / "Long.wav")
    daemon = spawn(setup.config, env={MEMORY_CAP_ENV: "+300"})
    setup.wait_until(lambda: setup.all_settled(["Long.wav"]), daemon)
    log = daemon.log()
    assert daemon.stop() == 0
    [retry] = lines(log, "retrying", "Long.wav")
    assert retry.startswith("retrying  Long.wav  ran out of memory alone on cpu (out of memory: ") and \
        retry.endswith("); trying again with one window at a time"), log
    [long] = [j for j in status(setup.config) if j["path"].endswith("Long.wav")]
    assert long["state"] == "done" and long["crashes"] == 0, long
    said = (setup.inbox / "Long.en.srt").read_text().lower()
    assert "cabbage" in said and "country" in said, said


# ---------------------------------------------------------------- killed at random moments

# How many kills of each kind the test makes at least (it reads which kind each was from the daemon's
# log and database at the moment it died), and at least how many in all.
KINDS = {"start-up": 3, "model loading": 3, "mid-batch": 2, "suspect alone": 2}
KILLS = 12
MAX_CYCLES = 40  # a machine where the kinds cannot be hit this often fails the test, saying so


def kind_of_death(log: str, jobs: list[sqlite3.Row], started: float) -> str:
    """Given a killed daemon's log, its jobs as it left them and when it started (time.time()),
    return what it was doing. (Killed before its start-up put them back, the jobs still show what
    the daemon before it left in the model.)"""
    in_model = [row for row in jobs if (row["in_model_since"] or 0) >= started]
    if len(in_model) > 1:
        return "mid-batch"
    if in_model:
        return "suspect alone" if in_model[0]["suspect"] else "one file in the model"
    if " watching 1 folder(s)" not in log:
        return "start-up"
    if "loaded model" not in log and any(row["state"] == "running" for row in jobs):
        return "model loading"
    return "between files"


def recovery_lines(before: dict[str, sqlite3.Row]) -> dict[str, list[str]]:
    """Given the jobs a killed daemon left, return the `requeued` line the next start writes for each."""
    running = {name: row for name, row in before.items() if row["state"] == "running"}
    together = sum(row["in_model_since"] is not None for row in running.values())
    expected = {}
    for name, row in running.items():
        if row["in_model_since"] is None:
            note = "before the model began on it; attempt not counted"
        else:  # the daemon's death charges nobody, alone or not
            company = f" with {together - 1} other file{'s' if together > 2 else ''}" if together > 1 else ""
            note = (f"while the model transcribed it{company}; transcribed alone next; attempt not counted, "
                    "and no crash: the daemon's death is no evidence against it")
        expected[name] = [f"requeued  {name}  left running by a crash or stop {note}"]
    return expected


def test_random_kills_never_fail_a_file_and_every_file_is_done_once(setup: Setup, spawn) -> None:  # noqa: ANN001
    rng = random.Random(SEED)
    # A backlog, then small groups dropped while the daemon is down, each a fresh batch to kill.
    groups = [["Cabbage.ogg", "Genetics.ogg", "Belly.flac", "Waiting.flac", "Hour.flac", "Capitals.ogg"],
              ["Country.flac", "Emergency.ogg"], ["Hospital.ogg", "Dinner.flac"]]
    names = [name for group in groups for name in group]
    setup.drop(groups.pop(0))
    tally: Counter[str] = Counter()
    startup_s, loading_s = [0.4], [1.0]  # measured as it goes: spawn to "watching", "watching" to loaded

    def to_do(suspect: bool) -> list[str]:
        """The files in the inbox that are not done yet, suspects or not (new ones have no job yet)."""
        jobs = setup.jobs()
        return [name for name in names if (setup.inbox / name).exists() and (
            (name not in jobs and not suspect)
            or (name in jobs and jobs[name]["state"] != "done" and bool(jobs[name]["suspect"]) is suspect))]

    def still_needed() -> list[str]:
        needed = [kind for kind, count in KINDS.items() if tally[kind] < count]
        if "suspect alone" in needed and not to_do(suspect=True) and "mid-batch" not in needed:
            needed.append("mid-batch")  # which makes suspects
        if "mid-batch" in needed and len(to_do(suspect=False)) < 2 and groups:
            setup.drop(groups.pop(0))  # fresh files for another batch: found at the next start
        possible = {
            "start-up": True,
            "model loading": bool(to_do(suspect=False) or to_do(suspect=True)),
            "mid-batch": len(to_do(suspect=False)) >= 2,
            "suspect alone": bool(to_do(suspect=True)),
        }
        return [kind for kind in needed if possible[kind]] or ["start-up", "model loading"]

    def safe_to_kill() -> bool:
        """False while a kill could fail a file (a suspect already crashed max - 1 times alone), or
        repeat a notification (delivered, not yet recorded so: at least once, by design)."""
        jobs = setup.jobs()
        if any(row["suspect"] and row["crashes"] >= MAX_ATTEMPTS - 1 for row in jobs.values()):
            return False
        titles = {m["title"] for m in setup.sink.messages()}
        owed = [Path(os.fsdecode(row["path"])).stem for row in setup.query("SELECT path FROM outbox")]
        return not any(f"Subtitles ready: {stem}" in titles for stem in owed)

    def trigger(kind: str, daemon: Daemon, spawned: float) -> None:
        started = time.monotonic()
        if kind == "start-up":
            time.sleep(rng.uniform(0.1, 0.9) * min(startup_s))
            return
        waits: dict[str, Callable[[], bool]] = {
            "model loading": lambda: " watching 1 folder(s)" in daemon.log(),
            "mid-batch": lambda: len(setup.in_model(spawned)) > 1,
            "suspect alone": lambda: any(row["suspect"] for row in setup.in_model(spawned)),
        }
        # Or until the files present are all settled: the moment aimed at may never come (suspects
        # left by a start-up kill go one at a time before any batch); the death is told by what it was.
        present = [name for name in names if (setup.inbox / name).exists()]
        setup.wait_until(lambda: waits[kind]() or setup.all_settled(present), daemon)
        if kind == "model loading":
            startup_s.append(time.monotonic() - started)
        delay = {"model loading": rng.uniform(0.0, 0.8) * min(loading_s), "mid-batch": rng.uniform(0.0, 0.4),
                 "suspect alone": rng.uniform(0.0, 0.2)}[kind]
        time.sleep(delay)

    for _ in range(MAX_CYCLES):
        if sum(tally.values()) >= KILLS and all(tally[kind] >= count for kind, count in KINDS.items()):
            break
        kind = rng.choice(still_needed())
        before = setup.jobs()
        spawned = time.time()
        daemon = spawn(setup.config)
        trigger(kind, daemon, spawned)
        setup.wait_until(safe_to_kill)
        daemon.kill(signal.SIGKILL)
        log = daemon.log()
        died = kind_of_death(log, list(setup.jobs().values()), spawned)
        tally[died] += 1
        setup.logs.append(log)
        print(f"aimed at {kind}, killed in {died}: {setup.jobs_text()}")
        if " watching 1 folder(s)" in log:  # past start-up: every job it put back has its one line
            for name, expected in recovery_lines(before).items():
                assert lines(log, "requeued", name) == expected, log
            for name in set(before) - set(recovery_lines(before)):
                assert lines(log, "requeued", name) == [], log
        if "loaded model" in log and " watching 1 folder(s)" in log:
            watched = log.index(" watching 1 folder(s)")
            loading_s.append(max(0.2, _seconds_between(log, watched, log.index("loaded model"))))
        assert not any(row["state"] == "failed" for row in setup.jobs().values()), setup.jobs_text()
    print(f"kills: {dict(tally)}")
    assert sum(tally.values()) >= KILLS and all(tally[kind] >= count for kind, count in KINDS.items()), (
        f"could not hit every kind of moment within {MAX_CYCLES} restarts: {dict(tally)}")

    for group in groups:
        setup.drop(group)
    daemon = spawn(setup.config)
    setup.wait_until(lambda: setup.all_settled(names), daemon)
    assert daemon.stop() == 0, daemon.log()
    setup.logs.append(daemon.log())

    assert_done_once(setup, names)
    everything = "".join(setup.logs)
    assert " failed  " not in everything and " retrying  " not in everything, everything
    titles = [m["title"] for m in setup.sink.messages()]
    assert sorted(titles) == sorted(f"Subtitles ready: {Path(name).stem}" for name in names)
    made = {name for name in names} | {f"{Path(n).stem}.en.{ext}" for n in names for ext in ("srt", "vtt")}
    assert {p.name for p in setup.inbox.iterdir()} == made  # no temporary file left behind
    assert not any(row["in_model_since"] is not None for row in setup.jobs().values())


def _seconds_between(log: str, start: int, end: int) -> float:
    """Given two offsets of a log written with timestamps, return the seconds between their lines."""
    def stamp(offset: int) -> float:
        line = log[log.rindex("\n", 0, offset) + 1 if "\n" in log[:offset] else 0:offset]
        clock = line.split()[1]  # "13:39:25,675"
        hours, minutes, seconds = clock.replace(",", ".").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return stamp(end) - stamp(start)
