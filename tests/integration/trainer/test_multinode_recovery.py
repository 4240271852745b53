"""One rank of a 2-node run dies mid-training: both nodes' torchrun agents restart their workers,
which rejoin the c10d rendezvous and resume from the last complete checkpoint, in seconds, not
after the collective timeout (render/pod.py `torchrun_args`, launch.py `rendezvous_env`).

2 "nodes" are 2 launchers on 127.0.0.1, each with the pod's environment (PET_NNODES, PET_NODE_RANK,
MASTER_ADDR/PORT as Kubeflow v1 and `kubetune run --local` set them) and the rendered arguments.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from kubetune import render
from tests.integration.trainer.helpers import job, progress_events, trainer_env, write_job, write_jsonl

pytestmark = pytest.mark.integration


def _node(config: Path, node_dir: Path, rank: int, port: int) -> subprocess.Popen[str]:
    node_dir.mkdir()
    env = trainer_env(
        node_dir,  # each "node" has its own local cache, as pods on different machines do
        {
            "PET_NNODES": "2",
            "PET_NPROC_PER_NODE": "1",
            "PET_NODE_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "LOGLEVEL": "INFO",  # torchrun's agent says when it restarts its workers
        },
    )
    for key in [k for k in env if k.startswith("PET_RDZV") or k.startswith("TORCHELASTIC_")]:
        env.pop(key)
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune.trainer.launch", *render.torchrun_args("recover", str(config))],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _worker(launcher: subprocess.Popen[str]) -> psutil.Process:
    """The training process under this launcher's torchrun (launcher -> torchrun -> worker)."""
    (torchrun,) = psutil.Process(launcher.pid).children()
    workers = torchrun.children()
    assert len(workers) == 1, workers
    return workers[0]


def _complete(output: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in (output / "checkpoints").glob("checkpoint-*/COMPLETE"))


def test_a_killed_rank_resumes_from_the_last_checkpoint_on_both_nodes(tiny_model_dir, chat_data, tmp_path, free_port):
    output = tmp_path / "out"
    manifest = job(
        "recover",
        str(tiny_model_dir),
        str(chat_data),
        str(output),
        training={"maxSteps": 60, "checkpointEverySteps": 10, "loggingSteps": 5},
    )
    config = write_job(tmp_path / "job.yaml", manifest)
    nodes = [_node(config, tmp_path / f"n{rank}", rank, free_port) for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 180
        while not _complete(output):
            for node in nodes:
                assert node.poll() is None, node.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint completed"
            time.sleep(0.05)
        victim = _worker(nodes[1])
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        killed_at = time.monotonic()
        # No checkpoint completes without every rank, so this is the newest one the restart can find.
        complete = _complete(output)
        assert complete == [10], complete
        results = [node.communicate(timeout=180) for node in nodes]
        recovered_in = time.monotonic() - killed_at
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.communicate()
    for node, (_, stderr) in zip(nodes, results, strict=True):
        assert node.returncode == 0, stderr[-4000:]
    # Both agents restarted their workers in place: the killed one's, and the survivor's, whose
    # workers failed against the dead peer or were stopped for the new round.
    stderr = "".join(err for _, err in results)
    assert "will restart worker group" in results[1][1], results[1][1][-4000:]
    assert "will restart worker group" in results[0][1], results[0][1][-4000:]
    assert f"resuming from {output}/checkpoints/checkpoint-10" in stderr
    result = json.loads((output / "manifest.json").read_text())
    assert result["metrics"]["resumedFrom"] == "checkpoint-10" and result["metrics"]["steps"] == 60
    # The resumed history continues from the checkpoint, without repeating what it already reported.
    steps = [e["step"] for e in progress_events(output / "progress.jsonl") if "loss" in e and e["stage"] == "training"]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    assert [e["stage"] for e in progress_events(output / "progress.jsonl")].count("done") == 1
    # Minutes, not the collective timeout (training.ddpTimeoutSeconds).
    assert recovered_in < 150


def test_a_permanent_failure_is_not_retried_in_place(tiny_model_dir, tmp_path, free_port):
    """torchrun may restart workers (--max-restarts), but bad data would only fail again: the pod
    fails at once with the rank's own code."""
    data = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}] * 3)
    config = write_job(tmp_path / "job.yaml", job("bad", str(tiny_model_dir), str(data), str(tmp_path / "out")))
    env = trainer_env(tmp_path, {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "1", "MASTER_PORT": str(free_port)})
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune.trainer.launch", *render.torchrun_args("bad", str(config))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("kubetune: error: invalid training data") == 1, proc.stderr[-3000:]


def _rank(rank: int, port: int, results: Any, go_on: Any) -> None:
    """One of two gloo ranks: a late arrival is waited for around I/O, a missing one fails training fast."""
    import torch.distributed as dist

    from kubetune.trainer.collectives import CollectiveTimeouts

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    timeouts = CollectiveTimeouts(training_s=2)
    timeouts.training()
    if rank == 1:
        time.sleep(5)  # "downloading": longer than the training timeout
        dist.barrier()
        go_on.wait(120)  # then absent (hung) until rank 0 has given up on it
        return
    started = time.monotonic()
    with timeouts.waiting_for_io():
        dist.barrier()
    results.put(("waited", time.monotonic() - started))
    started = time.monotonic()
    try:
        dist.barrier()
        results.put(("completed", 0.0))
    except RuntimeError:
        results.put(("timed out", time.monotonic() - started))
    go_on.set()


def test_training_collectives_time_out_fast_but_waits_for_io_do_not(free_port):
    ctx = multiprocessing.get_context("spawn")
    results, go_on = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_rank, args=(rank, free_port, results, go_on)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    try:
        waited, late = results.get(timeout=120)
        outcome, after = results.get(timeout=120)
    finally:
        go_on.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert waited == "waited" and late > 2  # past the training timeout, yet the barrier held
    assert outcome == "timed out" and after < 30, (outcome, after)
