"""Shared fixtures: a random-weight Whisper checkpoint and media made with ffmpeg."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon
from tests.whisper_checkpoint import make_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small multilingual Whisper checkpoint with random weights, as a .pt file."""
    return make_checkpoint(tmp_path_factory.mktemp("models") / "tiny-random.pt", shape="test", seed=0)


SHARED_TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The shared folder of real recorded speech (../shared/testdata beside the checkout)."""
    if not SHARED_TESTDATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_TESTDATA}")
    return SHARED_TESTDATA


@pytest.fixture
def spawn() -> Iterator[Callable[..., Daemon]]:
    """Start real `subwatch run` processes; any still running when the test ends is killed."""
    started: list[Daemon] = []

    def start(config: Path, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(config, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.kill()
