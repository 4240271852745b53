"""stage dpo end to end on CPU: a tiny model learns to prefer answers that follow a fixed pattern."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.trainer.helpers import job, losses, progress_events, run_trainer, trainer_env, write_job
from tests.integration.trainer.helpers import write_jsonl as write_rows
from tests.integration.trainer.test_kto import tagged_rows

pytestmark = pytest.mark.integration


def preference_rows(n: int = 64) -> list[dict[str, Any]]:
    """Chosen answers state the sum in a fixed sentence; rejected ones refuse. The pattern is learnable."""
    rows = []
    for i in range(n):
        a, b = i % 9 + 1, (i * 7) % 11
        rows.append(
            {
                "conversations": [{"from": "human", "value": f"What is {a} plus {b}?"}],
                "chosen": {"from": "gpt", "value": f"{a} plus {b} equals {a + b}."},
                "rejected": {"from": "gpt", "value": "I would rather not say."},
            }
        )
    return rows


def test_dpo_lora_loss_falls_margin_grows_and_exports_like_sft(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "pairs.jsonl", preference_rows())
    output = tmp_path / "out"
    spec = job(
        "dpo",
        str(tiny_model_dir),
        str(data),
        str(output),
        stage="dpo",
        preference={"beta": 0.1},
        datasets=[{"source": str(data)}],
        training={"maxSteps": 20, "learningRate": 0.005, "checkpointEverySteps": 20, "loggingSteps": 1},
    )
    run = run_trainer(write_job(tmp_path / "job.yaml", spec), trainer_env(tmp_path))
    assert run.code == 0, run.stderr[-4000:]
    assert "detected format sharegpt" in run.stderr or "preference pairs, sharegpt" in run.stderr

    events = [e for e in progress_events(output / "progress.jsonl") if e.get("stage") == "training" and "loss" in e]
    loss = losses(events)
    margins = [e["rewardMargin"] for e in events]
    assert all("rewardAccuracy" in e and "rewardChosen" in e and "rewardRejected" in e for e in events)
    # The first step's loss is log 2 exactly when the reference is the starting policy (the adapter-disabled
    # base; the fresh adapter is zero); it then falls as the chosen pattern is preferred.
    assert abs(loss[0] - 0.6931) < 1e-3, loss
    assert loss[-1] < 0.5 * loss[0], loss
    assert margins[-1] > margins[0] + 1.0, margins
    assert events[-1]["rewardAccuracy"] == 1.0

    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["metrics"]["exportSample"]
    adapter = output / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    # One adapter: TRL's reference copy is not exported (the reference is the adapter-disabled base).
    assert not (adapter / "ref").exists()
    assert (output / "model" / "config.json").is_file()


# stage -> (its rows, its loss at step 0: policy = reference, so DPO's is log 2 and KTO's 0.5)
PREFERENCE_STAGES: dict[str, tuple[Callable[[int], list[dict[str, Any]]], float]] = {
    "dpo": (preference_rows, 0.6931),
    "kto": (tagged_rows, 0.5),
}


@pytest.mark.parametrize("stage", sorted(PREFERENCE_STAGES))
@pytest.mark.parametrize(
    ("method", "training"),
    [
        ({"type": "qlora", "quantization": {"bits": 4, "quantType": "nf4"}}, {"gradientCheckpointing": True}),
        ({"type": "full", "lora": None}, {"learningRate": 0.0005}),
    ],
    ids=["qlora", "full"],
)
def test_preference_stages_with_qlora_and_full_prefer_the_pattern_and_export(
    stage: str, method: dict[str, Any], training: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows, start_loss = PREFERENCE_STAGES[stage]
    data = write_rows(tmp_path / "rows.jsonl", rows(32))
    output = tmp_path / "out"
    steps = {"maxSteps": 8, "learningRate": 0.005, "checkpointEverySteps": 8, "loggingSteps": 1}
    spec = job(
        stage,
        str(tiny_model_dir),
        str(data),
        str(output),
        stage=stage,
        datasets=[{"source": str(data)}],
        method=method,
        training={**steps, **training},
    )
    run = run_trainer(write_job(tmp_path / "job.yaml", spec), trainer_env(tmp_path))
    assert run.code == 0, run.stderr[-4000:]
    events = [e for e in progress_events(output / "progress.jsonl") if e.get("stage") == "training" and "loss" in e]
    # Reference = the starting model (quantized base with the adapter off; a frozen copy for full).
    assert abs(events[0]["loss"] - start_loss) < 1e-3, events[0]
    assert events[-1]["loss"] < events[0]["loss"] and events[-1]["rewardMargin"] > events[0]["rewardMargin"]
    assert (output / "manifest.json").is_file() and (output / "model" / "config.json").is_file()


def test_sft_then_dpo_on_its_merged_model(tiny_model_dir: Path, chat_data: Path, tmp_path: Path) -> None:
    """The two-job pattern of docs/trainer.md: the DPO job's model.source is the SFT job's model/."""
    sft_out = tmp_path / "sft"
    sft = job("sft", str(tiny_model_dir), str(chat_data), str(sft_out), training={"maxSteps": 10})
    run = run_trainer(write_job(tmp_path / "sft.yaml", sft), trainer_env(tmp_path / "sft-env"))
    assert run.code == 0, run.stderr[-4000:]

    data = write_rows(tmp_path / "pairs.jsonl", preference_rows(32))
    dpo_out = tmp_path / "dpo"
    dpo = job(
        "dpo",
        str(sft_out / "model"),
        str(data),
        str(dpo_out),
        stage="dpo",
        datasets=[{"source": str(data)}],
        training={"maxSteps": 6, "learningRate": 0.005, "checkpointEverySteps": 6, "loggingSteps": 1},
    )
    run = run_trainer(write_job(tmp_path / "dpo.yaml", dpo), trainer_env(tmp_path / "dpo-env"))
    assert run.code == 0, run.stderr[-4000:]
    events = [e for e in progress_events(dpo_out / "progress.jsonl") if e.get("stage") == "training" and "loss" in e]
    # The reference is the SFT model the DPO job starts from: the first loss is log 2 again.
    assert abs(events[0]["loss"] - 0.6931) < 1e-3 and events[-1]["rewardMargin"] > events[0]["rewardMargin"]
    manifest = json.loads((dpo_out / "manifest.json").read_text())
    assert manifest["baseModel"]["source"] == str(sft_out / "model")
    assert (dpo_out / "model" / "config.json").is_file() and (dpo_out / "adapter" / "adapter_config.json").is_file()
