"""The dashboard's pages through aiohttp's test client, over a directory of local runs."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from kubetune.dashboard import pages
from kubetune.dashboard.charts import line_chart, sparkline
from kubetune.dashboard.jobs import JobView, LocalJobs
from kubetune.dashboard.server import build_app

STEPS = 7
EVIL = "<script>alert(1)</script>"


def _write_run(root: Path, name: str, *, finished: bool, steps: int = STEPS) -> Path:
    out = root / "runs" / name
    out.mkdir(parents=True)
    events = [{"stage": "preparing", "message": "reading data", "updatedAt": "2026-01-01T00:00:00Z"}]
    events += [
        {"stage": "training", "step": s, "totalSteps": 10, "percent": 10.0 * s, "loss": 3.0 / s, "learningRate": 1e-3}
        for s in range(1, steps + 1)
    ]
    (out / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"stage": "trai')
    report = {
        "summary": {"rowsRead": 12, "invalid": 1, "truncated": 0, "totalTokens": 345},
        "invalid": {"count": 1, "rows": [{"file": "data.jsonl", "row": 4, "reason": f"no output {EVIL}"}]},
    }
    (out / "data_report.json").write_text(json.dumps(report))
    if finished:
        manifest = {
            "job": {"name": name},
            "createdAt": "2026-01-01T00:10:00Z",
            "baseModel": {"source": "/models/base"},
            "method": "lora",
            "outputs": {"model": f"{out}/model", "adapter": f"{out}/adapter"},
            "files": [{"path": "model/model.safetensors", "size": 1234, "sha256": "ab" * 32}],
        }
        (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    done = _write_run(tmp_path, "done", finished=True)
    _write_run(tmp_path, "busy", finished=False, steps=3)
    # A local run's config names the job and its output (kubetune.local writes it under .kubetune/runs/).
    config = {"kind": "FineTuneJob", "metadata": {"name": "done"}, "spec": {"output": {"uri": str(done)}}}
    config["spec"]["model"] = {"source": "/models/base"}
    config["spec"]["method"] = {"type": "lora"}
    work = tmp_path / ".kubetune" / "runs" / "done-1234"
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def _with_client(root: Path, check: Callable[[TestClient[Any, Any]], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async with TestClient(TestServer(build_app(LocalJobs(root)))) as client:
            await check(client)

    asyncio.run(main())


def _chart_points(html: str, series: str) -> int:
    figure = re.search(rf'<figure class="chart[^"]*" data-series="{re.escape(series)}">(.*?)</figure>', html, re.S)
    assert figure, f"no {series} chart"
    return figure.group(1).count('class="point"')


def test_jobs_page_lists_local_runs_with_their_phases(runs: Path) -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        response = await client.get("/")
        assert response.status == 200
        html = await response.text()
        assert sorted(re.findall(r'data-job="local/(\w+)" data-phase="(\w+)"', html)) == [
            ("busy", "Training"),
            ("done", "Succeeded"),
        ]
        assert 'data-points="3"' in html and f'data-points="{STEPS}"' in html  # loss sparklines
        assert "3/10" in html and "lora" in html and "/models/base" in html
        # Without its config.yaml a finished run's model and method come from its manifest.
        (runs / ".kubetune" / "runs" / "done-1234" / "config.yaml").unlink()
        row = next(r for r in (await (await client.get("/rows")).text()).split("<tr") if "local/done" in r)
        assert "<td>/models/base</td><td>lora</td>" in row
        assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'self' covers it
        rows = await (await client.get("/rows?phase=Succeeded")).text()
        assert "local/done" in rows and "local/busy" not in rows

    _with_client(runs, check)


def test_job_page_charts_every_progress_event_and_escapes_data_rows(runs: Path) -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        html = await (await client.get("/jobs/local/done")).text()
        assert _chart_points(html, "loss") == STEPS
        assert _chart_points(html, "learning rate") == STEPS
        assert "no data yet" in html  # eval loss: none logged
        assert EVIL not in html
        assert "no output &lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "data.jsonl" in html and "345" in html
        assert f"vllm serve {runs}/runs/done/model" in html
        assert "ab" * 32 in html and "1234" in html
        assert "uri: " in html  # the spec, from the run's config.yaml
        assert (await client.get("/jobs/local/nope")).status == 404

    _with_client(runs, check)


def test_job_named_with_html_renders_as_text() -> None:
    job = JobView(name=EVIL, namespace='"ns"', phase="Training", history=[{"step": 1, "loss": 1.0}])
    job.progress = job.history[-1]
    for html in (pages.job_rows([job]), pages.job_page(job), pages.jobs_page([job], ['"ns"'], "", "")):
        assert EVIL not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="/jobs/%22ns%22/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in pages.job_rows([job])


def test_charts_draw_one_point_per_value() -> None:
    points = [(float(s), 1.0 / s) for s in range(1, 26)]
    assert line_chart("loss", points).count('class="point"') == 25
    assert 'data-points="25"' in sparkline(points)
    assert sparkline([]) == ""
    assert line_chart("flat", [(1.0, 2.0), (2.0, 2.0)]).count('class="point"') == 2  # no division by zero


def test_age_reads_like_kubectl() -> None:
    from datetime import datetime, timezone

    now = datetime(2026, 1, 2, 0, 0, 0, tzinfo=timezone.utc)
    assert pages.age("2026-01-01T23:59:30Z", now) == "30s"
    assert pages.age("2026-01-01T22:00:00Z", now) == "2h"
    assert pages.age("2025-12-30T00:00:00Z", now) == "3d"
    assert pages.age(None, now) == ""


def test_status_event_newer_than_the_uploaded_log_ends_the_history() -> None:
    from kubetune.dashboard.jobs import _fill_from_output

    uploaded = [{"stage": "training", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    job = JobView(name="j", namespace="ns", phase="Training", progress={"stage": "training", "step": 5, "loss": 0.1})
    _fill_from_output(job, {"progress.jsonl": uploaded})
    assert [e["step"] for e in job.history] == [1, 2, 3, 5]
    caught_up = JobView(name="j", namespace="ns", phase="Training", progress={"stage": "training", "step": 3})
    _fill_from_output(caught_up, {"progress.jsonl": uploaded})
    assert [e["step"] for e in caught_up.history] == [1, 2, 3]
