"""Bazarr's Whisper provider against a real `subwatch run`: its exact requests, answered by the daemon's
own workers and model (real multilingual base weights, the CPU engine by default)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import requests
import srt

from tests.harness import Daemon, write_config
from tests.speech import fleurs, word_error_rate
from tests.test_bazarr import bazarr_asr, bazarr_pcm

API_KEY = "bz-" + "0123456789abcdef" * 2


def test_bazarr_gets_srt_and_a_language_from_the_running_daemon(
    tmp_path: Path, base_checkpoint: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    library = tmp_path / "library"
    library.mkdir()
    config = write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        defaults: {{model: {base_checkpoint}, device: cpu}}
        folders:
          - path: {library}
        http:
          listen: 127.0.0.1:{port}
          api_key: "{API_KEY}"
    """)
    daemon = Daemon(config)
    try:
        daemon.wait_log("watching 1 folder(s)", timeout=120)
        url = f"http://127.0.0.1:{port}"
        spanish, german = fleurs("es")[0], fleurs("de")[0]

        answer = bazarr_asr(url, bazarr_pcm(spanish.path), "es")  # no key: Bazarr cannot send one
        detected = requests.post(f"{url}/detect-language", params={"encode": "false"},
                                 files={"audio_file": bazarr_pcm(german.path)}, timeout=(5, 600))

        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        cues = list(srt.parse(answer.text))
        said = " ".join(c.content.replace("\n", " ") for c in cues)
        assert word_error_rate([spanish.text], [said], "es") < 0.3, said
        seconds = len(bazarr_pcm(spanish.path)) / 32000
        assert all(0 <= c.start.total_seconds() < c.end.total_seconds() <= seconds + 0.1 for c in cues)
        assert detected.status_code == 200
        assert detected.json()["language_code"] == "de" and detected.json()["detected_language"] == "german"
        assert detected.json()["confidence"] > 0.5
        # the rest of the HTTP side still asks for the key
        assert httpx.post(f"{url}/hooks/sonarr", json={"eventType": "Test"}, timeout=10).status_code == 401
        assert API_KEY not in daemon.log()
    finally:
        assert daemon.stop() == 0, daemon.log()
