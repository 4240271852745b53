"""The operator image installs `kubetune` without extras: its dependency set must not reach the
training stack, and everything the operator imports must work without it.

No container engine runs here, so the image's environment is reproduced in a subprocess whose
import system refuses the training packages, as they would be missing in the image.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.integration

TRAINING_STACK = {
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "deepspeed",
    "bitsandbytes",
    "tokenizers",
    "safetensors",
    "triton",
}


def base_dependency_closure(dist_name: str) -> set[str]:
    """Every distribution `pip install <dist_name>` (no extras) pulls in, from installed metadata."""
    seen: set[str] = set()
    todo = [dist_name]
    while todo:
        name = todo.pop()
        for raw in md.requires(name) or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_base_install_does_not_pull_the_training_stack() -> None:
    closure = base_dependency_closure("kubetune")
    assert {"kopf", "kubernetes", "pydantic", "boto3"} <= closure
    assert closure & TRAINING_STACK == set()


def test_training_stack_is_only_behind_the_train_extra() -> None:
    extras = md.metadata("kubetune").get_all("Provides-Extra") or []
    assert "train" in extras
    train = {canonicalize_name(Requirement(r).name) for r in md.requires("kubetune") or [] if 'extra == "train"' in r}
    assert {"torch", "transformers", "peft", "trl", "deepspeed", "bitsandbytes"} <= train


# Runs in a fresh interpreter: the training packages raise ImportError as in the operator image,
# then every operator-side module is imported and the CLI parser is built (which imports every
# subcommand module).
PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, importlib.util, json, os, pkgutil, sys

    BLOCKED = set(os.environ["KUBETUNE_NOT_IN_IMAGE"].split(","))

    class NotInImage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed in the operator image")
            return None

    sys.meta_path.insert(0, NotInImage())

    imported = []
    for name in ("kubetune.api", "kubetune.api.crd", "kubetune.api.validation", "kubetune.cli",
                 "kubetune.render", "kubetune.storage", "kubetune.operator"):
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        imported.append(name)
        if hasattr(module, "__path__"):
            for info in pkgutil.walk_packages(module.__path__, prefix=name + "."):
                if info.name.endswith(".__main__"):
                    continue
                importlib.import_module(info.name)
                imported.append(info.name)

    from kubetune.cli import build_parser
    parser = build_parser()
    commands = sorted(parser._subparsers._group_actions[0].choices)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"imported": imported, "commands": commands, "heavy": heavy}))
    """
)


def test_operator_side_imports_work_without_the_training_stack() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "KUBETUNE_NOT_IN_IMAGE": ",".join(sorted(TRAINING_STACK))},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert {"kubetune.api", "kubetune.cli"} <= set(result["imported"])
    assert {"crd", "validate"} <= set(result["commands"])
