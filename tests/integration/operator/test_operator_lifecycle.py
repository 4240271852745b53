"""The operator as a real process against a real HTTP API: create, run, succeed, fail, progress,
suspend/resume, refused edits, restarts, delete, metrics. The test plays the Kubeflow controller
(PyTorchJob status) and the trainer (StatusReporter); everything asserted is what the API holds.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.conditions import PHASES
from kubetune.api.validation import SpecError, parse_job
from kubetune.render import RenderSettings, build_children
from kubetune.reporting import StatusReporter, progress_event
from tests.integration.operator.harness import Cluster, OperatorProcess, job_manifest, wait_for

pytestmark = pytest.mark.integration

OPERATOR_FIELDS = {
    "phase",
    "conditions",
    "observedGeneration",
    "backend",
    "pytorchJob",
    "startTime",
    "completionTime",
}


@pytest.fixture(scope="module")
def operator(cluster: Cluster, operator_factory: Callable[[], OperatorProcess]) -> Iterator[OperatorProcess]:
    cluster.install_crds()
    op = operator_factory().start()
    yield op
    print(op.log_tail())


@pytest.fixture()
def reporter(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], StatusReporter]]:
    """A stand-in trainer's rank 0, configured the way the rendered pod is (env)."""
    made: list[StatusReporter] = []

    def make(name: str) -> StatusReporter:
        monkeypatch.setenv("KUBETUNE_STATUS_REPORTING", "kubernetes")
        monkeypatch.setenv("KUBETUNE_JOB_NAME", name)
        monkeypatch.setenv("KUBETUNE_JOB_NAMESPACE", "default")
        monkeypatch.setenv("KUBECONFIG", str(cluster.server.kubeconfig))
        rep = StatusReporter.from_env()
        assert rep is not None
        made.append(rep)
        return rep

    yield make
    for rep in made:
        rep.close()


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    """A rendered child as stored, minus what the API server and the operator add."""
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = dict(out["metadata"])
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation", "ownerReferences"):
        meta.pop(key, None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != "kubetune.io/applied-spec"}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    out["metadata"] = meta
    return out


def test_create_makes_rendered_children_owned_by_the_job(cluster: Cluster, operator: OperatorProcess) -> None:
    manifest = job_manifest("create-1")
    # Labels a GitOps tool or the user put on the FineTuneJob: they describe it, not its children
    # (a queue label copied onto the PyTorchJob would hand it to Kueue behind spec.queueName's back).
    manifest["metadata"]["labels"] = {
        "argocd.argoproj.io/instance": "ml-platform",
        "kueue.x-k8s.io/queue-name": "team-a",
    }
    created = cluster.create_job(manifest)
    pj = wait_for("the PyTorchJob", lambda: cluster.pytorchjob("create-1"))

    stored_job = parse_job({k: v for k, v in created.items() if k != "status"})
    expected = build_children(stored_job, RenderSettings(trainer_image="registry.local/kubetune/trainer:test"))
    kinds = [c["kind"] for c in expected]
    assert kinds == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "PyTorchJob"]
    readers = {
        "ConfigMap": lambda n: cluster.api.sanitize_for_serialization(
            cluster.core.read_namespaced_config_map(n, "default")
        ),
        "ServiceAccount": lambda n: cluster.api.sanitize_for_serialization(
            cluster.core.read_namespaced_service_account(n, "default")
        ),
        "Role": lambda n: cluster.api.sanitize_for_serialization(cluster.rbac.read_namespaced_role(n, "default")),
        "RoleBinding": lambda n: cluster.api.sanitize_for_serialization(
            cluster.rbac.read_namespaced_role_binding(n, "default")
        ),
        "PyTorchJob": lambda n: cluster.pytorchjob(n),
    }
    uid = created["metadata"]["uid"]
    for child in expected:
        stored = readers[child["kind"]](child["metadata"]["name"])
        refs = stored["metadata"]["ownerReferences"]
        assert refs == [
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "name": "create-1",
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], child["kind"]
        assert stored["metadata"]["labels"] == child["metadata"]["labels"], child["kind"]
        assert _strip(stored) == _strip(child), f"{child['kind']} differs from the render"
    assert pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.local/kubetune/trainer:test"
    )

    job = wait_for(
        "status.pytorchJob",
        lambda: (cluster.job("create-1").get("status") or {}).get("pytorchJob") and cluster.job("create-1"),
    )
    status = job["status"]
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == 1
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Validated"] == "True" and conditions["PyTorchJobCreated"] == "True"
    assert "kopf" not in status
    assert not job["metadata"].get("finalizers"), "no external cleanup -> no finalizer"
    foreign = [k for k in job["metadata"].get("annotations", {}) if not k.startswith("kubetune.io/")]
    assert foreign == [], "Kopf's bookkeeping must live under kubetune.io/"
    wait_for("the Created event", lambda: "Created PyTorchJob create-1" in cluster.event_messages("create-1"))


