"""Soak: hundreds of short files through one `subwatch run`, watching it for leaks and slow-down.

One real daemon with real tiny.en weights (English, beam size 1) watches one
folder; short clips of real speech (2-4 s cut from tests/data, as WAV,
Ogg Opus, MP3 and Matroska/AAC) arrive in waves of 50, each wave once the one
before is done, with notifications going to a local HTTP endpoint. After each
wave, with the daemon idle again, the script reads its resident memory and
thread count (/proc/<pid>/status) and its open file descriptors
(/proc/<pid>/fd). Speed is the x realtime of a wave: seconds of audio over the
wall time from the first claim of the wave's files to the last one done (from
the job database). Targets: memory, descriptors and speed of the last wave
within 10 % of the first. The folder is rescanned every `--rescan` minutes
(the daemon's default is hourly), so that a long run's worth of rescans happen.
A warm-up file goes first, so the model's loading is in no wave.

    python bench/soak.py                      # 300 files, tiny.en on the CPU
    python bench/soak.py --files 100 --wave 25
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RATE = 16000
FORMATS = (".wav", ".ogg", ".mp3", ".mka")
ENCODERS = {".ogg": ["-c:a", "libopus"], ".mp3": ["-c:a", "libmp3lame"], ".mka": ["-c:a", "aac"]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=300, help="files in all (default 300)")
    parser.add_argument("--wave", type=int, default=50, help="files per wave (default 50)")
    parser.add_argument("--device", default="cpu", help="the daemon's device (default cpu)")
    parser.add_argument("--rescan", type=float, default=0.5, help="rescan_minutes (default 0.5)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed) afterwards")
    args = parser.parse_args()
    if args.files % args.wave:
        parser.error("--files must be a multiple of --wave")

    work = Path(tempfile.mkdtemp(prefix="subwatch-soak-"))
    try:
        return soak(work, args)
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def soak(work: Path, args: argparse.Namespace) -> int:
    from tests.harness import NotificationSink

    started = time.monotonic()
    warm_up, *clips = make_clips(work / "clips", args.files + 1, random.Random(args.seed))
    print(f"made {len(clips)} clips ({sum(s for _, s in clips):.0f} s of audio) in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    model = tiny_en(work / "models")
    inbox, sink = work / "inbox", NotificationSink()
    inbox.mkdir()
    config = work / "config.yaml"
    config.write_text(
        f"state_dir: {work / 'state'}\nlog_level: info\nrescan_minutes: {args.rescan}\n"
        f"defaults: {{model: {model}, device: {args.device}, settle_seconds: 1, language: en, "
        "beam_size: 1}\n"
        f"notify: {{urls: ['{sink.url}']}}\n"
        f"folders: [{{path: {inbox}}}]\n"
    )
    db = work / "state" / "jobs.sqlite3"
    log = open(work / "daemon.log", "wb")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "--config", str(config)], cwd=ROOT, stdout=log,
        stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    samples, waves = [], []
    try:
        drop(inbox, [warm_up])
        wait_done(db, [warm_up[0].name], daemon)
        for first in range(0, len(clips), args.wave):
            wave = clips[first:first + args.wave]
            cpu = cpu_seconds(daemon.pid)
            drop(inbox, wave)
            wait_done(db, [path.name for path, _ in wave], daemon)
            used = {"cpu": cpu_seconds(daemon.pid) - cpu, "load": os.getloadavg()[0]}
            waves.append(wave_speed(db, wave) | used)
            time.sleep(3.0)  # idle: the daemon gives back what its batches freed within a second or two
            samples.append({"done": first + len(wave), **process_sample(daemon.pid)})
            sample = samples[-1]
            done = waves[-1]
            print(f"wave {len(waves)}: {done['x']:.2f}x realtime ({done['audio'] / done['cpu']:.2f}x "
                  f"by CPU time, load {done['load']:.1f}), RSS {sample['rss_mib']:.0f} MiB, "
                  f"{sample['fds']} fds, {sample['threads']} threads", flush=True)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        log.close()
        sink.close()
    states = job_states(db)
    print(report(samples, waves, states, code, len(sink.messages()), args))
    opened = sorted((Counter(samples[-1]["fd_targets"]) - Counter(samples[0]["fd_targets"])).elements())
    if opened:
        print(f"descriptors open at the end but not at the start: {opened}")
    return 0 if code == 0 and states == {"done": len(clips) + 1} else 1


def drop(inbox: Path, clips: list[tuple[Path, float]]) -> None:
    """Move clips into the watched folder in one step each, as a download client does."""
    for path, _ in clips:
        part = inbox / f".{path.name}.part"
        shutil.copy(path, part)
        part.rename(inbox / path.name)


def make_clips(folder: Path, count: int, rng: random.Random) -> list[tuple[Path, float]]:
    """Cut `count` distinct 2-4 s clips of real English speech; return each path with its length in s."""
    import numpy as np

    from tests.media_factory import write_wav
    from tests.speech import clips as speech_clips
    from tests.speech import load

    sources = [load(clip) for clip in speech_clips("en")]
    folder.mkdir(parents=True)
    taken: set[tuple[int, int, int]] = set()
    made = []
    while len(made) < count:
        which = rng.randrange(len(sources))
        samples = sources[which]
        length = rng.randrange(2 * RATE, 4 * RATE, RATE // 100)
        if len(samples) <= length:
            continue
        start = rng.randrange(0, len(samples) - length, RATE // 100)
        if (which, start, length) in taken:
            continue
        taken.add((which, start, length))
        suffix = FORMATS[len(made) % len(FORMATS)]
        path = folder / f"clip {len(made):03d}{suffix}"
        wav = path.with_suffix(".wav")
        pcm = (np.clip(samples[start:start + length], -1.0, 1.0) * 32767).astype("<i2").tobytes()
        write_wav(wav, pcm)
        if suffix != ".wav":
            subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(wav),
                            *ENCODERS[suffix], str(path)], check=True)
            wav.unlink()
        made.append((path, length / RATE))
    return made


def tiny_en(models: Path) -> Path:
    """Return real tiny.en as the OpenAI-format checkpoint subwatch converts it to."""
    from tests.real_weights import converted, tiny_en_folder

    return converted(tiny_en_folder(), models)


def query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=15) as conn:
            return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def wait_done(db: Path, names: list[str], daemon: subprocess.Popen) -> None:
    wanted = set(names)
    while True:
        finished = {Path(os.fsdecode(path)).name for (path,) in
                    query(db, "SELECT path FROM jobs WHERE state IN ('done', 'failed', 'skipped')")}
        if wanted <= finished:
            return
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode}; see its log")
        time.sleep(0.5)


def wave_speed(db: Path, wave: list[tuple[Path, float]]) -> dict:
    """Seconds of audio of the wave over the wall time from its first claim to its last job done."""
    names = {path.name for path, _ in wave}
    rows = [(started, finished) for path, started, finished in
            query(db, "SELECT path, started_at, finished_at FROM jobs WHERE state = 'done'")
            if Path(os.fsdecode(path)).name in names]
    wall = max(f for _, f in rows) - min(s for s, _ in rows)
    audio = sum(seconds for _, seconds in wave)
    return {"files": len(rows), "audio": audio, "wall": wall, "x": audio / wall}


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) the process has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def process_sample(pid: int) -> dict:
    """The daemon's resident memory (MiB), threads and open file descriptors now."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}").split("[")[0])  # "socket:[123]": socket:
        except OSError:
            pass  # closed meanwhile
    return {"rss_mib": int(status["VmRSS"].split()[0]) / 1024, "threads": int(status["Threads"]),
            "fds": len(targets), "fd_targets": targets}


