"""The systemd unit: systemd's own checker accepts it, and the settings that matter are there."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

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
    assert one(unit, "UMask") == "0002"
    assert one(unit, "StateDirectory") == "subwatch"
    assert one(unit, "CacheDirectory") == "subwatch"
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
    assert words(unit, "RestrictAddressFamilies") == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
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
