"""The shared queue on a real PostgreSQL server: throughput with 1, 2 and 3 daemons sharing a
backlog, claim latency with a deep backlog, the connections one node holds, and how long a dead
node's file waits before another node takes it (issue #21).

    python bench/cluster.py                  # 300 files for 1/2/3 nodes; 10,000 queued jobs, 300 claims
    python bench/cluster.py --files 60 --nodes 1 2 --jobs 2000 --claims 100   # a quicker look

Throughput: `--files` spoken sentences (espeak-ng, 2 to 3 s each, made once in --cache) wait in a
folder; N real `subwatch run` daemons (tiny.en on the CPU, one thread each: OMP_NUM_THREADS=1) start
on one fresh database and share them. Timed by the database: from the first claim to the last file
done; each node's share counted from the job rows. A fresh copy of the files per run. "cores busy":
the CPU seconds of the daemons and their children (decoder, ffmpeg) over the run's wall time, start
and stop included: what one node already uses bounds what more nodes can add on this machine. With
--pin yes (or both), node n and its children run on core n alone: one core per node, as on hosts of
their own, which shows what the shared queue itself costs.

Starts its own server (Debian's postgresql, as tests/postgres.py does), fills a fresh database
with `--jobs` pending jobs, and times claims (each claim, then its finish, as a worker does) from
one thread and from several at once; the same on a SQLite file for comparison. Prints a table, the
plan PostgreSQL picks for the claim, and the connections a node held at its busiest.

The takeover: node "dead" claims a file and stops renewing (as a killed daemon does); node "alive"
runs the daemon's own LeaseKeeper and claims the file as soon as it is put back. Timed from the dead
node's last renewal to the other's claim, `--takeovers` times with `--lease` seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.datatypes import JobResult  # noqa: E402
from daemon.queue import JobQueue  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402


def fill(q: JobQueue, jobs: int) -> None:
    """Insert `jobs` pending jobs in one transaction (enqueue would hash files: not what is timed)."""
    now = time.time()
    with q._db.write() as conn:  # noqa: SLF001 - a bench seeds the table directly
        conn.executemany(
            "INSERT INTO jobs (path, folder, state, size, mtime, fingerprint, created_at, updated_at) "
            "VALUES (?, ?, 'pending', 1, 0, ?, ?, ?)",
            [(f"/media/{i:06}.mkv".encode(), b"/media", f"1:{i:x}", now, now) for i in range(jobs)])


def timed_claims(q: JobQueue, claims: int, threads: int) -> list[float]:
    """Claim and finish `claims` jobs from `threads` threads; return each claim's seconds."""
    took: list[float] = []
    lock = threading.Lock()
    left = [claims]

    def work() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            started = time.perf_counter()
            job = q.claim()
            seconds = time.perf_counter() - started
            with lock:
                took.append(seconds)
            q.finish(job.id, JobResult("en", None, 1.0, 0.1))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return took


def takeover(url: str, lease: float) -> float:
    """Return seconds from a node's last renewal of a claimed file's lease to another node's claim."""
    from daemon.leases import LeaseKeeper

    dead = JobQueue(url, node="dead", lease_seconds=lease)
    alive = JobQueue(url, node="alive", lease_seconds=lease)
    fill(dead, 1)
    job = dead.claim()
    dead.renew()
    last_beat = time.monotonic()  # the node dies here: nothing renews its lease again
    keeper = LeaseKeeper(alive, reaped=lambda: None)
    keeper.start()
    while (taken := alive.claim()) is None:
        time.sleep(0.02)
    waited = time.monotonic() - last_beat
    keeper.stop()
    assert taken.id == job.id and taken.node == "alive"
    dead.close()
    alive.close()
    return waited


COLOURS = ("red", "green", "yellow", "black", "white", "blue", "brown", "grey", "orange", "pink")
ANIMALS = ("horse", "rabbit", "tiger", "monkey", "camel", "donkey")
PLACES = ("river", "garden", "station", "market", "bridge")


def spoken_files(cache: Path, files: int) -> list[Path]:
    """Return `files` different spoken sentences as WAV files in `cache`, made once."""
    said = [f"The {c} {a} is sleeping near the {p} today." for c in COLOURS for a in ANIMALS for p in PLACES]
    if files > len(said):
        raise SystemExit(f"--files: at most {len(said)}")
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(said[:files]):
        path = cache / f"Sentence {i:03d}.wav"
        if not path.exists():
            subprocess.run(["espeak-ng", "-v", "en", "-s", "160", "-w", str(path), text], check=True)
        paths.append(path)
    return paths


