"""Two operator replicas (the chart's replicaCount: 2) against one API server: Kopf peering with
random priorities, the peering CRD and RBAC taken from the chart. Exactly one replica acts; when it
is killed (SIGKILL: no goodbye) the other takes over within the peering lifetime, and no job gets
a second training job."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import yaml

from kubetune import api
from kubetune.operator.handlers import PEERING_LIFETIME
from tests.integration.deploy.deploy_helm import CHART, NAMESPACE, RELEASE, find_helm, run_helm
from tests.integration.operator.harness import Cluster, OperatorProcess, job_manifest, wait_for

pytestmark = pytest.mark.integration
PEERING = "kubetune"
# Takeover after a SIGKILL: the dead replica's record expires (PEERING_LIFETIME), the survivor
# re-reads the peering object and resumes, re-lists the FineTuneJobs and handles what is new.
TAKEOVER_WITHIN = PEERING_LIFETIME + 15.0


def _chart(*values: str) -> list[dict[str, object]]:
    helm = find_helm()
    if helm is None:
        pytest.fail("helm not found: run scripts/install-helm.sh (installs .tools/bin/helm) or set KUBETUNE_HELM")
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values]
    proc = run_helm(helm, args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def replicas(
    cluster: Cluster, operator_factory: Callable[..., OperatorProcess]
) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    cluster.install_crds()
    (peering_crd,) = [
        d
        for d in _chart("--set", "replicaCount=2")
        if d["kind"] == "CustomResourceDefinition" and d["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"  # type: ignore[index]
    ]
    cluster.ext.create_custom_resource_definition(peering_crd)
    scope = ("--all-namespaces", "--peering", PEERING)
    # DEBUG: Kopf says when a paused replica's watch streams have actually closed (see _settled).
    debug = {"KUBETUNE_LOG_LEVEL": "DEBUG"}
    first = operator_factory(scope, debug).start()
    second = operator_factory(scope, debug).start()
    yield first, second
    for op in (first, second):
        print(op.log_tail())


def _peers(cluster: Cluster) -> dict[str, dict[str, object]]:
    """The replicas' keep-alive records in the peering object: identity -> priority, lastseen."""
    peering = cluster.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", PEERING)
    return dict(peering.get("status") or {})


def _created(op: OperatorProcess) -> float:
    """How many times this replica ran the create handler (its own /metrics)."""
    return op.metric("kubetune_reconcile_total", handler="create")


def _peering_state(op: OperatorProcess) -> str:
    """Kopf's last word on this replica: it starts paused, logs "Resuming operations" when it finds
    no live peer above it and "Pausing operations" when one appears; only after that does it close
    its watch streams ("Pausing the watch-stream", DEBUG). Until then, an event already on its way
    is still handled."""
    words = ("Resuming operations", "Pausing operations", f"Pausing the watch-stream for {api.PLURAL}.")
    said = [word for line in op.log_text().splitlines() for word in words if word in line]
    return said[-1] if said else "not yet resumed"


def _settled(replicas: tuple[OperatorProcess, OperatorProcess]) -> bool:
    states = sorted(_peering_state(op) for op in replicas)
    return states == sorted(["Resuming operations", f"Pausing the watch-stream for {api.PLURAL}."])


def test_one_replica_acts_and_the_other_takes_over(
    cluster: Cluster, replicas: tuple[OperatorProcess, OperatorProcess]
) -> None:
    # Kopf starts each replica paused until it has read the peering object. Both records being in
    # the API server is not enough: a replica that resumed alone acts until its watch brings the
    # higher newcomer's record (harmless: creation is idempotent, the second create meets 409 and
    # adopts), so wait until the replicas have settled.
    wait_for("both replicas' records", lambda: len(_peers(cluster)) == 2)
    wait_for("one replica acting, the other's watches closed", lambda: _settled(replicas))
    cluster.create_job(job_manifest("ha-1", backend="pytorchjob"))
    wait_for("the PyTorchJob", lambda: cluster.pytorchjob("ha-1"))
    wait_for("a replica handling it", lambda: sum(_created(op) for op in replicas) >= 1)
    acted = [op for op in replicas if _created(op) > 0]
    assert len(acted) == 1, "exactly one replica acts"
    (leader,) = acted
    (standby,) = [op for op in replicas if op is not leader]

    first_uid = cluster.existing_pytorchjob("ha-1")["metadata"]["uid"]
    leader.kill()
    killed_at = time.monotonic()
    cluster.create_job(job_manifest("ha-2", backend="pytorchjob"))
    wait_for("the standby taking over", lambda: cluster.pytorchjob("ha-2"), timeout=TAKEOVER_WITHIN)
    took = time.monotonic() - killed_at
    assert _created(standby) >= 1
    print(f"takeover after SIGKILL: {took:.1f} s (lifetime {PEERING_LIFETIME} s)")

    owners = [ref["name"] for pj in cluster.pytorchjobs() for ref in pj["metadata"]["ownerReferences"]]
    assert sorted(owners) == ["ha-1", "ha-2"], "one training job per FineTuneJob, none twice"
    assert cluster.existing_pytorchjob("ha-1")["metadata"]["uid"] == first_uid, "adopted, not made again"


def test_the_chart_grants_what_peering_uses(
    cluster: Cluster, replicas: tuple[OperatorProcess, OperatorProcess]
) -> None:
    wait_for("both replicas' records", lambda: len(_peers(cluster)) >= 1)
    used = {verb for group, _, verb in cluster.server.api_calls(OperatorProcess.TOKEN) if group == "kopf.dev"}
    (role,) = [
        d
        for d in _chart("--set", "replicaCount=2")
        if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-peering")  # type: ignore[index]
    ]
    granted = {verb for rule in role["rules"] for verb in rule["verbs"]}  # type: ignore[index]
    assert used == granted
