"""The systemd unit: systemd's own checker accepts it, and the settings that matter are there."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from tests import unit_sandbox
from tests.harness import REPO, NotificationSink, wait_for_state, wait_until, write_config
from tests.media_factory import make_media
from tests.said import assert_says

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "subwatch.service"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Given a unit file's text, return {section: {key: [values in order]}}.

    configparser keeps only the last of repeated keys, and systemd repeats
    keys such as DeviceAllow= on purpose, so this keeps them all.
    """
    sections: Unit = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def one(unit: Unit, key: str, section: str = "Service") -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key}= set {len(values)} times"
    return values[0]


def words(unit: Unit, key: str, section: str = "Service") -> set[str]:
    return {word for value in unit[section][key] for word in value.split()}


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify fails on an ExecStart= binary that does not exist, and subwatch is not
    # installed here: swap in an executable that is, keeping the arguments. verify
    # does not look up User=/Group= (a user that does not exist passes), so no user
    # is created. Unknown keys and bad values only print warnings with exit code 0,
    # so the output is checked too.
    true = shutil.which("true")
    assert true is not None
    text = UNIT.read_text(encoding="utf-8")
    text, count = re.subn(r"^ExecStart=/\S+", f"ExecStart={true}", text, flags=re.MULTILINE)
    assert count == 1
    copy = tmp_path / "subwatch.service"
    copy.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "subwatch.service" in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


def test_lifecycle(unit: Unit) -> None:
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert one(unit, "ExecStart") == "/usr/local/bin/subwatch run --config /etc/subwatch/config.yaml"
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Restart") == "on-failure"
    assert int(one(unit, "RestartSec")) > 0
    assert one(unit, "RestartPreventExitStatus") == "78"  # a bad config: restarting cannot help
    assert one(unit, "WatchdogSec") == "120"
    assert one(unit, "TimeoutStopSec") == "30"
    assert one(unit, "KillMode") == "mixed"
    assert one(unit, "WantedBy", section="Install") == "multi-user.target"


def test_identity_and_directories(unit: Unit) -> None:
    assert one(unit, "User") == one(unit, "Group") == "subwatch"
    assert words(unit, "SupplementaryGroups") == {"video", "render"}
    # The job queue (paths, transcripts) and the caches are subwatch's alone; sidecars set their own mode.
    assert one(unit, "UMask") == "0027"
    assert one(unit, "StateDirectory") == "subwatch"
    assert one(unit, "StateDirectoryMode") == "0750"
    assert one(unit, "CacheDirectory") == "subwatch"
    assert one(unit, "CacheDirectoryMode") == "0750"
    assert "XDG_CACHE_HOME=/var/cache/subwatch" in unit["Service"]["Environment"]


def test_hardening_keeps_media_and_gpu_reachable(unit: Unit) -> None:
    assert one(unit, "ProtectSystem") == "strict"
    assert "/srv/media" in words(unit, "ReadWritePaths")
    assert one(unit, "ProtectHome") == "read-only"
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "LockPersonality",
        "RestrictRealtime",
    ):
        assert one(unit, key) == "yes", key
    assert one(unit, "SystemCallArchitectures") == "native"
    assert words(unit, "RestrictAddressFamilies") == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one(unit, "DevicePolicy") == "closed"
    assert set(unit["Service"]["DeviceAllow"]) == {
        "char-nvidia-frontend rw",
        "char-nvidia-uvm rw",
        "char-nvidia-caps rw",
        "char-drm rw",
    }
    # Either would break the GPU: PyTorch/CUDA need W+X memory, PrivateDevices hides /dev/nvidia*.
    assert "MemoryDenyWriteExecute" not in unit["Service"]
    assert "PrivateDevices" not in unit["Service"]


def test_yields_to_the_media_server(unit: Unit) -> None:
    assert int(one(unit, "Nice")) > 0
    assert one(unit, "IOSchedulingClass") == "idle"


def test_parse_unit_keeps_repeated_keys() -> None:
    parsed = parse_unit("[Service]\n# comment\nDeviceAllow=a rw\nDeviceAllow=b\nExecStart=/x --y=z\n")
    assert parsed["Service"]["DeviceAllow"] == ["a rw", "b"]
    assert parsed["Service"]["ExecStart"] == ["/x --y=z"]


