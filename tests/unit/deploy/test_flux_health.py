"""The Flux Kustomizations with FineTuneJob health expressions (gitops/flux/kustomization.yaml).

The YAML shape Flux's API expects, only phases the operator actually sets, every optional status
field guarded with has() (Flux waits until the timeout on a missing field instead of failing), the
expressions evaluated (cel-python) on the Argo CD health check's fixtures with the same verdicts,
and no Kustomization of the whole jobs folder waiting on training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.conditions import CONDITION_TYPES, PHASES

REPO = Path(__file__).resolve().parents[3]
KUSTOMIZATION = REPO / "gitops" / "flux" / "kustomization.yaml"


ARGO_CHECK = REPO / "gitops" / "argocd" / "resource_customizations" / "kubetune.io" / "FineTuneJob"


def _docs() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(KUSTOMIZATION.read_text()) if d]
    for doc in docs:
        assert doc["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
        assert doc["kind"] == "Kustomization"
    return docs


def _check() -> dict[str, Any]:
    (gate,) = [d for d in _docs() if d["spec"].get("healthCheckExprs")]
    (check,) = [c for c in gate["spec"]["healthCheckExprs"] if c["kind"] == "FineTuneJob"]
    result: dict[str, Any] = check
    return result


def test_new_jobs_are_not_held_behind_a_training_wait() -> None:
    by_name = {d["metadata"]["name"]: d["spec"] for d in _docs()}
    assert by_name["finetune-jobs"]["wait"] is False, "a 12 h wait would hold every new job in Git"
    waiting = [name for name, spec in by_name.items() if spec.get("wait")]
    assert waiting == ["qwen-support-model"], "only a per-model gate waits"
    gate = by_name["qwen-support-model"]
    assert not gate["path"].startswith(by_name["finetune-jobs"]["path"]), "one object, one Kustomization"
    assert by_name["qwen-support-serving"]["dependsOn"] == [{"name": "qwen-support-model"}]


# Argo CD's verdict -> what Flux's expressions must say (first true of inProgress, failed, current).
ARGO_TO_FLUX = {"Healthy": "current", "Suspended": "current", "Degraded": "failed", "Progressing": "inProgress"}


def _flux_verdict(check: dict[str, Any], obj: dict[str, Any]) -> str:
    import celpy

    env = celpy.Environment()
    context = {key: celpy.json_to_cel(obj.get(key) or {}) for key in ("metadata", "spec", "status")}
    for key in ("inProgress", "failed", "current"):
        if bool(env.program(env.compile(check[key])).evaluate(context)):
            return key
    return "inProgress"


def test_flux_and_argo_cd_agree_on_every_fixture() -> None:
    check = _check()
    cases = yaml.safe_load((ARGO_CHECK / "health_test.yaml").read_text())["tests"]
    seen = set()
    for case in cases:
        obj = yaml.safe_load((ARGO_CHECK / case["inputPath"]).read_text())
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        if status.get("observedGeneration", meta.get("generation")) != meta.get("generation"):
            continue  # Flux answers InProgress itself before the expressions run
        expected = ARGO_TO_FLUX[case["healthStatus"]["status"]]
        assert _flux_verdict(check, obj) == expected, case["inputPath"]
        seen.add(case["inputPath"])
    assert "testdata/spec-refused.yaml" in seen


def test_health_check_targets_finetunejob_with_all_three_expressions() -> None:
    check = _check()
    assert check["apiVersion"] == "kubetune.io/v1alpha1"
    assert set(check) == {"apiVersion", "kind", "inProgress", "failed", "current"}
    assert all(isinstance(check[k], str) and check[k].strip() for k in ("inProgress", "failed", "current"))


def test_expressions_name_only_phases_the_operator_sets() -> None:
    check = _check()
    for key in ("inProgress", "failed", "current"):
        expr = check[key]
        for type_ in re.findall(r"c\.type == '(\w+)'", expr):
            assert type_ in CONDITION_TYPES, f"{key}: unknown condition type {type_}"
        for value in re.findall(r"c\.status == '(\w+)'", expr):
            assert value in ("True", "False"), f"{key}: condition status {value}"
        rest = re.sub(r"c\.(type|status) == '\w+'", "", expr)
        for phase in re.findall(r"'([A-Z][A-Za-z]+)'", rest):
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
