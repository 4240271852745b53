"""Trainer benchmark on CPU: training tokens/s and peak RSS with and without packing, and the peak
memory of the streaming merge versus the model size (and versus peft's in-memory merge).

    python bench/bench_train.py                 # ~2-3 minutes on 2 cores
    python bench/bench_train.py --json out.json

Each measurement runs in its own process (the real `python -m kubetune.trainer`), and peak RSS is
that process's own high-water mark (os.wait4), so one measurement never inflates the next. The
merge is measured by sampling the merging process's RSS (total, and anonymous = not page cache of
the memory-mapped input) every 2 ms, relative to the same process after its imports.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
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


_MERGE_CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path
    import torch, safetensors, transformers, peft  # imports count as baseline, not as merge memory
    from kubetune.trainer import export

    def rss_mib():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(fields["RssAnon"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024

    samples, done = [rss_mib()], []
    def sample():
        while not done:
            samples.append(rss_mib())
            time.sleep(0.002)
    base, adapter, out, how = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    anon0, rss0 = rss_mib()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if how == "stream":
        export.stream_merge(base, adapter, out, shard_bytes=64 * 2**20)
    else:
        export.peft_merge(base, adapter, out, "64MB", False)
    done.append(1)
    sampler.join()
    print(json.dumps({"anonGrowthMiB": max(a for a, _ in samples) - anon0,
                      "rssGrowthMiB": max(r for _, r in samples) - rss0}))
    """
)


def bench_merge(work: Path, hidden: int, layers: int) -> dict[str, Any]:
    """Merge a rank-16 all-linear adapter into a model saved in 64 MiB shards (as hub models are)."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kubetune.devtools.tiny import build_tiny_model
    from kubetune.trainer.export import model_size_bytes

    built = build_tiny_model(work / "merge-built", hidden_size=hidden, num_layers=layers)
    base = work / "merge-base"
    model = AutoModelForCausalLM.from_pretrained(str(built))
    model.save_pretrained(str(base), max_shard_size="64MB")
    for extra in built.glob("*.json"):
        if not (base / extra.name).exists():
            shutil.copy2(extra, base / extra.name)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    model.save_pretrained(str(work / "merge-adapter"))
    del model
    size_mib = model_size_bytes(base) / 2**20
    result: dict[str, Any] = {"modelSizeMiB": round(size_mib, 1), "inputShardMiB": 64, "outputShardMiB": 64}
    for how in ("stream", "peft"):
        proc = subprocess.run(
            [sys.executable, "-c", _MERGE_CHILD, str(base), str(work / "merge-adapter"), str(work / how), how],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
            check=True,
        )
        numbers = json.loads(proc.stdout.strip().splitlines()[-1])
        result[how] = {
            "peakAnonGrowthMiB": round(numbers["anonGrowthMiB"], 1),
            "peakRssGrowthMiB": round(numbers["rssGrowthMiB"], 1),
            "anonOfModelSize": round(numbers["anonGrowthMiB"] / size_mib, 2),
            "rssOfModelSize": round(numbers["rssGrowthMiB"] / size_mib, 2),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting, alternating (CPU timings are noisy)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the training model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--merge-hidden", type=int, default=1024, help="hidden size of the merge model")
    parser.add_argument("--merge-layers", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--only", choices=["training", "merge"], help="run one part only")
    args = parser.parse_args()

    from kubetune.devtools.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "model", hidden_size=args.hidden, num_layers=args.layers)
        data = work / "chat.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in conversations(args.rows)))
        results: dict[str, Any] = {"model": {"hiddenSize": args.hidden, "layers": args.layers}}
        if args.only != "merge":
            runs = [
                bench_training(work, model_dir, data, p, args.steps, i)
                for i in range(args.repeat)
                for p in (False, True)
            ]
            results["training"] = runs
            results["bestTokensPerSecond"] = {
                f"packing={p}": max(r["tokensPerSecond"] for r in runs if r["packing"] == p) for p in (False, True)
            }
        if args.only != "training":
            results["merge"] = bench_merge(work, args.merge_hidden, args.merge_layers)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
