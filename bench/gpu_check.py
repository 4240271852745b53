"""One-command GPU check: LoRA, QLoRA and full (ZeRO-2) training of a ~1B Llama-shaped model, each
plain and with packing + Liger, through the real trainer (torchrun, one process, as in a pod).

    python bench/gpu_check.py                  # on one H100/H200: <= 8 minutes, no downloads
    python bench/gpu_check.py --dry-run        # CPU: a tiny model through the same code paths (~1 min)
    python bench/gpu_check.py --only lora --steps 50 --json out.json

The model is built here from a config (TinyLlama-1.1B's shape, random bf16 weights); the data is
synthetic chat rows long enough to fill cutoff 2048. For each path it prints tokens/s (non-pad
tokens over the training time, and the median of the progress events), MFU, peak GPU memory, and
the greedy sample of the merged export that the trainer reloaded and checked (a failed check exits
7). MFU = model FLOPs per token x tokens/s / peak, with FLOPs per token = 6 N (N: parameters without
the input embedding) + 6 L H S (causal attention at the cutoff S), the PaLM convention; LoRA is
counted the same, so its MFU is on the same scale as full training's. The peak is the GPU's dense
bf16 rate: 989 TFLOP/s for H100 SXM and H200 (same compute die); pass --peak-tflops for others.
Exits 1 when any path fails.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    def params(self) -> int:
        """Parameters that do work per token: all but the input embedding (a lookup)."""
        head_dim = self.hidden // self.heads
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * head_dim
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp + 2 * self.hidden) + self.hidden + self.vocab * self.hidden

    def flops_per_token(self, seq_len: int) -> float:
        return 6.0 * self.params() + 6.0 * self.layers * self.hidden * seq_len


GPU_SHAPE = Shape(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000)  # TinyLlama-1.1B
DRY_SHAPE = Shape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=512)

METHODS = {
    "lora": ({"type": "lora", "lora": {"rank": 16, "alpha": 32}}, {}),
    "qlora": ({"type": "qlora", "quantization": {"bits": 4, "quantType": "nf4"}}, {}),
    "full-zero2": ({"type": "full"}, {"deepspeed": {"stage": "zero2"}}),
}


def build_model(out: Path, shape: Shape, dtype: str) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from kubetune.devtools.tiny import build_tokenizer

    tokenizer = build_tokenizer(vocab_size=512, chat_template="chatml")
    config = LlamaConfig(
        vocab_size=max(shape.vocab, len(tokenizer)),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    return out


def synthetic_rows(n: int, max_words: int, seed: int = 0) -> list[dict[str, Any]]:
    """Chat rows from a few words up to past the cutoff: packing has gaps to fill, truncation happens."""
    words = ["the", "model", "trains", "on", "a", "cluster", "and", "answers", "questions", "about", "numbers"]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(8, max_words)))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Row {i}: say something."},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def job(name: str, case: str, variant: str, paths: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    method, training = METHODS[case]
    fast = variant == "packing+liger"
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": str(paths["model"])},
            "datasets": [{"source": str(paths["data"]), "format": "openai"}],
            "template": "chatml",
            "method": method,
            "training": {
                **training,
                "maxSteps": args.steps,
                "perDeviceBatchSize": args.batch,
                "gradientAccumulationSteps": 1,
                "cutoffLen": args.cutoff,
                "packing": fast,
                "kernels": {
                    "liger": ("on" if args.liger_installed else "off") if fast and not args.dry_run else "auto"
                },
                "precision": "fp32" if args.dry_run else "bf16",
                "gradientCheckpointing": True,
                "checkpointEverySteps": 100_000,
                "loggingSteps": max(1, args.steps // 10),
                "learningRate": 1e-4,
            },
            "resources": {"gpusPerNode": 0 if args.dry_run else 1},
            "output": {"uri": str(paths["out"] / name), "merge": True},
        },
    }


def run_case(case: str, variant: str, paths: dict[str, Path], args: argparse.Namespace, shape: Shape) -> dict[str, Any]:
    name = f"{case}-{variant}".replace("+", "-")
    config = paths["work"] / f"{name}.yaml"
    config.write_text(yaml.safe_dump(job(name, case, variant, paths, args)))
    peak_file = paths["work"] / f"{name}.peak"
    env = {
        **os.environ,
        "KUBETUNE_CACHE_DIR": str(paths["work"] / f"cache-{name}"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    command = [torchrun, "--standalone", "--nproc-per-node", "1", __file__, "--worker", str(config), str(peak_file)]
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=args.case_timeout)
    wall = time.monotonic() - started
    result: dict[str, Any] = {"case": case, "variant": variant, "exit": done.returncode, "wallSeconds": round(wall, 1)}
    if done.returncode != 0:
        result["error"] = (done.stderr or done.stdout)[-2000:]
        return result
    out = paths["out"] / name
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    rates = [e["tokensPerSecond"] for e in events if e.get("tokensPerSecond")]
    tokens_s = metrics["tokensSeen"] / metrics["runtimeSeconds"]
    steady = statistics.median(rates) if rates else tokens_s
    sample = [line for line in done.stderr.splitlines() if "greedy sample" in line]
    result.update(
        steps=metrics["steps"],
        tokensPerSecond=round(tokens_s, 1),
        tokensPerSecondSteady=round(steady, 1),
        mfu=round(shape.flops_per_token(args.cutoff) * steady / (args.peak_tflops * 1e12), 4)
        if args.peak_tflops
        else None,
        peakGpuMemoryGiB=round(float(peak_file.read_text()) / 2**30, 2) if peak_file.exists() else None,
        greedySample=sample[-1].split("greedy sample:", 1)[-1].strip()[:80] if sample else None,
    )
    return result


def worker(config: str, peak_file: str) -> int:
    """Inside torchrun: the trainer's own entry point, recording the peak GPU memory on the way out."""
    import torch

    if torch.cuda.is_available():
        atexit.register(lambda: Path(peak_file).write_text(str(torch.cuda.max_memory_allocated())))
    from kubetune.trainer.__main__ import main as trainer_main

    return trainer_main(["--config", config])


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU: a tiny model, cutoff 256, 3 steps, same paths")
    parser.add_argument("--only", choices=sorted(METHODS), action="append", help="run only these methods")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--cutoff", type=int)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: H100/H200 989)")
    parser.add_argument("--case-timeout", type=float, default=300)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    import importlib.util

    import torch

    args.liger_installed = importlib.util.find_spec("liger_kernel") is not None
    if args.dry_run:
        shape, args.steps, args.cutoff, args.batch = DRY_SHAPE, args.steps or 3, args.cutoff or 256, 2
        args.peak_tflops = None
        gpu = "none (dry run on CPU)"
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: run with --dry-run on a CPU machine", file=sys.stderr)
            return 2
        shape, args.steps, args.cutoff = GPU_SHAPE, args.steps or 30, args.cutoff or 2048
        gpu = torch.cuda.get_device_name(0)
        args.peak_tflops = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    print(
        f"GPU: {gpu}; peak used for MFU: {f'{args.peak_tflops:.0f} TFLOP/s dense bf16' if args.peak_tflops else 'n/a'}"
    )
    print(
        f"model: Llama {shape} ({shape.params() / 1e9:.2f}B working parameters); cutoff {args.cutoff}, "
        f"batch {args.batch}, {args.steps} steps per path; "
        f"liger-kernel {'installed' if args.liger_installed else 'NOT installed (packing only)'}",
        flush=True,
    )

    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        paths = {"work": work, "model": work / "model", "data": work / "data.jsonl", "out": work / "out"}
        build_model(paths["model"], shape, "float32" if args.dry_run else "bfloat16")
        rows = synthetic_rows(args.steps * args.batch * 2, max_words=args.cutoff)
        paths["data"].write_text("".join(json.dumps(r) + "\n" for r in rows))
        for case in args.only or list(METHODS):
            for variant in ("plain", "packing+liger"):
                r = run_case(case, variant, paths, args, shape)
                results.append(r)
                if r["exit"]:
                    print(f"{case:10s} {variant:14s} FAILED (exit {r['exit']}):\n{r['error']}", flush=True)
                    continue
                mfu = f"{r['mfu'] * 100:5.1f}%" if r["mfu"] is not None else "  n/a"
                mem = f"{r['peakGpuMemoryGiB']:6.2f} GiB" if r["peakGpuMemoryGiB"] is not None else "     n/a"
                print(
                    f"{case:10s} {variant:14s} {r['tokensPerSecondSteady']:10.0f} tok/s "
                    f"(run {r['tokensPerSecond']:.0f}) "
                    f"MFU {mfu}  peak {mem}  {r['wallSeconds']:6.1f} s  export greedy: {r['greedySample']!r}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": gpu, "results": results}, indent=2) + "\n")
    return 1 if any(r["exit"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
