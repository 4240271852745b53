"""The README's first command: `kubetune run examples/quickstart.yaml --local`, for real.

A copy of examples/ (so the test never writes into the checkout), the tiny model built by
examples/build_tiny_model.py, one torchrun on CPU, and the same checks a newcomer makes by eye:
the loss falls, the outputs are where the summary says, and the answer changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune import storage
from kubetune.dashboard.jobs import LocalJobs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def _copy_examples(tmp_path: Path) -> Path:
    examples = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", examples)
    subprocess.run(
        [sys.executable, str(examples / "build_tiny_model.py"), str(tmp_path / "runs" / "tiny-model")],
        check=True,
        capture_output=True,
    )
    return examples


def _kubetune(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    kubetune = Path(sys.executable).with_name("kubetune")
    # Hermetic: the node cache (models, data, the run's work dir) lives in the test's tmp dir, never in
    # the user's ~/.cache/kubetune where an earlier run's files could change what this one does.
    hermetic = {"KUBETUNE_LOCAL_CACHE_DIR": str(cwd / "node-cache")}
    return subprocess.run(
        [str(kubetune), *args],
        env={**os.environ, **hermetic, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_quickstart_trains_exports_and_answers(tmp_path: Path) -> None:
    examples = _copy_examples(tmp_path)
    result = _kubetune("run", str(examples / "quickstart.yaml"), "--local", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "runs" / "quickstart"
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("model", "adapter", "lossPlot"):
        assert manifest["outputs"][key] in result.stdout
    assert (out / "model" / "config.json").exists() and (out / "adapter" / "adapter_config.json").exists()
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # The loss falls: the last logged training loss is well below the first.
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e.get("loss") is not None]
    assert losses[-1] < losses[0] - 1.0, losses
    # The answer changes: the fine-tuned model states the identity it was taught; the base does not.
    sample = result.stdout.split("Sample generation for", 1)[1]
    base_line = next(line for line in sample.splitlines() if "base model:" in line)
    after_line = next(line for line in sample.splitlines() if "after training:" in line)
    assert "Kubi" in after_line and "Kubi" not in base_line
    # The run's last line says how to talk to the model, and that answers with the trained identity too.
    assert result.stdout.rstrip().endswith(f"kubetune chat {manifest['outputs']['model']}")
    chat = _kubetune("chat", manifest["outputs"]["model"], "--prompt", "Who are you?", cwd=tmp_path)
    assert chat.returncode == 0 and "Kubi" in chat.stdout, chat.stderr[-3000:]
    # `kubetune dashboard --local runs/` finds the job, succeeded, with one loss point per logged loss.
    jobs = asyncio.run(LocalJobs(tmp_path / "runs").all())
    assert [(j.name, j.phase, len(j.losses)) for j in jobs] == [("quickstart", "Succeeded", len(losses))]
    assert (tmp_path / "node-cache" / "runs").is_dir()  # the run's work dir was under the test's cache


def test_quickstart_with_s3_output_on_a_local_endpoint(
    tmp_path: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = _copy_examples(tmp_path)
    doc = yaml.safe_load((examples / "quickstart.yaml").read_text())
    bucket = s3_server.make_bucket("quickstart-out")
    doc["spec"]["output"]["uri"] = f"{bucket}/runs/quickstart/"
    doc["spec"]["training"].pop("epochs")
    doc["spec"]["training"]["maxSteps"] = 6
    job = examples / "quickstart-s3.yaml"
    job.write_text(yaml.safe_dump(doc))
    result = _kubetune("run", str(job), "--local", env=s3_server.env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{bucket}/runs/quickstart/model" in result.stdout
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    manifest = json.loads(storage.read_bytes(f"{bucket}/runs/quickstart/manifest.json"))
    assert manifest["outputs"]["model"] == f"{bucket}/runs/quickstart/model"
    assert "after training:" in result.stdout
