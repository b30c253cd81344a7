"""Abuse: one bounded attack run on the open port of a real `subwatch run` (issue #19).

One daemon (real tiny.en weights, greedy, English; its own temp state dir; one watched folder;
the HTTP listener on 127.0.0.1 without a key, as the README sets it up for Bazarr) is started
and then given the open-files soft limit systemd gives a unit without LimitNOFILE (1024); the
daemon raises its own soft limit to the hard one at start, as under subwatch.service.
After a warm-up request and an idle period, these run one after another:

  a. playlists of several kinds (HLS, ffconcat, concat, DASH, SDP) uploaded to /asr
     (encode=true), and an HLS playlist saved as x.mkv dropped into the watched folder, all
     naming a secret espeak-ng recording outside every watched folder: its words ("purple
     walrus seventeen") in any answer or sidecar is a leak;
  b. 3-hour uploads, 5 at once: FLAC of silence to /asr?encode=true (b1), raw PCM s16le of
     quiet noise to /detect-language?encode=false (b2, 345 MB each, streamed from disk);
  c. live HLS playlists (no #EXT-X-ENDLIST): how long until answered, waiting at most 60 s;
  d. 1,000 idle sockets and 1,000 slow ones (a header byte every 3 s), held while /healthz,
     a real /asr request and a file dropped into the watched folder must still be served;
  e. 50 of Bazarr's real requests at once, each answer checked for the clip's words;
  then a real speech file dropped into the watched folder must get the right subtitles.

For idle, each attack and the end it prints the daemon's peak and settled resident memory
(VmRSS sampled every 75 ms, and the kernel's VmHWM, reset per phase), open descriptors,
threads and child processes, what the attack got back and what /healthz said meanwhile; then
one PASS/FAIL line per target. Targets: no leak, never more than 1.5 GiB above idle, settled
within 200 MiB of idle, only 200 or 503 with Retry-After for long uploads, live playlists
refused, the daemon serving while sockets are held, every answer right, the final file
subtitled, /healthz truthful. Should the daemon pass --guard-mib above idle it is killed
(the machine is shared) and started again for the next attack.

Exit status: 0 every line PASS, 2 only soft lines failed, 1 a hard one failed (a leak, the
daemon died, the final file was not subtitled, a control failed).

    python bench/abuse.py                   # the full run: ~15 min on a 2-core CPU
    python bench/abuse.py --quick --seed 1  # a handful of each: ~2 min (tests/test_abuse.py)
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.abuse_attacks import (  # noqa: E402 - after the path is set
    Check,
    Outcome,
    Plan,
    Speech,
    Target,
    ask_bazarr,
    attack_live,
    attack_long,
    attack_playlists,
    attack_real,
    attack_sockets,
    subtitled,
    words_right,
)
from bench.abuse_kit import (  # noqa: E402
    DaemonProcess,
    Figures,
    Peaks,
    Reply,
    Sampler,
    Tally,
    children,
    free_port,
    healthz,
    look,
    post_audio,
    raise_nofile,
)
from bench.abuse_media import (  # noqa: E402
    PLAYLIST_KINDS,
    Secret,
    bazarr_pcm,
    long_noise_pcm,
    long_silence_flac,
    make_secret,
    secret_heard,
    tone_segment,
)

FULL = Plan(kinds=PLAYLIST_KINDS, long_minutes=180, parallel=5, long_timeout=300, live=5, live_timeout=60,
            idle=1000, slow=1000, hold=30, trickle=3, real=50, real_timeout=300, file_timeout=180)
QUICK = Plan(kinds=("hls", "hls-as-mkv"), long_minutes=20, parallel=2, long_timeout=60, live=2,
             live_timeout=15, idle=50, slow=50, hold=5, trickle=1, real=5, real_timeout=90,
             file_timeout=60, request_timeout=45)
PEAK_ABOVE_IDLE = 1536  # MiB: the most an attack may add to the idle daemon
SETTLED_ABOVE_IDLE = 200  # MiB: what may be left once it is over


@dataclass(frozen=True)
class Row:
    """One line of the table: a phase's peaks, its settled figures, what it got back, /healthz meanwhile."""

    phase: str
    peaks: Peaks
    settled: Figures | None
    quiet: bool  # the daemon's CPU went quiet before the settle time ran out
    kids: tuple[str, ...]
    got: str
    health: str
    seconds: float
    log_lines: int  # lines the daemon logged meanwhile


class HealthProbe:
    """Asks /healthz every 2 s on a thread while an attack runs, counting the answers."""

    def __init__(self, base: str) -> None:
        self.base, self.tally = base, Tally()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = 0.5  # the first soon, so a short attack is asked about too
        while not self._stop.wait(wait):
            self.tally.add(healthz(self.base, 3.0))
            wait = 2.0

    def stop(self) -> str:
        self._stop.set()
        self._thread.join(10)
        return str(self.tally)


