"""`kubetune render FILE`: exactly what the operator will create, as YAML."""

from __future__ import annotations

import argparse
import os
import sys

ORDER = 11


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="print the PyTorchJob, ConfigMap and RBAC the operator creates",
        description="Print, as YAML, the objects the operator creates for a FineTuneJob: the "
        "ConfigMap the trainer reads, the per-job ServiceAccount/Role/RoleBinding that lets it "
        "report progress, and the Kubeflow PyTorchJob. Pure: talks to no cluster.",
    )
    p.add_argument("file", metavar="FILE", help="FineTuneJob YAML (- for stdin)")
    p.add_argument(
        "--trainer-image",
        default=os.environ.get("KUBETUNE_TRAINER_IMAGE"),
        help="trainer image the operator injects (default: $KUBETUNE_TRAINER_IMAGE or the release image)",
    )
    p.add_argument(
        "--only",
        choices=["pytorchjob", "configmap", "rbac", "config"],
        help="print one part: the PyTorchJob, the ConfigMap, the RBAC objects, or the trainer config",
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
        children = render.build_children(job, settings)
        wanted = {
            None: lambda o: True,
            "pytorchjob": lambda o: o["kind"] == "PyTorchJob",
            "configmap": lambda o: o["kind"] == "ConfigMap",
            "rbac": lambda o: o["kind"] in ("ServiceAccount", "Role", "RoleBinding"),
        }[args.only]
        objects.extend(o for o in children if wanted(o))
    if objects:
        sys.stdout.write(render.to_yaml(objects))
    return 0
