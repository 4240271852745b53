"""`kubetune run FILE --local`: the same FineTuneJob, on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ORDER = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a FineTuneJob on this machine (--local)",
        description="Run a FineTuneJob here, the way its PyTorchJob would run on a cluster: one "
        "torchrun per node with the pods' environment (gloo on CPU, nccl on GPU). Relative paths in "
        "the file are relative to the file. Ends by printing where the merged model, adapter, "
        "manifest and loss plot are, and a sample generation before and after training. A job whose "
        "output already holds its manifest is not run again; one run at a time may write an output.",
    )
    p.add_argument("file", metavar="FILE", help="FineTuneJob YAML")
    p.add_argument("--local", action="store_true", required=True, help="run on this machine (required)")
    p.add_argument("--nodes", type=int, help="override spec.resources.nodes (local 'nodes' are process groups)")
    p.add_argument(
        "--nproc-per-node",
        type=int,
        help="processes per node (default: gpusPerNode, or 1 for CPU jobs); use it to run a GPU job on CPU",
    )
    p.add_argument("--prompt", help="prompt for the sample generation (default: the first user turn of the data)")
    p.add_argument("--no-sample", action="store_true", help="skip the sample generation at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune import local
    from kubetune.api.validation import SpecError
    from kubetune.lease import LeaseHeld

    try:
        plan = local.plan(Path(args.file), nodes=args.nodes, procs_per_node=args.nproc_per_node)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"kubetune: error: {exc}", file=sys.stderr)
        return 2
    job = plan.job
    try:
        with local.claim(plan) as output_lease:
            manifest = local.finished(job)
            if manifest is not None:
                print(f"kubetune: {job.name} already finished (its manifest records this spec); nothing to run")
                print("\n".join(local.summary_lines(job, manifest)))
                return 0
            print(
                f"kubetune: running {job.name} locally: {plan.nodes} node(s) x {plan.procs_per_node} process(es), "
                f"config {plan.config_path}",
                flush=True,
            )
            prompt = None if args.no_sample else (args.prompt or local.first_user_prompt(job))
            code = local.launch(plan, lost=output_lease.lost)
            manifest = local.finished(job)
    except LeaseHeld as exc:
        print(f"kubetune: error: {exc}", file=sys.stderr)
        return 1
    if manifest is None:
        line = local.failure_line(plan) if code != 0 else "the trainer wrote no manifest"
        print(f"kubetune: the run failed (exit {code})" + (f": {line}" if line else ""), file=sys.stderr)
        print(f"kubetune: full log: {plan.log_path}", file=sys.stderr)
        return code or 1
    if code != 0:
        # Stopped after it had finished (e.g. a signal during the last upload's clean-up): the manifest,
        # written last, says the result is complete.
        print(f"kubetune: the trainer exited {code} after it finished; the manifest is complete")
    print("\n".join(local.summary_lines(job, manifest)))
    if code == 0 and prompt:
        _sample(plan, manifest, prompt)
    if model_uri := (manifest.get("outputs") or {}).get("model"):
        print(f"\nTalk to it: kubetune chat {model_uri}")
    return 0


def _sample(plan: Any, manifest: dict[str, Any], prompt: str) -> None:
    from kubetune import local

    job = plan.job
    model_uri = (manifest.get("outputs") or {}).get("model")
    if not model_uri:
        return
    model_dir = local.fetch_dir(model_uri, job, plan.work_dir)
    print(f"\nSample generation for {prompt!r}:")
    base_dir = Path(job.spec.model.source)
    if base_dir.is_dir():  # a local base model; hub and s3 bases are not fetched a second time
        before = local.sample_generation(base_dir, prompt, tokenizer_dir=model_dir)
        print(f"  base model:      {before!r}")
    print(f"  after training:  {local.sample_generation(model_dir, prompt)!r}")
