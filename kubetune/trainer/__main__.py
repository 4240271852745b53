"""`python -m kubetune.trainer --config FILE`: the process torchrun starts in every pod."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.trainer", description=__doc__)
    parser.add_argument(
        "--config",
        default=os.environ.get("KUBETUNE_CONFIG"),
        help="FineTuneJob YAML (the rendered ConfigMap, or a user file); default $KUBETUNE_CONFIG",
    )
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config FILE (or KUBETUNE_CONFIG) is required")
    from kubetune.trainer.recipe import run

    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
