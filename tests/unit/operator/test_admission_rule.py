"""The CRD's transition rule refuses, at admission, the spec edits the operator would refuse with
SpecApplied=False once the training job exists; evaluated with cel-python on the generated CRD."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api.crd import build_crd
from kubetune.operator import status as st

SPEC: dict[str, Any] = {
    "model": {"source": "Qwen/Qwen2.5-0.5B-Instruct"},
    "datasets": [{"source": "s3://data/a.jsonl"}],
    "output": {"uri": "s3://models/a/"},
    "suspend": False,
}
STARTED = {"phase": "Training", "backend": "trainjob", "trainJob": "a"}


def _root() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _admits(old: dict[str, Any], new: dict[str, Any]) -> bool:
    import celpy

    (rule,) = [r for r in _root()["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    env = celpy.Environment()
    program = env.program(env.compile(rule["rule"]))
    return bool(program.evaluate({"self": celpy.json_to_cel(new), "oldSelf": celpy.json_to_cel(old)}))


def _job(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    job: dict[str, Any] = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "spec": copy.deepcopy(spec)}
    if status is not None:
        job["status"] = status
    return job


@pytest.mark.parametrize(
    "edit",
    [
        {"model": {"source": "Qwen/Qwen2.5-7B-Instruct"}},
        {"datasets": [{"source": "s3://data/b.jsonl"}]},
        {"queueName": "team-b"},  # added
        {"output": None},  # removed
    ],
)
def test_an_edit_after_the_training_job_exists_is_refused(edit: dict[str, Any]) -> None:
    new = {k: v for k, v in {**SPEC, **edit}.items() if v is not None}
    assert not _admits(_job(SPEC, STARTED), _job(new, STARTED))
    assert st.changed_paths(st.immutable_spec(SPEC), st.immutable_spec(new)), "the operator refuses it too"
    old_v1 = {"phase": "Training", "pytorchJob": "a"}
    assert not _admits(_job(SPEC, old_v1), _job(new, old_v1))


def test_suspend_and_status_may_change() -> None:
    assert _admits(_job(SPEC, STARTED), _job({**SPEC, "suspend": True}, STARTED))
    assert _admits(_job(SPEC, STARTED), _job(SPEC, {**STARTED, "phase": "Succeeded"}))
    assert _admits(_job(SPEC, STARTED), _job(SPEC, STARTED))


def test_before_the_training_job_exists_any_edit_is_admitted() -> None:
    edited = {**SPEC, "model": {"source": "Qwen/Qwen2.5-7B-Instruct"}}
    assert _admits(_job(SPEC), _job(edited))
    assert _admits(_job(SPEC, {"phase": "Pending"}), _job(edited, {"phase": "Pending"}))  # waiting for a CRD
    failed = {"phase": "Failed", "conditions": [{"type": "Validated", "status": "False"}]}
    assert _admits(_job(SPEC, failed), _job(edited, failed)), "an invalid spec can be fixed"


def test_every_spec_field_but_suspend_is_covered() -> None:
    (rule,) = [r["rule"] for r in _root()["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    fields = set(_root()["properties"]["spec"]["properties"])
    covered = {f for f in fields if f"self.spec.{f} == oldSelf.spec.{f}" in rule}
    assert covered == fields - {"suspend"}
