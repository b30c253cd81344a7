"""A real ffprobe behind a spy: put first on PATH, it records each file it is asked about, and holds
any file named "held.*" until the test lets it go. Then it runs the real ffprobe."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

HOLD_LIMIT_S = 60  # the spy lets go by itself after this long, so a broken test cannot hang


class FfprobeSpy:
    """The spy's files: `calls` (one asked-about path a line), `held` (exists once a probe is held),
    `released` (create it to let held probes go on)."""

    def __init__(self, folder: Path) -> None:
        real = shutil.which("ffprobe")
        if real is None:
            pytest.skip("ffprobe is not installed")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.calls, self.held, self.released = folder / "calls", folder / "held", folder / "released"
        script = folder / "ffprobe"
        script.write_text(f"""#!/bin/sh
for last; do :; done
printf '%s\\n' "$last" >> '{self.calls}'
case "$(basename "$last")" in
  held.*) touch '{self.held}'; n=0
          while [ ! -e '{self.released}' ] && [ $n -lt {HOLD_LIMIT_S * 10} ]; do
            sleep 0.1; n=$((n+1))
          done ;;
esac
exec '{real}' "$@"
""")
        script.chmod(0o755)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FfprobeSpy:
        """Put the spy first on PATH for this process and the processes it starts."""
        monkeypatch.setenv("PATH", f"{self.folder}{os.pathsep}{os.environ['PATH']}")
        return self

    def asked(self) -> list[str]:
        """Return the names of the files ffprobe was asked about, in order."""
        if not self.calls.exists():
            return []
        return [Path(line).name for line in self.calls.read_text().splitlines()]

    def release(self) -> None:
        self.released.touch()
