"""`kubetune validate FILE...`: every problem of every FineTuneJob, each with its field path."""

from __future__ import annotations

import argparse
import sys

ORDER = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check FineTuneJob YAML files (exit 1 on any problem)",
        description="Check one or more FineTuneJob YAML files (multi-document files too) against the "
        "schema the operator and the CRD use. Prints every problem as `file: field.path: message` "
        "and exits 1 if there is any, 0 when all are clean.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML file(s); - reads standard input")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only, no summary")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="also refuse what only works with `kubetune run --local` (paths no spec.volumes entry mounts), "
        "as the operator does",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune.api.validation import SpecError, load_jobs, read_job_text
    from kubetune.render import cluster_problems

    failed = 0
    for path in args.files:
        source = "<stdin>" if path == "-" else path
        try:
            jobs = load_jobs(read_job_text(path), source)
        except SpecError as exc:
            failed += 1
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        if args.cluster:
            lines = [f"{source}: {line}" for job in jobs for line in cluster_problems(job)]
            if lines:
                failed += 1
                print("\n".join(lines), file=sys.stderr)
                continue
        if not args.quiet:
            names = ", ".join(f"{j.namespace}/{j.name}" for j in jobs)
            print(f"{source}: ok ({names})")
    if failed and not args.quiet:
        print(f"{failed} of {len(args.files)} file(s) invalid", file=sys.stderr)
    return 1 if failed else 0
