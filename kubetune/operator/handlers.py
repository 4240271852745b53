"""Every Kopf handler of the kubetune operator. Run with `kubetune operator` or
`kopf run -m kubetune.operator.handlers`.

- create/resume (and spec edits before anything exists): validate, pick the backend (spec.backend;
  auto: TrainJob where its API is served, else PyTorchJob), create ConfigMap + trainer RBAC + the
  training job (PyTorchJob, or TrainingRuntime + TrainJob) with owner references (idempotent by name);
- spec.suspend changes: propagated to the PyTorchJob's runPolicy.suspend or the TrainJob's spec.suspend;
- every FineTuneJob and every managed PyTorchJob/TrainJob event: recompute the FineTuneJob status
  from the stored pair (level-triggered: the result depends on what is stored, not on which event
  came); a training job deleted before the job ended is created again (also on resume, for one
  deleted while the operator was down);
- a timer, only while a job is Pending after its training job was made: the pods' waiting reason
  (Unschedulable with the scheduler's message, ImagePullBackOff, CreateContainerConfigError) into
  status, as no training job event brings it;
- for a job Kueue manages (queue label), suspend and resume go through its Workload's spec.active
  (Kueue un-suspends an admitted job), and a job Kueue started while spec.suspend is true is
  deactivated again;
- a timer, only while a re-creation has failed (PyTorchJobCreated=False on an unfinished job: an
  API blip, the CRD being reinstalled): tried again with Kopf's retry delays, never by sleeping.

No finalizer is added: nothing outside the cluster is cleaned up (the model stays in storage) and
the children go with their owner through garbage collection.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import kopf

from kubetune.api import v1alpha1 as api
from kubetune.operator import backends, metrics
from kubetune.operator.kube import Kube, connect
from kubetune.operator.reconcile import CREATE_THREADS, Reconciler, owner_of, recreation_failed, waiting_to_run
from kubetune.operator.settings import OperatorConfig
from kubetune.render import RenderSettings

FTJ = (api.GROUP, api.VERSION, api.PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": "kubetune"}
# Between attempts to re-create a lost PyTorchJob after one failed (TemporaryError delays come first).
RETRY_INTERVAL = 10.0
# Between looks at a Pending job's pods: why they wait (Unschedulable, ImagePullBackOff) changes no
# training job status, so no watch event would bring it.
WAITING_INTERVAL = 10.0
PEERING_LIFETIME = 15  # seconds
DEFAULT_NS = "default"  # both kinds are namespaced; Kopf types namespace as optional
WORKERS = 16  # Kopf's threads for the (sync) handlers; see configure_kopf


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Kopf's bookkeeping under kubetune.io annotations; never in status."""
    settings.persistence.finalizer = "kubetune.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubetune.io", key="last-handled-configuration"
    )
    settings.posting.reporting_component = "kubetune-operator"
    settings.posting.level = logging.INFO
    # Handlers are sync and spend their time waiting on the API server, not on the CPU: more threads
    # than Python's default (cores + 4) keep a burst of new jobs from queueing behind each other.
    settings.execution.max_workers = WORKERS
    # With --peering (2+ replicas): a replica killed without cleanup (SIGKILL, node loss) is taken
    # over once its record is this old; a SIGTERM'd one removes its record and is replaced at once.
    settings.peering.lifetime = PEERING_LIFETIME
    # Refresh watches now and then so that a silently dropped connection cannot stall the operator.
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660


def _quiet_status_watchers(record: logging.LogRecord) -> bool:
    """Drop "Handler 'follow_...' succeeded" (one line per watch event, saying nothing) unless DEBUG."""
    if record.levelno != logging.INFO or logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return True
    return not str(record.msg).startswith(
        (
            "Handler 'follow_finetunejob'",
            "Handler 'follow_pytorchjob'",
            "Handler 'follow_trainjob'",
            "Timer 'recheck_waiting'",
        )
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    config = OperatorConfig.from_env()
    configure_kopf(settings)
    render_settings = RenderSettings(trainer_image=config.trainer_image, image_pull_policy=config.image_pull_policy)
    kube = Kube(connect(pool_size=WORKERS + CREATE_THREADS))
    memo.reconciler = Reconciler(kube, render_settings, metrics.Metrics(), config.default_backend)
    memo.metrics_server = (
        await metrics.serve(memo.reconciler.metrics, config.metrics_port) if config.metrics_port else None
    )
    logging.getLogger("kopf.objects").addFilter(_quiet_status_watchers)
    logger.info(
        f"kubetune operator: trainer image {config.trainer_image}, backend {config.default_backend}, "
        f"metrics port {config.metrics_port or 'off'}, health port {config.health_port or 'off'}"
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("metrics_server") is not None:
        await memo.metrics_server.cleanup()


@kopf.on.probe(id="finetunejobs")
def probe_jobs(memo: kopf.Memo, **_: Any) -> int:
    return sum(memo.reconciler.metrics.jobs_by_phase().values())


@kopf.on.create(*FTJ)
@kopf.on.resume(*FTJ)
@kopf.on.update(*FTJ, field="spec")
def create_children(namespace: str | None, name: str, retry: int, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.ensure_children(namespace or DEFAULT_NS, name, retry)


def without_finalizer(fn: Any) -> Any:
    """Kopf puts a finalizer on every object a timer matches, so that the timer stops before the object
    goes. Ours only read pods and patch status, where a 404 after a deletion is harmless; a finalizer
    would make a Pending job undeletable while the operator is away (after `helm uninstall`, say).
    Kopf has no public switch for this (kopf 1.45): the registered handler is replaced by a copy that
    does not ask for one, and tests/unit/operator/test_handlers.py fails if that stops working."""
    spawning = kopf.get_default_registry()._spawning
    spawning._handlers = [
        dataclasses.replace(h, requires_finalizer=False) if h.fn is fn else h for h in spawning._handlers
    ]
    return fn


@without_finalizer
@kopf.timer(*FTJ, interval=RETRY_INTERVAL, when=lambda status, **_: recreation_failed(status))
def retry_recreation(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    memo.reconciler.ensure_children(namespace or DEFAULT_NS, name, kwargs.get("retry", 0), handler="recreate")


@without_finalizer
@kopf.timer(*FTJ, interval=WAITING_INTERVAL, when=lambda status, **_: waiting_to_run(status))
def recheck_waiting(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.sync_status(namespace or DEFAULT_NS, name)


@kopf.on.update(*FTJ, field="spec.suspend")
def propagate_suspend(namespace: str | None, name: str, new: Any, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.propagate_suspend(namespace or DEFAULT_NS, name, bool(new))


@kopf.on.event(*FTJ)
def follow_finetunejob(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    if event["type"] == "DELETED":
        memo.reconciler.forget(namespace or DEFAULT_NS, name)
    else:
        memo.reconciler.sync_status(namespace or DEFAULT_NS, name, seen=body)


def _follow_child(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, memo: kopf.Memo) -> None:
    owner = owner_of(body)
    if owner is not None:
        deleted = body if event["type"] == "DELETED" else None
        memo.reconciler.sync_status(namespace or DEFAULT_NS, owner, deleted=deleted)


@kopf.on.event(*backends.PYTORCHJOB.resource, labels=MANAGED)
def follow_pytorchjob(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    _follow_child(event, body, namespace, memo)


@kopf.on.event(*backends.TRAINJOB.resource, labels=MANAGED)
def follow_trainjob(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    _follow_child(event, body, namespace, memo)
