"""FineTuneJob status vocabulary: phases, condition types and reasons (as Kubeflow's
`trainjob_types.go` keeps them beside the schema). Users, Argo CD/Flux health checks and
`kubectl wait --for=condition=...` depend on these strings: they are API, change them like the schema.

Phases (`status.phase`), from the child of the job's backend (`status.backend`):

| PyTorchJob (True, first match)      | TrainJob (first match)         | FineTuneJob phase                   |
|-------------------------------------|--------------------------------|-------------------------------------|
| none yet / Created                  | none yet / not all pods ready  | Pending                             |
| Failed                              | Failed                         | Failed                              |
| Succeeded                           | Complete                       | Succeeded                           |
| runPolicy.suspend                   | spec.suspend                   | Suspended if spec.suspend, else     |
|                                     |                                | Queued (Kueue)                      |
| Suspended (runPolicy.suspend false) | Suspended (spec.suspend false) | Suspended (resuming; only while     |
|                                     |                                | spec.suspend is false)              |
| Restarting                          | -                              | Training (Running=False)            |
| Running, all replicaStatuses active | every jobsStatus entry ready   | Exporting if progress.stage is      |
|                                     |                                | exporting or uploading, else Training |

While Pending, the Running condition carries why the pods wait (Unschedulable, ImagePullBackOff,
CreateContainerConfigError: the pod's own reason); with spec.suspend true and a job that still runs
(Kueue started it), Suspended is False with reason Suspending.
"""

from __future__ import annotations

from datetime import datetime, timezone

# ---- phases ------------------------------------------------------------------------------------
PENDING, QUEUED, TRAINING, EXPORTING = "Pending", "Queued", "Training", "Exporting"
SUCCEEDED, FAILED, SUSPENDED = "Succeeded", "Failed", "Suspended"
PHASES = (PENDING, QUEUED, TRAINING, EXPORTING, SUCCEEDED, FAILED, SUSPENDED)
FINISHED = (SUCCEEDED, FAILED)
# progress.stage values (written by the trainer) during which a running job is Exporting.
EXPORT_STAGES = ("exporting", "uploading")

# ---- condition types ---------------------------------------------------------------------------
VALIDATED = "Validated"
# Named before TrainJob existed; it says whether the training job (PyTorchJob or TrainJob) was made.
CREATED = "PyTorchJobCreated"
SPEC_APPLIED = "SpecApplied"
RUNNING = "Running"
# SUSPENDED, SUCCEEDED and FAILED are condition types too, named like their phases.
# kstatus conventions, so Flux, Argo CD and `kubectl wait --for=condition=Ready` understand the job:
# Ready=True only once the model is there, Stalled=True when it never will be.
READY = "Ready"
STALLED = "Stalled"
CONDITION_TYPES = (VALIDATED, CREATED, SPEC_APPLIED, RUNNING, SUSPENDED, SUCCEEDED, FAILED, READY, STALLED)

# ---- reasons (conditions and Events) -----------------------------------------------------------
# Reasons that mirror a child's condition keep Kubeflow's own reason (JobRunning, JobFailed...);
# a failed pod's container reason (OOMKilled) replaces JobFailed when known.
REASON_VALID = "Valid"
REASON_INVALID_SPEC = "InvalidSpec"
# PyTorchJobCRDMissing also when spec.backend is auto and neither API is served (the message names both).
REASON_CRD_MISSING = "PyTorchJobCRDMissing"
REASON_TRAINJOB_CRD_MISSING = "TrainJobCRDMissing"
REASON_CREATE_FAILED = "CreateFailed"
REASON_CREATED = "Created"
REASON_RECREATED = "Recreated"
REASON_APPLIED = "Applied"
REASON_SPEC_IMMUTABLE = "SpecImmutable"
REASON_RESTARTING = "Restarting"
REASON_NOT_SUSPENDED = "NotSuspended"
REASON_NOT_STALLED = "NotStalled"
REASON_SUSPENDING = "Suspending"
REASON_RESUMING = "Resuming"
REASON_RESUMED = "Resumed"


def now_rfc3339() -> str:
    """The time as Kubernetes writes it (lastTransitionTime, updatedAt, createdAt): UTC, seconds, Z."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
