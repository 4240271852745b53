"""`kubetune crd`: the FineTuneJob CustomResourceDefinition, generated from the schema."""

from __future__ import annotations

import argparse
import sys

ORDER = 12


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "crd",
        help="print the FineTuneJob CRD (generated from the schema)",
        description="Print the FineTuneJob CustomResourceDefinition generated from kubetune's schema "
        "(the same as crds/finetunejob.yaml). Install with: kubetune crd | kubectl apply -f -",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune.api.crd import render_crd_yaml

    text = render_crd_yaml()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0
