"""Small pieces of the reconciler that need no API server."""

from __future__ import annotations

import pytest

from kubetune.operator.reconcile import CRD_MISSING, awaiting_result, backoff, owner_of, pytorchjob_name


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff(r) for r in range(7)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_owner_of_reads_the_finetunejob_reference() -> None:
    pj = {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "1"},
                {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": "mine", "uid": "2"},
            ]
        }
    }
    assert owner_of(pj) == "mine"
    assert owner_of({"metadata": {}}) is None


def test_pytorchjob_name_matches_the_render() -> None:
    from kubetune.api.validation import parse_job
    from kubetune.render import child_names

    long_name = "a-very-long-fine-tune-job-name-that-does-not-fit-into-a-service-name"
    job = parse_job(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": long_name},
            "spec": {
                "model": {"source": "m/x"},
                "datasets": [{"source": "s3://data/d.jsonl"}],
                "output": {"uri": "s3://models/out/"},
            },
        }
    )
    assert pytorchjob_name(long_name) == child_names(job).pytorchjob


def test_crd_missing_message_says_what_to_install() -> None:
    assert "pytorchjobs.kubeflow.org" in CRD_MISSING and "training-operator" in CRD_MISSING


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, False),  # nothing made yet: the create handler's business
        ({"pytorchJob": "j", "phase": "Training"}, True),
        ({"pytorchJob": "j", "phase": "Queued"}, True),
        ({"pytorchJob": "j", "phase": "Succeeded"}, False),
        ({"pytorchJob": "j", "phase": "Failed"}, False),
        # The trainer uploaded the model; its PyTorchJob may be removed before Succeeded is seen.
        ({"pytorchJob": "j", "phase": "Exporting", "progress": {"stage": "done"}}, False),
        ({"pytorchJob": "j", "phase": "Training", "progress": {"stage": "failed"}}, True),
    ],
)
def test_only_unfinished_jobs_get_a_lost_pytorchjob_back(status: dict[str, object], expected: bool) -> None:
    assert awaiting_result(status) is expected
