"""What a stranger on the LAN can do to a real `subwatch run`, bounded: the key follows the listener
actually bound (a reload cannot switch it off), the Host header must name this server, browser
POSTs from other sites are refused, and Bazarr's open /asr reads only the file it was sent."""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path

import httpx
import pytest

from tests.harness import Daemon, wait_for_state, wait_until, write_config
from tests.speech import jfk

KEY = "hostile-" + "0123456789abcdef" * 2
OTHER_KEY = "second-" + "fedcba9876543210" * 2
# The private recording: real speech tiny.en writes reliably (espeak's voice it does not), whose
# words appear in no error answer: a leak shows as these words in an answer.
MARKERS = ("ask not", "country", "fellow americans")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(root: Path, model: Path, library: Path, http: str) -> Path:
    return write_config(root / "config.yaml", f"""
        state_dir: {root / "state"}
        defaults: {{model: {model}, device: cpu, beam_size: 1, language: en, formats: [srt]}}
        folders:
          - path: {library}
        {http}
    """)


def _reload(daemon: Daemon, config: Path, text: str, logged: str) -> None:
    """Write `text` as the config, SIGHUP the daemon, wait until it logs `logged` once more."""
    before = daemon.log().count(logged)
    config.write_text(text)
    daemon.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: daemon.log().count(logged) > before, 30), daemon.log()


