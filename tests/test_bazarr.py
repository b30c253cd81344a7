"""Bazarr's whisper-asr-webservice endpoints (/asr, /detect-language) on a real uvicorn server, answered
by the daemon's real transcriber pool (queue, loader, workers, model store) with real base weights.

Requests are sent the way Bazarr's `whisperai` provider sends them: the audio decoded by ffmpeg to raw
PCM (s16le, 16 kHz, mono), `encode=false`, the multipart field `audio_file`, through requests.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
import pytest
import requests
import srt
import uvicorn
from starlette.applications import Starlette

from daemon import subtitles
from daemon.asr import (
    AsrLane,
    AsrRequest,
    AsrResult,
    AsrService,
    Pending,
    map_path,
    rules_in,
    webservice_output,
)
from daemon.config import Config, load_config
from daemon.datatypes import JobState, Segment, Transcript, Word
from daemon.decoders import DecoderPool, Settings
from daemon.http.bazarr import RequestSide
from daemon.notify import Notifier
from daemon.options import build_rules
from daemon.outcomes import Outcomes
from daemon.queue import JobQueue
from daemon.transcribers import Transcribers
from tests.harness import wait_until, write_config
from tests.speech import Clip, fleurs, word_error_rate

TV = "/tv"  # where Bazarr sees the library (its container's path)


def bazarr_pcm(path: Path) -> bytes:
    """The audio as Bazarr's encode_audio_stream makes it: ffmpeg to s16le, mono, 16 kHz, async resampled."""
    out, _ = (
        ffmpeg.input(str(path), threads=0)
        .output("-", format="s16le", acodec="pcm_s16le", ac=1, ar=16000, af="aresample=async=1")
        .run(cmd=["ffmpeg", "-nostdin"], capture_stdout=True, capture_stderr=True)
    )
    return out


def bazarr_asr(url: str, audio: bytes, language: str | None, task: str = "transcribe",
               **extra: str) -> requests.Response:
    """POST /asr as Bazarr's WhisperAIProvider.download_subtitle does (session, User-Agent, params,
    files, (connect, read) timeout)."""
    with requests.Session() as session:
        session.headers["User-Agent"] = "Subliminal/2.1.0"
        params = {"task": task, "language": language, "output": "srt", "encode": "false", **extra}
        return session.post(f"{url}/asr", params=params, files={"audio_file": audio}, timeout=(5, 600))


@dataclass
class Stack:
    """The daemon's transcriber pool, as Service builds it, with the Bazarr routes on a uvicorn server."""

    root: Path
    library: Path
    config: Config
    jobs: JobQueue
    pool: Transcribers
    stopping: threading.Event
    server: uvicorn.Server
    url: str

    def start_workers(self) -> None:
        self.pool.start_workers()

    def queue(self, clip: Clip, name: str) -> int:
        target = self.library / name
        shutil.copy(clip.path, target)
        self.jobs.enqueue(target, self.library)
        job = self.jobs.find(target)
        assert job is not None
        return job.id


def _thread(name: str, target) -> threading.Thread:  # noqa: ANN001
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_stack(root: Path, model: Path, http: str = "") -> Stack:
    """Build the pool (not its workers: `start_workers`) and serve the routes on a free port; `http`
    adds keys to the config's http section."""
    library = root / "library"
    library.mkdir()
    config = load_config(write_config(root / "config.yaml", f"""
        state_dir: {root / "state"}
        defaults: {{model: {model}, device: cpu, beam_size: 1, formats: [srt]}}
        folders:
          - path: {library}
        http: {{path_map: {{"{TV}": "{library}"}}{http}}}
    """))
    config.state_dir.mkdir(parents=True, exist_ok=True)
    jobs = JobQueue(config.db_path)
    ledger = subtitles.SidecarLedger(jobs)
    wake, stopping = threading.Event(), threading.Event()
    settings = Settings(config.models_dir, config.unload_after_seconds, config.gpu_memory_limit,
                        config.engine)
    models = DecoderPool(settings, stopping)  # one decoder child per worker, as the daemon has
    notifier = Notifier(config.notify, settled=jobs.notices_settled)
    outcomes = Outcomes(jobs, ledger, notifier, lambda: config, wake.set)
    pool = Transcribers(lambda: config, jobs, ledger, models, notifier, outcomes, wake, stopping, _thread)
    _thread("loader", pool.loader_loop)
    asr = AsrService(pool.asr, rules_in(lambda: config), jobs)
    port = _free_port()
    app = Starlette(routes=RequestSide(asr, lambda: config, config.state_dir / "work").routes())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    _thread("http", server.run)
    assert wait_until(lambda: server.started, 30)
    return Stack(root, library, config, jobs, pool, stopping, server, f"http://127.0.0.1:{port}")


