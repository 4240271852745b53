"""`kubetune train --config FILE`: run the trainer in this process (the same code torchrun starts in pods).

For several processes, launch it under torchrun through the launcher, which turns each rank's own
exit code into the process's (torchrun alone reports every failure as 1):
`python -m kubetune.trainer.launch --nproc-per-node 2 -m kubetune.trainer --config job.yaml`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

ORDER = 40


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train, export and upload one FineTuneJob in this process",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("KUBETUNE_CONFIG"),
        help="FineTuneJob YAML (default $KUBETUNE_CONFIG)",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    if not args.config:
        print("kubetune: error: --config FILE (or KUBETUNE_CONFIG) is required", file=sys.stderr, flush=True)
        return 2
    from kubetune.trainer.recipe import run

    return run(args.config)
