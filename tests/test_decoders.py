"""Decoder children: how a death is read, and a real child giving the in-process stage's transcripts."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from daemon.datatypes import Audio
from daemon.decoders import Decoder, DecoderDied, Settings, deaths
from daemon.transcribe import TranscribeOptions, transcribe_many
from tests import speech


@pytest.mark.parametrize(("exitcode", "before", "after", "cause", "fault", "memory"), [
    (-signal.SIGSEGV, 0, 0, "SIGSEGV", True, False),
    (-signal.SIGABRT, None, None, "SIGABRT", True, False),
    (-signal.SIGBUS, 0, 0, "SIGBUS", True, False),
    (-signal.SIGKILL, 2, 2, "SIGKILL", False, False),  # someone's kill -9: no evidence
    (-signal.SIGKILL, None, None, "SIGKILL", False, False),  # no cgroup to ask: no evidence either
    (-signal.SIGKILL, 2, 3, "killed by the kernel for memory (OOM)", True, True),
    (-signal.SIGTERM, 0, 0, "SIGTERM", False, False),
    (1, 0, 0, "exit status 1", True, False),
    (0, 0, 0, "exited", False, False),
])
def test_a_death_is_a_fault_only_on_evidence(exitcode, before, after, cause, fault, memory) -> None:  # noqa: ANN001
    death = deaths.of_exit(exitcode, before, after)
    assert (death.cause, death.fault, death.memory) == (cause, fault, memory)


def test_the_reason_a_charged_file_fails_with_says_what_happened() -> None:
    crashed = deaths.of_exit(-signal.SIGSEGV, 0, 0)
    assert crashed.charge(3) == "the decoder crashed (SIGSEGV) 3 times on this file alone"
    assert deaths.stalled(700).charge(3) == (
        "the decoder stopped making progress on this file alone 3 times (no progress for 700 s)")
    memory = deaths.out_of_memory("bad_alloc").charge(2)
    assert memory.startswith("ran out of memory while transcribing this file alone"), memory


def test_oom_kills_are_read_from_this_process_cgroup(tmp_path: Path) -> None:
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    relative = next((line.split("::", 1)[1] for line in lines if line.startswith("0::")), None)
    if relative is None:
        pytest.skip("no cgroup v2 line for this process")
    events = tmp_path / relative.lstrip("/") / "memory.events"
    events.parent.mkdir(parents=True, exist_ok=True)
    events.write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert deaths.oom_kills(tmp_path) == 2
    assert deaths.oom_kills(tmp_path / "nowhere") is None


def test_a_child_transcribes_as_the_stage_does_and_comes_back_after_a_crash(tiny_en_checkpoint: Path) -> None:
    clips = speech.clips("en")[:2]
    audios = [Audio(speech.load(clip), 16000) for clip in clips]
    options = TranscribeOptions(model=str(tiny_en_checkpoint), language="en")
    decoder = Decoder("cpu", Settings(tiny_en_checkpoint.parent, 600.0, None, "auto"), threading.Event())
    try:
        assert decoder.load(str(tiny_en_checkpoint), "cpu") == "cpu"
        fractions: list[float] = []
        got = decoder.transcribe_many([(a, options) for a in audios], ["a.ogg", "b.ogg"], fractions.append)
        pid = decoder.state().pid
        assert pid is not None and pid != os.getpid() and fractions and fractions[-1] == 1.0

        os.kill(pid, signal.SIGSEGV)  # between batches: seen, charged to nobody, and a new child serves
        deadline = time.monotonic() + 10
        while decoder.state().pid is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        again = decoder.transcribe_many([(audios[0], options)], ["a.ogg"])
        state = decoder.state()
        assert state.pid not in (None, pid) and state.restarts == 1
        assert state.last_death is not None and state.last_death.cause == "SIGSEGV, between batches"
        assert not state.last_death.fault
    finally:
        decoder.close()
    from daemon.transcribe import load_model

    model = load_model(str(tiny_en_checkpoint), tiny_en_checkpoint.parent, "cpu", "auto")
    alone = transcribe_many([(a, options) for a in audios], model)
    assert [[(s.start, s.end, s.text) for s in t.segments] for t in got] == [
        [(s.start, s.end, s.text) for s in t.segments] for t in alone]
    assert [s.text for s in again[0].segments] == [s.text for s in alone[0].segments]


def test_a_child_that_dies_mid_work_raises_with_its_cause(tiny_en_checkpoint: Path, monkeypatch) -> None:  # noqa: ANN001
    from daemon.decoders.child import CRASH_ON_ENV

    monkeypatch.setenv(CRASH_ON_ENV, "b.ogg:segv")
    audio = Audio(speech.load(speech.clips("en")[0]), 16000)
    options = TranscribeOptions(model=str(tiny_en_checkpoint), language="en")
    decoder = Decoder("cpu", Settings(tiny_en_checkpoint.parent, 600.0, None, "auto"), threading.Event())
    try:
        decoder.load(str(tiny_en_checkpoint), "cpu")
        with pytest.raises(DecoderDied) as died:
            decoder.transcribe_many([(audio, options), (audio, options)], ["a.ogg", "b.ogg"])
        assert (died.value.death.cause, died.value.death.fault) == ("SIGSEGV", True)
        assert decoder.state().restarts == 1
    finally:
        decoder.close()
