"""FineTuneJob -> TrainingRuntime + TrainJob (Kubeflow Trainer v2.3), checked against the v2.3 CRDs
and, for the pod the Trainer controller builds from the pair, the core/v1 schema."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune import render
from kubetune.api.validation import load_job_file, parse_job
from kubetune.trainer.launch import rendezvous_env

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# Kubeflow Trainer v2.3.0 CRDs, vendored so the tests need nothing outside the repo.
FIXTURES = ROOT / "tests" / "fixtures"
ARGS = render.torchrun_args("ft")  # what the rendered pods run
SETTINGS = render.RenderSettings(trainer_image="registry.example/kubetune/trainer:1.2.3")


def _validator(crd_file: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((FIXTURES / crd_file).read_text())
    return jsonschema.Draft7Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@pytest.fixture(scope="module")
def trainjob_validator() -> jsonschema.Draft7Validator:
    return _validator("trainer.kubeflow.org_trainjobs.yaml")


@pytest.fixture(scope="module")
def runtime_validator() -> jsonschema.Draft7Validator:
    return _validator("trainer.kubeflow.org_trainingruntimes.yaml")


def _job(**spec_patch: Any) -> Any:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["spec"] = {**doc["spec"], **spec_patch}
    return parse_job(doc)


def _pair(job: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    children = render.build_children(job, SETTINGS, render.TRAINJOB)
    assert [o["kind"] for o in children][-2:] == ["TrainingRuntime", "TrainJob"]
    return children[-2], children[-1]


def _controller_pod(runtime: dict[str, Any], trainjob: dict[str, Any], node_rank: int = 0) -> dict[str, Any]:
    """The pod template the Trainer v2.3 controller makes from the pair (jobset builder + torch plugin):
    spec.trainer merged into the `node` container of the replicated job labelled as the trainer."""
    (rjob,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    template = copy.deepcopy(rjob["template"]["spec"]["template"])
    trainer = trainjob["spec"]["trainer"]
    (container,) = template["spec"]["containers"]
    assert container["name"] == "node"
    container.update(image=trainer["image"], command=trainer["command"], args=trainer["args"])
    if "resourcesPerNode" in trainer:
        container["resources"] = trainer["resourcesPerNode"]
    name = trainjob["metadata"]["name"]
    container["env"] = [
        *trainer["env"],
        {"name": "PET_NNODES", "value": str(trainer["numNodes"])},
        {"name": "PET_NPROC_PER_NODE", "value": str(trainer["numProcPerNode"])},
        {"name": "PET_NODE_RANK", "value": str(node_rank)},
        {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
        {"name": "PET_MASTER_PORT", "value": "29500"},
    ]
    return template


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_renders_a_valid_trainjob_and_runtime(
    path: Path, trainjob_validator: Any, runtime_validator: Any
) -> None:
    runtime, trainjob = _pair(load_job_file(str(path)))
    for obj, validator in ((runtime, runtime_validator), (trainjob, trainjob_validator)):
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(obj)]
        assert errors == []
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
    kubernetes_validate.validate(
        {**pod_template, "template": _controller_pod(runtime, trainjob)}, "1.33.0", strict=True
    )


def test_trainjob_carries_trainer_fields_and_runs_on_its_own_runtime() -> None:
    job = load_job_file(str(ROOT / "examples" / "qwen2.5-7b-lora-2x8gpu.yaml"))
    runtime, trainjob = _pair(job)
    name = render.child_names(job).job
    assert trainjob["metadata"]["name"] == runtime["metadata"]["name"] == name
    assert trainjob["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": name,
    }
    trainer = trainjob["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
    assert trainer["image"] == "registry.example/kubetune/trainer:1.2.3"
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    assert [trainer["command"], trainer["args"]] == [
        render.trainer_command(job, SETTINGS)[:3],
        render.trainer_command(job, SETTINGS)[3:],
    ]
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 2, "torch": {}}
    # The same pod as the PyTorchJob's, but for the container's name and what spec.trainer sets.
    ptj = render.build_pytorchjob(job, SETTINGS)
    ptj_pod = copy.deepcopy(ptj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"])
    ptj_pod["spec"]["containers"][0]["name"] = "node"
    ptj_pod["spec"]["restartPolicy"] = "OnFailure"
    pod = _controller_pod(runtime, trainjob)
    for key in ("image", "command", "args", "resources"):
        assert pod["spec"]["containers"][0][key] == ptj_pod["spec"]["containers"][0][key]
    ptj_pod["spec"]["containers"][0]["env"] = pod["spec"]["containers"][0]["env"]
    assert pod == ptj_pod


def test_pod_level_fields_and_queue_labels_reach_the_runtime_and_trainjob() -> None:
    job = _job(
        resources={
            "nodes": 1,
            "gpusPerNode": 1,
            "serviceAccountName": "irsa",
            "nodeSelector": {"pool": "a100"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {}},
            "priorityClassName": "high",
        },
        volumes=[{"name": "data", "claimName": "pvc-data", "mountPath": "/data"}],
        queueName="team-a",
        priority="urgent",
        suspend=True,
        runPolicy={"activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 600, "backoffLimit": 2},
    )
    runtime, trainjob = _pair(job)
    jobset = runtime["spec"]["template"]["spec"]
    pod = jobset["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "irsa" and pod["nodeSelector"] == {"pool": "a100"}
    assert pod["tolerations"][0]["key"] == "dedicated" and pod["affinity"] == {"nodeAffinity": {}}
    assert pod["priorityClassName"] == "high"
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "pvc-data", "readOnly": False}} in pod["volumes"]
    assert jobset["ttlSecondsAfterFinished"] == 600
    assert jobset["replicatedJobs"][0]["template"]["spec"]["backoffLimit"] == 2
    assert trainjob["spec"]["suspend"] is True and trainjob["spec"]["activeDeadlineSeconds"] == 3600
    # Held (suspend): Kueue's priority but not its queue until resumed (test_render.py says why).
    assert trainjob["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "urgent"
    job.spec.suspend = False
    runtime, trainjob = _pair(job)
    labels = trainjob["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a" and labels["kueue.x-k8s.io/priority-class"] == "urgent"
    assert "kueue.x-k8s.io/queue-name" not in runtime["metadata"]["labels"]


def test_credentials_only_through_secret_key_refs_and_no_reserved_torchrun_env() -> None:
    job = _job(
        storage={"credentialsSecret": {"name": "s3"}},
        env=[{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}],
    )
    _, trainjob = _pair(job)
    env = trainjob["spec"]["trainer"]["env"]
    secret_vars = {e["name"] for e in env if "valueFrom" in e}
    assert secret_vars == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"}
    assert all("value" not in e for e in env if e["name"] in secret_vars)
    # The Trainer webhook refuses a TrainJob whose trainer.env sets what the torch plugin injects.
    assert not {e["name"] for e in env} & {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR"}


@pytest.mark.parametrize("backend", render.BACKENDS)
def test_every_variable_the_command_references_is_set_in_the_pod(backend: str) -> None:
    """Kubernetes leaves an undefined $(VAR) as it is: torchrun would get the literal text."""
    job = load_job_file(str(ROOT / "examples" / "qwen2.5-7b-lora-2x8gpu.yaml"))
    children = render.build_children(job, SETTINGS, backend)
    if backend == render.TRAINJOB:
        container = _controller_pod(children[-2], children[-1])["spec"]["containers"][0]
    else:
        container = children[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "$(" not in " ".join(container["command"] + container["args"])


def test_rendezvous_address_reaches_torchrun_under_both_controllers() -> None:
    trainer_v2 = {"PET_MASTER_ADDR": "ft-node-0-0.ft", "PET_MASTER_PORT": "29500", "PET_NNODES": "2"}
    env = rendezvous_env({**trainer_v2, "PET_NODE_RANK": "1"}, ARGS)
    assert {k: env[k] for k in trainer_v2} == trainer_v2
    # The c10d rendezvous meets at the master pod, which alone hosts its store.
    assert env["PET_RDZV_ENDPOINT"] == "ft-node-0-0.ft:29500"
    assert env["PET_RDZV_CONF"].endswith(",is_host=false")
    training_operator_v1 = {"MASTER_ADDR": "ft-master-0", "MASTER_PORT": "23456", "PET_NNODES": "2"}
    env = rendezvous_env({**training_operator_v1, "PET_NODE_RANK": "0"}, ARGS)
    assert env["PET_MASTER_ADDR"] == "ft-master-0" and env["PET_MASTER_PORT"] == "23456"
    assert env["PET_RDZV_ENDPOINT"] == "ft-master-0:23456"
    assert env["PET_RDZV_CONF"].endswith(",is_host=true")
    # What the pod's environment sets explicitly stays.
    assert rendezvous_env({**trainer_v2, "PET_RDZV_ENDPOINT": "x:1"}, ARGS)["PET_RDZV_ENDPOINT"] == "x:1"
    # Both set: what the controller meant for torchrun wins.
    both = rendezvous_env({"MASTER_ADDR": "a", "PET_MASTER_ADDR": "b"}, ARGS)
    assert both["PET_MASTER_ADDR"] == "b"


def test_the_launcher_hands_kubeflow_v1s_master_port_to_torchrun(tmp_path: Path) -> None:
    """A real torchrun: the workers see the rendezvous port the pod was given, not torchrun's default."""
    script = tmp_path / "show.py"
    script.write_text(textwrap.dedent("import os\nprint('port', os.environ['MASTER_PORT'])\n"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "MASTER_"))}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", PET_NNODES="1", PET_NPROC_PER_NODE="1")
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.trainer.launch", "--node-rank=0", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "port 29517" in result.stdout


def test_render_cli_prints_either_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune.cli import main

    quickstart = str(ROOT / "examples" / "quickstart.yaml")
    assert main(["render", quickstart, "--backend", "trainjob", "--only", "job"]) == 0
    assert [o["kind"] for o in yaml.safe_load_all(capsys.readouterr().out)] == ["TrainingRuntime", "TrainJob"]
    assert main(["render", quickstart, "--only", "job"]) == 0
    assert [o["kind"] for o in yaml.safe_load_all(capsys.readouterr().out)] == ["PyTorchJob"]
    doc = yaml.safe_load(Path(quickstart).read_text())
    doc["spec"]["backend"] = "pytorchjob"
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(yaml.safe_dump(doc))
    assert main(["render", str(pinned), "--backend", "trainjob", "--only", "job"]) == 0
    out = capsys.readouterr()
    assert [o["kind"] for o in yaml.safe_load_all(out.out)] == ["PyTorchJob"]
    assert "spec.backend: pytorchjob" in out.err
