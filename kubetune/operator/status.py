"""FineTuneJob status from what is observed: pure functions, no I/O.

Inputs are the FineTuneJob as stored (spec, the trainer's `status.progress`, the previous operator
status) and its training job as stored: a PyTorchJob (conditions written by the Kubeflow Training
Operator) or a TrainJob (conditions and jobsStatus written by Kubeflow Trainer). The output is the
operator-owned part of the status (`phase`, `conditions`, `observedGeneration`, `backend`,
`pytorchJob` or `trainJob`, `startTime`, `completionTime`) plus the Events worth posting. The trainer's
fields (`progress`, `dataReport`, `outputs`) are read, never written.

The phase table and every phase, condition type and reason are in `kubetune.api.conditions`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubetune.api.conditions import (
    CREATED,
    EXPORT_STAGES,
    EXPORTING,
    FAILED,
    FINISHED,
    PENDING,
    QUEUED,
    READY,
    REASON_APPLIED,
    REASON_CREATE_FAILED,
    REASON_CREATED,
    REASON_INVALID_SPEC,
    REASON_NOT_STALLED,
    REASON_NOT_SUSPENDED,
    REASON_RESTARTING,
    REASON_RESUMED,
    REASON_SPEC_IMMUTABLE,
    REASON_SUSPENDING,
    REASON_VALID,
    RUNNING,
    SPEC_APPLIED,
    STALLED,
    SUCCEEDED,
    SUSPENDED,
    TRAINING,
    VALIDATED,
)
from kubetune.api.v1alpha1 import MUTABLE_SPEC_FIELDS
from kubetune.operator.backends import PYTORCHJOB, TRAINJOB, JobApi

OPERATOR_FIELDS = (
    "phase",
    "conditions",
    "observedGeneration",
    "backend",
    "pytorchJob",
    "trainJob",
    "startTime",
    "completionTime",
)


@dataclass(frozen=True)
class Event:
    """Something that happened, for a Kubernetes Event on the FineTuneJob."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Observed:
    """Everything the status is derived from."""

    generation: int | None
    spec: dict[str, Any]
    status: dict[str, Any]
    job_api: JobApi
    job_name: str
    job: dict[str, Any] | None  # the PyTorchJob or TrainJob as stored
    now: str
    pod_failure: tuple[str, str] | None = None  # (reason, message) of the failed training container
    pod_waiting: tuple[str, str] | None = None  # (reason, message): why a Pending job's pods do not run


# --------------------------------------------------------------------------------------------
# Conditions
# --------------------------------------------------------------------------------------------


