"""The wheel holds every package of the daemon: setuptools installs only the ones pyproject names."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_names_every_package_under_daemon() -> None:
    # daemon.media was missing for a while: an editable install hid it, a wheel would have lacked it.
    # (Read with a pattern, not tomllib: Python 3.10 has none.)
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"\[tool\.setuptools\]\s*packages\s*=\s*\[(.*?)\]", text, re.S)
    assert block is not None, "no [tool.setuptools] packages list"
    listed = sorted(re.findall(r'"([^"]+)"', block.group(1)))
    inits = (REPO / "daemon").rglob("__init__.py")
    assert listed == sorted(".".join(p.parent.relative_to(REPO).parts) for p in inits)
