"""`kubetune dashboard`: a web view of FineTuneJobs (a cluster's, or local runs'); read-only unless --allow-create."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ORDER = 60


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="web dashboard of FineTuneJobs (read-only unless --allow-create)",
        description="Serve a read-only web dashboard: the jobs with their progress, and for each job its loss, "
        "eval loss, learning rate and tokens/s charts, conditions and Events, data report, outputs and spec. "
        "Against the cluster of the current kubeconfig (or in-cluster config), or with --local DIR the jobs "
        "`kubetune run --local` wrote under DIR. Binds 127.0.0.1 unless told otherwise; read-only unless "
        "--allow-create.",
    )
    p.add_argument("--local", metavar="DIR", help="show the local runs under DIR instead of a cluster")
    p.add_argument("--namespace", "-n", help="only this namespace (default: all the kubeconfig may list)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument(
        "--allow-create",
        action="store_true",
        help="let the new-job form create FineTuneJobs in the cluster (as the dashboard's own credentials; "
        "the chart's dashboard.allowCreate grants that); read-only without it",
    )
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
        if args.allow_create:
            print("kubetune: error: --allow-create needs a cluster, not --local", file=sys.stderr)
            return 2
        source = LocalJobs(root)
        creator = None
    else:
        source = ClusterJobs.connect(args.namespace, args.kubeconfig)
        creator = source if args.allow_create else None
    mode = "may create jobs" if creator is not None else "read-only"
    print(f"kubetune dashboard on http://{args.host}:{args.port}/ ({mode}; Ctrl-C stops it)", flush=True)
    web.run_app(build_app(source, creator), host=args.host, port=args.port, print=None)
    return 0