def test_a_reload_never_switches_the_key_off_on_a_socket_others_reach(
    tmp_path: Path, tiny_en_checkpoint: Path
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    port = _free_port()
    config = _config(tmp_path, tiny_en_checkpoint, library,
                     f'http: {{listen: "0.0.0.0:{port}", api_key: "{KEY}"}}')
    first = config.read_text()
    daemon = Daemon(config)
    url = f"http://127.0.0.1:{port}"
    try:
        daemon.wait_log("watching 1 folder(s)", timeout=120)
        assert httpx.get(f"{url}/api/jobs", timeout=10).status_code == 401

        # The http section removed: the socket on every address stays, so the reload is refused.
        _reload(daemon, config, first.split("http:")[0], "reload rejected")
        assert httpx.post(f"{url}/api/rescan", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/jobs", headers={"X-Api-Key": KEY}, timeout=10).status_code == 200

        # Listening on loopback from now on, without a key: applies only at a restart, so refused too.
        _reload(daemon, config, first.replace(f'"0.0.0.0:{port}", api_key: "{KEY}"', f'"127.0.0.1:{port}"'),
                "required while subwatch listens on 0.0.0.0")
        assert daemon.log().count("reload rejected") == 2
        assert httpx.get(f"{url}/api/jobs", timeout=10).status_code == 401

        # A new key applies at once; the old one stops working.
        _reload(daemon, config, first.replace(KEY, OTHER_KEY), "reloaded")
        assert httpx.get(f"{url}/api/jobs", headers={"X-Api-Key": KEY}, timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/jobs", headers={"X-Api-Key": OTHER_KEY}, timeout=10).status_code == 200
        assert KEY not in daemon.log() and OTHER_KEY not in daemon.log()
    finally:
        assert daemon.stop() == 0, daemon.log()


@pytest.fixture(scope="module")
def open_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_en_checkpoint: Path):  # noqa: ANN201
    """A daemon set up as the README sets it up for Bazarr: loopback, no key."""
    root = tmp_path_factory.mktemp("open")
    library = root / "library"
    library.mkdir()
    port = _free_port()
    config = _config(root, tiny_en_checkpoint, library, f'http: {{listen: "127.0.0.1:{port}"}}')
    daemon = Daemon(config)
    daemon.wait_log("watching 1 folder(s)", timeout=120)
    yield daemon, f"http://127.0.0.1:{port}", port, root, library
    assert daemon.stop() == 0, daemon.log()


def test_a_rebinding_name_or_another_sites_page_gets_nothing(open_daemon) -> None:  # noqa: ANN001
    daemon, url, port, _, _ = open_daemon
    evil = {"Host": f"rebound.evil.example:{port}"}
    assert httpx.get(f"{url}/api/jobs", headers=evil, timeout=10).status_code == 400
    assert httpx.post(f"{url}/api/rescan", headers=evil, timeout=10).status_code == 400
    sent = httpx.post(f"{url}/asr", headers=evil, files={"audio_file": b"\0\0"}, timeout=10)
    assert sent.status_code == 400
    assert httpx.get(f"{url}/api/jobs", timeout=10).status_code == 200  # loopback, no key: as configured
    cross = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert httpx.post(f"{url}/api/rescan", headers=cross, timeout=10).status_code == 403
    answer = httpx.post(f"{url}/asr", params={"encode": "false"}, headers=cross,
                        files={"audio_file": b"\0\0" * 16000}, timeout=10)
    assert answer.status_code == 403
    assert daemon.process.poll() is None


def _secret_recording(folder: Path) -> Path:
    secret = folder / "secret.flac"
    shutil.copy(jfk().path, secret)
    return secret


def _playlists(secret: Path) -> dict[str, bytes]:
    """Files that make a lax ffmpeg read `secret`: each kind that can name another file."""
    return {
        "hls.m3u8": (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nfile:{secret}\n"
                     "#EXT-X-ENDLIST\n").encode(),
        "live.m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{secret}\n".encode(),
        "list.ffconcat": f"ffconcat version 1.0\nfile '{secret}'\n".encode(),
        "concat.txt": f"file '{secret}'\n".encode(),
        "stream.sdp": b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
                      b"m=audio 5004 RTP/AVP 96\na=rtpmap:96 L16/16000/1\n",
        "manifest.mpd": (
            '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
            'mediaPresentationDuration="PT5S" minBufferTime="PT1S" '
            'profiles="urn:mpeg:dash:profile:full:2011">'
            '<Period><AdaptationSet mimeType="audio/flac"><Representation id="a" bandwidth="1000">'
            f'<BaseURL>file:{secret}</BaseURL></Representation></AdaptationSet></Period></MPD>').encode(),
    }


def test_asr_reads_only_the_file_it_was_sent(open_daemon, tmp_path: Path, testdata: Path) -> None:  # noqa: ANN001
    daemon, url, _, _, _ = open_daemon
    private = tmp_path / "private"
    private.mkdir()
    secret = _secret_recording(private)
    for name, body in _playlists(secret).items():
        answer = httpx.post(f"{url}/asr", params={"output": "txt", "encode": "true"},
                            files={"audio_file": (name, body)}, timeout=120)
        assert answer.status_code == 400, (name, answer.status_code, answer.text)
        assert "ffmpeg cannot read the audio" in answer.json()["detail"], name
        assert not any(marker in answer.text.lower() for marker in MARKERS), (name, answer.text)
    # The secret file itself, sent as an upload, is transcribed: the words are there to be found.
    with open(secret, "rb") as f:
        sent = httpx.post(f"{url}/asr", params={"output": "txt", "language": "en"},
                          files={"audio_file": ("secret.flac", f)}, timeout=300)
    assert sent.status_code == 200, sent.text
    assert sum(marker in sent.text.lower() for marker in MARKERS) >= 2, sent.text
    assert daemon.process.poll() is None


def test_a_playlist_dropped_into_a_watched_folder_fails_naming_its_format(
    open_daemon, tmp_path: Path, testdata: Path  # noqa: ANN001
) -> None:
    daemon, _, _, root, library = open_daemon
    secret = _secret_recording(tmp_path)
    hidden = _playlists(secret)
    (library / "Episode.mkv").write_bytes(hidden["hls.m3u8"])
    (library / "Other.flac").write_bytes(hidden["list.ffconcat"])
    for name, kind in (("Episode.mkv", "HLS"), ("Other.flac", "concat")):
        job = wait_for_state(root / "config.yaml", name, {"failed", "done", "skipped"}, timeout=120)
        assert job["state"] == "failed", job
        assert kind.lower() in job["error"].lower(), job
        assert not list(library.glob(f"{Path(name).stem}*.srt"))
    assert daemon.process.poll() is None
