"""`kubetune import llamafactory CONFIG.yaml`: a LLaMA-Factory training config as a FineTuneJob."""

from __future__ import annotations

import argparse
import sys

ORDER = 15


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="write a FineTuneJob from another tool's config")
    tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    lf = tools.add_parser(
        "llamafactory",
        help="a LLaMA-Factory training YAML (and its dataset_info.json)",
        description="Write the FineTuneJob that trains what `llamafactory-cli train CONFIG` trains. Every key "
        "is mapped (docs/llamafactory.md lists how); LLaMA-Factory's defaults are written where ours differ; "
        "keys with no equivalent are listed in a header comment. Exits 1 naming the key when the config asks "
        "for something kubetune cannot train.",
    )
    lf.add_argument("config", metavar="CONFIG", help="the LLaMA-Factory YAML")
    lf.add_argument(
        "--dataset-info", metavar="PATH", help="dataset_info.json (default: <dataset_dir>/dataset_info.json)"
    )
    lf.add_argument("--dataset-dir", metavar="DIR", help="where the data files are (default: the config's dataset_dir)")
    lf.add_argument(
        "--data-uri", metavar="URI", help="where the data files will be, e.g. s3://bucket/prefix/ (file_name appended)"
    )
    lf.add_argument("--output-uri", metavar="URI", help="spec.output.uri (default: output_dir when s3:// or absolute)")
    lf.add_argument("--nodes", type=int, metavar="N", help="spec.resources.nodes")
    lf.add_argument("--gpus-per-node", type=int, metavar="G", help="spec.resources.gpusPerNode")
    lf.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    lf.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune.api.validation import SpecError
    from kubetune.llamafactory.importer import Options, Refused, import_config

    options = Options(
        dataset_info=args.dataset_info,
        dataset_dir=args.dataset_dir,
        data_uri=args.data_uri,
        output_uri=args.output_uri,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
    )
    try:
        text = import_config(args.config, options)
    except Refused as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 1
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0
