"""A DeepSpeed JSON of the user's own (LLaMA-Factory's ds_z2_config.json) and TensorBoard event files,
on 2 processes with torchrun (CPU, gloo): rank 0 alone writes the events, and they reach the output."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.trainer.helpers import job, trainer_env, write_job

pytestmark = pytest.mark.integration

# LLaMA-Factory 0.9.5's examples/deepspeed/ds_z2_config.json, as `kubetune import llamafactory` inlines it.
LF_Z2 = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "fp16": {
        "enabled": "auto",
        "loss_scale": 0,
        "loss_scale_window": 1000,
        "initial_scale_power": 16,
        "hysteresis": 2,
        "min_loss_scale": 1,
    },
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 2,
        "allgather_partitions": True,
        "allgather_bucket_size": 5e8,
        "overlap_comm": False,
        "reduce_scatter": True,
        "reduce_bucket_size": 5e8,
        "contiguous_gradients": True,
        "round_robin_gradients": True,
    },
}


def _scalar_tags(event_file: Path) -> set[str]:
    """The scalar tags in a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    data, tags, offset = event_file.read_bytes(), set(), 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = Event.FromString(data[offset + 12 : offset + 12 + length])
        tags.update(v.tag for v in event.summary.value if v.HasField("simple_value"))
        offset += 12 + length + 4
    return tags


def test_own_deepspeed_config_and_tensorboard(tiny_model_dir, chat_data, tmp_path, free_port):
    output = tmp_path / "out"
    training = {"maxSteps": 10, "deepspeed": {"config": LF_Z2}, "reportTo": ["tensorboard"], "loggingSteps": 2}
    manifest = job("own-ds", str(tiny_model_dir), str(chat_data), str(output), training=training)
    config = str(write_job(tmp_path / "job.yaml", manifest))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--nnodes", "1", "--nproc-per-node", "2", "--master-port", str(free_port)]
    run = subprocess.run(
        [*command, "-m", "kubetune.trainer", "--config", config],
        env=trainer_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    # ZeRO-2 from the user's JSON: each rank saved its optimizer partition.
    shards = {p.name for p in (output / "checkpoints" / "checkpoint-10" / "global_step10").iterdir()}
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= shards

    events = sorted((output / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1  # rank 0 alone
    assert "train/loss" in _scalar_tags(events[0])
    result = json.loads((output / "manifest.json").read_text())
    assert f"tensorboard/{events[0].name}" in {f["path"] for f in result["files"]}
    assert result["outputs"]["tensorboard"] == str(output / "tensorboard")
