"""qlora, DoRA and full each train (the loss falls) and export a model that reloads and generates."""

from __future__ import annotations

import json

import pytest

from tests.integration.trainer.helpers import job, losses, progress_events, run_trainer, trainer_env, write_job

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("method", "training"),
    [
        ({"type": "qlora", "quantization": {"bits": 4, "quantType": "nf4"}}, {"gradientCheckpointing": True}),
        ({"type": "full", "lora": None}, {"learningRate": 0.001}),
        # DoRA merges through peft; its shard size once reached transformers as text it cannot parse (KiB).
        ({"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "useDora": True}}, {}),
    ],
    ids=["qlora", "full", "dora"],
)
def test_method_trains_and_exports(method, training, tiny_model_dir, chat_data, tmp_path):
    from transformers import AutoModelForCausalLM

    output = tmp_path / "out"
    manifest = job(
        "m",
        str(tiny_model_dir),
        str(chat_data),
        str(output),
        method=method,
        training={"maxSteps": 20, **training},
        output={"uri": str(output), "shardSize": "200KiB"},
    )
    run = run_trainer(write_job(tmp_path / "job.yaml", manifest), trainer_env(tmp_path))
    assert run.code == 0, run.stderr[-4000:]
    train_losses = losses(progress_events(output / "progress.jsonl"))
    assert train_losses[-1] < train_losses[0]
    result = json.loads((output / "manifest.json").read_text())
    assert result["method"] == method["type"]
    assert result["metrics"]["exportSample"]  # the export generated text during its check
    # The merged model is saved unquantized in the base dtype, loadable without bitsandbytes.
    config = json.loads((output / "model" / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(str(output / "model"))
    assert next(model.parameters()).dtype.is_floating_point
    has_adapter = (output / "adapter" / "adapter_model.safetensors").exists()
    assert has_adapter == (method["type"] != "full")
    assert (output / "model" / "model.safetensors.index.json").exists()  # 200KiB shards: several
    # The node-local work dir is emptied once everything is in the output (caches outlive jobs).
    assert not list((tmp_path / "cache" / "runs").rglob("*.safetensors"))
