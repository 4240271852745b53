"""Fixtures for the chart tests: the real Helm binary and a `render` helper around `helm template`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.deploy.deploy_helm import CHART, NAMESPACE, RELEASE, Render, find_helm, run_helm


@pytest.fixture(scope="session")
def helm() -> Path:
    path = find_helm()
    if path is None:
        # Failing (not skipping) keeps CI honest: the chart is only tested when Helm is present.
        pytest.fail("helm not found: run scripts/install-helm.sh (installs .tools/bin/helm) or set KUBETUNE_HELM")
    return path


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """render(*values_files, set_values=[...]) -> the rendered documents, in order."""

    def _render(*values_files: Path, set_values: Sequence[str] = ()) -> list[dict[str, Any]]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for f in values_files:
            args += ["--values", str(f)]
        for s in set_values:
            args += ["--set", s]
        proc = run_helm(helm, args)
        if proc.returncode != 0:
            raise AssertionError(f"helm template failed: {proc.stderr.strip()}")
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    return _render