def close_stack(stack: Stack) -> None:
    stack.server.should_exit = True
    stack.stopping.set()
    stack.pool.release_prefetched()
    stack.pool.models.close()


@pytest.fixture
def fresh(tmp_path: Path, base_checkpoint: Path) -> Iterator[Stack]:
    """A stack whose workers the test starts."""
    stack = build_stack(tmp_path, base_checkpoint)
    yield stack
    close_stack(stack)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, base_checkpoint: Path) -> Iterator[Stack]:
    """A stack with its workers started, shared by the tests that only need answers."""
    stack = build_stack(tmp_path_factory.mktemp("bazarr"), base_checkpoint)
    stack.start_workers()
    yield stack
    close_stack(stack)


def srt_cues(text: str) -> list[srt.Subtitle]:
    return list(srt.parse(text))


def test_bazarrs_request_gets_the_clips_words_as_srt(running: Stack, testdata: Path) -> None:
    clip = fleurs("en")[0]
    pcm = bazarr_pcm(clip.path)
    seconds = len(pcm) / 2 / 16000

    answer = bazarr_asr(running.url, pcm, "en")

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.headers["content-disposition"] == 'attachment; filename="audio_file.srt"'
    cues = srt_cues(answer.text)
    assert cues and [c.index for c in cues] == list(range(1, len(cues) + 1))
    assert answer.text.startswith("1\n00:00:") and answer.text.endswith("\n\n")  # the webservice's layout
    for cue in cues:
        assert 0 <= cue.start.total_seconds() < cue.end.total_seconds() <= seconds + 0.01
    said = " ".join(c.content.replace("\n", " ") for c in cues)
    assert word_error_rate([clip.text], [said], "en") < 0.25, said


def test_detect_language_names_a_german_clip(running: Stack, testdata: Path) -> None:
    clip = fleurs("de")[3]
    with requests.Session() as session:  # as Bazarr's WhisperAIProvider.detect_language
        answer = session.post(f"{running.url}/detect-language", params={"encode": "false"},
                              files={"audio_file": bazarr_pcm(clip.path)}, timeout=(5, 600))

    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert set(found) == {"detected_language", "language_code", "confidence"}
    assert (found["detected_language"], found["language_code"]) == ("german", "de")
    assert 0.5 < found["confidence"] <= 1.0


def test_bad_requests_are_refused_with_a_reason(running: Stack) -> None:
    url = running.url

    def post(params: dict, files: dict | None = None, **kw) -> requests.Response:  # noqa: ANN003
        return requests.post(f"{url}/asr", params=params, files=files, timeout=30, **kw)

    cases = [
        (post({"encode": "false"}, {"audio_file": b""}), 400, "the audio is empty"),
        (post({"encode": "false"}, {"audio_file": b"\x01\x02\x03"}), 400, "not a whole number of samples"),
        (post({"encode": "true"}, {"audio_file": b"this is no media file" * 50}), 400, "ffmpeg cannot read"),
        (post({"output": "docx"}, {"audio_file": b"\0\0"}), 422, "output must be one of txt, vtt, srt, tsv"),
        (post({"task": "summarise"}, {"audio_file": b"\0\0"}), 422, "task must be one of"),
        (post({"language": "xx"}, {"audio_file": b"\0\0"}), 422, "'xx' is not a Whisper language code"),
        (post({"encode": "maybe"}, {"audio_file": b"\0\0"}), 422, "encode must be true or false"),
        (post({}, {"other": b"\0\0"}), 422, "field 'audio_file' with the audio is missing"),
        (post({}, data=b"raw body"), 400, "must be multipart/form-data"),
    ]
    for answer, status, reason in cases:
        assert answer.status_code == status, (reason, answer.text)
        assert reason in answer.json()["detail"]
    assert requests.get(f"{url}/asr", timeout=30).status_code == 405


