"""Helpers for trainer runs: a small chat dataset, a FineTuneJob file, and the trainer as a subprocess."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def chat_rows(n: int = 64) -> list[dict[str, Any]]:
    """Arithmetic Q&A in the openai format: easy to learn, so the loss visibly falls in a few steps."""
    rows = []
    for i in range(n):
        a, b = i % 9 + 1, (i * 7) % 11
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} equals {a + b}."},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:  # None removes a default
            out.pop(key, None)
            continue
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def job(name: str, model_src: str, data_src: str, output_uri: str, **spec: Any) -> dict[str, Any]:
    base = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "test"},
        "spec": {
            "model": {"source": model_src},
            "datasets": [{"source": data_src, "format": "openai"}],
            "template": "chatml",
            "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
            "training": {
                "maxSteps": 30,
                "learningRate": 0.01,
                "lrScheduler": "constant",
                "warmupSteps": 0,
                "perDeviceBatchSize": 4,
                "gradientAccumulationSteps": 1,
                "cutoffLen": 96,
                "precision": "fp32",
                "gradientCheckpointing": False,
                "checkpointEverySteps": 10,
                "keepCheckpoints": 2,
                "loggingSteps": 5,
            },
            "resources": {"gpusPerNode": 0},
            "output": {"uri": output_uri},
        },
    }
    return merge(base, {"spec": spec})


def write_job(path: Path, manifest: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


@dataclass
class Run:
    code: int
    stderr: str
    stdout: str

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("kubetune: error:")]


def trainer_env(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "KUBETUNE_CACHE_DIR": str(tmp_path / "cache"),
            "KUBETUNE_TERMINATION_LOG": str(tmp_path / "termination-log"),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra or {})
    return env


def run_trainer(config: Path, env: dict[str, str], *, timeout: float = 240) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "train", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stderr, proc.stdout)


def progress_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses(events: list[dict[str, Any]]) -> list[float]:
    return [e["loss"] for e in events if e.get("stage") == "training" and "loss" in e]
