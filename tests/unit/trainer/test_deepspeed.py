from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import DeepSpeedSpec
from kubetune.trainer.deepspeed import write_config, zero_config


def test_none_means_no_deepspeed(tmp_path):
    assert zero_config(DeepSpeedSpec()) is None
    assert write_config(DeepSpeedSpec(), tmp_path) is None


@pytest.mark.parametrize(
    ("stage", "offload", "zero_stage", "offloaded"),
    [
        ("zero2", "none", 2, set()),
        ("zero2", "cpu", 2, {"offload_optimizer"}),
        ("zero3", "none", 3, set()),
        ("zero3", "cpu", 3, {"offload_optimizer", "offload_param"}),
    ],
)
def test_zero_stages(stage, offload, zero_stage, offloaded):
    config = zero_config(DeepSpeedSpec(stage=stage, offload=offload))
    assert config is not None
    zero = config["zero_optimization"]
    assert zero["stage"] == zero_stage
    assert {k for k in zero if k.startswith("offload_")} == offloaded
    for key in offloaded:
        assert zero[key]["device"] == "cpu"
    # The HF Trainer must fill batch sizes, clipping and precision from the spec's TrainingArguments.
    assert config["train_micro_batch_size_per_gpu"] == "auto"
    assert config["gradient_accumulation_steps"] == "auto"
    assert config["bf16"]["enabled"] == "auto"
    assert config["gradient_clipping"] == "auto"


def test_zero3_gathers_weights_for_export():
    config = zero_config(DeepSpeedSpec(stage="zero3"))
    assert config is not None
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_written_file_is_the_config(tmp_path):
    path = write_config(DeepSpeedSpec(stage="zero2"), tmp_path)
    assert path is not None
    assert json.loads(Path(path).read_text()) == zero_config(DeepSpeedSpec(stage="zero2"))


# LLaMA-Factory 0.9.5's examples/deepspeed/ds_z3_config.json (abridged), as users bring it.
LF_Z3 = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16},
    "bf16": {"enabled": "auto"},
    "zero_optimization": {"stage": 3, "overlap_comm": False, "stage3_gather_16bit_weights_on_model_save": True},
}


def test_own_config_is_written_as_is(tmp_path):
    path = write_config(DeepSpeedSpec(config=LF_Z3), tmp_path)
    assert path is not None
    assert json.loads(Path(path).read_text()) == LF_Z3
    assert DeepSpeedSpec(config=LF_Z3).zero_stage == 3
    assert DeepSpeedSpec(config={"zero_optimization": {"stage": 0}}).zero_stage == 0
    assert DeepSpeedSpec(stage="zero2").zero_stage == 2 and DeepSpeedSpec().zero_stage is None


def test_own_config_and_generated_settings_exclude_each_other():
    with pytest.raises(ValueError, match="not both"):
        DeepSpeedSpec(stage="zero3", config=LF_Z3)


def test_qlora_refuses_a_zero3_config_of_its_own():
    from kubetune.api.v1alpha1 import FineTuneJobSpec

    spec = {
        "model": {"source": "s3://models/base/"},
        "datasets": [{"source": "s3://data/x.jsonl"}],
        "output": {"uri": "s3://out/run/"},
        "method": {"type": "qlora"},
    }
    FineTuneJobSpec.model_validate({**spec, "training": {"deepspeed": {"config": {"zero_optimization": {"stage": 2}}}}})
    with pytest.raises(ValueError, match="qlora cannot shard a quantized base with deepspeed zero3"):
        FineTuneJobSpec.model_validate({**spec, "training": {"deepspeed": {"config": LF_Z3}}})