def test_requests_go_before_the_backlog_together_and_a_done_video_answers_from_its_transcript(
    fresh: Stack, testdata: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = fresh
    backlog_clips = [fleurs("en")[1], fleurs("en")[3]]
    backlog = [stack.queue(clip, f"Episode {n}.ogg") for n, clip in enumerate(backlog_clips, start=1)]
    assert wait_until(lambda: len(stack.pool.prefetch) == 2, 60)  # decoded, waiting for a worker

    spanish, german = fleurs("es")[2], fleurs("de")[1]
    answered: dict[str, float] = {}

    def ask_spanish() -> requests.Response:
        answer = bazarr_asr(stack.url, bazarr_pcm(spanish.path), "es")
        answered["es"] = time.time()
        return answer

    def ask_german() -> requests.Response:  # another client: the file itself, encode=true, json
        with open(german.path, "rb") as f:
            answer = requests.post(f"{stack.url}/asr", params={"output": "json", "word_timestamps": "true"},
                                   files={"audio_file": ("clip.ogg", f)}, timeout=(5, 600))
        answered["de"] = time.time()
        return answer

    caplog.set_level(logging.INFO, logger="subwatch.asr")
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(ask_spanish), pool.submit(ask_german)]
        assert wait_until(lambda: len(stack.pool.asr) == 2, 60)  # both wait in the lane
        stack.start_workers()
        es, de = (f.result(timeout=600) for f in futures)

    assert "transcribing 2 HTTP requests together" in caplog.text
    assert es.status_code == 200 and de.status_code == 200, (es.text, de.text)
    said = " ".join(c.content.replace("\n", " ") for c in srt_cues(es.text))
    assert word_error_rate([spanish.text], [said], "es") < 0.35, said
    assert de.headers["content-type"] == "application/json"
    result = json.loads(de.text)
    assert set(result) == {"text", "segments", "language"} and result["language"] == "de"
    assert word_error_rate([german.text], [result["text"]], "de") < 0.35, result["text"]
    words = [w for s in result["segments"] for w in s["words"]]
    assert words and set(words[0]) == {"word", "start", "end", "probability"}

    # The backlog went into the model only after both requests were answered.
    assert wait_until(lambda: all(stack.jobs.get(i).state is JobState.DONE for i in backlog), 300)
    for job_id in backlog:
        assert stack.jobs.get(job_id).updated_at > max(answered.values())

    # Bazarr names a finished video and sends its audio: answered from the stored transcript.
    episode = bazarr_pcm(stack.library / "Episode 1.ogg")
    stored = bazarr_asr(stack.url, episode, "en", video_file=f"{TV}/Episode 1.ogg")
    assert stored.status_code == 200, stored.text
    said = " ".join(c.content.replace("\n", " ") for c in srt_cues(stored.text))
    assert word_error_rate([backlog_clips[0].text], [said], "en") < 0.25, said
    assert caplog.text.count("answered an HTTP request for") == 1
    # Without the key, naming the video with other audio (1 s of silence) gets nothing of the file:
    # the audio sent is transcribed, and silence has no words.
    silence = b"\0\0" * 16000
    probe = bazarr_asr(stack.url, silence, "en", video_file=f"{TV}/Episode 1.ogg")
    assert (probe.status_code, probe.text) == (200, "")
    assert "sent 1.0 s of audio, not its" in caplog.text
    # In another language than the one stored, the audio sent is transcribed: silence has no words.
    other = bazarr_asr(stack.url, silence, "fr", video_file=f"{TV}/Episode 1.ogg")
    assert (other.status_code, other.text) == (200, "")


def test_the_lane_holds_only_so_much_audio_and_drops_requests_whose_client_left(
    tmp_path: Path, base_checkpoint: Path, testdata: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 14.4 s may wait: one clip, not two.
    stack = build_stack(tmp_path, base_checkpoint, ", max_queued_audio_hours: 0.004")
    caplog.set_level(logging.INFO, logger="subwatch.asr")
    try:
        first, second = (bazarr_pcm(clip.path) for clip in fleurs("en")[:2])
        assert len(first) / 32000 < 14.4 < (len(first) + len(second)) / 32000
        waiting = _raw_asr(stack.url, first)  # a client that will give up
        assert wait_until(lambda: len(stack.pool.asr) == 1, 60)

        refused = bazarr_asr(stack.url, second, "en")
        assert refused.status_code == 503, refused.text
        assert 30 <= int(refused.headers["retry-after"]) <= 600
        assert "http.max_queued_audio_hours" in refused.json()["detail"]

        waiting.close()  # the client gives up: its request goes before any worker sees it
        assert wait_until(lambda: len(stack.pool.asr) == 0, 30)
        assert "dropped 1 HTTP request(s) whose client went away" in caplog.text

        stack.start_workers()
        answered = bazarr_asr(stack.url, second, "en")
        assert answered.status_code == 200 and srt_cues(answered.text), answered.text
        assert "answered an HTTP request: " in caplog.text
        assert caplog.text.count("answered an HTTP request: ") == 1  # the dropped one never was
    finally:
        close_stack(stack)


def _raw_asr(url: str, pcm: bytes) -> socket.socket:
    """Send Bazarr's request on a bare socket and return it, unanswered, for the test to close."""
    boundary = "subwatchtest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio_file\"; filename=\"a\"\r\n\r\n"
            .encode() + pcm + f"\r\n--{boundary}--\r\n".encode())
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /asr?encode=false&language=en&output=srt HTTP/1.1\r\nHost: {host}\r\n"
                 f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def test_path_map_replaces_the_longest_matching_prefix() -> None:
    path_map = {"/tv": "/srv/media/tv", "/tv/kids": "/srv/kids", "/movies/": "/srv/films"}
    assert map_path("/tv/Show/S01E01.mkv", path_map) == Path("/srv/media/tv/Show/S01E01.mkv")
    assert map_path("/tv/kids/Cartoon.mkv", path_map) == Path("/srv/kids/Cartoon.mkv")
    assert map_path("/movies/Film.mkv", path_map) == Path("/srv/films/Film.mkv")
    assert map_path("/tvshows/Other.mkv", path_map) == Path("/tvshows/Other.mkv")  # whole components only
    assert map_path("/elsewhere/x.mkv", {}) == Path("/elsewhere/x.mkv")


