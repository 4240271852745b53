"""`kubetune operator`: run the FineTuneJob operator (Kopf) against the current cluster."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import sys

ORDER = 60

DESCRIPTION = """\
Run the FineTuneJob operator: watch FineTuneJobs and turn each into a Kubeflow Trainer v2 TrainJob or
a Training Operator v1 PyTorchJob (plus its ConfigMap and trainer ServiceAccount/Role/RoleBinding),
then keep the FineTuneJob's status (phase, conditions, progress columns) in step with it.

Configuration comes from the environment (the Helm chart sets it); flags override it:
  KUBETUNE_NAMESPACES                 comma-separated namespaces; empty or * = all (cluster-wide)
  KUBETUNE_TRAINER_IMAGE              trainer image (default ghcr.io/kubetune/trainer:<version>)
  KUBETUNE_TRAINER_IMAGE_PULL_POLICY  Always | IfNotPresent | Never (default IfNotPresent)
  KUBETUNE_METRICS_PORT               Prometheus /metrics port (default 8080; 0 = off)
  KUBETUNE_HEALTH_PORT                /healthz liveness/readiness port (default 8081; 0 = off)
  KUBETUNE_LOG_FORMAT                 json | plain (default json)
  KUBETUNE_LOG_LEVEL                  DEBUG | INFO | WARNING | ERROR (default INFO)
  KUBETUNE_DEFAULT_BACKEND            what spec.backend: auto means: auto (TrainJob where served, else
                                      PyTorchJob) | trainjob | pytorchjob (default auto)
Credentials: the pod's service account in a cluster, or the kubeconfig (KUBECONFIG) outside one.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the FineTuneJob operator (Kopf) against the current cluster",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeat for several); overrides KUBETUNE_NAMESPACES",
    )
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--standalone", action="store_true", help="do not coordinate with other operator replicas (Kopf peering off)"
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="run as one of several replicas: coordinate through the Kopf peering object NAME (the one "
        "with the highest priority acts, the others wait; each replica draws a random priority)",
    )
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="Prometheus /metrics port (0 = off)")
    parser.add_argument("--health-port", type=int, metavar="PORT", help="/healthz port (0 = off)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune.operator.settings import OperatorConfig, SettingsError

    if args.namespaces and args.all_namespaces:
        print("kubetune operator: use --namespace or --all-namespaces, not both", file=sys.stderr)
        return 2
    try:
        config = OperatorConfig.from_env()
    except SettingsError as exc:
        print(f"kubetune operator: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if args.namespaces:
        overrides["namespaces"] = tuple(args.namespaces)
    if args.all_namespaces:
        overrides["namespaces"] = ()
    for flag, field in ((args.metrics_port, "metrics_port"), (args.health_port, "health_port")):
        if flag is not None:
            if not 0 <= flag <= 65535:
                print(f"kubetune operator: --{field.replace('_', '-')} {flag} is not a port", file=sys.stderr)
                return 2
            overrides[field] = flag
    if args.verbose:
        overrides["log_level"] = "DEBUG"
    config = dataclasses.replace(config, **overrides)  # type: ignore[arg-type]
    if args.standalone and args.peering:
        print("kubetune operator: use --standalone or --peering, not both", file=sys.stderr)
        return 2
    if args.peering and not config.clusterwide:
        print("kubetune operator: --peering needs cluster-wide mode (all namespaces)", file=sys.stderr)
        return 2
    config.apply_to_env(os.environ)  # the startup handler reads the same settings back

    import kopf

    import kubetune.operator.handlers  # noqa: F401  (registers the handlers)

    log_format = kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.PLAIN
    kopf.configure(log_format=log_format, verbose=args.verbose, debug=args.verbose)
    logging.getLogger().setLevel(config.log_level_number)
    for noisy in ("kubernetes", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, config.log_level_number))
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    if args.peering:
        from kubetune.operator.kube import Kube, connect

        Kube(connect()).ensure_peering(args.peering)
    kopf.run(
        standalone=True if args.standalone else None,
        peering_name=args.peering,
        # Distinct priorities: Kopf pauses every replica when two share the highest one.
        priority=secrets.randbelow(2**31 - 1) + 1 if args.peering else None,
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        liveness_endpoint=liveness,
    )
    return 0
