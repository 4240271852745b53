"""Rows/s of the whole data preprocessing against a naive per-example baseline, in the same run.

    python bench/bench_data.py                 # 20k mixed alpaca/sharegpt rows, tiny tokenizer
    python bench/bench_data.py --rows 5000 --num-proc 1

Pipeline: `kubetune.trainer.data.prepare_data` (read -> check -> format -> template -> tokenize ->
mask -> pack), with a fresh cache so nothing is reused. Baseline: what a straightforward script does
per example: json.loads, build messages, `tokenizer.apply_chat_template(..., tokenize=True)` once per
assistant-turn prefix to find the label spans, then greedy packing in Python lists.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the tokenizer worker processes)."""
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _ids(encoded: Any) -> list[int]:
    return list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--cutoff-len", type=int, default=1024)
    parser.add_argument("--num-proc", type=int, default=None, help="tokenizer processes (default: by data size)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="alternate the two measurements this many times and keep each one's best (machines are shared)",
    )
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import datasets
    from transformers import AutoTokenizer

    from kubetune.api.v1alpha1 import FineTuneJobSpec
    from kubetune.devtools.tiny import build_tokenizer
    from kubetune.trainer.data import prepare_data

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        build_tokenizer().save_pretrained(tmp / "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tmp / "tokenizer")
        paths = generate(tmp / "data", args.rows)
        spec = FineTuneJobSpec.model_validate(
            {
                "model": {"source": "/models/tiny"},
                "datasets": [{"source": str(p)} for p in paths],
                "output": {"uri": str(tmp / "out")},
                "training": {"cutoffLen": args.cutoff_len, "packing": True, "perDeviceBatchSize": 4},
            }
        )

        pipeline_s = naive_s = pipeline_cpu = naive_cpu = float("inf")
        for attempt in range(args.repeat):
            start, cpu = time.perf_counter(), cpu_seconds()
            prepared = prepare_data(spec, tokenizer, cache_dir=tmp / f"cache-{attempt}", num_proc=args.num_proc)
            pipeline_s = min(pipeline_s, time.perf_counter() - start)
            pipeline_cpu = min(pipeline_cpu, cpu_seconds() - cpu)

            start, cpu = time.perf_counter(), cpu_seconds()
            n_naive, rows_naive = naive(paths, tokenizer, args.cutoff_len)
            naive_s = min(naive_s, time.perf_counter() - start)
            naive_cpu = min(naive_cpu, cpu_seconds() - cpu)

        start = time.perf_counter()
        prepare_data(spec, tokenizer, cache_dir=tmp / "cache-0")
        reload_s = time.perf_counter() - start

    report = prepared.report
    summary = report.summary()
    pipeline_rate, naive_rate = args.rows / pipeline_s, args.rows / naive_s
    print(
        f"rows: {args.rows} ({summary['formats']}), cpus: {os.cpu_count()}, cutoffLen {args.cutoff_len}, "
        f"best of {args.repeat}"
    )
    print(
        f"pipeline: {pipeline_s:6.2f} s  {pipeline_rate:9.0f} rows/s  -> {len(prepared.train)} packed rows, "
        f"{summary['totalTokens']} tokens, {summary['trainableTokens']} trainable"
    )
    print(f"naive:    {naive_s:6.2f} s  {naive_rate:9.0f} rows/s  -> {rows_naive} packed rows ({n_naive} examples)")
    print(f"speed-up: {pipeline_rate / naive_rate:.1f}x; cache reload (another rank / a restart): {reload_s:.2f} s")
    print(
        f"cpu time (all processes, less sensitive to other load): pipeline {pipeline_cpu:.2f} s, "
        f"naive {naive_cpu:.2f} s ({naive_cpu / pipeline_cpu:.1f}x less work)"
    )
    packing = report.packing
    print(
        f"padding: unpacked {packing['unpacked']['padToLongest']:.1%} (to longest in batch), "
        f"{packing['unpacked']['padToCutoff']:.1%} (to cutoff); packed {packing['packed']['padToCutoff']:.1%}"
    )


if __name__ == "__main__":
    main()
