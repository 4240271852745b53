"""preference.loss orpo and simpo on CPU: the tiny model learns the learnable pairs without any reference model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.trainer.helpers import job, losses, progress_events, run_trainer, trainer_env, write_job
from tests.integration.trainer.helpers import write_jsonl as write_rows
from tests.integration.trainer.test_dpo import preference_rows

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("preference", "method", "training"),
    [
        ({"loss": "orpo", "beta": 0.1}, {"type": "lora"}, {"learningRate": 0.005, "evalEverySteps": 6}),
        ({"loss": "simpo", "beta": 2.0, "simpoGamma": 0.5}, {"type": "lora"}, {"learningRate": 0.005}),
        ({"loss": "simpo", "beta": 2.0}, {"type": "full", "lora": None}, {"learningRate": 0.0005}),
    ],
    ids=["orpo-lora", "simpo-lora", "simpo-full"],
)
def test_reference_free_loss_falls_margin_grows_without_a_reference(
    preference: dict[str, Any], method: dict[str, Any], training: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = write_rows(tmp_path / "pairs.jsonl", preference_rows(32))
    output = tmp_path / "out"
    steps = {"maxSteps": 12, "checkpointEverySteps": 12, "loggingSteps": 1}
    spec = job(
        "ref-free",
        str(tiny_model_dir),
        str(data),
        str(output),
        stage="dpo",
        preference=preference,
        datasets=[{"source": str(data)}],
        data={"validationSplit": 0.25},
        method=method,
        training={**steps, **training},
    )
    run = run_trainer(write_job(tmp_path / "job.yaml", spec), trainer_env(tmp_path))
    assert run.code == 0, run.stderr[-4000:]
    # Logged only once the trainer is built and holds no reference model (full training included, where
    # TRL would otherwise load a copy of the base).
    assert f"reference model: none (preference.loss {preference['loss']} is reference-free" in run.stderr

    events = [e for e in progress_events(output / "progress.jsonl") if e.get("stage") == "training" and "loss" in e]
    loss = losses(events)
    margins = [e["rewardMargin"] for e in events]
    accuracies = [e["rewardAccuracy"] for e in events]
    assert all("rewardChosen" in e and "rewardRejected" in e for e in events)
    # Rewards are beta x the answers' mean log-prob: with no reference, the first margin is not 0 as in DPO.
    assert margins[0] != 0.0
    assert loss[-1] < loss[0], loss
    assert margins[-1] > margins[0], margins
    assert accuracies[-1] >= accuracies[0] and accuracies[-1] == 1.0, accuracies
    evals = [e for e in progress_events(output / "progress.jsonl") if "evalLoss" in e]
    if "evalEverySteps" in training:  # held-out pairs are scored by the same reference-free loss
        assert len(evals) >= 2 and evals[-1]["evalLoss"] < evals[0]["evalLoss"], evals
    assert (output / "manifest.json").is_file() and (output / "model" / "config.json").is_file()
