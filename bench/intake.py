"""Intake at scale: how long a real `subwatch run` takes to queue thousands of files dropped at once.

Starts the daemon on empty folders, writes N small distinct WAV files into each
in one burst, and times until every one is a job in the SQLite queue. Rows:
the inotify folder, a polled folder (as on an SMB/NFS share), the daemon's
start-up backfill of a folder that already holds N files, and, as the floor
everything is measured against, the time to write the files at all. The
model path is deliberately missing: nothing here is about transcription.

    python bench/intake.py --files 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SETTLE = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="files per folder (default 2000)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="subwatch-intake-"))
    try:
        rows = [floor(work / "floor", args.files), live(work, "inotify", args.files, poll=False),
                live(work, "polled", args.files, poll=True), backfill(work, args.files)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, args.files))
    return 0


def write_wavs(folder: Path, count: int) -> float:
    """Write `count` 0.1 s WAVs whose content differs (distinct fingerprints); return the seconds taken."""
    from tests.media_factory import write_distinct_wav

    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for n in range(count):
        write_distinct_wav(folder / f"clip {n:05d}.wav", n)
    return time.monotonic() - started


def floor(folder: Path, count: int) -> dict:
    return {"row": "writing the files (floor)", "seconds": write_wavs(folder, count), "threads": None}


def start_daemon(work: Path, name: str, folder: Path, poll: bool) -> tuple[subprocess.Popen, Path]:
    state = work / f"state-{name}"
    config = work / f"{name}.yaml"
    config.write_text(
        f"state_dir: {state}\nlog_level: warning\n"
        f"defaults: {{model: {work / 'no-model.pt'}, device: cpu, settle_seconds: {SETTLE}}}\n"
        f"folders: [{{path: {folder}, poll: {'true' if poll else 'false'}, poll_interval: 1}}]\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(config)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, state / "jobs.sqlite3"


def jobs_in(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def wait_queued(process: subprocess.Popen, db: Path, count: int, started: float) -> dict:
    threads = 0
    while jobs_in(db) < count:
        threads = max(threads, len(os.listdir(f"/proc/{process.pid}/task")))
        if time.monotonic() - started > 600:
            raise SystemExit(f"only {jobs_in(db)} of {count} queued after 600 s")
        time.sleep(0.05)
    return {"seconds": time.monotonic() - started, "threads": threads}


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(60)


def live(work: Path, name: str, count: int, poll: bool) -> dict:
    folder = work / name
    folder.mkdir()
    process, db = start_daemon(work, name, folder, poll)
    while not db.exists():  # the queue exists once the daemon is up
        time.sleep(0.1)
    time.sleep(2.0)  # the observer is running
    started = time.monotonic()
    write_wavs(folder, count)
    result = wait_queued(process, db, count, started)
    stop(process)
    how = "polled every 1 s" if poll else "inotify"
    return {"row": f"dropped into a watched folder ({how})", **result}


def backfill(work: Path, count: int) -> dict:
    folder = work / "backfill"
    write_wavs(folder, count)
    started = time.monotonic()
    process, db = start_daemon(work, "backfill", folder, poll=False)
    result = wait_queued(process, db, count, started)
    stop(process)
    return {"row": "already there at start (backfill, incl. start-up)", **result}


def table(rows: list[dict], count: int) -> str:
    lines = [f"{count} files per row, settle_seconds {SETTLE:g}; seconds from the first write "
             "(or the daemon's start) until all are jobs",
             "", f"| {'path':<52} | {'seconds':>7} | {'files/s':>8} | {'threads':>7} |",
             f"|{'-' * 54}|{'-' * 9}|{'-' * 10}|{'-' * 9}|"]
    for row in rows:
        threads = "" if row["threads"] is None else str(row["threads"])
        rate = count / row["seconds"] if row["seconds"] else float("inf")
        lines.append(f"| {row['row']:<52} | {row['seconds']:>7.1f} | {rate:>8.0f} | {threads:>7} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
