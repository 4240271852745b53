"""A run stopped by SIGTERM saves a checkpoint and exits 143; the next run resumes from it unasked."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.trainer.helpers import Run, job, progress_events, run_trainer, trainer_env, write_job

pytestmark = pytest.mark.integration


def _start(config, env):
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune.trainer", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_preempted_run_resumes_from_its_checkpoint(tiny_model_dir, chat_data, tmp_path):
    output = tmp_path / "out"
    manifest = job(
        "resume",
        str(tiny_model_dir),
        str(chat_data),
        str(output),
        training={"maxSteps": 300, "checkpointEverySteps": 20, "loggingSteps": 10},
    )
    config = write_job(tmp_path / "job.yaml", manifest)
    env = trainer_env(tmp_path)

    proc = _start(config, env)
    _wait_for(output / "checkpoints" / "checkpoint-20" / "COMPLETE", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    first = Run(proc.returncode, stderr, "")
    assert first.code == 143, stderr[-3000:]
    line = first.error_lines()[0]
    stopped_at = int(line.split("stopped by SIGTERM at step ")[1].split(":")[0])
    assert 20 < stopped_at < 300
    assert (output / "checkpoints" / f"checkpoint-{stopped_at}" / "COMPLETE").exists()
    assert not (output / "manifest.json").exists()

    second = _start(config, env)
    _, stderr = second.communicate(timeout=240)
    assert second.returncode == 0, stderr[-3000:]
    assert f"resuming from {output}/checkpoints/checkpoint-{stopped_at}" in stderr
    metrics = json.loads((output / "manifest.json").read_text())["metrics"]
    assert metrics["resumedFrom"] == f"checkpoint-{stopped_at}" and metrics["steps"] == 300
    steps = [e["step"] for e in progress_events(output / "progress.jsonl") if "loss" in e and e["stage"] == "training"]
    # The loss history covers both processes: first run up to the checkpoint, then the resumed steps.
    assert steps == sorted(steps) and steps[0] == 10 and steps[-1] == 300
    assert all(s <= stopped_at for s in steps if s < stopped_at) and len(steps) == len(set(steps))


def _model_files(output):
    files = json.loads((output / "manifest.json").read_text())["files"]
    return {f["path"]: f["sha256"] for f in files if f["path"].startswith(("model/", "adapter/"))}


def test_rerunning_a_finished_job_only_reports_it(tiny_model_dir, chat_data, tmp_path):
    """A pod restarted after its manifest was written (a SIGTERM during clean-up) trains nothing again."""
    output = tmp_path / "out"
    config = write_job(
        tmp_path / "job.yaml",
        job("done", str(tiny_model_dir), str(chat_data), str(output), training={"maxSteps": 5}),
    )
    env = trainer_env(tmp_path)
    first = run_trainer(config, env)
    assert first.code == 0, first.stderr[-3000:]
    written = (output / "manifest.json").read_bytes()
    model = {p: p.stat().st_mtime_ns for p in (output / "adapter").rglob("*")}

    second = run_trainer(config, env)
    assert second.code == 0, second.stderr[-3000:]
    assert f"already finished: {output}/manifest.json records this spec's result" in second.stderr
    assert "resuming from" not in second.stderr
    assert (output / "manifest.json").read_bytes() == written
    assert {p: p.stat().st_mtime_ns for p in (output / "adapter").rglob("*")} == model

    # Another result (the same training, merged this time) is not the finished one.
    merged = job("done", str(tiny_model_dir), str(chat_data), str(output), training={"maxSteps": 5})
    merged["spec"]["output"]["merge"] = not merged["spec"]["output"].get("merge", True)
    third = run_trainer(write_job(tmp_path / "job.yaml", merged), env)
    assert third.code == 0, third.stderr[-3000:]
    assert "records this spec's result" not in third.stderr and (output / "manifest.json").read_bytes() != written


def test_a_job_stopped_before_its_manifest_exports_its_final_checkpoint(tiny_model_dir, chat_data, tmp_path):
    """Trained to the end but no manifest (stopped while exporting): the final checkpoint is resumed
    with 0 steps left; export and upload again."""
    output = tmp_path / "out"
    manifest = job(
        "again",
        str(tiny_model_dir),
        str(chat_data),
        str(output),
        training={"maxSteps": 10, "checkpointEverySteps": 10, "loggingSteps": 5},
        output={"uri": str(output), "merge": True},
    )
    config = write_job(tmp_path / "job.yaml", manifest)
    env = trainer_env(tmp_path)
    first = run_trainer(config, env)
    assert first.code == 0, first.stderr[-3000:]
    before = _model_files(output)
    assert any(p.startswith("model/model") for p in before) and "adapter/adapter_model.safetensors" in before

    (output / "manifest.json").unlink()
    second = run_trainer(config, env)
    assert second.code == 0, second.stderr[-3000:]
    assert f"resuming from {output}/checkpoints/checkpoint-10" in second.stderr
    metrics = json.loads((output / "manifest.json").read_text())["metrics"]
    assert metrics["resumedFrom"] == "checkpoint-10" and metrics["steps"] == 10
    assert _model_files(output) == before


def test_checkpoints_of_another_configuration_are_left_alone(tiny_model_dir, chat_data, tmp_path):
    output = tmp_path / "out"
    env = trainer_env(tmp_path)
    first = job(
        "shared",
        str(tiny_model_dir),
        str(chat_data),
        str(output),
        training={"maxSteps": 10, "checkpointEverySteps": 10, "loggingSteps": 5},
    )
    assert run_trainer(write_job(tmp_path / "a.yaml", first), env).code == 0
    foreign = (output / "checkpoints" / "checkpoint-10" / "COMPLETE").read_text()

    # Same name and output, different learning rate: its checkpoint must not be resumed, nor pruned.
    changed = job(
        "shared",
        str(tiny_model_dir),
        str(chat_data),
        str(output),
        training={
            "maxSteps": 6,
            "checkpointEverySteps": 3,
            "keepCheckpoints": 1,
            "loggingSteps": 3,
            "learningRate": 0.005,
        },
    )
    second = run_trainer(write_job(tmp_path / "b.yaml", changed), env)
    assert second.code == 0, second.stderr[-3000:]
    warnings = [line for line in second.stderr.splitlines() if "belong to a different configuration" in line]
    assert len(warnings) == 1 and f"checkpoints under {output}/checkpoints" in warnings[0]
    assert "resuming from" not in second.stderr
    metrics = json.loads((output / "manifest.json").read_text())["metrics"]
    assert metrics["resumedFrom"] is None and metrics["steps"] == 6
    assert (output / "checkpoints" / "checkpoint-10" / "COMPLETE").read_text() == foreign
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-6"]
