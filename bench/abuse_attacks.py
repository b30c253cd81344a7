"""The attacks of bench/abuse.py, each bounded in count and time, every socket to 127.0.0.1 only.

Each takes the Target and the Plan and returns an Outcome: what came back (counted) and its checks.
The memory figures are the caller's (bench/abuse.py samples the daemon around each attack).
"""

from __future__ import annotations

import errno
import random
import select
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.abuse_kit import Reply, Tally, healthz, post_audio, sidecar_text, wait_job
from bench.abuse_media import Secret, hls, playlist, secret_heard


@dataclass(frozen=True)
class Plan:
    """How big each attack is (`--quick` makes a small one) and how long anything may be waited for (s)."""

    kinds: tuple[str, ...]  # playlist kinds of attack a
    long_minutes: float  # length of each upload of attack b
    parallel: int  # uploads at once in attack b
    long_timeout: float
    live: int  # live playlists of attack c
    live_timeout: float
    idle: int  # idle sockets of attack d
    slow: int  # slow sockets of attack d
    hold: float  # at least this long are they held
    trickle: float  # a slow socket sends one byte this often
    real: int  # concurrent real requests of attack e
    real_timeout: float
    file_timeout: float  # for a dropped file's subtitles
    request_timeout: float = 60.0  # for one short request


@dataclass(frozen=True)
class Speech:
    """A real clip of speech: its path, its transcript, and its audio as Bazarr sends it."""

    path: Path
    text: str
    pcm: bytes


@dataclass(frozen=True)
class Target:
    """The daemon under attack: its URL, watched folder, job database, and whether it still runs."""

    base: str
    port: int
    watched: Path
    db: Path
    alive: Callable[[], bool]


@dataclass(frozen=True)
class Check:
    """One PASS/FAIL line; a hard one failing makes the run exit 1."""

    name: str
    passed: bool
    hard: bool
    detail: str


@dataclass
class Outcome:
    """What an attack got back (counted labels) and its checks."""

    got: Tally = field(default_factory=Tally)
    checks: list[Check] = field(default_factory=list)


def words_right(text: str, reference: str) -> tuple[bool, float]:
    """Given an answer (SRT or plain) and the clip's transcript, return (WER <= 0.4, the WER)."""
    import srt

    from tests.speech import word_error_rate

    try:
        said = " ".join(cue.content.replace("\n", " ") for cue in srt.parse(text))
    except (srt.SRTParseError, ValueError):
        said = text
    wer = word_error_rate([reference], [said or "-"], "en")
    return wer <= 0.4, wer


def ask_bazarr(target: Target, clip: Speech, timeout: float) -> Reply:
    """Bazarr's /asr request for `clip` (raw PCM, encode=false, srt)."""
    params = {"task": "transcribe", "language": "en", "output": "srt", "encode": "false"}
    return post_audio(f"{target.base}/asr", clip.pcm, params, timeout, name=clip.path.stem)


def drop(folder: Path, name: str, source: Path | bytes) -> Path:
    """Put a file into the watched folder in one step (written aside, then renamed), as a downloader does."""
    part = folder / f".{name}.part"
    if isinstance(source, bytes):
        part.write_bytes(source)
    else:
        shutil.copy(source, part)
    return part.rename(folder / name)


def subtitled(target: Target, clip: Speech, name: str, timeout: float) -> tuple[bool, str]:
    """Drop `clip` as `name`, wait for its job; return (its sidecar says the clip's words, what happened)."""
    drop(target.watched, name, clip.path)
    state = wait_job(target.db, name, timeout, target.alive)
    text = sidecar_text(target.watched, Path(name).stem)
    right, wer = words_right(text, clip.text) if text else (False, 1.0)
    return right, f"job {state}, sidecar WER {wer:.2f}" if text else f"job {state}, no sidecar"


# ---------------------------------------------------------------- a. playlists naming a secret