class Run:
    """The daemon under attack, its sampler, and the rows and checks gathered so far."""

    def __init__(self, daemon: DaemonProcess, target: Target, warm_up: Speech, settle_max: float,
                 guard_mib: float) -> None:
        self.daemon, self.target, self.warm_up = daemon, target, warm_up
        self.settle_max, self.guard_mib = settle_max, guard_mib
        self.sampler = Sampler()
        self.rows: list[Row] = []
        self.checks: list[Check] = []
        self.deaths: list[str] = []
        self.idle: Figures | None = None

    def phase(self, name: str, attack: Callable[[], Outcome]) -> Row:
        """Run `attack` as phase `name`: sample the daemon meanwhile, let it settle, note a death
        (and start it again for what follows); return the phase's row."""
        self.sampler.begin()
        probe, started, lines = HealthProbe(self.target.base), time.monotonic(), self.daemon.output.lines
        outcome = attack()
        health, seconds = probe.stop(), time.monotonic() - started
        peaks = self.sampler.snapshot()
        settled, quiet = settle(self.daemon.pid, self.settle_max)
        if settled is None or peaks.guard_hit:
            self.daemon.wait_exit(60)
        row = Row(name, peaks, settled, quiet, children(self.daemon.pid), str(outcome.got), health, seconds,
                  self.daemon.output.lines - lines)
        self.rows.append(row)
        self.checks += outcome.checks
        print(f"{name}: got {row.got}; {describe(row)}", flush=True)
        if not self.daemon.alive():
            why = "killed at the memory guard" if peaks.guard_hit else f"exit {self.daemon.process.poll()}"
            self.deaths.append(f"{name} ({why})")
            self.start()
        return row

    def start(self) -> Reply:
        """Start (or start again) the daemon, wait until /healthz answers, and send it a warm-up request
        (which loads the model); return that request's reply."""
        self.daemon.start()
        self.sampler.start(self.daemon.pid)
        if not self.daemon.wait_ready(self.target.base, 300):
            raise SystemExit(f"the daemon did not come up; its log ends:\n{self.daemon.log()[-3000:]}")
        return ask_bazarr(self.target, self.warm_up, 300)


def settle(pid: int, most: float, quiet_for: float = 2.0) -> tuple[Figures | None, bool]:
    """Wait until the daemon's CPU is quiet and its memory steady for `quiet_for` s (at most `most` s);
    return its figures then, and whether it went quiet."""
    deadline = time.monotonic() + most
    now = look(pid)
    while now is not None and time.monotonic() < deadline:
        time.sleep(quiet_for)
        later = look(pid)
        if later is None:
            return None, False
        if later.cpu - now.cpu < 0.1 * quiet_for and abs(later.rss - now.rss) < 8:
            return later, True
        now = later
    return now, False


def describe(row: Row) -> str:
    settled = f"{row.settled.rss:.0f} MiB" if row.settled else "dead"
    return (f"peak RSS {row.peaks.rss:.0f} MiB (HWM {row.peaks.hwm:.0f}), settled {settled}, "
            f"{row.peaks.fds} fds at most, {row.log_lines} log lines, {row.seconds:.0f} s")


def memory_checks(label: str, idle: Figures, row: Row) -> list[Check]:
    """The memory targets of a long-upload phase against the idle daemon."""
    above = max(row.peaks.rss, row.peaks.hwm) - idle.rss
    settled = (row.settled.rss - idle.rss) if row.settled else float("inf")
    guard = " (killed at the memory guard)" if row.peaks.guard_hit else ""
    return [
        Check(f"{label} peak RSS at most {PEAK_ABOVE_IDLE} MiB above idle", above <= PEAK_ABOVE_IDLE, False,
              f"{above:+.0f} MiB{guard}"),
        Check(f"{label} settled RSS within {SETTLED_ABOVE_IDLE} MiB of idle", settled <= SETTLED_ABOVE_IDLE,
              False, f"the daemon died{guard}" if row.settled is None else
              f"{settled:+.0f} MiB" + ("" if row.quiet else " (still busy when the wait ran out)")),
    ]


def controls(run: Run, warm_up: Reply, secret: Secret, timeout: float) -> None:
    """Without these the other lines mean nothing: a plain request (the warm-up) is understood, and the
    secret's words are heard when it is sent as itself (so a leak would be seen)."""
    reply, clip = warm_up, run.warm_up
    right, wer = words_right(reply.text, clip.text) if reply.status == 200 else (False, 1.0)
    run.checks.append(Check("control: a plain Bazarr request gets its words", right, True,
                            f"{reply.label}, WER {wer:.2f}"))
    reply = post_audio(f"{run.target.base}/asr", secret.wav.read_bytes(), {"encode": "true"}, timeout,
                       name="secret.wav")
    run.checks.append(Check("control: the secret's own words are heard when sent as itself",
                            reply.status == 200 and secret_heard(reply.text), True,
                            f"{reply.label}: {reply.text.strip()[:60]!r}"))


