"""The new-job form: YAML that `kubetune validate` accepts, problems beside their fields."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer

from kubetune.api.validation import load_jobs
from kubetune.dashboard import newjob
from kubetune.dashboard.jobs import LocalJobs
from kubetune.dashboard.server import build_app

DEFAULTS = {f.path: f.default for f in newjob.FIELDS}


def test_defaults_make_a_valid_job() -> None:
    text, problems = newjob.check(DEFAULTS)
    assert problems == []
    (job,) = load_jobs(text)
    assert job.spec.method.lora.rank == 16 and job.spec.training.learning_rate == 0.0001
    assert job.spec.datasets[0].source == "s3://my-data/train.jsonl"
    assert job.spec.storage is None or job.spec.storage.credentials_secret is None  # empty field: left out


def test_rank_zero_is_named_at_the_rank_field() -> None:
    _, problems = newjob.check({**DEFAULTS, "spec.method.lora.rank": "0"})
    assert [(p["path"], newjob.field_of(p["path"])) for p in problems] == [
        ("spec.method.lora.rank", "spec.method.lora.rank")
    ]
    assert problems[0]["message"].startswith("must be > 0")


def test_text_in_a_number_field_and_problems_below_a_field() -> None:
    _, problems = newjob.check(
        {**DEFAULTS, "spec.training.epochs": "lots", "spec.storage.credentialsSecret.name": "A_B"}
    )
    assert {p["path"] for p in problems} == {"spec.training.epochs", "spec.storage.credentialsSecret.name"}
    assert newjob.field_of("spec.datasets[0].columns.prompt") == ""  # no such field: shown above the buttons
    assert newjob.field_of("spec.datasets[0].format") == "spec.datasets[0].format"


def test_full_fine_tuning_leaves_lora_out() -> None:
    text, problems = newjob.check({**DEFAULTS, "spec.method.type": "full", "spec.method.lora.rank": "0"})
    assert problems == []
    assert yaml.safe_load(text)["spec"]["method"] == {"type": "full"}


def _post(path: str, form: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    async def main() -> tuple[int, str, dict[str, str]]:
        async with TestClient(TestServer(build_app(LocalJobs(Path("."))))) as client:
            response = await client.post(path, data=form)
            return response.status, await response.text(), dict(response.headers)

    return asyncio.run(main())


def test_download_gives_yaml_or_the_form_with_problems_beside_fields() -> None:
    status, text, headers = _post("/new.yaml", {**DEFAULTS, "metadata.name": "qwen-sft"})
    assert status == 200 and headers["Content-Disposition"] == 'attachment; filename="qwen-sft.yaml"'
    assert load_jobs(text)[0].name == "qwen-sft"

    status, html, _ = _post("/new.yaml", {**DEFAULTS, "spec.method.lora.rank": "0", "spec.model.source": "<b>"})
    assert status == 422
    error = re.search(r'<span class="error" data-for="spec.method.lora.rank">([^<]*)</span>', html)
    assert error and "spec.method.lora.rank: must be &gt; 0" in error.group(1)
    assert "<b>" not in html and 'value="&lt;b&gt;"' in html


def test_live_check_returns_problems_with_their_field() -> None:
    import json

    status, body, _ = _post("/new/check", {**DEFAULTS, "spec.method.lora.rank": "0"})
    result: dict[str, Any] = json.loads(body)
    assert status == 200 and "rank: 0" in result["yaml"]
    assert [(p["field"], p["path"]) for p in result["problems"]] == [("spec.method.lora.rank",) * 2]
