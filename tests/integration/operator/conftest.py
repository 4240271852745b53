"""Fixtures for the operator tests: a real HTTP Kubernetes API (kmock + compat layer) and the
operator as a real `kubetune operator` subprocess pointed at it through a kubeconfig.

The tests drive the API as a user would (kubernetes client) and play the Kubeflow controller and
the trainer themselves: they patch PyTorchJob status, and report progress with `StatusReporter`.
One API server per test module; the operator is started by each module as its scenario needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.operator.harness import Cluster, OperatorProcess
from tests.integration.operator.k8s_emulator import RunningApiServer


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApiServer]:
    server = RunningApiServer(tmp_path_factory.mktemp("k8s")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(api_server: RunningApiServer) -> Cluster:
    return Cluster(api_server)


@pytest.fixture(scope="module")
def operator_factory(
    api_server: RunningApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., OperatorProcess]]:
    made: list[OperatorProcess] = []

    def make(
        scope: tuple[str, ...] = ("--namespace", "default"), extra_env: dict[str, str] | None = None
    ) -> OperatorProcess:
        op = OperatorProcess(api_server, tmp_path_factory.mktemp("operator"), extra_env=extra_env, scope=scope)
        made.append(op)
        return op

    yield make
    for op in made:
        op.stop()
