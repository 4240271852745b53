"""`python -m kubetune.trainer.launch <torchrun args>`: each rank's own exit code reaches the container.

Plain torchrun turns every worker failure into exit 1, which Kubeflow's `restartPolicy: ExitCode`
treats as permanent and OnFailure retries blindly; the launcher maps bad data to 2 (permanent) and
preemption to 143 (retried).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.trainer.helpers import job, trainer_env, write_job, write_jsonl

pytestmark = pytest.mark.integration


def _launch(config: Path, env: dict[str, str], port: int) -> subprocess.Popen[str]:
    # The pod's command: the launcher, then exactly the torchrun arguments the renderer gives.
    args = [
        "--nnodes=1",
        "--nproc-per-node=1",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        "-m",
        "kubetune.trainer",
        "--config",
        str(config),
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune.trainer.launch", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_bad_data_fails_permanently_with_its_own_code(tiny_model_dir, tmp_path, free_port):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}] * 3)
    with data.open("a") as fh:
        fh.write("{not json\n")
    config = write_job(tmp_path / "job.yaml", job("bad", str(tiny_model_dir), str(data), str(tmp_path / "out")))
    proc = _launch(config, trainer_env(tmp_path), free_port)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 2, stderr[-3000:]
    assert "kubetune: error: invalid training data" in stderr
    assert "torchrun exited 1; container exit code 2" in stderr


def test_sigterm_mid_training_exits_143(tiny_model_dir, chat_data, tmp_path, free_port):
    output = tmp_path / "out"
    manifest = job(
        "preempt",
        str(tiny_model_dir),
        str(chat_data),
        str(output),
        training={"maxSteps": 2000, "checkpointEverySteps": 10, "loggingSteps": 10},
    )
    proc = _launch(write_job(tmp_path / "job.yaml", manifest), trainer_env(tmp_path), free_port)
    marker = output / "checkpoints" / "checkpoint-10" / "COMPLETE"
    deadline = time.monotonic() + 150
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends the container's first process
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM at step" in stderr  # the worker got it and saved, not killed
    assert not (output / "manifest.json").exists()