def attack_playlists(target: Target, plan: Plan, secret: Secret) -> Outcome:
    """Upload playlists of each kind naming the secret (the last kind into the watched folder as x.mkv);
    FAIL (hard) if the secret's words come back in any answer or sidecar."""
    outcome, leaks = Outcome(), []

    def one(kind: str) -> tuple[str, str, str]:
        body = playlist(kind, secret)
        if kind == "hls-as-mkv":
            drop(target.watched, "x.mkv", body)
            state = wait_job(target.db, "x.mkv", plan.file_timeout, target.alive)
            return kind, f"job {state}", sidecar_text(target.watched, "x.")
        reply = post_audio(f"{target.base}/asr", body, {"encode": "true", "output": "srt"},
                           plan.request_timeout, name=f"list.{kind}")
        return kind, reply.label, reply.text

    with ThreadPoolExecutor(len(plan.kinds)) as pool:
        for kind, label, text in pool.map(one, plan.kinds):
            outcome.got.add(f"{kind} {label}")
            if secret_heard(text):
                leaks.append(kind)
    outcome.checks.append(Check("a. no playlist made the daemon read the secret", not leaks, True,
                                f"leaked through: {', '.join(leaks)}" if leaks else
                                f"{len(plan.kinds)} kinds, none leaked"))
    return outcome


# ---------------------------------------------------------------- b. hours of audio, in parallel


def acceptable(reply: Reply) -> bool:
    return reply.status == 200 or (reply.status == 503 and reply.retry_after is not None)


def attack_long(target: Target, plan: Plan, audio: Path, route: str, encode: bool, label: str) -> Outcome:
    """Upload `audio` (hours long) `plan.parallel` times at once to `route`; 200 or 503 with Retry-After
    are the acceptable answers."""
    params = {"encode": "true" if encode else "false", "output": "txt", "language": "en"}
    if route == "/detect-language":
        params = {"encode": params["encode"]}
    with ThreadPoolExecutor(plan.parallel) as pool:
        replies = list(pool.map(lambda i: post_audio(f"{target.base}{route}", audio, params,
                                                     plan.long_timeout, name=f"long{i}"),
                                range(plan.parallel)))
    outcome = Outcome()
    for reply in replies:
        outcome.got.add(reply.label)
    bad = [r.label for r in replies if not acceptable(r)]
    outcome.checks.append(Check(f"{label} answers are 200 or 503 with Retry-After", not bad, False,
                                f"got {outcome.got}"))
    return outcome


# ---------------------------------------------------------------- c. live playlists


def attack_live(target: Target, plan: Plan, segment: Path) -> Outcome:
    """Upload live HLS playlists (no ENDLIST: ffmpeg waits for more segments for ever) at once;
    each should be refused (4xx) within the wait."""
    body = hls([segment], ended=False)
    params = {"encode": "true", "output": "txt"}
    with ThreadPoolExecutor(plan.live) as pool:
        replies = list(pool.map(lambda i: post_audio(f"{target.base}/asr", body, params, plan.live_timeout,
                                                     name=f"live{i}.m3u8"), range(plan.live)))
    outcome = Outcome()
    for reply in replies:
        outcome.got.add(reply.label if reply.status is None else f"{reply.status} in {reply.seconds:.1f} s")
    refused = all(r.status is not None and 400 <= r.status < 500 for r in replies)
    slowest = max(r.seconds for r in replies)
    outcome.checks.append(Check("c. live playlists refused (4xx) instead of waited on", refused, False,
                                f"got {outcome.got}; slowest {slowest:.1f} s"))
    return outcome


# ---------------------------------------------------------------- d. idle and slow sockets


def connect_many(port: int, count: int, within: float) -> tuple[list[socket.socket], int]:
    """Open `count` non-blocking TCP connections to 127.0.0.1:`port`; return the connected sockets and
    how many did not connect within `within` s (the daemon's backlog full, or refused)."""
    pending: dict[int, socket.socket] = {}
    poller = select.poll()  # not select(): more than 1,024 descriptors
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        pending[sock.fileno()] = sock
        poller.register(sock, select.POLLOUT)
    connected, deadline = [], time.monotonic() + within
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            sock = pending.pop(fd)
            poller.unregister(fd)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected.append(sock)
            else:
                sock.close()
    failed = count - len(connected)
    for sock in pending.values():
        sock.close()
    return connected, failed


