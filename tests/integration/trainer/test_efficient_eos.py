"""The efficient_eos templates (glm4, gemma2) end to end: training with its eos labels, the merge, and the export
check (the exported template renders the first training conversation as training did, without the eos
appended as a label); the exported eos stays the tokenizer's own and generation_config stops on it."""

from __future__ import annotations

import json

import pytest

from tests.integration.trainer.helpers import job, run_trainer, trainer_env, write_job

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["glm4", "gemma2"])
def test_an_efficient_eos_template_trains_exports_and_passes_the_export_check(
    name, tiny_model_dir, chat_data, tmp_path
):
    from transformers import AutoTokenizer

    output = tmp_path / "out"
    spec = job(
        name,
        str(tiny_model_dir),
        str(chat_data),
        str(output),
        template=name,
        training={"maxSteps": 2, "checkpointEverySteps": 2},
    )
    run = run_trainer(write_job(tmp_path / "job.yaml", spec), trainer_env(tmp_path))
    assert run.code == 0, run.stderr[-3000:]
    tokenizer = AutoTokenizer.from_pretrained(output / "model")
    assert tokenizer.eos_token == AutoTokenizer.from_pretrained(tiny_model_dir).eos_token, "eos is not replaced"
    assert tokenizer.chat_template.startswith("{%- set bos")
    generation = json.loads((output / "model" / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos])