def throughput(server: PostgresServer, sources: list[Path], nodes: int, scratch: Path, pin: bool) -> dict:
    """Run `nodes` daemons on a fresh database over a fresh copy of `sources`; return the timings.
    With `pin`, node n and all its processes run on core n only (one core per node)."""
    from tests.real_weights import tiny_en_folder

    run = scratch / f"nodes-{nodes}{'-pinned' if pin else ''}"
    inbox = run / "inbox"
    inbox.mkdir(parents=True)
    for source in sources:
        shutil.copy(source, inbox / source.name)
    url = server.fresh_url()
    daemons = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the daemons, their decoders and ffmpegs
    began = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for n in range(nodes):
        config = run / f"node{n}.yaml"
        config.write_text(
            f"state_dir: {run / f'state{n}'}\ndatabase: \"{url}\"\nnode: {{name: node{n}}}\n"
            f"defaults: {{model: {tiny_en_folder()}, device: cpu, beam_size: 1, language: en, "
            f"settle_seconds: 1}}\nfolders: [{{path: {inbox}}}]\n")
        log = open(run / f"node{n}.log", "wb")  # noqa: SIM115 - closed with the daemon
        core = n % (os.cpu_count() or 1)
        pinned = (lambda core=core: os.sched_setaffinity(0, {core})) if pin else None
        daemons.append((subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(config)],
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=pinned), log))
    q = JobQueue(url, node="bench-reader")
    try:
        while True:
            time.sleep(2.0)
            counts = q.counts()
            if sum(counts.values()) == len(sources) and not any(
                    counts[state] for state in counts if state.value in ("pending", "running")):
                break
            if any(p.poll() is not None for p, _ in daemons):
                raise SystemExit(f"a daemon stopped; see {run}/node*.log")
        jobs = q.jobs()
        started, ended = q._db.query("SELECT MIN(started_at), MAX(finished_at) FROM jobs").fetchone()  # noqa: SLF001
    finally:
        q.close()
        for process, log in daemons:
            process.terminate()
            process.wait(60)
            log.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    failed = sum(j.state.value != "done" for j in jobs)
    return {"nodes": nodes, "pinned": pin, "files": len(jobs), "failed": failed,
            "seconds": ended - started, "audio": sum(j.media_duration or 0.0 for j in jobs),
            "shares": sorted(sum(j.node == f"node{n}" for j in jobs) for n in range(nodes)),
            "cores": cpu / (time.monotonic() - began)}


def throughput_table(results: list[dict]) -> str:
    """Given each run's timings, return the markdown table."""
    ones = {r["pinned"]: r for r in results if r["nodes"] == 1}
    lines = ["| nodes | cores each | files | failed | first claim to last done | files/min | x one node | "
             "audio x realtime | files per node | cores busy |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        rate = r["files"] / r["seconds"] * 60
        one = ones.get(r["pinned"])
        ratio = f"{rate / (one['files'] / one['seconds'] * 60):.2f}" if one else "-"
        each = "1 (pinned)" if r["pinned"] else "any"
        shares = ", ".join(map(str, r["shares"]))
        lines.append(f"| {r['nodes']} | {each} | {r['files']} | {r['failed']} | {r['seconds']:.0f} s | "
                     f"{rate:.1f} | {ratio} | {r['audio'] / r['seconds']:.1f} | {shares} | "
                     f"{r['cores']:.2f} |")
    return "\n".join(lines)


def row(name: str, took: list[float]) -> str:
    ms = sorted(t * 1000 for t in took)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {p95:.1f} | {ms[-1]:.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--lease", type=float, default=10.0, help="seconds (the config's minimum: 10)")
    parser.add_argument("--takeovers", type=int, default=3)
    parser.add_argument("--files", type=int, default=300, help="the backlog the nodes share (0: skip)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/subwatch-cluster-bench"))
    parser.add_argument("--pin", choices=("no", "yes", "both"), default="both",
                        help="run each node on a core of its own (yes), anywhere (no), or both in turn")
    args = parser.parse_args()
    rows = []
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        server = PostgresServer(Path(scratch) / "postgres")
        try:
            if args.files:
                sources = spoken_files(args.cache, args.files)
                for pin in {"no": [False], "yes": [True], "both": [False, True]}[args.pin]:
                    for nodes in args.nodes:
                        results.append(throughput(server, sources, nodes, Path(scratch), pin))
                        print(f"{nodes} node(s){' pinned' if pin else ''}: {results[-1]['seconds']:.0f} s",
                              file=sys.stderr)
            url = server.fresh_url()
            q = JobQueue(url, node="bench")
            fill(q, args.jobs)
            import psycopg

            with psycopg.connect(url) as raw:
                raw.execute("ANALYZE jobs")
                plan = raw.execute(
                    "EXPLAIN SELECT id FROM jobs WHERE state = 'pending' AND next_attempt_at <= %s "
                    "ORDER BY suspect DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED", (time.time(),)).fetchall()
            rows.append(row(f"PostgreSQL, {args.jobs:,} queued, 1 thread", timed_claims(q, args.claims, 1)))
            busiest = [0]
            stop = threading.Event()

            def count_connections() -> None:
                with psycopg.connect(server.url(), autocommit=True) as watcher:
                    while not stop.wait(0.05):
                        n = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                                            "= 'subwatch'").fetchone()[0]
                        busiest[0] = max(busiest[0], n)

            watcher = threading.Thread(target=count_connections)
            watcher.start()
            rows.append(row(f"PostgreSQL, {args.jobs - args.claims:,} queued, {args.threads} threads",
                            timed_claims(q, args.claims, args.threads)))
            stop.set()
            watcher.join()
            q.close()
            waits = [takeover(server.fresh_url(), args.lease) for _ in range(args.takeovers)]
        finally:
            server.stop()
        sqlite = JobQueue(Path(scratch) / "jobs.sqlite3", node="bench")
        fill(sqlite, args.jobs)
        rows.append(row(f"SQLite, {args.jobs:,} queued, 1 thread", timed_claims(sqlite, args.claims, 1)))
        rows.append(row(f"SQLite, {args.jobs - args.claims:,} queued, {args.threads} threads",
                        timed_claims(sqlite, args.claims, args.threads)))
        sqlite.close()
    if results:
        print(f"throughput: {args.files} files, tiny.en on the CPU, one thread per node "
              f"({os.cpu_count()} cores here)\n" + throughput_table(results) + "\n")
    print("| queue | claims | median ms | p95 ms | max ms |\n|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\nconnections one node held at its busiest ({args.threads} threads claiming): {busiest[0]}")
    print("the claim's plan:\n  " + "\n  ".join(line[0] for line in plan))
    print(f"\na dead node's file taken by another, {args.lease:g} s lease, beats every "
          f"{args.lease / 6:.1f} s: " + ", ".join(f"{w:.1f} s" for w in waits) + " after its last renewal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