def final_checks(run: Run, clip: Speech, plan: Plan) -> list[Check]:
    """After every attack: the daemon lives, a dropped file is subtitled, /healthz is right, and the
    daemon is back at its idle figures."""
    target, idle = run.target, run.idle
    assert idle is not None
    run.sampler.begin()
    started, lines = time.monotonic(), run.daemon.output.lines
    right, detail = subtitled(target, clip, f"final{clip.path.suffix}", plan.file_timeout)
    health = healthz(target.base, 10.0)
    seconds, peaks = time.monotonic() - started, run.sampler.snapshot()
    settled, quiet = settle(run.daemon.pid, run.settle_max)
    kids = children(run.daemon.pid) if run.daemon.alive() else ()
    run.rows.append(Row("after all: a file dropped", peaks, settled, quiet, kids, detail, health, seconds,
                        run.daemon.output.lines - lines))
    alive = run.daemon.alive()
    checks = [
        Check("the daemon stayed alive through every attack", not run.deaths, True,
              "died in " + "; ".join(run.deaths) if run.deaths else f"{run.daemon.starts} start"),
        Check("final: the daemon is alive", alive, True, f"pid {run.daemon.pid}"),
        Check("final: a dropped speech file gets the right subtitles", right, True, detail),
        Check("final: /healthz answers 200 ok", health == "200 ok", False, health),
    ]
    if settled is not None:
        checks += [
            Check(f"final: settled RSS within {SETTLED_ABOVE_IDLE} MiB of idle",
                  settled.rss - idle.rss <= SETTLED_ABOVE_IDLE, False,
                  f"{settled.rss:.0f} MiB against {idle.rss:.0f} idle"),
            Check("final: descriptors back to idle (+16)", settled.fds <= idle.fds + 16, False,
                  f"{settled.fds} against {idle.fds} idle"),
            Check("final: no child process left behind", not kids, False, ", ".join(kids) or "none"),
        ]
    return checks


def table(rows: list[Row]) -> str:
    lines = ["| phase | peak RSS MiB | VmHWM MiB | settled RSS MiB | fds peak / settled | "
             "threads peak / settled | children | got back | /healthz meanwhile | log lines | s |",
             "|---|---:|---:|---:|---:|---:|---|---|---|---:|---:|"]
    for r in rows:
        s = r.settled
        settled = "dead" if s is None else f"{s.rss:.0f}" + ("" if r.quiet else " (busy)")
        lines.append(
            f"| {r.phase} | {r.peaks.rss:.0f} | {r.peaks.hwm:.0f} | {settled} | "
            f"{r.peaks.fds} / {s.fds if s else '-'} | {r.peaks.threads} / {s.threads if s else '-'} | "
            f"{len(r.kids)}{' (' + ', '.join(sorted(set(r.kids))) + ')' if r.kids else ''} | "
            f"{r.got} | {r.health or '-'} | {r.log_lines} | {r.seconds:.0f} |")
    return "\n".join(lines)


def verdict(checks: list[Check]) -> int:
    """Print a PASS/FAIL line per check; return the exit status (1 hard FAIL, 2 soft FAIL only, 0)."""
    for check in checks:
        print(f"{'PASS' if check.passed else 'FAIL'} {'(hard) ' if check.hard else ''}{check.name}: "
              f"{check.detail}")
    if any(c.hard and not c.passed for c in checks):
        return 1
    return 2 if any(not c.passed for c in checks) else 0


def speech_clips() -> tuple[Speech, ...]:
    """Real English speech with transcripts (LibriSpeech and jfk.flac from tests/data)."""
    from tests.speech import SPEECH, jfk, librispeech

    if not SPEECH.is_dir():
        raise SystemExit(f"the shared speech is not at {SPEECH}")
    return tuple(Speech(c.path, c.text, bazarr_pcm(c.path)) for c in [jfk(), *librispeech()])


def write_config(work: Path, cache: Path, port: int) -> Path:
    from tests.real_weights import tiny_en_folder

    config = work / "config.yaml"
    config.write_text(
        f"state_dir: {work / 'state'}\nmodels_dir: {cache / 'models'}\nlog_level: info\n"
        f"defaults: {{model: {tiny_en_folder()}, device: cpu, beam_size: 1, language: en, "
        "settle_seconds: 1, formats: [srt]}\n"
        f"folders: [{{path: {work / 'watched'}}}]\n"
        f"http: {{listen: '127.0.0.1:{port}'}}\n")
    return config


