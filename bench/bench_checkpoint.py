"""The step-time hiccup at a checkpoint: uploads in the background (now) against uploads inside the
save (before), in the same run, on a local S3 server (SeaweedFS on 127.0.0.1).

    python bench/bench_checkpoint.py                   # a few minutes on 2 busy cores
    python bench/bench_checkpoint.py --hidden 768 --steps 40

A full fine-tune of a small random Llama (hidden 384, 8 layers: ~11M parameters, a ~130 MB
checkpoint with its Adam state) runs in this process under the HF Trainer with the trainer's
`CheckpointSync` callback, saving every `--every` steps to s3://bench/. The baseline is the same
callback waiting for its upload and writing COMPLETE inside the save, which is what it did before
uploads moved to the background. Against the step time before the first save it prints the stall
(the step that holds a save) and the extra time over the steps up to the next save (a background
upload shares the CPU with training); both include writing the checkpoint to local disk.
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
    prefix = f"s3://bench/{work.name}-{mode.split()[0]}/checkpoints"
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
    complete, _ = scan(prefix, StorageOptions())
    assert complete, f"{mode}: no complete checkpoint under {prefix}"
    # gaps[i] runs from the start of step i+1 to that of step i+2 (1-based steps), so gaps[s-1] holds
    # the save of step s. The baseline is the steps before the first save (the first one warms up).
    base = statistics.median(gaps[1 : args.every - 1])
    saves = range(args.every, args.steps - args.every + 1, args.every)
    stall = [gaps[s - 1] - base for s in saves]
    # Everything a checkpoint costs until the next one: a background upload that slows the steps
    # beside it (CPU it shares with training) counts too.
    extra = [sum(gaps[s - 1 : s - 1 + args.every]) - args.every * base for s in saves]
    return {
        "base_step_s": base,
        "stall_s": statistics.mean(stall),
        "extra_s": statistics.mean(extra),
        "wall_s": wall,
        "complete": complete,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=31)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode, alternating (CPU timings are noisy)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from kubetune.devtools.s3server import S3Server
    from kubetune.devtools.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp, S3Server() as server:
        os.environ.update(server.env())
        server.make_bucket("bench")
        model_dir = build_tiny_model(Path(tmp) / "model", hidden_size=args.hidden, num_layers=args.layers)
        modes = ("upload in save (before)", "background upload (now)")
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for n in range(args.repeat):
            for mode in modes if n % 2 == 0 else modes[::-1]:  # alternate: no order bias
                r = step_gaps(mode, Path(tmp) / str(n), model_dir, args)
                results[mode].append(r)
                print(
                    f"{mode:25s} step {r['base_step_s']:.3f} s; at a save: stall {r['stall_s']:.3f} s, "
                    f"extra over the next {args.every} steps {r['extra_s']:.3f} s; wall {r['wall_s']:.1f} s",
                    flush=True,
                )
        for key in ("stall_s", "extra_s"):
            before, now = (statistics.median(r[key] for r in results[m]) for m in modes)
            print(f"median {key[:-2]}: before {before:.3f} s, now {now:.3f} s ({before / max(now, 1e-3):.1f}x)")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
