"""stage kto end to end on CPU: a tiny model learns that answers following a fixed pattern are desirable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.trainer.helpers import job, losses, progress_events, run_trainer, trainer_env, write_job
from tests.integration.trainer.helpers import write_jsonl as write_rows

pytestmark = pytest.mark.integration


def tagged_rows(n: int = 64) -> list[dict[str, Any]]:
    """Every other row: the sum in a fixed sentence (desirable) or a refusal (undesirable), in LF's KTO layout."""
    rows = []
    for i in range(n):
        a, b = i % 9 + 1, (i * 7) % 11
        desirable = i % 2 == 0
        answer = f"{a} plus {b} equals {a + b}." if desirable else "I would rather not say."
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": answer},
                ],
                "label": desirable,
            }
        )
    return rows


def test_kto_lora_loss_falls_margin_grows_and_exports_like_sft(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "kto.jsonl", tagged_rows())
    output = tmp_path / "out"
    spec = job(
        "kto",
        str(tiny_model_dir),
        str(data),
        str(output),
        stage="kto",
        preference={"beta": 0.1, "desirableWeight": 1.0, "undesirableWeight": 1.0},
        datasets=[{"source": str(data)}],
        training={"maxSteps": 20, "learningRate": 0.005, "checkpointEverySteps": 20, "loggingSteps": 1},
    )
    run = run_trainer(write_job(tmp_path / "job.yaml", spec), trainer_env(tmp_path))
    assert run.code == 0, run.stderr[-4000:]
    assert "KTO answers tagged by 'label', openai" in run.stderr

    events = [e for e in progress_events(output / "progress.jsonl") if e.get("stage") == "training" and "loss" in e]
    loss = losses(events)
    margins = [e["rewardMargin"] for e in events]
    # At step 0 the policy is its reference (the adapter-disabled base; the fresh adapter is zero): every
    # reward and the KL estimate are 0, so the loss is exactly 1 - sigmoid(0) = 0.5 for both tags.
    assert abs(loss[0] - 0.5) < 1e-3 and abs(margins[0]) < 1e-4, (loss, margins)
    assert loss[-1] < 0.6 * loss[0], loss
    assert margins[-1] > margins[0] + 0.5, margins

    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["metrics"]["exportSample"]
    adapter = output / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert not (adapter / "ref").exists()
    assert (output / "model" / "config.json").is_file()


# qlora and full: tests/integration/trainer/test_dpo.py (one test for both preference stages).
