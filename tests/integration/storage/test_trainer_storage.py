"""The trainer's storage failures end the way their cause calls for, against a real S3 server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.devtools.s3server import S3Server
from kubetune.storage import RETRY_ENV
from tests.integration.trainer.helpers import chat_rows, job, run_trainer, trainer_env, write_job, write_jsonl

pytestmark = pytest.mark.integration


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", chat_rows())


@pytest.mark.parametrize("where", ["output-bucket", "dataset-bucket", "output-under-a-file", "output-unwritable"])
def test_unusable_storage_fails_before_training_and_for_good(
    where: str, s3_server: Any, tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    s3_server.make_bucket("kt-preflight")
    output, data_src, says = "s3://kt-preflight/run/", str(data), ""
    if where == "output-bucket":  # SeaweedFS would create it on the first write
        output, says = "s3://kt-no-such-output/run/", "spec.output.uri: cannot write to s3://kt-no-such-output/run/"
    elif where == "dataset-bucket":
        data_src, says = "s3://kt-no-such-data/chat.jsonl", "spec.datasets[0].source: cannot "
    elif where == "output-under-a-file":
        (tmp_path / "a-file").write_text("x")
        output, says = str(tmp_path / "a-file" / "run"), "a part of the path is a regular file"
    else:  # sysfs refuses new entries even to root
        output, says = "/sys/kubetune-output", "spec.output.uri: cannot write to /sys/kubetune-output"
    manifest = job("preflight", str(tiny_model_dir), data_src, output, storage={"addressingStyle": "path"})
    env = trainer_env(tmp_path, {**s3_server.env(), RETRY_ENV: "600"})  # a retry would time the test out
    run = run_trainer(write_job(tmp_path / "job.yaml", manifest), env, timeout=120)
    assert run.code == 3, run.stderr[-3000:]  # permanent: the launcher passes it on, no restart
    lines = run.error_lines()
    assert len(lines) == 1 and says in lines[0], run.stderr[-3000:]
    assert "fix the rows" not in lines[0]
    if not output.startswith("s3://"):
        assert "endpoint" not in lines[0]  # advice for the backend that failed
    assert "fetching the base model" not in run.stderr  # refused before any work
    names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "kt-no-such-output" not in names


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


def test_an_8s_s3_outage_mid_training_does_not_fail_the_job(
    own_s3: S3Server, tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    own_s3.make_bucket("kt-outage")
    manifest = job("outage", str(tiny_model_dir), str(data), "s3://kt-outage/run/", storage={"addressingStyle": "path"})
    env = trainer_env(tmp_path, {**own_s3.env(), RETRY_ENV: "120"})
    config = write_job(tmp_path / "job.yaml", manifest)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune.cli", "train", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = own_s3.client()
        deadline = time.monotonic() + 180
        while not client.list_objects_v2(Bucket="kt-outage", Prefix="run/checkpoints/").get("KeyCount"):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was uploaded"
            time.sleep(0.1)
        own_s3.stop(keep_data=True)  # mid-training: more checkpoints, the export and the manifest follow
        time.sleep(8)
        own_s3.start()
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    assert "retrying in" in stderr  # it did meet the outage
    assert own_s3.client().head_object(Bucket="kt-outage", Key="run/manifest.json")["ContentLength"] > 0
