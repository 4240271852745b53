"""manifest.json names only files that are there, and records which spec's result it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.validation import parse_job
from kubetune.storage import StorageOptions, upload_file
from kubetune.trainer.failures import ExitCode, TrainerError
from kubetune.trainer.manifest import build_manifest, finished_manifest, result_identity, write_manifest

JOB = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "m"},
    "spec": {
        "model": {"source": "/models/base"},
        "datasets": [{"source": "/data/train.jsonl"}],
        "resources": {"gpusPerNode": 0},
        "output": {"uri": "/out"},
    },
}


def _manifest(root: Path) -> dict:
    files = []
    for name in ("model/model.safetensors", "adapter/adapter_model.safetensors"):
        local = root.parent / "export" / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(name.encode())
        files.append(upload_file(local, f"{root}/{name}"))
    spec = parse_job(JOB).spec
    return build_manifest(
        root=str(root),
        files=files,
        job={"name": "m"},
        identity=result_identity(spec),
        base_model={},
        method="lora",
        template="chatml",
        outputs={},
        metrics={},
        data_report=None,
    )


def test_a_manifest_is_not_written_when_an_uploaded_file_vanished(tmp_path: Path) -> None:
    root = tmp_path / "out"
    manifest = _manifest(root)
    (root / "model" / "model.safetensors").unlink()  # what a second writer of the output does
    with pytest.raises(TrainerError) as err:
        write_manifest(f"{root}/manifest.json", manifest, StorageOptions())
    assert err.value.code is ExitCode.STORAGE
    assert "1 uploaded file(s) vanished" in str(err.value) and "model/model.safetensors" in str(err.value)
    assert not (root / "manifest.json").exists()


def test_a_finished_manifest_is_recognised_by_its_spec_alone(tmp_path: Path) -> None:
    root = tmp_path / "out"
    manifest = _manifest(root)
    write_manifest(f"{root}/manifest.json", manifest, StorageOptions())
    spec = parse_job(JOB).spec
    assert finished_manifest(f"{root}/manifest.json", spec, StorageOptions()) == manifest
    # Another training setting, or another export setting, is another result.
    other = json.loads(json.dumps(JOB))
    other["spec"]["training"] = {"learningRate": 0.5}
    assert finished_manifest(f"{root}/manifest.json", parse_job(other).spec, StorageOptions()) is None
    unmerged = json.loads(json.dumps(JOB))
    unmerged["spec"]["output"]["merge"] = False
    assert finished_manifest(f"{root}/manifest.json", parse_job(unmerged).spec, StorageOptions()) is None
    # Where the output lives is not part of the result.
    moved = json.loads(json.dumps(JOB))
    moved["spec"]["output"]["uri"] = "/elsewhere"
    assert result_identity(parse_job(moved).spec) == result_identity(spec)
    assert finished_manifest(f"{tmp_path}/none/manifest.json", spec, StorageOptions()) is None
