"""The chart's CRD template is generated from the API models; it must not drift from them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from kubetune.api.crd import build_crd

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = REPO / "charts" / "kubetune" / "templates" / "crd-finetunejob.yaml"


def _sync_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_chart_crd", REPO / "scripts" / "sync-chart-crd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_crd_template_is_up_to_date() -> None:
    expected = _sync_script().render_chart_crd()
    assert TEMPLATE.read_text() == expected, "stale chart CRD: run python scripts/sync-chart-crd.py"


def test_template_spec_is_build_crd_spec() -> None:
    # Strip the Helm actions (whole lines) and the spec left over is plain YAML.
    text = TEMPLATE.read_text()
    body = "\n".join(line for line in text.splitlines() if not re.match(r"^\s*\{\{.*\}\}\s*$", line))
    body = re.sub(r"\{\{-? /\*.*?\*/ -?\}\}", "", body, flags=re.S)
    doc = yaml.safe_load(body)
    assert doc["spec"] == build_crd()["spec"]


def test_keep_annotation_and_switch_are_present() -> None:
    text = TEMPLATE.read_text()
    assert text.count("{{- if .Values.crds.enabled }}") == 1
    assert "{{- if .Values.crds.keep }}" in text
    assert "helm.sh/resource-policy: keep" in text


def test_generator_refuses_template_delimiters_in_the_crd() -> None:
    crd = build_crd()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "uses {{ braces }}"
    with pytest.raises(ValueError, match="template action"):
        _sync_script().render_chart_crd(crd)
