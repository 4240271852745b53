"""The Flux Kustomization with FineTuneJob health expressions (gitops/flux/kustomization.yaml).

No CEL runtime is installable here, so these check what can go wrong without one: the YAML shape
Flux's API expects, only phases the operator actually sets, and every optional status field
guarded with has() (Flux waits until the timeout on a missing field instead of failing).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.conditions import PHASES

REPO = Path(__file__).resolve().parents[3]
KUSTOMIZATION = REPO / "gitops" / "flux" / "kustomization.yaml"


def _check() -> dict[str, Any]:
    doc = yaml.safe_load(KUSTOMIZATION.read_text())
    assert doc["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    assert doc["kind"] == "Kustomization"
    (check,) = [c for c in doc["spec"]["healthCheckExprs"] if c["kind"] == "FineTuneJob"]
    result: dict[str, Any] = check
    return result


def test_health_check_targets_finetunejob_with_all_three_expressions() -> None:
    check = _check()
    assert check["apiVersion"] == "kubetune.io/v1alpha1"
    assert set(check) == {"apiVersion", "kind", "inProgress", "failed", "current"}
    assert all(isinstance(check[k], str) and check[k].strip() for k in ("inProgress", "failed", "current"))


def test_expressions_name_only_phases_the_operator_sets() -> None:
    check = _check()
    for key in ("inProgress", "failed", "current"):
        for phase in re.findall(r"'([A-Z][A-Za-z]+)'", check[key]):
            if phase in {"Failed", "True"}:  # condition type/status literals share the spelling
                continue
            assert phase in PHASES, f"{key}: unknown phase {phase}"
    assert "'Succeeded'" in check["current"]
    assert "'Failed'" in check["failed"]


def test_every_status_field_is_guarded_with_has() -> None:
    check = _check()
    for key in ("inProgress", "failed", "current"):
        expr = check[key]
        used = set(re.findall(r"(?<![\w.])status\.(\w+)", expr))
        guarded = set(re.findall(r"has\(status\.(\w+)\)", expr))
        assert used and used <= guarded, f"{key}: unguarded status fields {sorted(used - guarded)}"


def test_parentheses_balance() -> None:
    check = _check()
    for key in ("inProgress", "failed", "current"):
        depth = 0
        for char in check[key]:
            depth += {"(": 1, ")": -1}.get(char, 0)
            assert depth >= 0, key
        assert depth == 0, key
