"""Kill a real `subwatch run` with SIGKILL many times at random moments; every file must end done once.

    python bench/kills.py                    # 100 kills, 0.5 to 6 s apart, over 8 clips (issue #24)
    python bench/kills.py --kills 10 --seed 3

What a flapping power supply, a watchdog restart loop or an admin's repeated `kill -9`
looks like. Each round starts the daemon on the same config, lets it run a random
0.5 to 6 s and kills it (the whole daemon, its decoder child with it); after the last kill
one more daemon finishes the backlog. Then every file must be done exactly once, none
failed, with one notification each and its words in the subtitles. The daemon's death
charges nobody, so no file may gather crashes however often it was in the model.

Uses the real tiny.en weights (the `test` extra) and the shared test clips. Prints what
happened and a verdict; exit 1 if any file is not done once.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness import Daemon, NotificationSink, status, write_config  # noqa: E402
from tests.real_weights import converted, tiny_en_folder  # noqa: E402
from tests.speech import SPEECH  # noqa: E402

CLIPS = {  # file name -> (its first recording, a word tiny.en writes for it)
    "Cabbage.wav": ("fleurs/fleurs-en-003.ogg", "cabbage"),
    "Genetics.wav": ("fleurs/fleurs-en-007.ogg", "genetic"),
    "Belly.wav": ("librispeech/1089-134686-0001.flac", "belly"),
    "Waiting.wav": ("librispeech/1089-134691-0000.flac", "longer"),
    "Hour.wav": ("librispeech/1089-134691-0001.flac", "hour"),
    "Capitals.wav": ("fleurs/fleurs-en-001.ogg", "capital"),
    "Hospital.wav": ("fleurs/fleurs-en-005.ogg", "hospital"),
    "Emergency.wav": ("fleurs/fleurs-en-006.ogg", "emergency"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--files", type=int, default=len(CLIPS),
                        help=f"clips in the backlog (at most {len(CLIPS)})")
    parser.add_argument("--clips-per-file", type=int, default=3,
                        help="recordings one after another in each file (3: 20 to 40 s of speech, several "
                             "kills' worth of decoding alone, more in a batch)")
    parser.add_argument("--min-s", type=float, default=0.5, help="shortest run before a kill")
    parser.add_argument("--max-s", type=float, default=6.0, help="longest run before a kill")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    names = list(CLIPS)[: args.files]
    with tempfile.TemporaryDirectory(prefix="subwatch-kills-") as tmp:
        root = Path(tmp)
        inbox = root / "inbox"
        inbox.mkdir()
        model = converted(tiny_en_folder(), root / "models")
        sink = NotificationSink()
        config = write_config(root / "config.yaml", f"""
            state_dir: {root / "state"}
            log_level: info
            defaults: {{model: {model}, device: cpu, settle_seconds: 0.5, language: en, beam_size: 1}}
            notify: {{urls: ["{sink.url}"], burst: 1000}}
            folders: [{{path: {inbox}}}]
        """)
        for index, name in enumerate(names):
            _write(inbox / name, [list(CLIPS)[(index + k) % len(CLIPS)] for k in range(args.clips_per_file)])
        started = time.monotonic()
        moments: Counter[str] = Counter()
        for kill in range(args.kills):
            daemon = Daemon(config)
            time.sleep(rng.uniform(args.min_s, args.max_s))
            moments[_moment(daemon.log())] += 1
            daemon.kill()
            if kill % 10 == 9:
                print(f"{kill + 1} kills, {time.monotonic() - started:.0f} s: {_states(config)}", flush=True)
        daemon = Daemon(config)
        daemon.wait_log(" watching 1 folder(s)", 120)  # its signal handlers are in place: stop() is clean
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not _settled(config, names):
            time.sleep(0.5)
        code = daemon.stop()
        verdict = _verdict(config, names, sink, inbox)
        sink.close()
    print(f"\n{args.kills} kills (seed {args.seed}, {args.min_s}-{args.max_s} s apart) over {len(names)} "
          f"files, then one run to the end (exit {code}); {time.monotonic() - started:.0f} s in all")
    print("killed during: " + ", ".join(f"{k} {n}" for k, n in moments.most_common()))
    for line in verdict:
        print(line)
    return 0 if all(line.startswith("PASS") for line in verdict) else 1


def _write(path: Path, clips: list[str]) -> None:
    """Write the recordings of `clips` one after another, 1 s apart, as one WAV at `path`, moved in
    whole (as a download client does)."""
    from tests.speech import Clip, long_file

    part = path.with_name(f".{path.stem}.part.wav")
    long_file(part, [Clip(SPEECH / CLIPS[name][0], "en", "") for name in clips], repeat=1)
    part.rename(path)


def _moment(log: str) -> str:
    """What the daemon was doing when it was killed, from its log."""
    if " watching 1 folder(s)" not in log:
        return "start-up"
    if " started  " not in log:
        return "idle (nothing left to do)"
    if "loaded model" not in log:
        return "model loading"
    last = [line for line in log.splitlines() if "transcribing" in line or " done  " in line]
    return "transcribing" if last and "transcribing" in last[-1] else "between files"


def _states(config: Path) -> str:
    return ", ".join(f"{state} {n}" for state, n in Counter(j["state"] for j in status(config)).items())


def _settled(config: Path, names: list[str]) -> bool:
    jobs = {Path(j["path"]).name: j for j in status(config)}
    return all(name in jobs and jobs[name]["state"] in ("done", "failed") for name in names)


def _verdict(config: Path, names: list[str], sink: NotificationSink, inbox: Path) -> list[str]:
    jobs = {Path(j["path"]).name: j for j in status(config)}
    titles = Counter(m["title"] for m in sink.messages())
    lines = []
    done = [n for n in names if jobs.get(n, {}).get("state") == "done"]
    failed = [n for n in names if jobs.get(n, {}).get("state") == "failed"]
    everything = "PASS" if len(done) == len(names) else "FAIL"
    lines.append(f"{everything} every file done: {len(done)} of {len(names)}"
                 + (f"; failed: {failed}" if failed else ""))
    charged = {n: jobs[n]["crashes"] for n in names if n in jobs and jobs[n]["crashes"]}
    lines.append(f"{'PASS' if not charged else 'FAIL'} no file charged a crash: {charged or 'none'}")
    once = {n: titles[f"Subtitles ready: {Path(n).stem}"] for n in names}
    lines.append(f"{'PASS' if set(once.values()) == {1} else 'FAIL'} one notification each: {once}")
    wrong = [n for n in done if CLIPS[n][1] not in (inbox / f"{Path(n).stem}.en.srt").read_text().lower()]
    lines.append(f"{'PASS' if not wrong else 'FAIL'} each file's subtitles have its words: "
                 + (f"wrong {wrong}" if wrong else "all"))
    return lines


if __name__ == "__main__":
    sys.exit(main())
