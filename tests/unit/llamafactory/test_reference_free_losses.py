"""`kubetune import llamafactory` with pref_loss orpo / simpo: LLaMA-Factory's reference-free DPO losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.cli import main
from tests.unit.llamafactory.test_importer import MINIMAL, write

DPO = MINIMAL.replace("stage: sft", "stage: dpo")
RANKED = {"mine": {"file_name": "p.json", "ranking": True}}


@pytest.mark.parametrize(
    ("extra", "preference"),
    [
        ("pref_loss: orpo\npref_beta: 0.05\n", {"loss": "orpo", "beta": 0.05}),
        ("pref_loss: simpo\npref_beta: 2.5\nsimpo_gamma: 1.2\n", {"loss": "simpo", "beta": 2.5, "simpoGamma": 1.2}),
        ("pref_loss: simpo\n", {"loss": "simpo"}),
        # LLaMA-Factory reads simpo_gamma for simpo only; the job refuses it elsewhere, so it is left out.
        ("pref_loss: sigmoid\nsimpo_gamma: 1.2\n", {"loss": "sigmoid"}),
        ("simpo_gamma: 1.2\n", None),  # pref_loss defaults to sigmoid in both
    ],
)
def test_orpo_and_simpo_map_with_simpo_gamma_and_the_job_validates(
    extra: str, preference: dict[str, object] | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", "llamafactory", *write(tmp_path, DPO + extra, RANKED)]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["spec"].get("preference") == preference
    FineTuneJob.model_validate(doc)
