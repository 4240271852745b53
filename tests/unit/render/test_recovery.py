"""Multi-node failure recovery as rendered: torchrun's elastic rendezvous and in-place restarts on
both backends, the launcher's rendezvous settings, and the JobSet's whole-job restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune import render
from kubetune.api.validation import load_job_file
from kubetune.render.pod import WORKER_RESTARTS
from kubetune.render.trainjob import JOBSET_RESTARTS
from kubetune.trainer.launch import max_restarts, rendezvous_env

ROOT = Path(__file__).resolve().parents[3]
ARGS = render.torchrun_args("ft")  # what the rendered pods run
SETTINGS = render.RenderSettings()


def _training_args(children: list[dict], backend: str) -> list[str]:
    job = children[-1]
    if backend == render.TRAINJOB:
        return list(job["spec"]["trainer"]["args"])
    replicas = job["spec"]["pytorchReplicaSpecs"]
    args = {role: replicas[role]["template"]["spec"]["containers"][0]["args"] for role in replicas}
    assert all(a == args["Master"] for a in args.values())  # every node runs the same rendezvous
    return list(args["Master"])


@pytest.mark.parametrize("backend", [render.PYTORCHJOB, render.TRAINJOB])
def test_torchrun_joins_an_elastic_rendezvous_and_restarts_workers_in_place(backend: str) -> None:
    job = load_job_file(str(ROOT / "examples" / "qwen2.5-7b-lora-2x8gpu.yaml"))
    args = _training_args(render.build_children(job, SETTINGS, backend), backend)
    torchrun = args[: args.index("-m")]
    assert "--rdzv-backend=c10d" in torchrun
    assert f"--rdzv-id={render.child_names(job).job}" in torchrun
    assert f"--max-restarts={WORKER_RESTARTS}" in torchrun and WORKER_RESTARTS > 0
    # Fixed size: a round forms only with every node, never with the survivors alone.
    assert not any(a.startswith(("--nnodes", "--rdzv-endpoint", "--standalone")) for a in torchrun)


@pytest.mark.parametrize("backend", [render.PYTORCHJOB, render.TRAINJOB])
def test_one_node_has_no_peer_to_lose_so_its_workers_are_not_restarted_in_place(backend: str) -> None:
    # A failure on one node ends torchrun at once with its own report; the pod restart retries.
    job = load_job_file(str(ROOT / "examples" / "llama3-8b-qlora-1gpu.yaml"))
    assert job.spec.resources.nodes == 1
    args = _training_args(render.build_children(job, SETTINGS, backend), backend)
    assert "--max-restarts=0" in args[: args.index("-m")]


@pytest.mark.parametrize(
    ("args", "restarts"),
    [
        (ARGS, WORKER_RESTARTS),
        (["--max_restarts", "2", "-m", "kubetune.trainer"], 2),
        (["--nnodes", "2", "-m", "kubetune.trainer", "--max-restarts=9"], 0),  # the module's own argument
        (["--standalone", "train.py"], 0),
    ],
)
def test_the_launcher_reads_torchruns_restart_budget(args: list[str], restarts: int) -> None:
    assert max_restarts(args) == restarts


def test_trainjob_runtime_restarts_the_whole_jobset_a_bounded_number_of_times() -> None:
    job = load_job_file(str(ROOT / "examples" / "qwen2.5-7b-lora-2x8gpu.yaml"))
    runtime = render.build_children(job, SETTINGS, render.TRAINJOB)[-2]
    policy = runtime["spec"]["template"]["spec"]["failurePolicy"]
    assert policy == {"maxRestarts": JOBSET_RESTARTS, "restartStrategy": "Recreate"}


def test_a_single_node_pod_without_an_address_rendezvouses_on_itself() -> None:
    env = rendezvous_env({"PET_NNODES": "1"}, ARGS)
    assert env["PET_RDZV_ENDPOINT"] == "127.0.0.1:29500"
    assert env["PET_RDZV_CONF"].endswith(",is_host=true")


def test_a_late_master_does_not_fail_the_workers_waiting_for_it() -> None:
    conf = dict(kv.split("=") for kv in rendezvous_env({"PET_NODE_RANK": "1"}, ARGS)["PET_RDZV_CONF"].split(","))
    # torchrun's defaults: 60 s to reach the store, 600 s to form the round; an image pull takes longer.
    assert int(conf["read_timeout"]) >= 1800 and int(conf["join_timeout"]) >= 1800


def test_a_static_rendezvous_is_left_to_torchrun() -> None:
    """A hand-written torchrun command (static rendezvous) meets where its own flags say."""
    static = ["--nnodes=1", "--master-port=29517", "-m", "kubetune.trainer", "--rdzv-backend=c10d"]
    env = rendezvous_env({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517"}, static)
    assert "PET_RDZV_ENDPOINT" not in env and "PET_RDZV_CONF" not in env
    assert rendezvous_env({}, ["--rdzv_backend", "c10d", "-m", "x"])["PET_RDZV_ENDPOINT"] == "127.0.0.1:29500"
