"""Which jobs of a shared queue a host claims (daemon.serving): only its folders' that it can serve
now. A real PostgreSQL queue and this machine's real devices: it has no CUDA GPU, so a folder that
asks for `cuda` is left to other hosts, as is a folder whose model folder is missing here or whose
share is not mounted; the share's jobs are taken again when it is back."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from daemon.config import load_config
from daemon.queue import JobQueue
from daemon.serving import Serving
from tests.harness import write_config
from tests.postgres import PostgresServer

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without a CUDA GPU")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "subwatch" and r.levelno >= logging.INFO]


def _film(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(name.encode() * 10)
    return path


def test_a_host_claims_only_the_folders_it_can_serve_now(postgres_server: PostgresServer, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    url = postgres_server.fresh_url()
    gpu, cpu, share, lost_model = (tmp_path / name for name in ("gpu", "cpu", "share", "lost-model"))
    for folder in (gpu, cpu, share, lost_model):
        folder.mkdir()
    config = load_config(write_config(tmp_path / "subwatch.yaml", f"""
        state_dir: {tmp_path / "state"}
        database: "{url}"
        defaults: {{device: cpu}}
        folders:
          - {{path: {gpu}, device: cuda}}
          - {{path: {cpu}}}
          - {{path: {share}, device: [cuda:1, cpu]}}
          - {{path: {lost_model}, model: {tmp_path / "models" / "gone"}}}
    """))
    jobs = JobQueue(url, node="cpu-box")
    queued = {folder.name: jobs.enqueue(_film(folder, f"{folder.name}.mkv"), folder).job.id
              for folder in (gpu, cpu, share, lost_model)}
    serving = Serving(jobs.serve)
    with caplog.at_level(logging.INFO, logger="subwatch"):
        serving.update(config)
    said = _warnings(caplog)
    assert any(m.startswith(f"{gpu}: this node leaves its files to the other nodes: device 'cuda' was "
                            "configured but PyTorch sees no CUDA GPU") for m in said), said
    assert any(m.startswith(f"{lost_model}: this node leaves its files to the other nodes: model folder "
                            f"{tmp_path / 'models' / 'gone'} does not exist") for m in said), said
    assert serving.folders == [cpu, share]  # a folder with one usable device of several is served

    shutil.rmtree(share)  # the share is unmounted
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="subwatch"):
        serving.refresh(force=True)
    assert _warnings(caplog) == [f"{share} is not there (a share not mounted?): this node leaves its files "
                                 "to the other nodes until it is back"]
    assert jobs.claim().id == queued["cpu"]
    assert jobs.claim() is None  # the gpu, share and lost-model jobs wait for another host

    share.mkdir()  # mounted again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="subwatch"):
        serving.refresh(force=True)
        serving.refresh(force=True)  # no change: no second line
    assert _warnings(caplog) == [f"{share} is back: this node takes its files again"]
    assert jobs.claim().id == queued["share"]
    assert jobs.claim() is None
    other = JobQueue(url, node="gpu-box")  # a host that can: it takes what this one left
    assert {other.claim().id, other.claim().id} == {queued["gpu"], queued["lost-model"]}
    other.close()
    jobs.close()


def test_a_sqlite_queue_is_served_whole_as_before(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    config = load_config(write_config(tmp_path / "subwatch.yaml", f"""
        state_dir: {tmp_path / "state"}
        folders: [{{path: {media}, device: cuda}}]
    """))
    jobs = JobQueue(config.queue_at)
    job = jobs.enqueue(_film(media, "a.mkv"), media).job
    serving = Serving(jobs.serve)
    serving.update(config)
    assert serving.folders is None
    assert jobs.claim().id == job.id  # one daemon: its worker reports the missing device itself
    jobs.close()