def test_running_then_succeeded_with_progress_from_the_trainer(
    cluster: Cluster, operator: OperatorProcess, reporter: Callable[[str], StatusReporter]
) -> None:
    cluster.create_job(job_manifest("happy"))
    wait_for("the PyTorchJob", lambda: cluster.pytorchjob("happy"))
    cluster.set_pytorchjob_condition("happy", "Created", "PyTorchJobCreated", "PyTorchJob happy is created.")
    cluster.set_pytorchjob_condition(
        "happy",
        "Running",
        "PyTorchJobRunning",
        "PyTorchJob default/happy is running.",
        startTime="2026-01-01T10:00:00Z",
    )
    wait_for("phase Training", lambda: cluster.phase("happy") == "Training")
    running = cluster.condition("happy", "Running")
    assert running is not None
    assert (running["status"], running["reason"]) == ("True", "PyTorchJobRunning")
    assert running["message"] == "PyTorchJob default/happy is running."
    assert cluster.job("happy")["status"]["startTime"] == "2026-01-01T10:00:00Z"
    wait_for("the Training event", lambda: "Training started" in cluster.event_messages("happy"))

    trainer = reporter("happy")
    sent = time.monotonic()
    trainer.report(
        progress=progress_event(
            "training", step=84, total=200, loss=1.23456, etaSeconds=3720, tokensPerSecond=5120.5, epoch=0.42
        )
    )
    trainer.report(data_report={"rowsRead": 1000, "invalid": 0, "uri": "s3://models/happy/data_report.json"})
    progress = wait_for("status.progress", lambda: cluster.job("happy")["status"].get("progress"), timeout=30)
    latency = time.monotonic() - sent
    assert latency < 30, latency
    assert progress["display"] == "42% 84/200"
    assert progress["eta"] == "1h02m"
    assert progress["loss"] == pytest.approx(1.2346)
    assert progress["tokensPerSecond"] == 5120.5
    trainer.flush()
    assert wait_for("dataReport", lambda: cluster.job("happy")["status"].get("dataReport"))["rowsRead"] == 1000

    row = _printed_row(cluster, "happy")  # what `kubectl get ftj` shows (server-side printing)
    assert (row["Phase"], row["Progress"], row["Loss"], row["ETA"]) == ("Training", "42% 84/200", 1.2346, "1h02m")

    trainer.report(progress=progress_event("exporting", step=200, total=200, loss=0.5))
    wait_for("phase Exporting", lambda: cluster.phase("happy") == "Exporting")
    trainer.report(
        progress={"stage": "done"},
        outputs={"model": "s3://models/happy/model/", "adapter": "s3://models/happy/adapter/"},
        force=True,
    )
    cluster.set_pytorchjob_condition(
        "happy",
        "Succeeded",
        "PyTorchJobSucceeded",
        "PyTorchJob default/happy successfully completed.",
        completionTime="2026-01-01T11:00:00Z",
    )
    wait_for("phase Succeeded", lambda: cluster.phase("happy") == "Succeeded")
    status = cluster.job("happy")["status"]
    assert status["completionTime"] == "2026-01-01T11:00:00Z"
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("True", "PyTorchJobSucceeded")
    assert succeeded["message"] == "model at s3://models/happy/model/"
    assert next(c for c in status["conditions"] if c["type"] == "Running")["status"] == "False"
    # The operator never overwrote what the trainer wrote.
    assert status["progress"]["stage"] == "done" and status["progress"]["display"] == "100% 200/200"
    assert status["outputs"]["model"] == "s3://models/happy/model/"
    assert status["dataReport"]["rowsRead"] == 1000
    wait_for(
        "the Succeeded event", lambda: "Succeeded: model at s3://models/happy/model/" in cluster.event_messages("happy")
    )


