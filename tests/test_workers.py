"""Transcriber workers: which worker takes which file, batches across files, devices, GPU memory limits.

The scheduling rules are pure functions of device strings (no GPU needed); the
Service tests run the daemon's real loader and workers in-process on real
media, the random-weight checkpoint on the CPU and a real SQLite queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from daemon import pipeline
from daemon.config import load_config
from daemon.datatypes import Audio, JobState, MemoryLimit
from daemon.engine import EngineOptions, pick_batch_size, usable_memory
from daemon.queue import JobQueue
from daemon.service import Service
from daemon.transcribe import MODEL_PARAMETERS, ModelStore, choose_evictions, load_estimate, memory_limit_of
from daemon.transcribers import Activity, Worker
from daemon.transcribers.workers import Prefetch, Waiting, describe_files, pick_batch, serves, worker_devices
from tests.media_factory import duration_of, make_media
from tests.test_daemon_e2e import assert_cues_valid

# ---------------------------------------------------------------- which worker, which files


@pytest.mark.parametrize(("folders", "workers"), [
    ([("auto",)], ("auto",)),
    ([("cpu",)], ("cpu",)),
    ([("cuda:0", "cuda:1")], ("cuda:0", "cuda:1")),
    # `cuda` and `auto` are served by the named cards, not by a second worker on card 0
    ([("cuda:0", "cuda:1"), ("auto",), ("cuda",)], ("cuda:0", "cuda:1")),
    ([("cuda",), ("auto",)], ("cuda",)),
    ([("cpu",), ("auto",)], ("cpu", "auto")),
    ([("cpu",), ("cuda:1",), ("cpu", "cuda:1")], ("cpu", "cuda:1")),
])
def test_one_worker_per_device(folders: list[tuple[str, ...]], workers: tuple[str, ...]) -> None:
    assert worker_devices(folders) == workers
    # every folder has a worker that serves it
    assert all(any(serves(w, devices) for w in workers) for devices in folders)


@pytest.mark.parametrize(("worker", "devices", "expected"), [
    ("cuda:1", ("cuda:0", "cuda:1"), True),
    ("cuda:0", ("cuda:1",), False),
    ("cuda:0", ("cuda",), True),
    ("cuda:1", ("auto",), True),
    ("cuda", ("auto",), True),
    ("cpu", ("auto",), False),  # auto means the GPU when there is one
    ("cpu", ("cpu", "cuda:0"), True),
    ("auto", ("auto",), True),
    ("auto", ("cpu",), False),
])
def test_which_folders_a_worker_serves(worker: str, devices: tuple[str, ...], expected: bool) -> None:
    assert serves(worker, devices) is expected


def test_batch_is_the_first_file_plus_later_ones_with_its_model_and_device() -> None:
    waiting = [
        Waiting("small", ("cuda:1",), 60),  # not for cuda:0
        Waiting("turbo", ("cuda:0", "cuda:1"), 60),
        Waiting("small", ("cuda:0",), 60),  # another model: a later batch
        Waiting("turbo", ("auto",), 30),
        Waiting("turbo", ("cuda:1",), 30),  # not for cuda:0
        Waiting("turbo", ("cuda",), 10),
    ]
    assert pick_batch("cuda:0", waiting) == [1, 3, 5]
    assert pick_batch("cuda:1", waiting) == [0]
    assert pick_batch("cuda:0", waiting, model="small") == [2]
    assert pick_batch("cpu", waiting) == []
    # cuda:1 is missing: it leaves what cuda:0 also serves and keeps what only it serves
    assert pick_batch("cuda:1", waiting, leave_to=("cuda:0",)) == [0]
    assert pick_batch("cuda:1", waiting, model="turbo", leave_to=("cuda:0",)) == [4]


def test_batch_is_bounded_by_files_and_seconds_but_always_takes_one() -> None:
    shorts = [Waiting("turbo", ("cpu",), 60) for _ in range(40)]
    assert pick_batch("cpu", shorts) == list(range(16))  # BATCH_FILES
    assert pick_batch("cpu", shorts, max_files=100, max_seconds=300) == [0, 1, 2, 3, 4]
    assert pick_batch("cpu", shorts, max_files=100) == list(range(30))  # BATCH_SECONDS: 30 min
    film = [Waiting("turbo", ("cpu",), 3 * 3600), Waiting("turbo", ("cpu",), 60)]
    assert pick_batch("cpu", film) == [0]  # a film goes alone, even over the bound
    # a long file that does not fit is skipped; a short one after it still joins
    mixed = [Waiting("turbo", ("cpu",), seconds) for seconds in (600, 1500, 60)]
    assert pick_batch("cpu", mixed) == [0, 2]


def test_a_suspect_goes_first_and_alone() -> None:
    waiting = [
        Waiting("turbo", ("cpu",), 60),
        Waiting("turbo", ("cpu",), 60, alone=True),
        Waiting("turbo", ("cpu",), 60),
        Waiting("turbo", ("cuda:0",), 60, alone=True),  # not for the cpu worker
        Waiting("turbo", ("cpu",), 60, alone=True),
    ]
    assert pick_batch("cpu", waiting) == [1]
    assert pick_batch("cpu", waiting, model="turbo") == [1]
    assert pick_batch("cpu", [w for i, w in enumerate(waiting) if i != 1]) == [3]  # the next suspect
    others = [w for w in waiting if not w.alone or w.devices == ("cuda:0",)]
    assert pick_batch("cpu", others) == [0, 1]  # once its suspects are through, the cpu batches again
    assert pick_batch("cuda:0", waiting) == [3]


def test_status_names_a_batch() -> None:
    assert describe_files(["A.mkv"]) == "A.mkv"
    assert describe_files(["A.mkv", "B.mkv"]) == "2 files: A.mkv, B.mkv"
    assert describe_files(["A.mkv", "B.mkv", "C.mkv"]) == "3 files: A.mkv, B.mkv, …"


def seconds_waiting(buffer: Prefetch) -> float:
    """The seconds of audio a prefetch buffer holds (what its bound counts)."""
    return sum(waiting.seconds for _, waiting in buffer._items)


def test_prefetch_is_bounded_by_seconds_of_audio() -> None:
    buffer: Prefetch[tuple[str, float]] = Prefetch(
        lambda item: Waiting("turbo", ("cpu",), item[1]), max_seconds=1800, max_files=16
    )
    stop = threading.Event()
    assert buffer.has_room()
    buffer.put(("film", 3 * 3600.0))  # an empty buffer takes one file, however long
    assert not buffer.has_room() and seconds_waiting(buffer) == 3 * 3600
    assert buffer.take("cpu") == [("film", 3 * 3600.0)] and len(buffer) == 0
    for n in range(15):
        buffer.put((f"short{n}", 60.0))  # 15 min of short files: room for more
    assert buffer.has_room()
    buffer.put(("short15", 60.0))
    assert not buffer.has_room()  # 16 files
    stop.set()
    assert buffer.wait_for_room(stop) is False  # a stopping daemon does not wait for room
    assert [name for name, _ in buffer.take("cpu")] == [f"short{n}" for n in range(16)]
    assert buffer.peek("cpu", timeout=0.01) is None


def test_a_waiting_worker_wakes_when_a_file_arrives() -> None:
    buffer: Prefetch[str] = Prefetch(lambda item: Waiting("turbo", ("cuda:1",), 5.0))
    seen: list[str | None] = []
    thread = threading.Thread(target=lambda: seen.append(buffer.peek("cuda:1", timeout=30)))
    thread.start()
    time.sleep(0.05)
    started = time.monotonic()
    buffer.put("a.mkv")
    thread.join(5)
    assert seen == ["a.mkv"] and time.monotonic() - started < 2
    assert buffer.peek("cuda:0", timeout=0.01) is None  # not its device


# ---------------------------------------------------------------- GPU memory limit


def test_eviction_unloads_the_least_recently_used_until_the_new_model_fits() -> None:
    gib = 2**30
    idle = [("old", 3 * gib), ("middle", 2 * gib), ("recent", 1 * gib)]  # least recently used first
    # 8 GiB allocated (incl. the idle ones), a 4 GiB load, a 10 GiB limit: 2 GiB must go → the oldest
    assert choose_evictions(idle, 8 * gib, 4 * gib, 10 * gib) == ["old"]
    assert choose_evictions(idle, 8 * gib, 6 * gib, 10 * gib) == ["old", "middle"]
    assert choose_evictions(idle, 4 * gib, 4 * gib, 10 * gib) == []  # fits as it is
    # held models are not in `idle`; if it cannot fit even then, every idle one goes
    assert choose_evictions(idle, 15 * gib, 4 * gib, 10 * gib) == ["old", "middle", "recent"]
    assert choose_evictions([], 15 * gib, 4 * gib, 10 * gib) == []


def test_batches_are_sized_within_the_limit() -> None:
    gib = 2**30
    assert usable_memory(free=40 * gib, limit=None, allocated=5 * gib) == 40 * gib
    assert usable_memory(free=40 * gib, limit=20 * gib, allocated=5 * gib) == 15 * gib  # limit − allocated
    assert usable_memory(free=3 * gib, limit=20 * gib, allocated=5 * gib) == 3 * gib  # others use the card
    assert usable_memory(free=40 * gib, limit=4 * gib, allocated=5 * gib) == 0


def test_load_estimate(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert load_estimate(str(tiny_checkpoint), tmp_path) == 3 * tiny_checkpoint.stat().st_size
    assert load_estimate("turbo", tmp_path) == MODEL_PARAMETERS["turbo"] * 6 * 10**6  # not downloaded
    assert load_estimate("medium.en", tmp_path) == MODEL_PARAMETERS["medium"] * 6 * 10**6
    assert load_estimate("large-v3", tmp_path) == MODEL_PARAMETERS["large"] * 6 * 10**6


def test_memory_limit_is_a_no_op_on_the_cpu(tiny_checkpoint: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path, unload_after_seconds=0, memory_limit=MemoryLimit(bytes=1))
    with store.use(str(tiny_checkpoint), "cpu") as model:
        assert store.unload_idle() == []  # held: never unloaded, however idle
        assert model.device.type == "cpu"
        assert pick_batch_size(model, 1, EngineOptions()) == 16
    assert store._limits == {} and memory_limit_of(model) is None  # nothing capped, nothing for the engine
    assert list(store._models) == [(str(tiny_checkpoint), "cpu")]  # loaded, and kept while idle
    assert store.unload_idle() == [str(tiny_checkpoint)]


# ---------------------------------------------------------------- the daemon's workers, in-process


@pytest.fixture
def make_service(tmp_path: Path, tiny_en_checkpoint: Path) -> Iterator:  # noqa: ANN001
    services: list[Service] = []
    # real tiny.en weights: the tests below read the cues the workers write

    def make(folders: str, max_attempts: int = 3) -> Service:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"state_dir: {tmp_path / 'state'}\nmax_attempts: {max_attempts}\n"
            f"defaults: {{model: {tiny_en_checkpoint}, device: cpu, language: en}}\nfolders:\n{folders}"
        )
        service = Service(load_config(config))
        services.append(service)
        return service

    yield make
    for service in services:
        if not service._stopping.is_set():
            shut_down(service)


def shut_down(service: Service) -> JobQueue:
    """Stop the service as SIGTERM does; return a fresh handle on its queue (the service closed its own)."""
    service.stop()
    service._shutdown()
    return JobQueue(service.config.db_path)


def queue_files(service: Service, paths: list[Path]) -> None:
    for path in paths:
        service.jobs.enqueue(path, service.config.folder_for(path).path)


def wait_until(condition, timeout: float = 120.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def state_of(service: Service, path: Path) -> JobState:
    return service.jobs.find(path).state


def settled(service: Service, paths: list[Path]) -> bool:
    return all(state_of(service, p) not in (JobState.PENDING, JobState.RUNNING) for p in paths)


def test_files_decoded_together_are_transcribed_in_one_batch(make_service, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    inbox = tmp_path / "inbox"
    service = make_service(f"  - path: {inbox}\n")
    paths = [make_media(inbox / "A.mkv", speech="First file.", seconds=2, video=False),
             make_media(inbox / "B.mp4", speech="Second file.", seconds=2, video=False)]
    queue_files(service, paths)
    service._start_thread("loader", service._loader_loop)  # the real loader decodes both
    wait_until(lambda: len(service._prefetch) == 2)
    with caplog.at_level(logging.INFO, logger="subwatch"):
        service._start_workers()
        wait_until(lambda: settled(service, paths))

    batches = [r.getMessage() for r in caplog.records if r.getMessage().startswith("transcribing")]
    assert batches == ["transcribing 2 files together on cpu: A.mkv, B.mp4"]
    for path in paths:
        job = service.jobs.find(path)
        assert job.state == JobState.DONE and job.attempts == 1 and job.language == "en"
        srt_path, vtt_path = path.with_suffix(".en.srt"), path.with_suffix(".en.vtt")
        assert sorted(job.outputs) == [srt_path, vtt_path]
        assert_cues_valid(srt_path, vtt_path, duration_of(path))
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done  ")]
    assert sorted(line.split("  ")[1] for line in done) == ["A.mkv", "B.mp4"]  # one line per job


def test_a_file_that_breaks_its_batch_fails_alone(make_service, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    inbox = tmp_path / "inbox"
    service = make_service(f"  - path: {inbox}\n", max_attempts=1)
    good = make_media(inbox / "good.mkv", speech="Nothing wrong here.", seconds=2, video=False)
    bad = make_media(inbox / "bad.mkv", speech="Wrong rate.", seconds=2, video=False)
    queue_files(service, [good, bad])
    rules = service.config.folders[0]
    assert {service.jobs.claim().path, service.jobs.claim().path} == {good, bad}
    prepared = {  # with their job ids, as the service's loader hands them over
        p: replace(pipeline.prepare(p, rules, service.ledger.owns), job_id=service.jobs.find(p).id)
        for p in (good, bad)
    }
    # its samples labelled 44.1 kHz: a file the model cannot take, as a decoder bug would hand over
    wrong = prepared[bad].audio
    service._prefetch.put(prepared[good])
    service._prefetch.put(replace(prepared[bad], audio=Audio(wrong.samples, 44100)))
    with caplog.at_level(logging.INFO, logger="subwatch"):
        service._start_workers()
        wait_until(lambda: settled(service, [good, bad]))

    messages = [r.getMessage() for r in caplog.records]
    assert "transcribing 2 files together on cpu: good.mkv, bad.mkv" in messages
    assert ("a batch of 2 files failed (speech detection needs 16000 Hz audio, got 44100 Hz); "
            "transcribing them one at a time") in messages
    failed = service.jobs.find(bad)
    assert failed.state == JobState.FAILED
    assert failed.error == "speech detection needs 16000 Hz audio, got 44100 Hz"
    assert failed.attempts == 1
    done = service.jobs.find(good)
    assert done.state == JobState.DONE and done.error is None
    assert_cues_valid(good.with_suffix(".en.srt"), good.with_suffix(".en.vtt"), duration_of(good))
    assert not bad.with_suffix(".en.srt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_missing_gpu_fails_only_the_files_nobody_else_can_take(make_service, tmp_path: Path) -> None:  # noqa: ANN001
    service = make_service(
        f"  - path: {tmp_path / 'either'}\n    device: [cuda:1, cpu]\n"
        f"  - path: {tmp_path / 'gpu-only'}\n    device: cuda:1\n"
    )
    either = make_media(tmp_path / "either" / "a.mkv", speech="Any device will do.", seconds=2, video=False)
    gpu_only = make_media(tmp_path / "gpu-only" / "b.mkv", speech="Only the card.", seconds=2, video=False)
    queue_files(service, [gpu_only, either])
    service._start_thread("loader", service._loader_loop)
    service._start_workers()
    assert set(service.workers) == {"cuda:1", "cpu"}
    wait_until(lambda: settled(service, [either, gpu_only]))

    failed = service.jobs.find(gpu_only)
    assert failed.state == JobState.FAILED and failed.attempts == 1  # permanent: not retried
    assert failed.error.startswith("device 'cuda:1' was configured but PyTorch sees no CUDA GPU")
    assert service.jobs.find(either).state == JobState.DONE
    assert either.with_suffix(".en.srt").exists()
    assert not service.workers["cuda:1"].usable
    assert all(w.thread.is_alive() for w in service.workers.values())  # the worker did not die


def test_stopping_returns_every_file_of_the_batch_and_a_missing_model_fails_them_all(
    make_service, tmp_path: Path, caplog  # noqa: ANN001
) -> None:
    service = make_service(
        f"  - path: {tmp_path / 'inbox'}\n"
        f"  - path: {tmp_path / 'nomodel'}\n    model: {tmp_path / 'missing.pt'}\n"
    )
    kept = [make_media(tmp_path / "inbox" / f"{n}.mkv", speech="Stop now.", seconds=2, video=False)
            for n in "ab"]
    lost = [make_media(tmp_path / "nomodel" / f"{n}.mkv", speech="No model.", seconds=2, video=False)
            for n in "cd"]
    queue_files(service, kept + lost)
    service._abandon.set()  # as after the stop grace: the progress callback cancels the batch
    service._start_thread("loader", service._loader_loop)
    wait_until(lambda: len(service._prefetch) == 4)
    with caplog.at_level(logging.INFO, logger="subwatch"):
        service._start_workers()
        wait_until(lambda: settled(service, lost)
                   and sum(r.getMessage().startswith("released") for r in caplog.records) >= 2)
    jobs = shut_down(service)  # the loader claims the released files again: stopping gives them back

    released = [r.getMessage() for r in caplog.records if r.getMessage().startswith("released")]
    assert released[:2] == ["released  a.mkv  stopping: returned to the queue",
                            "released  b.mkv  stopping: returned to the queue"]
    for path in kept:
        job = jobs.find(path)
        assert job.state == JobState.PENDING and job.attempts == 0 and job.error is None  # not counted
    for path in lost:
        job = jobs.find(path)
        assert job.state == JobState.FAILED and job.attempts == 1
        assert job.error.startswith(f"model file {tmp_path / 'missing.pt'} does not exist")


def test_status_line_says_what_each_worker_does(make_service, tmp_path: Path) -> None:  # noqa: ANN001
    service = make_service(f"  - path: {tmp_path}\n    device: [cuda:0, cuda:1]\n")
    assert service._status_text() == "idle · 0 queued"
    one = Worker("cuda:0", Activity(current=describe_files(["A.mkv", "B.mkv", "C.mkv"]), progress=0.42))
    service.workers = {"cuda:0": one}
    assert service._status_text() == "transcribing 3 files: A.mkv, B.mkv, … 42% · 0 queued"
    service.workers["cuda:1"] = Worker("cuda:1", Activity(current="Film.mkv", progress=0.1))
    assert service._status_text() == (
        "transcribing cuda:0: 3 files: A.mkv, B.mkv, … 42%; cuda:1: Film.mkv 10% · 0 queued"
    )
    one.activity.heartbeat = time.monotonic()
    service.workers["cuda:1"].activity.heartbeat = time.monotonic() - 7200  # wedged for two hours
    assert not service._healthy()
