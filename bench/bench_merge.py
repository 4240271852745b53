"""Peak memory of the streaming LoRA merge against the model size and against peft's in-memory merge.

A Llama model of a few hundred MB (random weights, saved with save_pretrained in 64 MB shards, as hub
models are) gets a rank-16 all-linear adapter. Each merge runs in its own process, which resets its
peak RSS (/proc/self/clear_refs) once torch, transformers and peft are imported and reports VmHWM
minus the RSS at that point: the growth the merge itself causes, page cache mapped into the process
included. The baseline is what LLaMA-Factory's export does: load the base, PeftModel,
merge_and_unload, save_pretrained. Both merged models are compared tensor by tensor.

    python bench/bench_merge.py [--hidden 1024 --layers 8]

Exits 1 when the streaming merge's peak RSS growth is not below TARGET times the model size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

TARGET = 0.3  # peak RSS growth of the streaming merge, as a share of the model size

_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch, safetensors, transformers, peft  # imports are the baseline, not merge memory
    from kubetune.trainer import export

    def status_kib(field):
        line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
        return int(line.split()[1])

    base, adapter, out = (Path(a) for a in sys.argv[1:4])
    how, shard_bytes = sys.argv[4], int(sys.argv[5])
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    rss0 = status_kib("VmRSS")
    if how == "stream":
        export.stream_merge(base, adapter, out, shard_bytes)
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged.save_pretrained(str(out), max_shard_size=shard_bytes)
    print(json.dumps({"peakGrowthKiB": status_kib("VmHWM") - rss0}))
    """
)


def build(work: Path, hidden: int, layers: int, shard_bytes: int) -> tuple[Path, Path]:
    """A random Llama base saved in shards, and a LoRA adapter whose B matrices are not zero."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    base, adapter = work / "base", work / "adapter"
    model.save_pretrained(str(base), max_shard_size=shard_bytes)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    peft_model.save_pretrained(str(adapter))
    return base, adapter


def merge_in_child(base: Path, adapter: Path, out: Path, how: str, shard_bytes: int) -> int:
    """Peak RSS growth in bytes of one merge in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(base), str(adapter), str(out), how, str(shard_bytes)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    if proc.returncode != 0:
        sys.exit(f"{how} merge failed:\n{proc.stderr[-4000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peakGrowthKiB"]) * 1024


def max_difference(a_dir: Path, b_dir: Path) -> float:
    """Largest absolute difference between two merged models, read one tensor at a time."""
    from kubetune.trainer.export import iter_tensors

    theirs = dict(iter_tensors(b_dir))
    worst = 0.0
    for name, tensor in iter_tensors(a_dir):
        worst = max(worst, (tensor.float() - theirs.pop(name).float()).abs().max().item())
    if theirs:
        sys.exit(f"tensors only in {b_dir}: {sorted(theirs)[:5]}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shard-mb", type=int, default=64, help="input and output shard size")
    parser.add_argument("--work", type=Path, help="keep the models here (default: a temporary directory)")
    args = parser.parse_args()
    from kubetune.trainer.export import model_size_bytes

    shard_bytes = args.shard_mb * 10**6
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        work = args.work or Path(tmp)
        base, adapter = build(work, args.hidden, args.layers, shard_bytes)
        size = model_size_bytes(base)
        growth = {how: merge_in_child(base, adapter, work / how, how, shard_bytes) for how in ("stream", "peft")}
        result: dict[str, Any] = {
            "modelSizeMiB": round(size / 2**20, 1),
            "shardMB": args.shard_mb,
            "streamPeakRssGrowthMiB": round(growth["stream"] / 2**20, 1),
            "peftPeakRssGrowthMiB": round(growth["peft"] / 2**20, 1),
            "streamOfModelSize": round(growth["stream"] / size, 3),
            "peftOfModelSize": round(growth["peft"] / size, 3),
            "streamOfPeft": round(growth["stream"] / growth["peft"], 3),
            "maxAbsDifference": max_difference(work / "stream", work / "peft"),
        }
    print(json.dumps(result, indent=2))
    if result["streamOfModelSize"] >= TARGET:
        sys.exit(f"streaming merge peak RSS growth {result['streamOfModelSize']}x the model size (target < {TARGET}x)")


if __name__ == "__main__":
    main()
