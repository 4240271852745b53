"""bench/gpu_check.py's CPU dry run: the GPU check's own code paths (model built from a config,
synthetic data, torchrun, LoRA merge and ZeRO-2, packing and kernels switches, the trainer's export
check) on a tiny model, so the command is known to work before it meets a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.integration
def test_gpu_check_dry_run_trains_and_exports_every_path(tmp_path):
    out = tmp_path / "check.json"
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--json", str(out)]
    command += ["--only", "lora", "--only", "full-zero2"]  # qlora: tests/integration/trainer/test_methods.py
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["case"], r["variant"]) for r in results] == [
        ("lora", "plain"),
        ("lora", "packing+liger"),
        ("full-zero2", "plain"),
        ("full-zero2", "packing+liger"),
    ]
    for r in results:
        assert r["exit"] == 0 and r["steps"] == 3
        assert r["tokensPerSecond"] > 0
        assert r["greedySample"] is not None  # the merged export reloaded and generated
    assert "peak used for MFU: n/a" in done.stdout
