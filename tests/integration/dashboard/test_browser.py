"""`kubetune dashboard` in a real headless Chromium, against the API emulator and a real S3 server.

A stand-in trainer writes progress.jsonl and data_report.json to each job's output in S3 and status
to the FineTuneJobs, as the real one does; the dashboard runs as a `kubetune dashboard` process
with its own kubeconfig and AWS_* credentials. Set KUBETUNE_DASHBOARD_SCREENSHOTS=docs to refresh
the README's screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.reporting import progress_event
from tests.integration.operator.harness import FTJ, Cluster, job_manifest, wait_for

pytestmark = pytest.mark.integration

BUCKET = "dash"
STEPS = 12  # logged so far by the running job
DONE_STEPS = 20
EVIL = "<script>alert(1)</script>"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def _status(cluster: Cluster, name: str, status: dict[str, Any]) -> None:
    cluster.custom.patch_namespaced_custom_object_status(
        *FTJ, "default", "finetunejobs", name, {"status": status}, _content_type="application/merge-patch+json"
    )


def _write_outputs(s3: Any, name: str, steps: int) -> None:
    """What the trainer leaves in the output: one progress event per logged step, the data report."""
    client = s3.client()
    events = [progress_event("preparing", message="reading data")]
    events += [
        progress_event("training", step=s, total=20, loss=2.5 / s, learningRate=1e-4, tokensPerSecond=900.0 + s)
        for s in range(1, steps + 1)
    ]
    body = "".join(json.dumps(e) + "\n" for e in events)
    client.put_object(Bucket=BUCKET, Key=f"{name}/progress.jsonl", Body=body.encode())
    report = {
        "summary": {"rowsRead": 50, "invalid": 1, "truncated": 2, "totalTokens": 4096},
        "invalid": {"count": 1, "rows": [{"file": "s3://data/a.jsonl", "row": 7, "reason": f"empty output {EVIL}"}]},
    }
    client.put_object(Bucket=BUCKET, Key=f"{name}/data_report.json", Body=json.dumps(report).encode())


@pytest.fixture(scope="module")
def dashboard(cluster: Cluster, s3_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from kubetune.local import free_port

    s3_server.make_bucket(BUCKET)
    for name, phase, steps in (
        ("llama-sft", "Training", STEPS),
        ("qwen-done", "Succeeded", DONE_STEPS),
        ("broken", "Failed", 0),
    ):
        manifest = job_manifest(name, output={"uri": f"s3://{BUCKET}/{name}/"}, method={"type": "lora"})
        manifest["spec"]["model"]["source"] = EVIL if name == "broken" else manifest["spec"]["model"]["source"]
        cluster.create_job(manifest)
        if steps:
            _write_outputs(s3_server, name, steps)
        last = progress_event("training", step=steps, total=20, loss=2.5 / max(steps, 1), etaSeconds=60.0)
        _status(cluster, name, {"phase": phase, "backend": "pytorchjob", "progress": last})
    cluster.core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "broken.1"},
            "involvedObject": {"kind": "FineTuneJob", "name": "broken", "namespace": "default"},
            "reason": "Failed",
            "message": f"trainer exited 1: {EVIL}",
            "type": "Warning",
            "lastTimestamp": "2026-01-01T00:00:00Z",
        },
    )
    port = free_port()
    log = (tmp_path_factory.mktemp("dashboard") / "dashboard.log").open("w")
    command = [sys.executable, "-m", "kubetune.cli", "dashboard", "--kubeconfig", str(cluster.server.kubeconfig)]
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        env={**os.environ, **s3_server.env()},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("the dashboard to answer", lambda: _answers(url), timeout=30)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver is missing: `make setup` installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


# The table in one read: the page swaps its rows every few seconds, so element handles go stale.
ROWS = """return Array.from(document.querySelectorAll('#job-rows tr')).map(r => [
  r.dataset.job, r.dataset.phase, r.innerText, r.querySelector('svg.spark')?.getAttribute('data-points')])"""


def _screenshot(browser: Any, name: str, tmp: Path) -> None:
    browser.save_screenshot(str(tmp / name))
    if target := os.environ.get("KUBETUNE_DASHBOARD_SCREENSHOTS"):
        shutil.copy(tmp / name, Path(target) / name)


def test_jobs_page_lists_phases_and_refreshes_without_reload(
    browser: Any, dashboard: str, cluster: Cluster, tmp_path: Path
) -> None:
    browser.get(dashboard + "/")
    rows = {job: (phase, text, points) for job, phase, text, points in browser.execute_script(ROWS)}
    assert {job: row[0] for job, row in rows.items()} == {
        "default/llama-sft": "Training",
        "default/qwen-done": "Succeeded",
        "default/broken": "Failed",
    }
    assert f"{STEPS}/20" in rows["default/llama-sft"][1]
    assert rows["default/llama-sft"][2] == str(STEPS) and rows["default/qwen-done"][2] == str(DONE_STEPS)
    assert EVIL in rows["default/broken"][1]  # shown as text, not run
    assert browser.execute_script("return document.querySelectorAll('#job-rows script').length") == 0
    _screenshot(browser, "dashboard-jobs.png", tmp_path)

    browser.execute_script("window.notReloaded = true")
    _status(cluster, "llama-sft", {"progress": progress_event("training", step=15, total=20, loss=0.1)})
    wait_for(
        "the row to show step 15",
        lambda: any(row[0] == "default/llama-sft" and "15/20" in row[2] for row in browser.execute_script(ROWS)),
        timeout=20,
        interval=0.5,
    )
    assert browser.execute_script("return window.notReloaded") is True

    browser.get(dashboard + "/?phase=Failed")
    assert [row[0] for row in browser.execute_script(ROWS)] == ["default/broken"]


def test_job_page_charts_progress_and_shows_data_report(browser: Any, dashboard: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(dashboard + "/jobs/default/qwen-done")
    loss = browser.find_element(By.CSS_SELECTOR, "figure[data-series='loss']")
    assert len(loss.find_elements(By.CSS_SELECTOR, "circle.point")) == DONE_STEPS
    tps = browser.find_element(By.CSS_SELECTOR, "figure[data-series='tokens/s']")
    assert len(tps.find_elements(By.CSS_SELECTOR, "circle.point")) == DONE_STEPS
    report = browser.find_element(By.ID, "data-report").text
    assert "s3://data/a.jsonl" in report and f"empty output {EVIL}" in report
    _screenshot(browser, "dashboard-job.png", tmp_path)

    browser.get(dashboard + "/jobs/default/broken")
    assert f"trainer exited 1: {EVIL}" in browser.find_element(By.CSS_SELECTOR, "table.timeline").text
    assert browser.execute_script("return document.querySelectorAll('main script').length") == 0


def test_new_job_form_checks_live_and_makes_yaml_that_validates(browser: Any, dashboard: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(dashboard + "/new")
    rank = browser.find_element(By.NAME, "spec.method.lora.rank")
    rank.clear()
    rank.send_keys("0")
    rank_error = "span.error[data-for='spec.method.lora.rank']"
    wait_for(
        "the rank's error beside it",
        lambda: "spec.method.lora.rank: must be > 0" in browser.find_element(By.CSS_SELECTOR, rank_error).text,
        timeout=10,
        interval=0.2,
    )
    assert browser.find_element(By.ID, "new-job").get_attribute("data-checked") == "1"

    rank.clear()
    rank.send_keys("8")
    name = browser.find_element(By.NAME, "metadata.name")
    name.clear()
    name.send_keys("qwen-sft")
    wait_for(
        "the form to check clean with the new name",
        lambda: (
            browser.find_element(By.ID, "new-job").get_attribute("data-checked") == "0"
            and "qwen-sft" in browser.find_element(By.ID, "yaml").text
        ),
        timeout=10,
        interval=0.2,
    )
    assert browser.find_element(By.CSS_SELECTOR, rank_error).text == ""
    job = tmp_path / "job.yaml"
    job.write_text(browser.find_element(By.ID, "yaml").text + "\n")
    checked = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "validate", str(job)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
    assert "rank: 8" in job.read_text()
