"""Shared fixtures: real Whisper weights (base, tiny.en), a random-weight checkpoint, the shared speech."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.harness import Daemon
from tests.postgres import PostgresServer
from tests.postgres import bin_dir as postgres_bin_dir
from tests.real_weights import assemble_base, converted, tiny_en_folder
from tests.speech import TESTDATA
from tests.whisper_checkpoint import make_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small multilingual Whisper checkpoint with random weights, as a .pt file.

    Only for what no real model here can show (a shape, a failure); its words are nonsense.
    """
    return make_checkpoint(tmp_path_factory.mktemp("models") / "tiny-random.pt", shape="test", seed=0)


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real multilingual Whisper base as a faster-whisper (CTranslate2) folder, assembled once.

    The registry packages split model.bin in two; joined, it is the folder a
    faster-whisper user has on disk.
    """
    return assemble_base(tmp_path_factory.mktemp("faster-whisper-base"))


@pytest.fixture(scope="session")
def tiny_en_dir() -> Path:
    """Real English-only Whisper tiny.en as a faster-whisper folder (read in place, never written)."""
    return tiny_en_folder()


@pytest.fixture(scope="session")
def base_checkpoint(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Whisper base as an OpenAI-format .pt, converted once by subwatch's own loader."""
    return converted(base_model_dir, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_en_checkpoint(tiny_en_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Whisper tiny.en as an OpenAI-format .pt, converted once; and into the CTranslate2 folder a
    daemon on the CPU decodes with, which harness.Daemon hands each daemon it starts."""
    from daemon.transcribe import engines, models

    models_dir = tmp_path_factory.mktemp("models")
    checkpoint = converted(tiny_en_dir, models_dir)
    harness.CONVERTED.append(engines.ct2_folder(models.resolve(str(checkpoint), models_dir), models_dir))
    return checkpoint


@pytest.fixture(scope="session")
def base_model(base_checkpoint: Path):  # noqa: ANN201 - whisper.model.Whisper, imported lazily
    """The real base model loaded on the CPU, shared by the tests that transcribe in-process."""
    from daemon.transcribe.models import load_checkpoint

    return load_checkpoint(base_checkpoint, "cpu")


@pytest.fixture(scope="session")
def base_ct2(base_model, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201 - Ct2Whisper
    """The real base model converted to CTranslate2 float32: the CPU engine `subwatch transcribe` uses."""
    import torch

    from daemon.engine.ct2 import Ct2Whisper, write_ct2

    folder = write_ct2(base_model, tmp_path_factory.mktemp("ct2") / "base")
    return Ct2Whisper(folder, threads=torch.get_num_threads(), compute_type="float32")


@pytest.fixture(scope="session")
def tiny_en_model(tiny_en_checkpoint: Path):  # noqa: ANN201
    from daemon.transcribe.models import load_checkpoint

    return load_checkpoint(tiny_en_checkpoint, "cpu")


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The real recorded speech in the repository (tests/data; its README says where each clip is from)."""
    return TESTDATA


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL server for this test process (see tests/postgres.py); skipped, saying how to
    install it, where Debian's postgresql package is missing."""
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a queue lives, for the tests that run on both backends: a SQLite file, or a fresh
    database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "state" / "jobs.sqlite"
    return request.getfixturevalue("postgres_server").fresh_url()


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """An empty media folder."""
    folder = tmp_path / "media"
    folder.mkdir()
    return folder


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