def _result() -> AsrResult:
    words = (Word(0.5, 1.0, " Hello", 0.9), Word(1.1, 2.0, " there.", 0.8),
             Word(2.5, 3.2, " General", 0.95), Word(3.3, 4.0, " Kenobi!", 0.7))
    segments = (Segment(0.5, 2.0, " Hello there.", words[:2]),
                Segment(2.5, 4.0, " General Kenobi!", words[2:]))
    return AsrResult(Transcript(segments, "en", 0.99, 5.0), build_rules(Path("/"), {}))


def test_outputs_are_laid_out_as_whisper_asr_webservice_writes_them() -> None:
    result = _result()
    assert webservice_output(result, "txt") == "Hello there.\nGeneral Kenobi!\n"
    assert webservice_output(result, "tsv") == (
        "start\tend\ttext\n500\t2000\tHello there.\n2500\t4000\tGeneral Kenobi!\n"
    )
    assert json.loads(webservice_output(result, "json")) == {
        "text": " Hello there. General Kenobi!",
        "segments": [{"id": 0, "start": 0.5, "end": 2.0, "text": " Hello there."},
                     {"id": 1, "start": 2.5, "end": 4.0, "text": " General Kenobi!"}],
        "language": "en",
    }
    with_words = json.loads(webservice_output(result, "json", word_timestamps=True))
    assert with_words["segments"][1]["words"] == [
        {"word": " General", "start": 2.5, "end": 3.2, "probability": 0.95},
        {"word": " Kenobi!", "start": 3.3, "end": 4.0, "probability": 0.7},
    ]
    # srt and vtt: subwatch's cues, in whisper's layout (srt: hours and a comma; vtt: no hours under one).
    cues = subtitles.build_cues(result.transcript.segments, result.rules.subtitles.cues, media_duration=5.0,
                                language="en")
    assert len(cues) >= 1

    def stamp(seconds: float, hours: bool, mark: str) -> str:
        ms = round(seconds * 1000)
        h, m, s, f = ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60, ms % 1000
        return (f"{h:02d}:" if hours or h else "") + f"{m:02d}:{s:02d}{mark}{f:03d}"

    assert webservice_output(result, "srt") == "".join(
        f"{n}\n{stamp(c.start, True, ',')} --> {stamp(c.end, True, ',')}\n" + "\n".join(c.lines) + "\n\n"
        for n, c in enumerate(cues, start=1)
    )
    assert webservice_output(result, "vtt") == "WEBVTT\n\n" + "".join(
        f"{stamp(c.start, False, '.')} --> {stamp(c.end, False, '.')}\n" + "\n".join(c.lines) + "\n\n"
        for c in cues
    )
    empty = AsrResult(Transcript((), "en", None, 1.0), result.rules)
    assert (webservice_output(empty, "srt"), webservice_output(empty, "vtt")) == ("", "WEBVTT\n\n")


def test_a_worker_takes_the_requests_it_serves_that_share_a_model_in_arrival_order() -> None:
    def pending(model: str, devices: tuple[str, ...], seconds: float = 10.0) -> Pending:
        rules = build_rules(Path("/"), {"model": model, "device": list(devices)})
        return Pending("transcribe", AsrRequest(np.zeros(int(seconds * 16000), np.float32)), rules)

    lane = AsrLane()
    first, other_model, gpu_only, second = (pending("base", ("cpu",)), pending("small", ("cpu",)),
                                            pending("base", ("cuda:0",)), pending("base", ("cpu", "cuda:0")))
    for item in (first, other_model, gpu_only, second):
        lane.put(item)
    assert lane.take("cpu") == [first, second]
    assert lane.take("cpu") == [other_model]
    assert lane.take("cpu") == []
    assert lane.take("cuda:0") == [gpu_only]
    assert len(lane) == 0