@dataclass(frozen=True)
class Material:
    """What the attacks send, made before the daemon starts."""

    clips: tuple[Speech, ...]
    secret: Secret
    segment: Path  # what live playlists name
    silence: Path  # b1's upload
    noise: Path  # b2's upload


def make_material(plan: Plan, work: Path, cache: Path) -> Material:
    for folder in ("watched", "tmp", "media"):
        (work / folder).mkdir()
    return Material(speech_clips(), make_secret(work / "media", work / "tmp"), tone_segment(work / "media"),
                    long_silence_flac(cache, plan.long_minutes), long_noise_pcm(cache, plan.long_minutes))


def attacks(run: Run, plan: Plan, stuff: Material, rng: random.Random) -> None:
    """Start the daemon; idle, then every attack as a phase of `run`, then the final checks."""
    target, daemon = run.target, run.daemon
    controls(run, run.start(), stuff.secret, plan.real_timeout)
    run.sampler.begin()
    lines = daemon.output.lines
    time.sleep(2.0)
    idle, _ = settle(daemon.pid, run.settle_max)
    assert idle is not None, daemon.log()[-3000:]
    run.idle = idle
    run.sampler.guard_mib = idle.rss + run.guard_mib
    run.rows.append(Row("idle", run.sampler.snapshot(), idle, True, children(daemon.pid), "-",
                        healthz(target.base), 2.0, daemon.output.lines - lines))
    picks = rng.sample(stuff.clips, 3)
    hours = f"{plan.long_minutes / 60:g} h" if plan.long_minutes >= 60 else f"{plan.long_minutes:g} min"
    run.phase(f"a. playlists ({', '.join(plan.kinds)})", lambda: attack_playlists(target, plan, stuff.secret))
    row = run.phase(f"b1. {plan.parallel}x {hours} FLAC silence -> /asr",
                    lambda: attack_long(target, plan, stuff.silence, "/asr", True, "b1."))
    run.checks += memory_checks("b1.", idle, row)
    row = run.phase(f"b2. {plan.parallel}x {hours} PCM noise -> /detect-language",
                    lambda: attack_long(target, plan, stuff.noise, "/detect-language", False, "b2."))
    run.checks += memory_checks("b2.", idle, row)
    run.phase(f"d. {plan.idle} idle + {plan.slow} slow sockets",
              lambda: attack_sockets(target, plan, picks))
    run.phase(f"e. {plan.real} real requests at once", lambda: attack_real(target, plan, stuff.clips, rng))
    # Live playlists last: today each leaves an ffmpeg waiting for ever, which later attacks would feel.
    run.phase(f"c. {plan.live} live HLS playlists", lambda: attack_live(target, plan, stuff.segment))
    run.checks += final_checks(run, picks[2], plan)


def attack(args: argparse.Namespace, work: Path) -> int:
    """Make the material, start the daemon, run every attack, stop it; print the table and the verdict."""
    plan = QUICK if args.quick else FULL
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    stuff = make_material(plan, work, cache)
    port = free_port()
    daemon = DaemonProcess(write_config(work, cache, port), args.daemon_nofile, {"TMPDIR": str(work / "tmp")})
    target = Target(f"http://127.0.0.1:{port}", port, work / "watched", work / "state" / "jobs.sqlite3",
                    daemon.alive)
    run = Run(daemon, target, stuff.clips[0], 10.0 if args.quick else 60.0, args.guard_mib)
    client = raise_nofile(plan.idle + plan.slow + 1000)
    print(f"seed {args.seed}; {'quick' if args.quick else 'full'} plan; open-files limit: daemon "
          f"{args.daemon_nofile}, this script {client}; work {work}", flush=True)
    try:
        attacks(run, plan, stuff, random.Random(args.seed))
    finally:
        started = time.monotonic()
        code = daemon.stop(20.0)
        stopped = time.monotonic() - started
    run.checks.append(Check("the daemon stops on SIGTERM with status 0", code == 0, False,
                            f"status {code} after {stopped:.0f} s" if code is not None else
                            f"killed after {stopped:.0f} s"))
    print()
    print(table(run.rows))
    print()
    return verdict(run.checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a handful of each attack (~2 min)")
    parser.add_argument("--seed", type=int, default=19, help="picks the clips (default 19)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "subwatch-abuse-cache"),
                        help="keeps the converted model and the long files between runs")
    parser.add_argument("--daemon-nofile", type=int, default=1024,
                        help="the daemon's open-files soft limit (default 1024, systemd's for a service)")
    parser.add_argument("--guard-mib", type=float, default=6144,
                        help="kill the daemon past this much memory above idle (default 6144)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed) afterwards")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the daemon
    work = Path(tempfile.mkdtemp(prefix="subwatch-abuse-"))
    try:
        return attack(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
