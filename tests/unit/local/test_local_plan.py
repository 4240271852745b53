"""`kubetune run --local` starts the pods' command with the pods' environment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from kubetune import local, render
from kubetune.api.validation import load_job_file

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def test_relative_paths_resolve_against_the_job_file(tmp_path: Path) -> None:
    p = local.plan(QUICKSTART, work_root=tmp_path, cuda_devices=0)
    spec = p.job.spec
    assert spec.model.source == str((ROOT / "runs" / "tiny-model").resolve())
    assert spec.datasets[0].source == str(ROOT / "examples" / "data" / "identity.json")
    assert spec.output.uri == str((ROOT / "runs" / "quickstart").resolve())


def test_the_config_written_for_the_run_is_what_the_trainer_loads(tmp_path: Path) -> None:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["output"]["uri"] = str(tmp_path / "out")  # claim() locks the output: not in the checkout
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    p = local.plan(path, work_root=tmp_path, cuda_devices=0)
    with local.claim(p):  # written once the run holds its work dir and output
        again = load_job_file(str(p.config_path))
    assert again.spec == p.job.spec


def test_hub_ids_and_s3_uris_are_left_alone(tmp_path: Path) -> None:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["model"]["source"] = "Qwen/Qwen2.5-0.5B-Instruct"
    doc["spec"]["output"]["uri"] = "s3://bucket/out/"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    p = local.plan(path, work_root=tmp_path, cuda_devices=0)
    assert p.job.spec.model.source == "Qwen/Qwen2.5-0.5B-Instruct"
    assert p.job.spec.output.uri == "s3://bucket/out/"


def test_env_is_the_pod_env_plus_what_kubeflow_injects(tmp_path: Path) -> None:
    p = local.plan(QUICKSTART, work_root=tmp_path, nodes=2, procs_per_node=2, cuda_devices=0)
    env = p.env(1, base={"PATH": "/usr/bin", "AWS_ACCESS_KEY_ID": "from-user"})
    pod_env = {e["name"]: e["value"] for e in render.trainer_env(p.job) if "value" in e}
    for name in ("NCCL_DEBUG", "NCCL_IB_DISABLE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "KUBETUNE_JOB_NAME"):
        assert env[name] == pod_env[name]
    assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "2" and env["PET_NODE_RANK"] == "1"
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == str(p.master_port)
    assert env["KUBETUNE_CONFIG"] == str(p.config_path)
    assert "KUBETUNE_STATUS_REPORTING" not in env  # no API server to report to
    assert "HF_HOME" not in env  # the pod's cache path means nothing here
    assert env["AWS_ACCESS_KEY_ID"] == "from-user"


def test_command_is_the_pod_command_with_variables_expanded(tmp_path: Path) -> None:
    p = local.plan(QUICKSTART, work_root=tmp_path, cuda_devices=0)
    env = p.env(0, base={})
    cmd = p.command(env)
    assert cmd[:3] == [sys.executable, "-m", "kubetune.trainer.launch"]
    # The rendezvous address travels in MASTER_ADDR/MASTER_PORT (the launcher hands it to torchrun).
    assert cmd[3:] == [
        "--rdzv-backend=c10d",
        f"--rdzv-id={render.child_names(p.job).job}",
        "--max-restarts=0",  # one node: no peer to lose, a failure ends the run
        "--shutdown-timeout=270",
        "-m",
        "kubetune.trainer",
        "--config",
        str(p.config_path),
    ]


def test_gpu_job_without_gpus_asks_for_an_explicit_process_count(tmp_path: Path) -> None:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["resources"] = {"nodes": 2, "gpusPerNode": 8}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="--nproc-per-node"):
        local.plan(path, work_root=tmp_path, cuda_devices=0)
    p = local.plan(path, work_root=tmp_path, procs_per_node=1, cuda_devices=0)
    assert (p.nodes, p.procs_per_node) == (2, 1)


def test_each_local_node_gets_its_own_gpus(tmp_path: Path) -> None:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["resources"] = {"nodes": 2, "gpusPerNode": 2}
    doc["spec"]["training"]["precision"] = "bf16"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    p = local.plan(path, work_root=tmp_path, cuda_devices=4)
    assert p.env(0, base={})["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert p.env(1, base={})["CUDA_VISIBLE_DEVICES"] == "2,3"
    # What the user made visible is respected: node 1 gets the user's 3rd and 4th devices.
    assert p.env(1, base={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})["CUDA_VISIBLE_DEVICES"] == "6,7"
    # An override of the process count decides the GPUs per node, not the spec.
    one_each = local.plan(path, work_root=tmp_path, nodes=2, procs_per_node=1, cuda_devices=4)
    assert [one_each.env(r, base={})["CUDA_VISIBLE_DEVICES"] for r in (0, 1)] == ["0", "1"]
    with pytest.raises(ValueError, match="need 6 GPUs"):
        local.plan(path, work_root=tmp_path, nodes=2, procs_per_node=3, cuda_devices=4)
    assert "CUDA_VISIBLE_DEVICES" not in local.plan(QUICKSTART, work_root=tmp_path, cuda_devices=0).env(0, base={})


def test_a_relative_path_without_dot_prefers_a_file_beside_the_job(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["datasets"] = [{"source": "data/train.jsonl"}, {"source": "org/hub-dataset"}]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    p = local.plan(path, work_root=tmp_path, cuda_devices=0)
    assert p.job.spec.datasets[0].source == str(tmp_path / "data" / "train.jsonl")
    assert p.job.spec.datasets[1].source == "org/hub-dataset"


def test_a_hub_id_that_also_names_a_local_directory_is_refused_with_the_fix(tmp_path: Path) -> None:
    """`models/tiny` is a hub id in a pod; a laptop must not quietly read it as the directory beside the job."""
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["model"]["source"] = "models/tiny"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"write './models/tiny'"):
        local.plan(path, work_root=tmp_path, cuda_devices=0)
