"""Small pieces of the reconciler that need no API server."""

from __future__ import annotations

import pytest

from kubetune.operator.reconcile import awaiting_result, backoff, owner_of


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