def condition(
    type_: str, status: bool | str, reason: str, message: str, now: str, generation: int | None = None
) -> dict[str, Any]:
    value = status if isinstance(status, str) else ("True" if status else "False")
    out: dict[str, Any] = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def set_condition(conditions: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Upsert by type; lastTransitionTime moves only when status changes (metav1 semantics)."""
    out = [dict(c) for c in conditions]
    for i, old in enumerate(out):
        if old.get("type") == new["type"]:
            merged = dict(new)
            if old.get("status") == new["status"] and old.get("lastTransitionTime"):
                merged["lastTransitionTime"] = old["lastTransitionTime"]
            out[i] = merged
            return out
    return [*out, new]


def find_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def readiness(
    conds: list[dict[str, Any]], phase: str, reason: str, message: str, now: str, generation: int | None
) -> list[dict[str, Any]]:
    """Ready and Stalled from the phase: Ready=True when Succeeded, Stalled=True when Failed."""
    ready_message = message if phase == SUCCEEDED else f"phase {phase}" + (f": {message}" if message else "")
    conds = set_condition(conds, condition(READY, phase == SUCCEEDED, reason, ready_message, now, generation))
    return set_condition(
        conds,
        condition(
            STALLED,
            phase == FAILED,
            reason if phase == FAILED else REASON_NOT_STALLED,
            message if phase == FAILED else "",
            now,
            generation,
        ),
    )


def invalid_spec_status(
    problems: list[str], generation: int | None, conditions: list[dict[str, Any]] | None, now: str
) -> dict[str, Any]:
    """Failed/InvalidSpec with one line per problem, the same lines `kubetune validate` prints."""
    message = "; ".join(problems)
    conds = set_condition(
        list(conditions or []), condition(VALIDATED, False, REASON_INVALID_SPEC, message, now, generation)
    )
    conds = set_condition(conds, condition(FAILED, True, REASON_INVALID_SPEC, message, now, generation))
    conds = readiness(conds, FAILED, REASON_INVALID_SPEC, message, now, generation)
    return {"phase": FAILED, "conditions": conds, "observedGeneration": generation, "completionTime": now}


def waiting_for_crd_status(
    message: str, reason: str, generation: int | None, conditions: list[dict[str, Any]] | None, now: str
) -> dict[str, Any]:
    conds = set_condition(
        list(conditions or []), condition(VALIDATED, True, REASON_VALID, "spec is valid", now, generation)
    )
    conds = set_condition(conds, condition(CREATED, False, reason, message, now, generation))
    return {"phase": PENDING, "conditions": conds, "observedGeneration": generation}


def create_failed_status(
    message: str, generation: int | None, conditions: list[dict[str, Any]] | None, now: str
) -> dict[str, Any]:
    """The children could not be created (an API error): retried, and said so meanwhile."""
    failed = condition(CREATED, False, REASON_CREATE_FAILED, message, now, generation)
    return {"conditions": set_condition(list(conditions or []), failed), "observedGeneration": generation}


def created_status(
    job_api: JobApi, name: str, generation: int | None, status: dict[str, Any], now: str
) -> dict[str, Any]:
    conds = list(status.get("conditions") or [])
    made = f"Created {job_api.kind} {name}"
    was_invalid = (find_condition(conds, VALIDATED) or {}).get("status") == "False"
    if was_invalid:  # the spec was fixed before anything ran: start from scratch
        conds = [c for c in conds if c.get("type") != FAILED]
    conds = set_condition(conds, condition(VALIDATED, True, REASON_VALID, "spec is valid", now, generation))
    conds = set_condition(conds, condition(CREATED, True, REASON_CREATED, made, now, generation))
    phase = PENDING if was_invalid else status.get("phase") or PENDING
    if was_invalid or not find_condition(conds, READY):
        conds = readiness(conds, phase, REASON_CREATED, made, now, generation)
    out: dict[str, Any] = {
        "phase": phase,
        "conditions": conds,
        "observedGeneration": generation,
        "backend": job_api.name,
        job_api.status_field: name,
    }
    if was_invalid:
        out["completionTime"] = None  # merge patch: remove
    return out


# --------------------------------------------------------------------------------------------
# Spec immutability
# --------------------------------------------------------------------------------------------


def immutable_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in MUTABLE_SPEC_FIELDS}


def spec_fingerprint(spec: dict[str, Any]) -> str:
    """What the training job was made from, stored on it; compared on every reconcile."""
    return json.dumps(immutable_spec(spec), sort_keys=True, separators=(",", ":"))


def changed_paths(old: Any, new: Any, prefix: str = "spec") -> list[str]:
    if isinstance(old, dict) or isinstance(new, dict):
        if (old is not None and not isinstance(old, dict)) or (new is not None and not isinstance(new, dict)):
            return [prefix]
        old, new = old or {}, new or {}  # an added or removed section: name the fields inside it
        paths: list[str] = []
        for key in sorted(set(old) | set(new)):
            paths += changed_paths(old.get(key), new.get(key), f"{prefix}.{key}")
        return paths
    return [] if old == new else [prefix]


# --------------------------------------------------------------------------------------------
# PyTorchJob or TrainJob -> phase
# --------------------------------------------------------------------------------------------


def _true_conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    conds = (job.get("status") or {}).get("conditions") or []
    return {c.get("type", ""): c for c in conds if c.get("status") == "True"}


def pytorchjob_phase(
    pytorchjob: dict[str, Any] | None, *, user_suspended: bool, stage: str | None
) -> tuple[str, dict[str, Any] | None]:
    """The phase, and the PyTorchJob condition it comes from (None when none applies)."""
    if pytorchjob is None:
        return PENDING, None
    true = _true_conditions(pytorchjob)
    if FAILED in true:
        return FAILED, true[FAILED]
    if SUCCEEDED in true:
        return SUCCEEDED, true[SUCCEEDED]
    if PYTORCHJOB.suspended(pytorchjob):  # by the user, or by a queue (Kueue) that has not admitted the job yet
        return (SUSPENDED if user_suspended else QUEUED), true.get(SUSPENDED)
    if SUSPENDED in true and not user_suspended:  # resumed, but the training operator has not started the pods yet
        return SUSPENDED, true[SUSPENDED]
    if "Restarting" in true:
        return TRAINING, true["Restarting"]
    if "Running" in true and _all_replicas_active(pytorchjob):
        return (EXPORTING if stage in EXPORT_STAGES else TRAINING), true["Running"]
    return PENDING, true.get("Created")


def _all_replicas_active(pytorchjob: dict[str, Any]) -> bool:
    """Whether every replica's pod runs (or ran to the end). The Training Operator says Running as soon
    as the master runs; workers still Pending (no GPU, no image) would hold it at the rendezvous.
    A PyTorchJob without replicaStatuses is taken at its word."""
    counts = (pytorchjob.get("status") or {}).get("replicaStatuses")
    if not counts:
        return True
    specs = (pytorchjob.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    return all(
        ((counts.get(kind) or {}).get("active") or 0) + ((counts.get(kind) or {}).get("succeeded") or 0)
        >= (spec or {}).get("replicas", 1)
        for kind, spec in specs.items()
    )


def trainjob_phase(
    trainjob: dict[str, Any] | None, *, user_suspended: bool, stage: str | None
) -> tuple[str, dict[str, Any] | None]:
    """The phase, and the TrainJob condition it comes from (None when none applies). Trainer v2 has no
    Running condition: the job trains once every replicated job's pods are all ready (jobsStatus)."""
    if trainjob is None:
        return PENDING, None
    true = _true_conditions(trainjob)
    if FAILED in true:
        return FAILED, true[FAILED]
    if "Complete" in true:
        return SUCCEEDED, true["Complete"]
    if TRAINJOB.suspended(trainjob):  # by the user, or by a queue (Kueue) that has not admitted it yet
        return (SUSPENDED if user_suspended else QUEUED), true.get(SUSPENDED)
    if SUSPENDED in true and not user_suspended:  # resumed, but the Trainer has not started the pods yet
        return SUSPENDED, true[SUSPENDED]
    jobs = (trainjob.get("status") or {}).get("jobsStatus") or []
    if jobs and all((j.get("ready") or 0) > 0 or (j.get("succeeded") or 0) > 0 for j in jobs):
        return (EXPORTING if stage in EXPORT_STAGES else TRAINING), None
    return PENDING, None


def job_phase(
    job_api: JobApi, job: dict[str, Any] | None, *, user_suspended: bool, stage: str | None
) -> tuple[str, dict[str, Any] | None]:
    phase_of = trainjob_phase if job_api is TRAINJOB else pytorchjob_phase
    return phase_of(job, user_suspended=user_suspended, stage=stage)


def failure_message(
    pj_condition: dict[str, Any] | None,
    progress: dict[str, Any],
    pod_failure: tuple[str, str] | None = None,
    kind: str = PYTORCHJOB.kind,
) -> str:
    """The trainer's own last words first (it knows why), then the pod's fate, then what Kubeflow saw."""
    parts: list[str] = []
    if progress.get("stage") == "failed" and progress.get("message"):
        parts.append(str(progress["message"]))
    if pod_failure and pod_failure[1] not in parts:
        parts.append(pod_failure[1])
    if pj_condition and pj_condition.get("message"):
        parts.append(str(pj_condition["message"]))
    return " | ".join(parts) or f"the {kind} failed"


def pod_failure(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first failed training container: (reason, 'pod x: OOMKilled (exit code 137): last log line')."""
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", "")):
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for container in statuses:
            state = container.get("state") or {}
            last = container.get("lastState") or {}
            ended = state.get("terminated") or last.get("terminated")
            if not ended or ended.get("exitCode", 0) == 0:
                continue
            reason = ended.get("reason") or "Error"
            text = f"pod {pod['metadata']['name']}: {reason} (exit code {ended.get('exitCode')})"
            last_line = _last_line(ended.get("message"))
            if last_line:
                text += f": {last_line}"
            return reason, text
    return None


# Container waiting reasons that are a normal start, not a reason to tell the user about.
STARTING = ("ContainerCreating", "PodInitializing")


def pod_waiting(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Why training pods do not run yet: the first one the scheduler cannot place (Unschedulable, with
    its message: '0/8 nodes are available: 8 Insufficient nvidia.com/gpu'), or whose container waits
    for a reason other than starting (ImagePullBackOff, CreateContainerConfigError for a missing
    Secret, CrashLoopBackOff)."""
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", "")):
        name = pod.get("metadata", {}).get("name", "")
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
                return str(cond["reason"]), f"pod {name}: {cond.get('message') or cond['reason']}"
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason and reason not in STARTING:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                return str(reason), f"pod {name}: {reason}{detail}"
    return None


def _last_line(message: Any) -> str:
    """The last non-blank line of a termination message ('' for none: a blank log says nothing)."""
    lines = [line.strip() for line in str(message or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------
# The whole operator-owned status
# --------------------------------------------------------------------------------------------


def observe(obs: Observed) -> tuple[dict[str, Any], list[Event]]:
    """The operator-owned status fields for what is observed, and the Events the change is worth."""
    status = obs.status
    progress = status.get("progress") or {}
    outputs = status.get("outputs") or {}
    old_phase = status.get("phase")
    conds = list(status.get("conditions") or [])
    gen, now = obs.generation, obs.now

    if old_phase == FAILED and (find_condition(conds, VALIDATED) or {}).get("status") == "False":
        return {k: status[k] for k in OPERATOR_FIELDS if k in status}, []  # InvalidSpec is final

    phase, source = job_phase(
        obs.job_api, obs.job, user_suspended=bool(obs.spec.get("suspend")), stage=progress.get("stage")
    )
    if obs.job is None and old_phase in FINISHED:
        phase = old_phase  # finished jobs keep their result when the child is cleaned up
    reason = (source or {}).get("reason") or phase
    pj_message = (source or {}).get("message") or ""
    pj_status = (obs.job or {}).get("status") or {}

    out: dict[str, Any] = {"phase": phase, "observedGeneration": gen}
    if obs.job is not None:
        out["backend"] = obs.job_api.name
        out[obs.job_api.status_field] = obs.job_name
        conds, events = _spec_condition(conds, obs, gen, now)
    else:
        events = []
    if phase == PENDING and obs.pod_waiting:  # the pods' own reason says more than "Pending"
        reason, pj_message = obs.pod_waiting
        before = find_condition(conds, RUNNING) or {}
        if (before.get("reason"), before.get("message")) != obs.pod_waiting:
            events.append(Event("Warning", reason, pj_message))
    running = phase in (TRAINING, EXPORTING) and reason != REASON_RESTARTING
    conds = set_condition(conds, condition(RUNNING, running, reason, pj_message, now, gen))
    conds = set_condition(conds, _suspended_condition(obs, phase, reason, pj_message, now))

    if phase == SUCCEEDED:
        where = outputs.get("model") or outputs.get("adapter") or (obs.spec.get("output") or {}).get("uri", "")
        message = f"model at {where}" if where else (pj_message or "training finished")
        conds = set_condition(conds, condition(SUCCEEDED, True, reason, message, now, gen))
    elif phase == FAILED and not (old_phase == FAILED and find_condition(conds, FAILED)):
        # Written once, when the failure is first seen: the pods that explain it may be gone later.
        message = failure_message(source, progress, obs.pod_failure, obs.job_api.kind)
        why = obs.pod_failure[0] if obs.pod_failure else reason  # OOMKilled says more than JobFailed
        conds = set_condition(conds, condition(FAILED, True, why, message, now, gen))
    final = find_condition(conds, phase) if phase in FINISHED else None
    conds = readiness(
        conds, phase, (final or {}).get("reason") or reason, (final or {}).get("message") or pj_message, now, gen
    )
    out["conditions"] = conds

    start = status.get("startTime") or pj_status.get("startTime")
    if not start and phase in (TRAINING, EXPORTING, SUCCEEDED, FAILED) and obs.job is not None:
        start = now
    if start:
        out["startTime"] = start
    if phase in FINISHED:
        out["completionTime"] = status.get("completionTime") or pj_status.get("completionTime") or now

    if phase != old_phase:
        events.append(_phase_event(old_phase, phase, conds, obs.job_api.kind))
    return out, events


def _suspended_condition(obs: Observed, phase: str, reason: str, message: str, now: str) -> dict[str, Any]:
    if phase in (SUSPENDED, QUEUED):
        return condition(SUSPENDED, True, reason, message, now, obs.generation)
    if obs.spec.get("suspend") and obs.job is not None and phase not in FINISHED:
        # Asked for but not (yet) done: a queue (Kueue) started the job again, or its pods are still
        # stopping. The operator deactivates the job's Kueue Workload; this says so until it stops.
        still = (
            f"spec.suspend is true but the {obs.job_api.kind} is not suspended (phase {phase}); "
            "waiting for it to stop (a Kueue-managed job stops once its Workload is deactivated)"
        )
        return condition(SUSPENDED, False, REASON_SUSPENDING, still, now, obs.generation)
    return condition(SUSPENDED, False, REASON_NOT_SUSPENDED, "", now, obs.generation)


def _spec_condition(
    conds: list[dict[str, Any]], obs: Observed, gen: int | None, now: str
) -> tuple[list[dict[str, Any]], list[Event]]:
    annotations = ((obs.job or {}).get("metadata") or {}).get("annotations") or {}
    applied = annotations.get(APPLIED_SPEC_ANNOTATION)
    if applied is None:
        return conds, []
    paths = changed_paths(json.loads(applied), immutable_spec(obs.spec))
    if not paths:
        matches = f"the {obs.job_api.kind} matches the spec"
        applied_condition = condition(SPEC_APPLIED, True, REASON_APPLIED, matches, now, gen)
        return set_condition(conds, applied_condition), []
    message = (
        f"{', '.join(paths)} changed after {obs.job_api.kind} {obs.job_name} was created; only spec.suspend "
        "may change. Revert the change, or delete and re-create the FineTuneJob."
    )
    before = find_condition(conds, SPEC_APPLIED)
    events = []
    if before is None or before.get("status") != "False" or before.get("message") != message:
        events.append(Event("Warning", REASON_SPEC_IMMUTABLE, message))
    return set_condition(conds, condition(SPEC_APPLIED, False, REASON_SPEC_IMMUTABLE, message, now, gen)), events


APPLIED_SPEC_ANNOTATION = "kubetune.io/applied-spec"


def _phase_event(old: str | None, new: str, conds: list[dict[str, Any]], kind: str) -> Event:
    if new == TRAINING:
        if old == SUSPENDED:
            return Event("Normal", REASON_RESUMED, "Resumed: training again")
        return Event("Normal", TRAINING, "Training started")
    if new == EXPORTING:
        return Event("Normal", EXPORTING, "Exporting and uploading the model")
    if new == SUCCEEDED:
        return Event("Normal", SUCCEEDED, f"Succeeded: {(find_condition(conds, SUCCEEDED) or {}).get('message', '')}")
    if new == FAILED:
        return Event("Warning", FAILED, f"Failed: {(find_condition(conds, FAILED) or {}).get('message', '')}")
    if new == SUSPENDED:
        return Event("Normal", SUSPENDED, "Suspended: pods stopped; resume with spec.suspend: false")
    if new == QUEUED:
        return Event("Normal", QUEUED, f"Queued: waiting for the queue to admit the {kind}")
    return Event("Normal", new, f"Phase {new}")


def status_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns the operator fields of `current` into `desired` (empty: no-op)."""
    return {k: v for k, v in desired.items() if current.get(k) != v}
