"""The two controllers a FineTuneJob can run on, as the operator sees them: which API to create
and watch, where suspend lives, which label marks the training pods, what to install when missing.

Names are `spec.backend`'s values (kubetune.render.TRAINJOB / PYTORCHJOB); `auto` is resolved here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubetune import render
from kubetune.api import conditions as c


@dataclass(frozen=True)
class JobApi:
    name: str  # the backend: trainjob | pytorchjob
    kind: str
    group: str
    version: str
    plural: str
    status_field: str  # where the FineTuneJob's status records the child's name
    suspend_path: tuple[str, ...]  # where the child's spec says it is suspended
    pod_label: str  # set on its training pods, valued with the child's name
    missing_reason: str
    install: str  # what to install, for the condition while it is missing

    @property
    def resource(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    def suspended(self, obj: Mapping[str, Any]) -> bool:
        value: Any = obj
        for key in self.suspend_path:
            value = (value or {}).get(key)
        return value is True

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        patch: dict[str, Any] = {self.suspend_path[-1]: suspend}
        for key in reversed(self.suspend_path[:-1]):
            patch = {key: patch}
        return patch


TRAINER_V2 = (
    "Kubeflow Trainer v2.3 with JobSet (kubectl apply --server-side -k "
    '"github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0")'
)
# v1.9.4: images from GHCR (they moved there in v1.9.1) and cleanPodPolicy honoured at the
# backoff limit. The repository was renamed kubeflow/trainer; the v1 tags stay there.
TRAINING_OPERATOR_V1 = (
    "the Kubeflow Training Operator v1.9.4 (kubectl apply --server-side -k "
    '"github.com/kubeflow/trainer.git/manifests/overlays/standalone?ref=v1.9.4")'
)

TRAINJOB = JobApi(
    name=render.TRAINJOB,
    kind="TrainJob",
    group="trainer.kubeflow.org",
    version="v1alpha1",
    plural="trainjobs",
    status_field="trainJob",
    suspend_path=("spec", "suspend"),
    pod_label="jobset.sigs.k8s.io/jobset-name",  # the Trainer names the JobSet after the TrainJob
    missing_reason=c.REASON_TRAINJOB_CRD_MISSING,
    install=TRAINER_V2,
)
PYTORCHJOB = JobApi(
    name=render.PYTORCHJOB,
    kind="PyTorchJob",
    group="kubeflow.org",
    version="v1",
    plural="pytorchjobs",
    status_field="pytorchJob",
    suspend_path=("spec", "runPolicy", "suspend"),
    pod_label="training.kubeflow.org/job-name",
    missing_reason=c.REASON_CRD_MISSING,
    install=TRAINING_OPERATOR_V1,
)
BY_NAME = {api.name: api for api in (TRAINJOB, PYTORCHJOB)}
# `auto`: the first one served. TrainJob first: v1 is in maintenance, and Kueue 0.19 manages TrainJobs
# by default but PyTorchJobs only when that integration is enabled.
AUTO_ORDER = (TRAINJOB, PYTORCHJOB)


def missing_message(requested: str) -> str:
    """The condition's message while the backend a job needs is not served."""
    if requested in BY_NAME:
        api = BY_NAME[requested]
        return (
            f"The {api.kind} API ({api.plural}.{api.group}/{api.version}) is not installed in this cluster "
            f"(spec.backend: {requested}). Install {api.install}; the job starts once it is there."
        )
    return (
        "Neither the TrainJob API (trainjobs.trainer.kubeflow.org) nor the PyTorchJob API "
        f"(pytorchjobs.kubeflow.org) is installed in this cluster. Install {TRAINER_V2}, or {TRAINING_OPERATOR_V1}; "
        "the job starts once one of them is there."
    )


def missing_reason(requested: str) -> str:
    return BY_NAME[requested].missing_reason if requested in BY_NAME else c.REASON_CRD_MISSING


def choose(requested: str, served: Callable[[JobApi], bool]) -> JobApi | None:
    """The backend for `requested` (trainjob, pytorchjob or auto), None while it is not served."""
    if requested in BY_NAME:
        return BY_NAME[requested] if served(BY_NAME[requested]) else None
    return next((api for api in AUTO_ORDER if served(api)), None)


def recorded(status: Mapping[str, Any]) -> JobApi | None:
    """The backend the job's child was made with (jobs made before status.backend existed: PyTorchJob)."""
    if status.get("backend") in BY_NAME:
        return BY_NAME[status["backend"]]
    return PYTORCHJOB if status.get("pytorchJob") else None


def child_made(status: Mapping[str, Any]) -> bool:
    api = recorded(status)
    return api is not None and bool(status.get(api.status_field))
