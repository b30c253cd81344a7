"""Issue #19, the open port holds: bench/abuse.py's short seeded run against a real `subwatch run`.

The script starts its own daemon (real tiny.en weights, a watched folder, the listener on 127.0.0.1
without a key, as for Bazarr) and attacks it: playlists naming a secret recording (HLS uploaded and
HLS saved as x.mkv in the watched folder), two 20-minute uploads at once to /asr and to
/detect-language, 50 idle and 50 slow sockets held while the daemon must still serve, five real
requests at once, two live HLS playlists; then a real speech file must still get its subtitles.
Every line it prints must say PASS, and it must exit 0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (hard, name) of every line the quick run prints, in order.
LINES = [
    (True, "control: a plain Bazarr request gets its words"),
    (True, "control: the secret's own words are heard when sent as itself"),
    (True, "a. no playlist made the daemon read the secret"),
    (False, "b1. answers are 200 or 503 with Retry-After"),
    (False, "b1. peak RSS at most 1536 MiB above idle"),
    (False, "b1. settled RSS within 200 MiB of idle"),
    (False, "b2. answers are 200 or 503 with Retry-After"),
    (False, "b2. peak RSS at most 1536 MiB above idle"),
    (False, "b2. settled RSS within 200 MiB of idle"),
    (False, "d. /healthz answers 200 ok while sockets are held"),
    (False, "d. a real /asr request gets its words while sockets are held"),
    (False, "d. a dropped file gets subtitles while sockets are held"),
    (False, "e. 5 concurrent requests all answered with their words"),
    (False, "c. live playlists refused (4xx) instead of waited on"),
    (True, "the daemon stayed alive through every attack"),
    (True, "final: the daemon is alive"),
    (True, "final: a dropped speech file gets the right subtitles"),
    (False, "final: /healthz answers 200 ok"),
    (False, "final: settled RSS within 200 MiB of idle"),
    (False, "final: descriptors back to idle (+16)"),
    (False, "final: no child process left behind"),
    (False, "the daemon stops on SIGTERM with status 0"),
]


def test_the_quick_abuse_run_passes_every_line(testdata: Path) -> None:
    done = subprocess.run([sys.executable, "bench/abuse.py", "--quick", "--seed", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    verdicts = [line for line in done.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    expected = [f"{'(hard) ' if hard else ''}{name}: " for hard, name in LINES]
    assert [line.split(" ", 1)[1][:len(want)] for line, want in zip(verdicts, expected, strict=False)] \
        == expected, output
    assert len(verdicts) == len(LINES), output
    failed = [line for line in verdicts if not line.startswith("PASS ")]
    assert not failed, "\n".join(failed) + "\n\n" + output
    assert "| idle |" in done.stdout and "| after all: a file dropped |" in done.stdout, output
    assert done.returncode == 0, output