class Trickle:
    """Sends each slow socket one byte of a never-finished request header every `every` s, on a thread."""

    HEADER = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

    def __init__(self, sockets: list[socket.socket], every: float) -> None:
        self.sockets, self.every = list(sockets), every
        self.dropped: set[int] = set()  # indexes of sockets the daemon closed or reset
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickle", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sent = 0
        while not self._stop.wait(self.every):
            byte = self.HEADER[sent:sent + 1] or b"a"
            for index, sock in enumerate(self.sockets):
                if index in self.dropped:
                    continue
                try:
                    sock.send(byte)
                except BlockingIOError:
                    pass
                except OSError:
                    self.dropped.add(index)
            sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.every + 5)


def survey(sockets: list[socket.socket], kind: str, tally: Tally) -> None:
    """Count what became of each held socket: still open, closed by the daemon, or answered (a status)."""
    for sock in sockets:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        if not poller.poll(0):
            tally.add(f"{kind}: held open")
            continue
        try:
            data = sock.recv(4096)
        except OSError as exc:
            tally.add(f"{kind}: reset" if exc.errno == errno.ECONNRESET else f"{kind}: {exc.strerror}")
            continue
        status = data.split(b" ", 2)[1].decode(errors="replace") if data.startswith(b"HTTP/") else ""
        tally.add(f"{kind}: answered {status}" if data else f"{kind}: closed by daemon")


def attack_sockets(target: Target, plan: Plan, clips: Sequence[Speech]) -> Outcome:
    """Hold `plan.idle` idle and `plan.slow` slow connections while /healthz, a real /asr request and a
    dropped file must still be served; close them all at the end."""
    outcome = Outcome()
    idle, idle_failed = connect_many(target.port, plan.idle, 15.0)
    slow, slow_failed = connect_many(target.port, plan.slow, 15.0)
    for kind, failed in (("idle", idle_failed), ("slow", slow_failed)):
        if failed:
            outcome.got.add(f"{kind}: not connected in 15 s", failed)
    trickle = Trickle(slow, plan.trickle)
    started = time.monotonic()
    try:
        health = healthz(target.base, 5.0)
        reply = ask_bazarr(target, clips[0], plan.request_timeout)
        asr_right = reply.status == 200 and words_right(reply.text, clips[0].text)[0]
        file_right, file_detail = subtitled(target, clips[1], "held.flac", plan.file_timeout)
        time.sleep(max(0.0, plan.hold - (time.monotonic() - started)))
    finally:
        trickle.stop()
        survey(idle, "idle", outcome.got)
        survey([s for i, s in enumerate(slow) if i not in trickle.dropped], "slow", outcome.got)
        if trickle.dropped:
            outcome.got.add("slow: closed by daemon", len(trickle.dropped))
        for sock in idle + slow:
            sock.close()
    held = f"{len(idle)} idle + {len(slow)} slow held {time.monotonic() - started:.0f} s"
    outcome.checks += [
        Check("d. /healthz answers 200 ok while sockets are held", health == "200 ok", False,
              f"{health}; {held}"),
        Check("d. a real /asr request gets its words while sockets are held", asr_right, False,
              f"{reply.label} in {reply.seconds:.1f} s"),
        Check("d. a dropped file gets subtitles while sockets are held", file_right, False, file_detail),
    ]
    return outcome


# ---------------------------------------------------------------- e. many real requests at once


def attack_real(target: Target, plan: Plan, clips: Sequence[Speech], rng: random.Random) -> Outcome:
    """Send `plan.real` of Bazarr's real requests at once (clips picked by `rng`); each must come back
    200 with the clip's words."""
    picks = [rng.choice(clips) for _ in range(plan.real)]
    with ThreadPoolExecutor(plan.real) as pool:
        replies = list(pool.map(lambda clip: ask_bazarr(target, clip, plan.real_timeout), picks))
    outcome, right = Outcome(), 0
    for clip, reply in zip(picks, replies, strict=True):
        outcome.got.add(reply.label)
        right += reply.status == 200 and words_right(reply.text, clip.text)[0]
    slowest = max(r.seconds for r in replies)
    outcome.checks.append(Check(f"e. {plan.real} concurrent requests all answered with their words",
                                right == plan.real, False,
                                f"{right}/{plan.real} right; got {outcome.got}; slowest {slowest:.1f} s"))
    return outcome
