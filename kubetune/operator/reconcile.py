"""What the handlers do: pick the backend, create the children (again, if the training job is
deleted before the job ends), keep the status true to what is stored.

The training job is a PyTorchJob or a TrainJob (operator/backends.py); which one is decided when the
children are first made and recorded in status.backend, so re-creation and status follow that one.

Each public method is one handler's body. They run in Kopf's thread pool (sync handlers), so the
status writers of one FineTuneJob take a per-job lock: the create handler and the watchers
(FineTuneJob, PyTorchJob, TrainJob) never interleave a read-compute-patch of the same status.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune.api import conditions as c
from kubetune.api.conditions import now_rfc3339
from kubetune.api.validation import SpecError, parse_job
from kubetune.operator import backends
from kubetune.operator import status as st
from kubetune.operator.backends import JobApi
from kubetune.operator.kube import Kube
from kubetune.operator.metrics import Metrics
from kubetune.render import RenderSettings, build_children, cluster_problems, job_name, resolve_backend
from kubetune.render.pod import QUEUE_NAME_LABEL, queue_labels

MAX_BACKOFF = 60.0
# Threads creating children at once, across all jobs: a burst of new jobs shares them.
CREATE_THREADS = 8


def backoff(retry: int) -> float:
    """2 s, 4 s, 8 s ... capped at a minute: quick when the CRD is being installed, quiet when not."""
    return float(min(2.0 * 2**retry, MAX_BACKOFF))


def _owned_by(obj: Mapping[str, Any], owner_uid: str | None) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid for ref in refs)


def _as_manifest(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the user wrote: the status is ours and the trainer's, never part of validation."""
    return {k: v for k, v in dict(body).items() if k != "status"}


