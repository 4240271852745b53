"""The Argo CD health check (gitops/argocd/.../health.lua) run against its status fixtures, the way
Argo CD's own resource_customizations tests run: obj is the resource, the script returns
{status, message}. Lua 5.1 is what Argo CD embeds (gopher-lua); 5.4 guards against 5.1-only idioms.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import v1alpha1 as api

REPO = Path(__file__).resolve().parents[3]
CHECK_DIR = REPO / "gitops" / "argocd" / "resource_customizations" / "kubetune.io" / "FineTuneJob"
HEALTH_LUA = (CHECK_DIR / "health.lua").read_text()
CASES = yaml.safe_load((CHECK_DIR / "health_test.yaml").read_text())["tests"]
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended"}


def run_health_check(obj: dict[str, Any], lua_version: str) -> dict[str, str]:
    runtime_module = importlib.import_module(f"lupa.{lua_version}")
    lua = runtime_module.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(HEALTH_LUA)
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("lua_version", ["lua51", "lua54"])
@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_check_matches_expected(case: dict[str, Any], lua_version: str) -> None:
    obj = yaml.safe_load((CHECK_DIR / case["inputPath"]).read_text())
    assert run_health_check(obj, lua_version) == case["healthStatus"]


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_fixtures_are_valid_finetunejobs(case: dict[str, Any]) -> None:
    # Fixtures drift from the real status shape otherwise (field renames, new required fields).
    obj = yaml.safe_load((CHECK_DIR / case["inputPath"]).read_text())
    job = api.FineTuneJob.model_validate(obj)
    if job.status is not None:
        assert job.status.phase in (
            None,
            "Pending",
            "Queued",
            "Training",
            "Exporting",
            "Succeeded",
            "Failed",
            "Suspended",
        )


def test_every_argo_status_and_phase_is_covered() -> None:
    assert {c["healthStatus"]["status"] for c in CASES} == ARGO_STATUSES
    phases = {
        (yaml.safe_load((CHECK_DIR / c["inputPath"]).read_text()).get("status") or {}).get("phase") for c in CASES
    }
    assert phases >= {None, "Pending", "Queued", "Training", "Exporting", "Succeeded", "Failed", "Suspended"}


def test_unknown_phase_is_progressing_not_an_error() -> None:
    obj = {"metadata": {"name": "x", "generation": 1}, "spec": {}, "status": {"phase": "SomethingNew"}}
    assert run_health_check(obj, "lua51") == {"status": "Progressing", "message": "SomethingNew"}


def test_argocd_cm_patch_embeds_the_same_lua() -> None:
    patch = yaml.safe_load((REPO / "gitops" / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    embedded = patch["data"]["resource.customizations.health.kubetune.io_FineTuneJob"]
    assert embedded == HEALTH_LUA, "copy health.lua into argocd-cm-patch.yaml (indented by 4)"
