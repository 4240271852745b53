"""Rows/s of the data preparation against LLaMA-Factory 0.9.5's, end to end, in the same run.

    python bench/bench_data.py                 # 20k mixed alpaca/sharegpt rows, tiny tokenizer, cutoff 1024
    python bench/bench_data.py --rows 5000 --num-proc 1 --repeat 1

Measured, each from a fresh cache so nothing is reused, packing off (LLaMA-Factory's sft default):
- `kubetune data check` on each of the two files, as a user runs it: a subprocess per file, imports,
  tokenizer load and report included, `-j` left to its default (the container's CPU limit);
- the trainer's prepare step: `kubetune.trainer.data.prepare_data` in this process (read -> check ->
  format -> template -> tokenize -> mask), both files in one spec;
- LLaMA-Factory: `llamafactory.data.get_dataset` (what `llamafactory-cli train` runs before training)
  in a subprocess of its own venv, with the same tokenizer dir, template `chatml` (the tiny
  tokenizer's own template, same text), cutoff_len 1024 and a dataset_info.json the bench writes;
  imports and tokenizer load included, its default of one process.
The bench asserts that LLaMA-Factory and the prepare step produce the same number of tokens. It also
prints the CPU time of each (all its processes), which other load on a shared machine disturbs less.

LLaMA-Factory lives in its own venv, ~/.cache/kubetune-bench/lf-0.9.5 (KUBETUNE_BENCH_CACHE moves it),
made on first use and reused after (it takes minutes): `pip install torch==2.13.0` first (the CPU
build, from a local wheel folder when PIP_FIND_LINKS or /opt/wheels has it), then llamafactory==0.9.5,
then torchvision/torchaudio are uninstalled (their builds do not load beside the CPU torch). Its data
module imports torchaudio unconditionally, so the LLaMA-Factory subprocess gets an empty `torchaudio`
module on its path (nothing here reads audio). When it cannot be installed (no registry), the bench
says so and falls back to a naive per-example baseline: json.loads, build messages,
`tokenizer.apply_chat_template(..., tokenize=True)` once per assistant-turn prefix to find the label
spans, then greedy packing in Python lists.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_TEXT = """the model answers questions about kubernetes training jobs gpus nodes data tokens capital france paris
explain step by step please here is the answer plus minus times equals one two three four five"""
WORDS = _TEXT.split()


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def generate(out: Path, rows: int, seed: int = 0) -> list[Path]:
    """Half alpaca (some with input/history/system), half sharegpt with 1-3 rounds."""
    rng = random.Random(seed)
    alpaca, sharegpt = [], []
    for i in range(rows):
        if i % 2 == 0:
            row: dict[str, Any] = {"instruction": sentence(rng, 5, 30), "output": sentence(rng, 5, 80)}
            if rng.random() < 0.3:
                row["input"] = sentence(rng, 3, 20)
            if rng.random() < 0.2:
                row["history"] = [[sentence(rng, 3, 10), sentence(rng, 3, 20)]]
            if rng.random() < 0.2:
                row["system"] = "You are a helpful assistant."
            alpaca.append(row)
        else:
            turns = []
            for _ in range(rng.randint(1, 3)):
                turns.append({"from": "human", "value": sentence(rng, 3, 30)})
                turns.append({"from": "gpt", "value": sentence(rng, 5, 60)})
            sharegpt.append({"conversations": turns})
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "alpaca.jsonl", out / "sharegpt.jsonl"]
    for path, data in zip(paths, (alpaca, sharegpt), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return paths


def naive(paths: list[Path], tokenizer: Any, cutoff: int) -> tuple[int, int]:
    """Per-example preprocessing; returns (examples, packed rows)."""
    examples = []
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "conversations" in row:
                roles = {"human": "user", "gpt": "assistant"}
                messages = [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]
            else:
                messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
                for q, a in row.get("history", []):
                    messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                user = "\n".join(p for p in (row["instruction"], row.get("input", "")) if p)
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
            ids = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
            labels = [-100] * len(ids)
            for i, msg in enumerate(messages):
                if msg["role"] != "assistant":
                    continue
                prompt = tokenizer.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True)
                start = len(_ids(prompt))
                end = len(_ids(tokenizer.apply_chat_template(messages[: i + 1], tokenize=True)))
                labels[start:end] = ids[start:end]
            examples.append((ids[:cutoff], labels[:cutoff]))
    rows: list[list[int]] = []
    current: list[int] = []
    for ids, _labels in examples:
        if len(current) + len(ids) > cutoff:
            rows.append(current)
            current = []
        current = current + ids
    rows.append(current)
    return len(examples), len(rows)


LF_VERSION = "0.9.5"
LF_TORCH = "2.13.0"
# Run by LLaMA-Factory's own python: its preprocessing end to end, then what came out.
LF_SCRIPT = """
import json, sys, time
start = time.perf_counter()
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
args = json.loads(sys.argv[1])
model_args, data_args, training_args, _, _ = get_train_args(args)
module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
dataset = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)["train_dataset"]
seconds = time.perf_counter() - start
ids = dataset["input_ids"]
print(json.dumps({"seconds": seconds, "examples": len(ids), "tokens": sum(len(x) for x in ids)}))
"""


def lf_python() -> Path | None:
    """LLaMA-Factory's venv python, made on first use; None (and why, on stderr) when it cannot be installed."""
    root = Path(os.environ.get("KUBETUNE_BENCH_CACHE", Path.home() / ".cache" / "kubetune-bench"))
    venv = root / f"lf-{LF_VERSION}"
    python = venv / "bin" / "python"
    if (venv / "ok").is_file():
        return python
    print(f"installing LLaMA-Factory {LF_VERSION} into {venv} (once; takes minutes)", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    links = [f"--find-links={d}" for d in ("/opt/wheels",) if Path(d).is_dir()]
    pip = [str(python), "-m", "pip", "install", "-q", *links]
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [*pip, f"torch=={LF_TORCH}"],
        # torch pinned again: the torchvision/torchaudio it pulls would bring a newer one
        [*pip, f"llamafactory=={LF_VERSION}", f"torch=={LF_TORCH}"],
        [str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio"],
    ]
    for step in steps:
        if subprocess.run(step, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"cannot install LLaMA-Factory ({' '.join(step[-2:])} failed)", file=sys.stderr)
            return None
    (venv / "ok").write_text(LF_VERSION + "\n")
    return python


def run_lf(python: Path, tmp: Path, model_dir: Path, paths: list[Path], cutoff: int) -> dict[str, Any]:
    """LLaMA-Factory's preprocessing of the two files, in a subprocess, timed from its start."""
    info = {
        "bench_alpaca": {
            "file_name": str(paths[0]),
            # LLaMA-Factory reads system and history only when mapped; the rows have both.
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}
            | {"system": "system"},
        },
        "bench_sharegpt": {"file_name": str(paths[1]), "formatting": "sharegpt"},
    }
    (tmp / "lf-data").mkdir(exist_ok=True)
    (tmp / "lf-data" / "dataset_info.json").write_text(json.dumps(info))
    stub = tmp / "lf-stub" / "torchaudio"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text('"""Empty: LLaMA-Factory imports it, this bench reads no audio."""\n')
    args = {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": str(model_dir),
        "dataset": "bench_alpaca,bench_sharegpt",
        "dataset_dir": str(tmp / "lf-data"),
        "template": "chatml",
        "cutoff_len": cutoff,
        "finetuning_type": "lora",
        "output_dir": str(tmp / "lf-out"),
        "overwrite_cache": True,
        "report_to": "none",
    }
    env = {**os.environ, "PYTHONPATH": str(tmp / "lf-stub"), "HF_DATASETS_CACHE": str(tmp / "lf-cache")}
    start = time.perf_counter()
    done = subprocess.run(
        [str(python), "-c", LF_SCRIPT, json.dumps(args)], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"LLaMA-Factory's preprocessing failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    return result


def run_check(paths: list[Path], model_dir: Path, cutoff: int) -> float:
    """`kubetune data check` on each file, as a user runs it; the wall time of both."""
    start = time.perf_counter()
    for path in paths:
        command = [sys.executable, "-m", "kubetune.cli", "data", "check", str(path), "--model", str(model_dir)]
        command += ["--cutoff-len", str(cutoff), "--no-preview"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (workers, data check, LLaMA-Factory)."""
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _ids(encoded: Any) -> list[int]:
    return list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--cutoff-len", type=int, default=1024)
    parser.add_argument("--num-proc", type=int, default=None, help="prepare step's processes (default: by data size)")
    parser.add_argument("--naive", action="store_true", help="compare with the naive baseline, not LLaMA-Factory")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure each this many times, alternating, and keep each one's best"
    )
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import datasets
    from transformers import AutoTokenizer

    from kubetune.api.v1alpha1 import FineTuneJobSpec
    from kubetune.devtools.tiny import build_tiny_model
    from kubetune.trainer.data import prepare_data

    datasets.disable_progress_bars()
    lf = None if args.naive else lf_python()
    if lf is None and not args.naive:
        print("LLaMA-Factory could not be installed: comparing with the naive baseline instead", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        model_dir = build_tiny_model(tmp / "model")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        paths = generate(tmp / "data", args.rows)
        spec = FineTuneJobSpec.model_validate(
            {
                "model": {"source": str(model_dir)},
                "datasets": [{"source": str(p)} for p in paths],
                "output": {"uri": str(tmp / "out")},
                "training": {"cutoffLen": args.cutoff_len, "packing": False},
            }
        )
        prepare_s = check_s = base_s = float("inf")
        cpu = {"prepare": float("inf"), "check": float("inf"), "base": float("inf")}
        base_tokens: int | None = None
        for attempt in range(args.repeat):
            start, cpu0 = time.perf_counter(), cpu_seconds()
            prepared = prepare_data(spec, tokenizer, cache_dir=tmp / f"cache-{attempt}", num_proc=args.num_proc)
            prepare_s = min(prepare_s, time.perf_counter() - start)
            cpu["prepare"] = min(cpu["prepare"], cpu_seconds() - cpu0)
            cpu0 = cpu_seconds()
            check_s = min(check_s, run_check(paths, model_dir, args.cutoff_len))
            cpu["check"] = min(cpu["check"], cpu_seconds() - cpu0)
            cpu0 = cpu_seconds()
            if lf is not None:
                result = run_lf(lf, tmp, model_dir, paths, args.cutoff_len)
                base_s, base_tokens = min(base_s, result["wall"]), result["tokens"]
                lf_inside = result["seconds"]
            else:
                start = time.perf_counter()
                naive(paths, tokenizer, args.cutoff_len)
                base_s = min(base_s, time.perf_counter() - start)
            cpu["base"] = min(cpu["base"], cpu_seconds() - cpu0)
        start = time.perf_counter()
        prepare_data(spec, tokenizer, cache_dir=tmp / "cache-0")
        reload_s = time.perf_counter() - start

    summary = prepared.report.summary()
    base = f"LLaMA-Factory {LF_VERSION}" if lf is not None else "naive baseline"
    rate = lambda seconds: args.rows / seconds  # noqa: E731
    print(
        f"rows: {args.rows} ({summary['formats']}), cutoffLen {args.cutoff_len}, packing off, "
        f"cpus: {os.cpu_count()}, best of {args.repeat}; baseline: {base}"
    )
    print(f"{'prepare step':<22} {prepare_s:6.2f} s {rate(prepare_s):8.0f} rows/s  {summary['totalTokens']} tokens")
    print(f"{'kubetune data check':<22} {check_s:6.2f} s {rate(check_s):8.0f} rows/s  (2 processes, imports included)")
    tokens = f"  {base_tokens} tokens" if base_tokens is not None else ""
    print(f"{base:<22} {base_s:6.2f} s {rate(base_s):8.0f} rows/s{tokens}")
    if lf is not None:
        print(f"  (LLaMA-Factory's own timer, imports included, interpreter start not: {lf_inside:.2f} s)")
    print(f"ratio vs {base}: prepare step {base_s / prepare_s:.1f}x, data check {base_s / check_s:.1f}x (goal >= 5x)")
    print(
        f"cpu time (all processes; other load disturbs it less than wall time): prepare step {cpu['prepare']:.1f} s, "
        f"data check {cpu['check']:.1f} s, {base} {cpu['base']:.1f} s -> ratios "
        f"{cpu['base'] / cpu['prepare']:.1f}x and {cpu['base'] / cpu['check']:.1f}x"
    )
    print(f"cache reload (another rank / a restart): {reload_s:.2f} s")
    if base_tokens is not None:
        assert base_tokens == summary["totalTokens"], f"tokens differ: LF {base_tokens}, ours {summary['totalTokens']}"
        print("same tokens as LLaMA-Factory: yes")


if __name__ == "__main__":
    main()
