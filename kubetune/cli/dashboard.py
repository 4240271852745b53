"""`kubetune dashboard`: a read-only web view of FineTuneJobs (a cluster's, or local runs')."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ORDER = 60


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="web dashboard of FineTuneJobs (read-only)",
        description="Serve a read-only web dashboard: the jobs with their progress, and for each job its loss, "
        "eval loss, learning rate and tokens/s charts, conditions and Events, data report, outputs and spec. "
        "Against the cluster of the current kubeconfig (or in-cluster config), or with --local DIR the jobs "
        "`kubetune run --local` wrote under DIR. Binds 127.0.0.1 unless told otherwise.",
    )
    p.add_argument("--local", metavar="DIR", help="show the local runs under DIR instead of a cluster")
    p.add_argument("--namespace", "-n", help="only this namespace (default: all the kubeconfig may list)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from kubetune.dashboard.jobs import ClusterJobs, LocalJobs
    from kubetune.dashboard.server import JobSource, build_app

    source: JobSource
    if args.local:
        root = Path(args.local)
        if not root.is_dir():
            print(f"kubetune: error: {root} is not a directory", file=sys.stderr)
            return 2
        source = LocalJobs(root)
    else:
        source = ClusterJobs.connect(args.namespace, args.kubeconfig)
    print(f"kubetune dashboard on http://{args.host}:{args.port}/ (read-only; Ctrl-C stops it)", flush=True)
    web.run_app(build_app(source), host=args.host, port=args.port, print=None)
    return 0
