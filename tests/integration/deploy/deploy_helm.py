"""Helpers for the chart tests: find the real Helm binary and run it offline."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubetune"
RELEASE = "kt"
NAMESPACE = "kubetune-system"

Render = Callable[..., list[dict[str, Any]]]


def find_helm() -> Path | None:
    """KUBETUNE_HELM, else .tools/bin/helm (scripts/install-helm.sh), else helm on PATH."""
    candidates = [os.environ.get("KUBETUNE_HELM"), str(REPO / ".tools" / "bin" / "helm"), shutil.which("helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def run_helm(helm: Path, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    # No kubeconfig: lint and template must work offline, without a cluster.
    env = {**os.environ, "KUBECONFIG": os.devnull, "HELM_CACHE_HOME": "/tmp/kubetune-helm-cache"}
    return subprocess.run([str(helm), *args], capture_output=True, text=True, env=env, timeout=60, check=False)