def _printed_row(cluster: Cluster, name: str) -> dict[str, Any]:
    response = cluster.api.call_api(
        f"/apis/kubetune.io/v1alpha1/namespaces/default/finetunejobs/{name}",
        "GET",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    table = json.loads(response.data)
    columns = [c["name"] for c in table["columnDefinitions"]]
    return dict(zip(columns, table["rows"][0]["cells"], strict=True))


def test_running_then_failed_carries_reasons_and_the_trainers_message(
    cluster: Cluster, operator: OperatorProcess, reporter: Callable[[str], StatusReporter]
) -> None:
    cluster.create_job(job_manifest("sad"))
    wait_for("the PyTorchJob", lambda: cluster.pytorchjob("sad"))
    cluster.set_pytorchjob_condition("sad", "Running", "PyTorchJobRunning", "running")
    wait_for("phase Training", lambda: cluster.phase("sad") == "Training")
    reporter("sad").report(
        progress={"stage": "failed", "message": "data: train.jsonl row 17: missing 'output'"}, force=True
    )
    cluster.set_pytorchjob_condition(
        "sad", "Failed", "PyTorchJobFailed", "PyTorchJob default/sad has failed because 1 Master replica(s) failed."
    )
    wait_for("phase Failed", lambda: cluster.phase("sad") == "Failed")
    failed = cluster.condition("sad", "Failed")
    assert failed is not None and failed["status"] == "True" and failed["reason"] == "PyTorchJobFailed"
    assert failed["message"] == (
        "data: train.jsonl row 17: missing 'output' | "
        "PyTorchJob default/sad has failed because 1 Master replica(s) failed."
    )
    assert cluster.job("sad")["status"]["completionTime"]
    warnings = wait_for("a Warning event", lambda: [e for e in cluster.events("sad") if e.type == "Warning"])
    assert warnings[0].reason == "Failed" and "row 17" in warnings[0].message


def test_a_killed_pods_reason_reaches_the_failed_condition(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("oom"))
    wait_for("the PyTorchJob", lambda: cluster.pytorchjob("oom"))
    cluster.set_pytorchjob_condition("oom", "Running", "PyTorchJobRunning", "running")
    wait_for("phase Training", lambda: cluster.phase("oom") == "Training")
    # What the kubelet and the Kubeflow controller leave behind when the master is OOM-killed.
    cluster.create_failed_pod("oom-master-0", "oom", exitCode=137, reason="OOMKilled", message="loading shard 3/4")
    cluster.set_pytorchjob_condition("oom", "Failed", "PyTorchJobFailed", "1 Master replica(s) failed.")
    failed = wait_for(
        "the Failed condition", lambda: cluster.phase("oom") == "Failed" and cluster.condition("oom", "Failed")
    )
    assert failed["reason"] == "OOMKilled"
    assert (
        failed["message"]
        == "pod oom-master-0: OOMKilled (exit code 137): loading shard 3/4 | 1 Master replica(s) failed."
    )


def test_invalid_spec_fails_without_a_pytorchjob(cluster: Cluster, operator: OperatorProcess) -> None:
    runs_before = operator.metric("kubetune_reconcile_total", handler="create")
    bad = job_manifest("bad-spec", training={"learningRate": 5, "epochz": 3})
    cluster.create_job(bad)
    wait_for("phase Failed", lambda: cluster.phase("bad-spec") == "Failed")
    validated = cluster.condition("bad-spec", "Validated")
    assert validated is not None and validated["status"] == "False" and validated["reason"] == "InvalidSpec"
    with pytest.raises(SpecError) as validate:  # what `kubetune validate` says about the same document
        parse_job(bad)
    assert validated["message"] == "; ".join(str(p) for p in validate.value.problems)
    assert "spec.training.epochz: unknown field 'epochz' (did you mean 'epochs'?)" in validated["message"]
    events = wait_for(
        "the InvalidSpec event", lambda: [e for e in cluster.events("bad-spec") if e.reason == "InvalidSpec"]
    )
    assert events[0].type == "Warning"
    # Kopf stores the handled configuration once no handler of the change is left to run or retry
    # (a TemporaryError keeps the cycle open); then the handler count shows there was one run.
    wait_for(
        "Kopf to close the creation",
        lambda: "kubetune.io/last-handled-configuration" in cluster.job("bad-spec")["metadata"]["annotations"],
    )
    assert operator.metric("kubetune_reconcile_total", handler="create") == runs_before + 1, "no retries"
    assert cluster.pytorchjob("bad-spec") is None


def test_an_edit_that_stays_invalid_updates_observed_generation(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("still-bad", training={"epochz": 3}))
    first = wait_for(
        "InvalidSpec", lambda: (c := cluster.condition("still-bad", "Validated")) and c["status"] == "False" and c
    )
    assert first["observedGeneration"] == 1
    completed = cluster.job("still-bad")["status"]["completionTime"]

    cluster.patch_job("still-bad", {"spec": {"training": {"epochz": 4}}})  # same problem, new generation
    wait_for("observedGeneration 2", lambda: cluster.job("still-bad")["status"]["observedGeneration"] == 2)
    status = cluster.job("still-bad")["status"]
    for type_ in ("Validated", "Failed", "Ready", "Stalled"):
        cond = next(c for c in status["conditions"] if c["type"] == type_)
        assert cond["observedGeneration"] == 2, type_
    assert (status["phase"], status["completionTime"]) == ("Failed", completed)
    assert [e.reason for e in cluster.events("still-bad")].count("InvalidSpec") == 1, "the same problems, once"


def test_an_output_path_no_volume_mounts_is_refused(cluster: Cluster, operator: OperatorProcess) -> None:
    # Valid for `kubetune run --local`, but in a pod the model would vanish with the container.
    cluster.create_job(job_manifest("local-out", output={"uri": "/models/x"}))
    wait_for("phase Failed", lambda: cluster.phase("local-out") == "Failed")
    validated = cluster.condition("local-out", "Validated")
    assert validated is not None and (validated["status"], validated["reason"]) == ("False", "InvalidSpec")
    assert validated["message"].startswith("spec.output.uri: '/models/x' is a path")
    events = wait_for("the InvalidSpec event", lambda: [e for e in cluster.events("local-out") if e.type == "Warning"])
    assert events[0].reason == "InvalidSpec" and "spec.output.uri" in events[0].message
    assert cluster.pytorchjob("local-out") is None


def test_a_deleted_pytorchjob_of_a_running_job_is_made_again(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("lost"))
    first = wait_for("the PyTorchJob", lambda: cluster.pytorchjob("lost"))
    cluster.set_pytorchjob_condition("lost", "Running", "PyTorchJobRunning", "running")
    wait_for("phase Training", lambda: cluster.phase("lost") == "Training")

    cluster.custom.delete_namespaced_custom_object("kubeflow.org", "v1", "default", "pytorchjobs", "lost")
    again = wait_for(
        "a new PyTorchJob",
        lambda: (pj := cluster.pytorchjob("lost")) and pj["metadata"]["uid"] != first["metadata"]["uid"] and pj,
    )
    assert again["spec"] == first["spec"], "the same job again (it resumes from the checkpoints)"
    assert again["metadata"]["ownerReferences"] == first["metadata"]["ownerReferences"]
    wait_for("phase Pending", lambda: cluster.phase("lost") == "Pending")
    wait_for(
        "the Recreated event",
        lambda: "Re-created PyTorchJob lost (it was deleted)" in cluster.event_messages("lost"),
    )
    owners = [ref["name"] for pj in cluster.pytorchjobs() for ref in pj["metadata"]["ownerReferences"]]
    assert owners.count("lost") == 1


def test_a_failed_re_creation_is_retried_by_the_timer(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("blip"))
    first = wait_for("the PyTorchJob", lambda: cluster.pytorchjob("blip"))
    cluster.set_pytorchjob_condition("blip", "Running", "PyTorchJobRunning", "running")
    wait_for("phase Training", lambda: cluster.phase("blip") == "Training")
    cluster.server.emulator.unavailable_creates["pytorchjobs"] = 1  # the re-creation's first try gets a 503

    cluster.custom.delete_namespaced_custom_object("kubeflow.org", "v1", "default", "pytorchjobs", "blip")
    again = wait_for(
        "a new PyTorchJob",
        lambda: (pj := cluster.pytorchjob("blip")) and pj["metadata"]["uid"] != first["metadata"]["uid"] and pj,
        timeout=30,
    )
    assert cluster.server.emulator.unavailable_creates["pytorchjobs"] == 0, "the first attempt met the 503"
    assert again["spec"] == first["spec"]
    assert operator.metric("kubetune_reconcile_total", handler="recreate") >= 1, "made by the retry timer"
    wait_for(
        "PyTorchJobCreated again",
        lambda: (cluster.condition("blip", "PyTorchJobCreated") or {}).get("status") == "True",
    )
    assert "Re-created PyTorchJob blip (it was deleted)" in cluster.event_messages("blip")


@pytest.mark.parametrize("seen_finishing", [True, False], ids=["ttl-later", "ttl-zero"])
def test_a_finished_job_keeps_its_result_when_its_pytorchjob_goes(
    cluster: Cluster, operator: OperatorProcess, seen_finishing: bool
) -> None:
    # Kubeflow's ttlSecondsAfterFinished deletes the whole PyTorchJob; with 0 that can happen
    # before the operator has seen it finish (then only the deletion event carries the result).
    name = f"done-{'later' if seen_finishing else 'zero'}"
    cluster.create_job(job_manifest(name))
    wait_for("the PyTorchJob", lambda: cluster.pytorchjob(name))
    cluster.set_pytorchjob_condition(name, "Running", "PyTorchJobRunning", "running")
    wait_for("phase Training", lambda: cluster.phase(name) == "Training")
    cluster.set_pytorchjob_condition(name, "Succeeded", "PyTorchJobSucceeded", "done")
    if seen_finishing:
        wait_for("phase Succeeded", lambda: cluster.phase(name) == "Succeeded")
    cluster.custom.delete_namespaced_custom_object("kubeflow.org", "v1", "default", "pytorchjobs", name)

    wait_for("phase Succeeded", lambda: cluster.phase(name) == "Succeeded")
    # An event on the FineTuneJob itself (the kind the status watcher gets for any edit), carrying
    # no PyTorchJob: the stored phase alone must say "finished".
    syncs = operator.metric("kubetune_reconcile_total", handler="status")
    cluster.patch_job(name, {"metadata": {"annotations": {"example.com/touched": "yes"}}})
    # A re-creation would happen inside the status sync of that event: wait for one to finish.
    wait_for("a status sync", lambda: operator.metric("kubetune_reconcile_total", handler="status") > syncs)
    assert cluster.pytorchjob(name) is None, "a finished job must not train again"
    assert cluster.phase(name) == "Succeeded"
    assert not any(m.startswith("Re-created") for m in cluster.event_messages(name))


def test_suspend_and_resume_reach_the_pytorchjob(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("pause"))
    wait_for("the PyTorchJob", lambda: cluster.pytorchjob("pause"))
    cluster.set_pytorchjob_condition("pause", "Running", "PyTorchJobRunning", "running")
    wait_for("phase Training", lambda: cluster.phase("pause") == "Training")

    cluster.patch_job("pause", {"spec": {"suspend": True}})
    wait_for("runPolicy.suspend", lambda: cluster.existing_pytorchjob("pause")["spec"]["runPolicy"]["suspend"] is True)
    cluster.set_pytorchjob_condition("pause", "Suspended", "PyTorchJobSuspended", "PyTorchJob pause is suspended.")
    wait_for("phase Suspended", lambda: cluster.phase("pause") == "Suspended")
    assert cluster.condition("pause", "Suspended")["status"] == "True"  # type: ignore[index]
    assert cluster.condition("pause", "SpecApplied")["status"] == "True"  # type: ignore[index]

    cluster.patch_job("pause", {"spec": {"suspend": False}})
    wait_for(
        "runPolicy.suspend false", lambda: cluster.existing_pytorchjob("pause")["spec"]["runPolicy"]["suspend"] is False
    )
    cluster.set_pytorchjob_condition("pause", "Running", "PyTorchJobRunning", "resumed")
    wait_for("phase Training again", lambda: cluster.phase("pause") == "Training")
    messages = wait_for(
        "the Resumed event",
        lambda: "Resumed: training again" in cluster.event_messages("pause") and cluster.event_messages("pause"),
    )
    assert "Suspending PyTorchJob pause" in messages and "Resuming PyTorchJob pause" in messages


def test_other_spec_changes_are_refused_until_reverted(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("frozen"))
    before = wait_for("the PyTorchJob", lambda: cluster.pytorchjob("frozen"))
    wait_for("SpecApplied", lambda: (cluster.condition("frozen", "SpecApplied") or {}).get("status") == "True")

    cluster.patch_job("frozen", {"spec": {"training": {"learningRate": 0.001}}})
    refused = wait_for(
        "SpecApplied False", lambda: (c := cluster.condition("frozen", "SpecApplied")) and c["status"] == "False" and c
    )
    assert refused["reason"] == "SpecImmutable"
    assert refused["message"].startswith("spec.training.learningRate changed after PyTorchJob frozen was created")
    assert refused["observedGeneration"] == 2
    assert cluster.job("frozen")["status"]["observedGeneration"] == 2
    after = cluster.pytorchjob("frozen")
    assert after is not None and after["spec"] == before["spec"], "the PyTorchJob must not follow the edit"
    wait_for("a SpecImmutable event", lambda: any(e.reason == "SpecImmutable" for e in cluster.events("frozen")))

    cluster.patch_job("frozen", {"spec": {"training": {"learningRate": None}}})
    wait_for(
        "SpecApplied True after revert",
        lambda: (cluster.condition("frozen", "SpecApplied") or {}).get("status") == "True",
    )


def test_restart_adopts_what_a_killed_operator_made(cluster: Cluster, operator: OperatorProcess) -> None:
    # Deterministic: the operator died right after creating the PyTorchJob, before writing status.
    operator.kill()
    job = cluster.create_job(job_manifest("orphan"))
    children = build_children(
        parse_job({k: v for k, v in job.items() if k != "status"}),
        RenderSettings(trainer_image="registry.local/kubetune/trainer:test"),
    )
    pj = children[-1]
    pj["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "name": "orphan",
            "uid": job["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    made = cluster.custom.create_namespaced_custom_object("kubeflow.org", "v1", "default", "pytorchjobs", pj)

    # Random: killed in the middle of a burst of creations.
    operator.start()
    for i in range(8):
        cluster.create_job(job_manifest(f"burst-{i}"))
    wait_for(
        "the burst under way", lambda: any(pj["metadata"]["name"].startswith("burst-") for pj in cluster.pytorchjobs())
    )
    operator.kill()
    operator.start()

    wait_for("orphan adopted", lambda: (cluster.job("orphan").get("status") or {}).get("pytorchJob") == "orphan")
    assert cluster.existing_pytorchjob("orphan")["metadata"]["uid"] == made["metadata"]["uid"], "adopted, not re-made"
    for i in range(8):
        name = f"burst-{i}"
        wait_for(f"{name} created", lambda name=name: (cluster.job(name).get("status") or {}).get("pytorchJob"))  # type: ignore[misc]
    owners = [ref["name"] for pj in cluster.pytorchjobs() for ref in pj["metadata"]["ownerReferences"]]
    for name in ["orphan", *(f"burst-{i}" for i in range(8))]:
        assert owners.count(name) == 1, f"{name} has {owners.count(name)} PyTorchJobs"
        created_events = [m for m in cluster.event_messages(name) if m.startswith("Created PyTorchJob")]
        assert len(created_events) <= 1, created_events


def test_after_a_restart_only_the_unfinished_job_gets_its_deleted_pytorchjob_back(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    for name in ("lost-offline", "done-offline"):
        cluster.create_job(job_manifest(name))
        wait_for("the PyTorchJob", lambda name=name: cluster.pytorchjob(name))  # type: ignore[misc]
        cluster.set_pytorchjob_condition(name, "Running", "PyTorchJobRunning", "running")
    first = cluster.existing_pytorchjob("lost-offline")
    cluster.set_pytorchjob_condition("done-offline", "Succeeded", "PyTorchJobSucceeded", "done")
    wait_for("phase Training", lambda: cluster.phase("lost-offline") == "Training")
    wait_for("phase Succeeded", lambda: cluster.phase("done-offline") == "Succeeded")
    operator.kill()  # no deletion event reaches it: only the resume pass at start can notice
    for name in ("lost-offline", "done-offline"):
        cluster.custom.delete_namespaced_custom_object("kubeflow.org", "v1", "default", "pytorchjobs", name)
    operator.start()

    wait_for(
        "a new PyTorchJob",
        lambda: (pj := cluster.pytorchjob("lost-offline")) and pj["metadata"]["uid"] != first["metadata"]["uid"],
    )
    wait_for(
        "one Recreated event",
        lambda: (
            [m for m in cluster.event_messages("lost-offline") if m.startswith("Re-created")]
            == ["Re-created PyTorchJob lost-offline (it was deleted)"]
        ),
    )
    # Both resume handlers run at start (one per FineTuneJob): wait until every job's has.
    jobs = cluster.custom.list_namespaced_custom_object("kubetune.io", "v1alpha1", "default", "finetunejobs")["items"]
    wait_for("every resume handler", lambda: operator.metric("kubetune_reconcile_total", handler="create") >= len(jobs))
    assert cluster.pytorchjob("done-offline") is None, "a finished job must not train again"
    assert cluster.phase("done-offline") == "Succeeded"


def test_metrics_and_health(cluster: Cluster, operator: OperatorProcess) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5) as rsp:
        assert rsp.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as rsp:
        assert rsp.headers["Content-Type"] == CONTENT_TYPE_LATEST  # the text format Prometheus negotiates
        text = rsp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {s.labels["phase"]: s.value for s in families["kubetune_finetunejobs"].samples}
    assert set(counts) == set(PHASES)
    jobs = cluster.custom.list_namespaced_custom_object("kubetune.io", "v1alpha1", "default", "finetunejobs")["items"]
    assert sum(counts.values()) == len(jobs)
    assert operator.metric("kubetune_reconcile_duration_seconds_count", handler="status") > 0
    assert any(s.labels == {"handler": "create"} for s in families["kubetune_reconcile_errors"].samples)


def test_delete_takes_the_children_and_sigterm_exits_cleanly(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("gone"))
    wait_for("the PyTorchJob", lambda: cluster.pytorchjob("gone"))
    wait_for(
        "the ConfigMap",
        lambda: cluster.core.list_namespaced_config_map("default", label_selector="kubetune.io/finetunejob=gone").items,
    )
    cluster.delete_job("gone")
    wait_for("the PyTorchJob to go", lambda: cluster.pytorchjob("gone") is None)
    assert not cluster.core.list_namespaced_config_map("default", label_selector="kubetune.io/finetunejob=gone").items
    assert not cluster.rbac.list_namespaced_role("default", label_selector="kubetune.io/finetunejob=gone").items
    assert operator.proc is not None and operator.proc.poll() is None

    assert operator.stop() == 0, operator.log_tail()
    assert os.path.exists(operator.log_path)