def test_sandbox_settings(unit: Unit) -> None:
    for key in ("PrivateMounts", "PrivateIPC", "RemoveIPC", "ProtectKernelTunables"):
        assert one(unit, key) == "yes", key
    assert one(unit, "ProtectProc") == "invisible"
    assert one(unit, "KeyringMode") == "private"
    assert unit["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert one(unit, "SystemCallErrorNumber") == "EPERM"
    assert one(unit, "CapabilityBoundingSet") == ""
    assert one(unit, "AmbientCapabilities") == ""
    assert one(unit, "LimitNOFILE") == "65536"
    # Left out on purpose (each has its reason in the unit): PyTorch reads /proc/cpuinfo; OpenMP
    # calls sched_setaffinity/mbind (@resources); LAN clients and notification servers are anywhere.
    for absent in ("ProcSubset", "PrivateUsers", "IPAddressDeny", "PrivateNetwork"):
        assert absent not in unit["Service"], absent


def test_systemd_analyze_security_exposure_is_low() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # --offline reads the unit file itself, so no booted systemd is needed.
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for subwatch\.service: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout
    assert float(found[1]) <= 2.5, result.stdout


# ---- the sandbox at work -------------------------------------------------------------------
# No systemd runs as PID 1 here, so the unit cannot be started; tests/unit_sandbox.py applies its
# UMask=, SystemCallFilter=, SystemCallErrorNumber= and RestrictAddressFamilies= as systemd does.


@pytest.fixture(scope="module")
def sandbox(unit: Unit, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Return the command prefix that runs a command inside the unit's sandbox."""
    if shutil.which("systemd-analyze") is None or not unit_sandbox.seccomp_available():
        pytest.skip("needs systemd-analyze and libseccomp")
    spec = unit_sandbox.write_spec(
        tmp_path_factory.mktemp("sandbox") / "spec.json", one(unit, "UMask"),
        unit["Service"]["SystemCallFilter"], one(unit, "SystemCallErrorNumber"),
        sorted(words(unit, "RestrictAddressFamilies")),
    )
    return [sys.executable, str(Path(unit_sandbox.__file__)), str(spec), "--"]


PROBE = """
import errno, os, resource, socket, sys
def outcome(call):
    try:
        call()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
print(oct(os.umask(0)))
print(outcome(lambda: os.chown(sys.argv[1], 1, 1)))
print(outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)))
print(outcome(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()))
print(outcome(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))))
print(outcome(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))))
"""


def test_the_sandbox_refuses_privileged_calls_and_keeps_what_libraries_need(
    sandbox: list[str], tmp_path: Path
) -> None:
    owned = tmp_path / "owned"
    owned.write_text("x")
    done = subprocess.run([*sandbox, sys.executable, "-c", PROBE, str(owned)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "0o27",  # UMask=0027
        "EPERM",  # chown is @privileged: refused, even for root
        "EAFNOSUPPORT",  # netlink is not in RestrictAddressFamilies=
        "ok",  # IPv6 is
        "ok",  # OpenMP's thread pinning (@resources)
        "ok",  # raising RLIMIT_NOFILE (glibc: prlimit64)
    ]


SIDECARS = """
import sys
from pathlib import Path
from daemon.subtitles import make_folders, write_sidecar
folder = Path(sys.argv[1]) / "Subs" / "en"
print([p.name for p in make_folders(folder)])
print(write_sidecar(folder / "Movie.en.srt", "1\\n00:00:01,000 --> 00:00:02,000\\nHi\\n", lambda _: False))
"""


def test_sidecars_stay_readable_for_the_media_server_under_the_units_umask(
    sandbox: list[str], tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    os.chmod(media, 0o2775)  # a media folder shared through its group, as `chmod g+s` sets it up
    done = subprocess.run([*sandbox, sys.executable, "-c", SIDECARS, str(media)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["['Subs', 'en']", "True"]
    sidecar = media / "Subs" / "en" / "Movie.en.srt"
    assert sidecar.read_text() == "1\n00:00:01,000 --> 00:00:02,000\nHi\n"
    # Not the umask's 0640 and 0750: others can read the sidecar and enter its folders, and the folders
    # keep the set-group-ID bit of the media folder, so the sidecar has the media folder's group.
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o644
    for folder in (media / "Subs", media / "Subs" / "en"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o2755, folder
    assert sidecar.stat().st_gid == media.stat().st_gid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_daemon_runs_inside_the_units_sandbox(
    sandbox: list[str], tmp_path: Path, tiny_en_dir: Path
) -> None:
    media, port, sink = tmp_path / "media", free_port(), NotificationSink()
    media.mkdir()
    config = write_config(tmp_path / "config.yaml", f"""
        state_dir: {tmp_path / "state"}
        notify: {{urls: ["{sink.url}"]}}
        http: {{listen: "127.0.0.1:{port}"}}
        folders:
          - {{path: {media}, model: {tiny_en_dir}, language: en, beam_size: 1, device: cpu,
              settle_seconds: 0.5, formats: [srt]}}
    """)
    with open(tmp_path / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([*sandbox, sys.executable, "-m", "daemon", "run", "--config", str(config)],
                                  cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: "watching 1 folder(s)" in (tmp_path / "daemon.log").read_text(), 120), \
            (tmp_path / "daemon.log").read_text()
        clip = make_media(tmp_path / "Clip.mkv", speech="Hello from the sandbox.", seconds=3)
        clip.rename(media / clip.name)
        job = wait_for_state(config, "Clip.mkv", {"done", "failed"}, timeout=300)
        assert job["state"] == "done", (job, (tmp_path / "daemon.log").read_text())
        sidecar = media / "Clip.en.srt"
        assert_says(sidecar, "hello from the sandbox")
        # The HTTP side and Apprise work through the filters too.
        jobs = httpx.get(f"http://127.0.0.1:{port}/api/jobs", timeout=30)
        assert jobs.status_code == 200 and [j["state"] for j in jobs.json()] == ["done"]
        assert "Clip" in json.dumps(sink.wait_for(lambda m: "Clip" in json.dumps(m)))
        # UMask=0027 keeps the queue (paths, transcripts) from other users, not the sidecar.
        assert stat.S_IMODE((tmp_path / "state" / "jobs.sqlite3").stat().st_mode) == 0o640
        assert stat.S_IMODE(sidecar.stat().st_mode) == 0o644
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, (tmp_path / "daemon.log").read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        sink.close()
