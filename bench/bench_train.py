"""Trainer benchmark on CPU: training tokens/s and peak RSS with and without packing.
(The merge's memory is measured by bench/bench_merge.py.)

    python bench/bench_train.py                 # ~2-3 minutes on 2 cores
    python bench/bench_train.py --json out.json

Each measurement runs in its own process (the real `python -m kubetune.trainer`), and peak RSS is
that process's own high-water mark (os.wait4), so one measurement never inflates the next.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

_WORDS = [
    "the",
    "model",
    "trains",
    "on",
    "a",
    "small",
    "cluster",
    "and",
    "answers",
    "questions",
    "about",
    "numbers",
    "plus",
    "minus",
    "times",
]


def conversations(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Chat rows with answers of very different lengths: the case where packing pays."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        answer = " ".join(rng.choice(_WORDS) for _ in range(rng.choice([4, 8, 16, 48, 96])))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}: what is {i % 9} plus {i % 7}?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def run_measured(command: list[str], env: dict[str, str]) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS MiB, stderr tail) of one child process."""
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read()[-3000:]
    return proc.returncode, time.monotonic() - start, usage.ru_maxrss / 1024, tail


def bench_training(work: Path, model_dir: Path, data: Path, packing: bool, steps: int, attempt: int) -> dict[str, Any]:
    output = work / f"out-packing-{packing}-{attempt}"
    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"bench-packing-{str(packing).lower()}"},
        "spec": {
            "model": {"source": str(model_dir)},
            "datasets": [{"source": str(data), "format": "openai"}],
            "template": "chatml",
            "method": {"type": "lora", "lora": {"rank": 16, "alpha": 32}},
            "training": {
                "maxSteps": steps,
                "perDeviceBatchSize": 4,
                "gradientAccumulationSteps": 1,
                "cutoffLen": 512,
                "packing": packing,
                "precision": "fp32",
                "gradientCheckpointing": False,
                "checkpointEverySteps": 10_000,
                "loggingSteps": 5,
                "learningRate": 1e-3,
            },
            "resources": {"gpusPerNode": 0},
            "output": {"uri": str(output), "merge": False},
        },
    }
    config = work / f"job-{packing}.yaml"
    config.write_text(yaml.safe_dump(job))
    env = {
        **os.environ,
        "KUBETUNE_CACHE_DIR": str(work / f"cache-{packing}-{attempt}"),
        "OMP_NUM_THREADS": "2",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    code, wall, rss, tail = run_measured([sys.executable, "-m", "kubetune.trainer", "--config", str(config)], env)
    if code != 0:
        raise SystemExit(f"training run failed ({code}):\n{tail}")
    metrics = json.loads((output / "manifest.json").read_text())["metrics"]
    events = [json.loads(line) for line in (output / "progress.jsonl").read_text().splitlines()]
    rates = [e["tokensPerSecond"] for e in events if e.get("tokensPerSecond")]
    layout = json.loads((output / "data_report.json").read_text())["packing"]
    return {
        "packing": packing,
        "steps": metrics["steps"],
        "nonPadTokens": metrics["tokensSeen"],
        "trainSeconds": metrics["runtimeSeconds"],
        "tokensPerSecond": round(metrics["tokensSeen"] / metrics["runtimeSeconds"], 1),
        "tokensPerSecondSteady": round(sorted(rates)[len(rates) // 2], 1) if rates else None,
        "processPeakRssMiB": round(rss, 1),
        "processWallSeconds": round(wall, 1),
        "rows": layout["packed" if packing else "unpacked"]["rows"],
        "padShareOfBatches": layout["packed" if packing else "unpacked"]["padToLongest"],
        "loadAverage1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting, alternating (CPU timings are noisy)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the training model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from kubetune.devtools.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "model", hidden_size=args.hidden, num_layers=args.layers)
        data = work / "chat.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in conversations(args.rows)))
        results: dict[str, Any] = {"model": {"hiddenSize": args.hidden, "layers": args.layers}}
        runs = [
            bench_training(work, model_dir, data, p, args.steps, i) for i in range(args.repeat) for p in (False, True)
        ]
        results["training"] = runs
        results["bestTokensPerSecond"] = {
            f"packing={p}": max(r["tokensPerSecond"] for r in runs if r["packing"] == p) for p in (False, True)
        }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
