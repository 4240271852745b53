"""`kubetune render FILE`: exactly what the operator will create, as YAML, for either backend."""

from __future__ import annotations

import argparse
import os
import sys

ORDER = 11
TRAINING_KINDS = ("PyTorchJob", "TrainingRuntime", "TrainJob")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="print the TrainJob or PyTorchJob, ConfigMap and RBAC the operator creates",
        description="Print, as YAML, the objects the operator creates for a FineTuneJob: the "
        "ConfigMap the trainer reads, the per-job ServiceAccount/Role/RoleBinding that lets it "
        "report progress, and the training job: a Kubeflow Trainer v2 TrainingRuntime + TrainJob, or "
        "a Kubeflow Training Operator v1 PyTorchJob. Pure: talks to no cluster.",
    )
    p.add_argument("file", metavar="FILE", help="FineTuneJob YAML (- for stdin)")
    p.add_argument(
        "--trainer-image",
        default=os.environ.get("KUBETUNE_TRAINER_IMAGE"),
        help="trainer image the operator injects (default: $KUBETUNE_TRAINER_IMAGE or the release image)",
    )
    p.add_argument(
        "--backend",
        choices=["trainjob", "pytorchjob"],
        help="what spec.backend: auto becomes; the operator picks trainjob where the cluster serves "
        "trainjobs.trainer.kubeflow.org, else pytorchjob (default here: pytorchjob). A job that names "
        "its backend keeps it",
    )
    p.add_argument(
        "--only",
        choices=["job", "pytorchjob", "configmap", "rbac", "config"],
        help="print one part: the training job (TrainingRuntime + TrainJob, or PyTorchJob; pytorchjob is an "
        "alias kept for scripts), the ConfigMap, the RBAC objects, or the trainer config",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune import render
    from kubetune.api.validation import SpecError, load_jobs, read_job_text

    source = "<stdin>" if args.file == "-" else args.file
    try:
        jobs = load_jobs(read_job_text(args.file), source)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    settings = render.RenderSettings()
    if args.trainer_image:
        settings = render.RenderSettings(trainer_image=args.trainer_image)
    objects: list[dict[str, object]] = []
    for job in jobs:
        if args.only == "config":
            sys.stdout.write(render.config_yaml(job))
            continue
        for line in render.cluster_problems(job):
            print(f"{source}: warning: {line} (the operator refuses this job)", file=sys.stderr)
        backend = render.resolve_backend(job.spec.backend, args.backend or render.PYTORCHJOB)
        if args.backend and backend != args.backend:
            print(f"{source}: note: {job.name} has spec.backend: {backend}", file=sys.stderr)
        children = render.build_children(job, settings, backend)
        wanted = {
            None: lambda o: True,
            "job": lambda o: o["kind"] in TRAINING_KINDS,
            "pytorchjob": lambda o: o["kind"] in TRAINING_KINDS,
            "configmap": lambda o: o["kind"] == "ConfigMap",
            "rbac": lambda o: o["kind"] in ("ServiceAccount", "Role", "RoleBinding"),
        }[args.only]
        objects.extend(o for o in children if wanted(o))
    if objects:
        sys.stdout.write(render.to_yaml(objects))
    return 0
