"""spec.model.reference: an explicit reference model for dpo and kto, loaded by the trainer's model loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.devtools.tiny import build_tiny_model
from tests.integration.trainer.helpers import job, progress_events, run_trainer, trainer_env, write_job
from tests.integration.trainer.helpers import write_jsonl as write_rows
from tests.integration.trainer.test_dpo import preference_rows

pytestmark = pytest.mark.integration


def test_dpo_scores_against_the_explicit_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Same architecture and tokenizer as the base, other weights: the reference log-probabilities differ.
    reference = build_tiny_model(tmp_path / "reference", chat_template="chatml", seed=7)
    data = write_rows(tmp_path / "pairs.jsonl", preference_rows(16))
    output = tmp_path / "out"
    spec = job(
        "dpo-ref",
        str(tiny_model_dir),
        str(data),
        str(output),
        stage="dpo",
        model={"source": str(tiny_model_dir), "reference": str(reference)},
        datasets=[{"source": str(data)}],
        training={"maxSteps": 2, "learningRate": 0.005, "checkpointEverySteps": 2, "loggingSteps": 1},
    )
    run = run_trainer(write_job(tmp_path / "job.yaml", spec), trainer_env(tmp_path))
    assert run.code == 0, run.stderr[-4000:]
    first = next(e for e in progress_events(output / "progress.jsonl") if e.get("stage") == "training" and "loss" in e)
    # With the base as its own reference, step 0 has margin 0 and loss log 2 (test_dpo.py); another
    # reference gives the policy a non-zero margin from the first step.
    assert abs(first["loss"] - 0.6931) > 1e-3 and abs(first["rewardMargin"]) > 1e-3, first
    # TRL makes no "ref" adapter copy when a reference is given: the export holds one adapter.
    assert json.loads((output / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert not (output / "adapter" / "ref").exists()