class Reconciler:
    def __init__(
        self, kube: Kube, render_settings: RenderSettings, metrics: Metrics, default_backend: str = "auto"
    ) -> None:
        self.kube = kube
        self.render_settings = render_settings
        self.default_backend = default_backend  # what spec.backend: auto means (the chart's setting)
        self.metrics = metrics
        self._locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._locks_lock = threading.Lock()
        # Per job, the resourceVersion of the operator's last status write (see sync_status).
        self._own_writes: dict[tuple[str, str], str | None] = {}
        # Creates a job's independent children side by side (see _create_children).
        self._creator = ThreadPoolExecutor(max_workers=CREATE_THREADS, thread_name_prefix="create-children")

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks[(namespace, name)]

    def _event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        kopf.event(cast(kopf.Body, dict(body)), type=type_, reason=reason, message=message[:1000])

    # ---- create / resume / spec edits before the training job exists -------------------------

    def ensure_children(self, namespace: str, name: str, retry: int, *, handler: str = "create") -> None:
        """`handler`: the metrics label (the create/resume handlers, or the re-check timer)."""
        with self.metrics.reconcile(handler), self._lock(namespace, name):
            body = self.kube.get_finetunejob(namespace, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            status = body.get("status") or {}
            if backends.child_made(status) and not self._lost_job(body):
                return  # made before; later spec edits are the status watcher's (SpecApplied) business
            self._make_children(body, retry, recreate=backends.child_made(status))

    def _make_children(self, body: dict[str, Any], retry: int, *, recreate: bool = False) -> None:
        """Validate, then create what is missing. Raises Kopf's errors: permanent for a spec the
        user must fix, temporary (with backoff) while the backend's API is not served."""
        status = body.get("status") or {}
        try:
            job = parse_job(_as_manifest(body))
        except SpecError as exc:
            self._refuse_invalid(body, [str(p) for p in exc.problems])
            raise kopf.PermanentError(f"invalid spec: {exc}") from None
        problems = cluster_problems(job)
        if problems:  # valid YAML that cannot work on a cluster is refused the same way
            self._refuse_invalid(body, problems)
            raise kopf.PermanentError(f"invalid spec: {'; '.join(problems)}")
        recorded = backends.recorded(status)  # a re-creation keeps the backend the job started on
        requested = recorded.name if recorded else resolve_backend(job.spec.backend, self.default_backend)
        job_api = backends.choose(requested, self.kube.served)
        if job_api is None:
            message = backends.missing_message(requested)
            waiting = st.waiting_for_crd_status(
                message,
                backends.missing_reason(requested),
                body["metadata"].get("generation"),
                status.get("conditions"),
                now_rfc3339(),
            )
            self._patch_status(body, st.status_patch(status, waiting))
            raise kopf.TemporaryError(message, delay=backoff(retry))
        try:
            children = build_children(job, self.render_settings, job_api.name)
            created = self._create_children(body, children, job_api)
        except ApiException as exc:  # an API blip, a webhook or the CRD being reinstalled: retry later
            message = f"creating the children failed ({exc.status} {exc.reason}); retrying"
            failed = st.create_failed_status(
                message, body["metadata"].get("generation"), status.get("conditions"), now_rfc3339()
            )
            self._patch_status(body, st.status_patch(status, failed))
            raise kopf.TemporaryError(message, delay=backoff(retry)) from exc
        name = job_name(body["metadata"]["name"])
        generation = body["metadata"].get("generation")
        created_status = st.created_status(job_api, name, generation, status, now_rfc3339())
        self._patch_status(body, st.status_patch(status, created_status))
        if created and recreate:
            self._event(body, "Normal", c.REASON_RECREATED, f"Re-created {job_api.kind} {name} (it was deleted)")
        elif created:
            self._event(body, "Normal", c.REASON_CREATED, f"Created {job_api.kind} {name}")

    def _lost_job(self, body: Mapping[str, Any]) -> bool:
        """Whether an unfinished job's training job is gone (deleted by hand): it is then made again,
        under the same name, and the trainer resumes from the checkpoints under spec.output.uri.
        A finished job keeps its result when Kubeflow's ttlSecondsAfterFinished removes the child."""
        status = body.get("status") or {}
        job_api = backends.recorded(status)
        if job_api is None or not awaiting_result(status):
            return False
        meta = body["metadata"]
        return self.kube.get_job(job_api, meta["namespace"], job_name(meta["name"])) is None

    def _refuse_invalid(self, body: dict[str, Any], problems: list[str]) -> None:
        """Failed/InvalidSpec. The status follows every edit (observedGeneration: Argo CD and Flux
        wait on it); the Event only when the problems change, so a restart or an edit that keeps
        the same problems does not repeat it."""
        status = body.get("status") or {}
        message = "; ".join(problems)
        before = st.find_condition(status.get("conditions"), c.VALIDATED) or {}
        new = st.invalid_spec_status(
            problems, body["metadata"].get("generation"), status.get("conditions"), now_rfc3339()
        )
        if status.get("phase") == c.FAILED and status.get("completionTime"):
            new["completionTime"] = status["completionTime"]  # it failed then, not at every edit
        self._patch_status(body, st.status_patch(status, new))
        if not (before.get("reason") == c.REASON_INVALID_SPEC and before.get("message") == message):
            self._event(body, "Warning", c.REASON_INVALID_SPEC, message)
        self.metrics.set_phase(body["metadata"]["namespace"], body["metadata"]["name"], c.FAILED)

    def _create_children(self, owner: dict[str, Any], children: list[dict[str, Any]], job_api: JobApi) -> bool:
        """Create what is missing, the training job last; True if the training job was new.

        The others (ConfigMap, trainer RBAC, TrainingRuntime) do not depend on each other, so they
        are created at once: a new job then waits on two round trips, not five. The training job
        waits for them all, as its pods mount the ConfigMap and run as the ServiceAccount.

        Names are deterministic, so a restarted operator finds what it made before (409) and
        adopts it instead of making a second one; an object of that name owned by something else
        is an error for the user to resolve, not something to take over.
        """
        uid = owner["metadata"].get("uid")
        for child in children:
            if child["kind"] == job_api.kind:
                annotations = child["metadata"].setdefault("annotations", {})
                annotations[st.APPLIED_SPEC_ANNOTATION] = st.spec_fingerprint(owner.get("spec") or {})
            # Only the owner reference: kopf.adopt would also copy every label of the FineTuneJob
            # (Argo CD tracking, Kueue queue labels) onto each child, where they mean something else.
            kopf.append_owner_reference(child, owner=cast(kopf.Body, owner))
        first = [child for child in children if child["kind"] != job_api.kind]
        last = [child for child in children if child["kind"] == job_api.kind]
        list(self._creator.map(lambda child: self._create_child(child, uid), first))  # raises the first failure
        return any([self._create_child(child, uid) for child in last])

    def _create_child(self, child: dict[str, Any], owner_uid: str | None) -> bool:
        """Create one child; False when it was there already (and is ours)."""
        if self.kube.create(child) is not None:
            return True
        stored = self.kube.read(child) or {}
        if not _owned_by(stored, owner_uid):
            raise kopf.PermanentError(
                f"{child['kind']} {child['metadata']['name']} already exists and does not belong to this "
                "FineTuneJob; delete or rename it"
            )
        return False

    # ---- suspend -------------------------------------------------------------------------------

    def propagate_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        with self.metrics.reconcile("suspend"):
            body = self.kube.get_finetunejob(namespace, name)
            job_api = backends.recorded((body or {}).get("status") or {})
            child_name = job_name(name)
            child = self.kube.get_job(job_api, namespace, child_name) if body and job_api else None
            if body is None or job_api is None or child is None or not _owned_by(child, body["metadata"].get("uid")):
                return  # not created yet: it will be rendered with the current spec.suspend
            workloads = self.kube.workloads_of(namespace, child["metadata"]["uid"])  # None: no Kueue
            handed = not suspend and workloads is not None and self._hand_to_queue(body, job_api, child)
            if self._hold_in_queue(body, job_api, child, suspend, workloads or []) or handed:
                return
            if job_api.suspended(child) is suspend:
                return
            self.kube.patch_job(job_api, namespace, child_name, job_api.suspend_patch(suspend))
            reason = c.REASON_SUSPENDING if suspend else c.REASON_RESUMING
            self._event(body, "Normal", reason, f"{reason} {job_api.kind} {child_name}")

    def _hand_to_queue(self, body: Mapping[str, Any], job_api: JobApi, child: Mapping[str, Any]) -> bool:
        """Resume a job that was created held, out of Kueue's sight (render/pod.py `queue_labels`):
        add Kueue's labels and leave the job suspended for Kueue to admit and start (only where Kueue
        is installed). False when there is nothing to hand over (no queue, labels already there)."""
        meta = child.get("metadata") or {}
        try:
            wanted = queue_labels(parse_job(_as_manifest(body)), held=False)
        except SpecError:
            return False  # a spec the operator refused: the status already says so
        labels = meta.get("labels") or {}
        if QUEUE_NAME_LABEL not in wanted or QUEUE_NAME_LABEL in labels:
            return False
        self.kube.patch_job(job_api, meta["namespace"], meta["name"], {"metadata": {"labels": wanted}})
        self._event(
            body,
            "Normal",
            c.REASON_RESUMING,
            f"{c.REASON_RESUMING} {job_api.kind} {meta['name']}: queued in Kueue LocalQueue {wanted[QUEUE_NAME_LABEL]}",
        )
        return True

    def _hold_in_queue(
        self,
        body: Mapping[str, Any],
        job_api: JobApi,
        child: Mapping[str, Any],
        suspend: bool,
        workloads: list[dict[str, Any]],
    ) -> bool:
        """Suspend or resume a job that Kueue manages through its Workload's spec.active: Kueue
        un-suspends an admitted job, so patching the job's own suspend would be reverted (and the
        job would train on). A deactivated Workload is evicted, its job suspended by Kueue and not
        admitted again until activated. False when the child has no Workload (Kueue not installed,
        or it has not made one yet): then the job's suspend is set directly, and this runs again
        on the job's next change (sync_status) to catch a revert."""
        # `workloads`: the child's, also without a queue label (Kueue's manageJobsWithoutQueueName).
        meta = child.get("metadata") or {}
        namespace = meta["namespace"]
        for workload in workloads:
            active = ((workload.get("spec") or {}).get("active")) is not False
            if active is suspend:
                self.kube.set_workload_active(namespace, workload["metadata"]["name"], not suspend)
                reason = c.REASON_SUSPENDING if suspend else c.REASON_RESUMING
                verb = "deactivated" if suspend else "activated"
                self._event(
                    body,
                    "Normal",
                    reason,
                    f"{reason} {job_api.kind} {meta['name']}: {verb} Kueue Workload {workload['metadata']['name']}",
                )
        return bool(workloads)

    # ---- status --------------------------------------------------------------------------------

    def sync_status(
        self,
        namespace: str,
        name: str,
        deleted: Mapping[str, Any] | None = None,
        seen: Mapping[str, Any] | None = None,
    ) -> None:
        """Recompute the status from the stored pair. `deleted`: the training job's final state, when
        the event behind this call is its deletion. `seen`: the FineTuneJob as its watch event
        brought it; when nothing was made for it yet, there is nothing to read (the create handler
        reports that stage), and a later version that has its children comes with its own event.
        Nor when `seen` is the operator's own last status write coming back: that status was
        computed from fresh reads, a later change of the FineTuneJob has another resourceVersion,
        and a change of the training job brings an event of its own."""
        seen_status = (seen or {}).get("status") or {}
        if seen is not None and not backends.child_made(seen_status):
            if not (seen.get("metadata") or {}).get("deletionTimestamp"):
                self.metrics.set_phase(namespace, name, seen_status.get("phase") or c.PENDING)
            return
        with self.metrics.reconcile("status"), self._lock(namespace, name):
            version = ((seen or {}).get("metadata") or {}).get("resourceVersion")
            if version is not None and self._own_writes.get((namespace, name)) == version:
                return
            body = self.kube.get_finetunejob(namespace, name)
            if body is None:
                self.metrics.forget(namespace, name)
                return
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            status = body.get("status") or {}
            job_api = backends.recorded(status)
            if job_api is None or not backends.child_made(status):
                self.metrics.set_phase(namespace, name, status.get("phase") or c.PENDING)
                return  # nothing made yet: the create handler reports this stage
            if deleted is not None and deleted.get("kind") != job_api.kind:
                deleted = None  # a child of the other backend (made by hand, or before a backend change)
            child_name = job_name(name)
            uid = body["metadata"].get("uid")
            child = self.kube.get_job(job_api, namespace, child_name)
            if child is None and status.get("phase") not in c.FINISHED:
                # Only the deletion event tells how it ended: a training job that finished and was
                # removed at once (ttlSecondsAfterFinished: 0) must not look deleted by hand.
                if deleted is None or not _owned_by(deleted, uid):
                    return
                if awaiting_result(status) and not _finished(job_api, deleted):
                    # One attempt now. If it fails, PyTorchJobCreated=False says why and starts the
                    # `retry_recreation` timer (Kopf never retries event handlers, and sleeping here
                    # would hold this job's lock and a worker thread).
                    self._make_children(body, 0, recreate=True)  # its creation event reports it
                    return
                child = dict(deleted)
            if child is not None and not _owned_by(child, uid):
                child = None
            if child is not None and (body.get("spec") or {}).get("suspend") and not job_api.suspended(child):
                # Kueue admitted a job the user suspended
                workloads = self.kube.workloads_of(namespace, child["metadata"]["uid"]) or []
                self._hold_in_queue(body, job_api, child, True, workloads)
            observed = st.Observed(
                generation=body["metadata"].get("generation"),
                spec=body.get("spec") or {},
                status=status,
                job_api=job_api,
                job_name=child_name,
                job=child,
                now=now_rfc3339(),
                pod_failure=self._pod_failure(namespace, job_api, child_name, child, status),
                pod_waiting=self._pod_waiting(namespace, job_api, child_name, child, body),
            )
            desired, events = st.observe(observed)
            self._patch_status(body, st.status_patch(status, desired))
            for event in events:
                self._event(body, event.type, event.reason, event.message)
            self.metrics.set_phase(namespace, name, desired.get("phase"))

    def _pod_failure(
        self, namespace: str, job_api: JobApi, name: str, child: dict[str, Any] | None, status: dict[str, Any]
    ) -> tuple[str, str] | None:
        """Why a pod died, looked up once: when the training job has just failed."""
        failed_now = child is not None and _phase(job_api, child) == c.FAILED
        if not failed_now or status.get("phase") == c.FAILED:
            return None
        return st.pod_failure(self.kube.job_pods(job_api, namespace, name))

    def _pod_waiting(
        self, namespace: str, job_api: JobApi, name: str, child: dict[str, Any] | None, body: Mapping[str, Any]
    ) -> tuple[str, str] | None:
        """Why the pods of a started, not yet training job wait (looked up only then). A training job
        without any status has not been seen by its controller, so it has no pods to ask about yet;
        the re-check timer looks again while the job is Pending."""
        if child is None or not child.get("status") or job_api.suspended(child):
            return None
        suspend = bool((body.get("spec") or {}).get("suspend"))
        if st.job_phase(job_api, child, user_suspended=suspend, stage=None)[0] != c.PENDING:
            return None
        return st.pod_waiting(self.kube.job_pods(job_api, namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget(namespace, name)
        with self._locks_lock:
            self._locks.pop((namespace, name), None)
        self._own_writes.pop((namespace, name), None)

    def _patch_status(self, body: Mapping[str, Any], patch: dict[str, Any]) -> None:
        if patch:
            meta = body["metadata"]
            written = self.kube.patch_finetunejob_status(meta["namespace"], meta["name"], patch)
            self._own_writes[(meta["namespace"], meta["name"])] = written


def awaiting_result(status: Mapping[str, Any]) -> bool:
    """A job whose training job was made and whose end is not recorded. The trainer's `done` counts as
    an end: the model is uploaded, and a training job deleted right after it must not train again."""
    done = (status.get("progress") or {}).get("stage") == "done"
    return backends.child_made(status) and status.get("phase") not in c.FINISHED and not done


def waiting_to_run(status: Mapping[str, Any]) -> bool:
    """A job whose training job was made but does not train yet: its pods may be stuck (no GPU, an
    image that does not pull, a missing Secret), which changes no training job status; the
    re-check timer's filter."""
    return backends.child_made(status) and status.get("phase") == c.PENDING


def recreation_failed(status: Mapping[str, Any]) -> bool:
    """An unfinished job whose training job went and could not be made again yet (an API error, the
    CRD being reinstalled): the retry timer's filter. Only a failed attempt starts it, so a job
    whose training job merely finished and went (ttlSecondsAfterFinished) is never re-created by it."""
    created = st.find_condition(status.get("conditions"), c.CREATED) or {}
    return awaiting_result(status) and created.get("status") == "False"


def _phase(job_api: JobApi, child: Mapping[str, Any]) -> str:
    return st.job_phase(job_api, dict(child), user_suspended=False, stage=None)[0]


def _finished(job_api: JobApi, child: Mapping[str, Any]) -> bool:
    return _phase(job_api, child) in c.FINISHED


def owner_of(child: Mapping[str, Any]) -> str | None:
    """The FineTuneJob a child belongs to, from its controller owner reference."""
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "FineTuneJob" and ref.get("apiVersion", "").startswith("kubetune.io/"):
            return str(ref.get("name"))
    return None
