"""Fixtures of the dashboard tests: the chart's (the real Helm binary, `render`, shared with
tests/integration/deploy) and an API emulator with the CRDs installed, one per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.deploy.conftest import helm, render
from tests.integration.operator.harness import Cluster
from tests.integration.operator.k8s_emulator import RunningApiServer

__all__ = ["cluster", "helm", "render"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    server = RunningApiServer(tmp_path_factory.mktemp("k8s")).start()
    try:
        c = Cluster(server)
        c.install_crds()
        yield c
    finally:
        server.stop()
