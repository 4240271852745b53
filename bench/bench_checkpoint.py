"""The step-time hiccup at a checkpoint: uploads in the background (now) against uploads inside the
save (before), in the same run, on a local S3 server (SeaweedFS on 127.0.0.1).

    python bench/bench_checkpoint.py                   # a few minutes on 2 busy cores
    python bench/bench_checkpoint.py --hidden 768 --steps 40

A full fine-tune of a small random Llama (hidden 512, 8 layers: ~20M parameters, a ~230 MB
checkpoint with its Adam state) runs in this process under the HF Trainer with the trainer's
`CheckpointSync` callback, saving every `--every` steps to s3://bench/. The baseline is the same
callback waiting for its upload and writing COMPLETE inside the save, which is what it did before
uploads moved to the background. The hiccup is the gap between two step starts that holds a save,
minus the median gap; both include writing the checkpoint to local disk, which is the same in both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def step_gaps(mode: str, work: Path, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from kubetune.storage import StorageOptions
    from kubetune.trainer.checkpoints import CheckpointSync, Preemption, scan
    from kubetune.trainer.config import Distributed

    class WaitingSync(CheckpointSync):
        """The baseline: the upload and its marker finish inside the save, as before."""

        def on_save(self, a: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            super().on_save(a, state, control, **kwargs)
            self.wait_for_uploads()
            return control

    class StepStarts(TrainerCallback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_step_begin(self, a: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.starts.append(time.perf_counter())
            return control

    torch.manual_seed(0)
    rows = [
        {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
        for ids in torch.randint(0, 500, (args.steps * args.batch, args.seq_len))
    ]
    prefix = f"s3://bench/{mode}/checkpoints"
    sync_class = WaitingSync if mode == "upload in save (before)" else CheckpointSync
    sync = sync_class(prefix, 2, StorageOptions(), Distributed(), Preemption(), "bench")
    starts = StepStarts()
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=TrainingArguments(
            output_dir=str(work / mode.split()[0]),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            save_steps=args.every,
            save_total_limit=2,
            logging_steps=10_000,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=rows,
        callbacks=[starts, sync],
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    gaps = [b - a for a, b in zip(starts.starts, starts.starts[1:], strict=False)]
    # The gap from step s to s+1 (1-based steps) holds the save of step s.
    saved = [gaps[s - 1] for s in range(args.every, args.steps, args.every)]
    plain = [g for i, g in enumerate(gaps) if (i + 1) % args.every]
    complete, _ = scan(prefix, StorageOptions())
    assert complete, f"{mode}: no complete checkpoint under {prefix}"
    median = statistics.median(plain)
    return {
        "median_step_s": median,
        "save_step_s": statistics.mean(saved),
        "hiccup_s": statistics.mean(saved) - median,
        "wall_s": wall,
        "complete": complete,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=21)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from kubetune.devtools.s3server import S3Server
    from kubetune.devtools.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp, S3Server() as server:
        os.environ.update(server.env())
        server.make_bucket("bench")
        model_dir = build_tiny_model(Path(tmp) / "model", hidden_size=args.hidden, num_layers=args.layers)
        results = {}
        for mode in ("upload in save (before)", "background upload (now)"):
            results[mode] = r = step_gaps(mode, Path(tmp), model_dir, args)
            print(
                f"{mode:25s} median step {r['median_step_s']:.3f} s, step with a save {r['save_step_s']:.3f} s, "
                f"hiccup {r['hiccup_s']:.3f} s, wall {r['wall_s']:.1f} s, complete {r['complete']}",
                flush=True,
            )
        before, now = results["upload in save (before)"], results["background upload (now)"]
        print(f"hiccup before/now: {before['hiccup_s'] / max(now['hiccup_s'], 1e-3):.1f}x smaller")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