def job_states(db: Path) -> dict[str, int]:
    return dict(query(db, "SELECT state, COUNT(*) FROM jobs GROUP BY state"))


def change(first: float, last: float) -> str:
    return f"{(last - first) / first * 100:+.1f} %"


def report(samples: list[dict], waves: list[dict], states: dict, code: int, notes: int,
           args: argparse.Namespace) -> str:
    middle = samples[(len(samples) - 1) // 2]
    points = [("start", samples[0]), ("middle", middle), ("end", samples[-1])]
    lines = [f"{args.files} files in waves of {args.wave}; jobs: {states}; daemon exit code {code}; "
             f"{notes} notifications", "",
             "| point | files done | RSS MiB | open fds | threads |", "|---|---:|---:|---:|---:|"]
    for name, sample in points:
        lines.append(f"| {name} (after wave {samples.index(sample) + 1}) | {sample['done']} | "
                     f"{sample['rss_mib']:.0f} | {sample['fds']} | {sample['threads']} |")
    first, last = samples[0], samples[-1]
    lines.append(f"| end vs start | | {change(first['rss_mib'], last['rss_mib'])} | "
                 f"{change(first['fds'], last['fds'])} | {change(first['threads'], last['threads'])} |")
    # Wall-clock speed moves with whatever else the machine runs; audio per CPU second of the
    # daemon moves far less, so a slow-down of subwatch's own shows there.
    lines += ["", "| files | audio s | wall s | x realtime | daemon CPU s | x realtime by CPU | load |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, wave in ((f"first {args.wave}", waves[0]), (f"last {args.wave}", waves[-1])):
        lines.append(f"| {name} | {wave['audio']:.0f} | {wave['wall']:.1f} | {wave['x']:.2f} | "
                     f"{wave['cpu']:.1f} | {wave['audio'] / wave['cpu']:.2f} | {wave['load']:.1f} |")
    by_cpu = [w["audio"] / w["cpu"] for w in (waves[0], waves[-1])]
    lines.append(f"| last vs first | | | {change(waves[0]['x'], waves[-1]['x'])} | | {change(*by_cpu)} | |")
    lines += ["", "every wave: " + ", ".join(f"{w['x']:.2f}x" for w in waves)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
