"""torchrun: 2 processes on one node with DeepSpeed ZeRO-3, and 2 "nodes" x 1 process (DDP) on 127.0.0.1.

Both on CPU with gloo. DeepSpeed's CPU shared-memory op is compiled by `make setup`; without it the
ZeRO run first JIT-compiles it into ~/.cache/torch_extensions (minutes on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.trainer.helpers import job, progress_events, trainer_env, write_job

pytestmark = pytest.mark.integration


def _torchrun(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("torchrun")), *args, "-m", "kubetune.trainer", "--config"]


def _check_output(output: Path, zero3: bool) -> None:
    result = json.loads((output / "manifest.json").read_text())
    assert result["metrics"]["steps"] == 30
    # Every rank's RNG state reached the checkpoint, from whichever node wrote it.
    last = output / "checkpoints" / "checkpoint-30"
    assert {"rng_state_0.pth", "rng_state_1.pth", "COMPLETE"} <= {p.name for p in last.iterdir()}
    if zero3:  # each rank's optimizer partition was saved and uploaded
        shards = {p.name for p in (last / "global_step30").iterdir()}
        assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= shards
    events = progress_events(output / "progress.jsonl")
    assert [e["stage"] for e in events].count("done") == 1  # rank 0 alone reports


@pytest.mark.parametrize("layout", ["1x2", "2x1"])
def test_torchrun(layout, tiny_model_dir, chat_data, tmp_path, free_port):
    output = tmp_path / "out"
    zero3 = layout == "1x2"
    training = {"deepspeed": {"stage": "zero3"}} if zero3 else {}
    manifest = job("dist", str(tiny_model_dir), str(chat_data), str(output), training=training)
    config = str(write_job(tmp_path / "job.yaml", manifest))
    port = str(free_port)
    if layout == "1x2":
        launches = [(_torchrun("--nnodes", "1", "--nproc-per-node", "2", "--master-port", port), tmp_path / "n0")]
    else:
        launches = [
            (
                _torchrun(
                    "--nnodes",
                    "2",
                    "--nproc-per-node",
                    "1",
                    "--node-rank",
                    str(rank),
                    "--master-addr",
                    "127.0.0.1",
                    "--master-port",
                    port,
                ),
                tmp_path / f"n{rank}",
            )
            for rank in (0, 1)
        ]
    procs = []
    for command, node_dir in launches:
        node_dir.mkdir()
        # Each "node" has its own local cache, as pods on different machines do.
        procs.append(
            subprocess.Popen(
                [*command, config],
                env=trainer_env(node_dir),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-4000:]
    _check_output(output, zero3)
