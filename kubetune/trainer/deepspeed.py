"""DeepSpeed ZeRO configs generated from spec.training.deepspeed, or the user's own JSON from it.

Batch sizes, clipping and precision are `auto`: the HF Trainer fills them from the TrainingArguments,
so the spec stays the only place they are set. A user's config (`deepspeed.config`, e.g. one of
LLaMA-Factory's ds_z*_config.json) is used as written; its `auto` values are filled the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.api import v1alpha1 as api


def zero_config(ds: api.DeepSpeedSpec) -> dict[str, Any] | None:
    """The DeepSpeed JSON to run with, or None when DeepSpeed is off."""
    if ds.config is not None:
        return dict(ds.config)
    stage = str(ds.stage)
    if stage == "none":
        return None
    offload = str(ds.offload) == "cpu"
    zero: dict[str, Any] = {
        "stage": 2 if stage == "zero2" else 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == "zero2":
        zero["allgather_bucket_size"] = 5e8
    else:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # Export needs whole weights; gathering them at save time avoids a zero_to_fp32 step.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
        if offload:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def write_config(ds: api.DeepSpeedSpec, work_dir: Path) -> str | None:
    """Write the config next to the run (it is also uploaded with the manifest's resolved settings)."""
    config = zero_config(ds)
    if config is None:
        return None
    path = work_dir / "deepspeed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return str(path)
