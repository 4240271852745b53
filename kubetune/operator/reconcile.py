"""What the handlers do: create the children (again, if the PyTorchJob is deleted before the job
ends), keep the status true to what is stored.

Each public method is one handler's body. They run in Kopf's thread pool (sync handlers), so the
status writers of one FineTuneJob take a per-job lock: the create handler and the two watchers
(FineTuneJob, PyTorchJob) never interleave a read-compute-patch of the same status.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune.api import conditions as c
from kubetune.api.conditions import now_rfc3339
from kubetune.api.validation import SpecError, parse_job
from kubetune.operator import status as st
from kubetune.operator.kube import Kube
from kubetune.operator.metrics import Metrics
from kubetune.render import RenderSettings, build_children, cluster_problems, job_name

CRD_MISSING = (
    "The PyTorchJob API (pytorchjobs.kubeflow.org/v1) is not installed in this cluster. Install the "
    "Kubeflow Training Operator v1.9 (kubectl apply --server-side -k "
    '"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0"); '
    "the job starts once it is there."
)
MAX_BACKOFF = 60.0


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
    def __init__(self, kube: Kube, render_settings: RenderSettings, metrics: Metrics) -> None:
        self.kube = kube
        self.render_settings = render_settings
        self.metrics = metrics
        self._locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._locks_lock = threading.Lock()

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks[(namespace, name)]

    def _event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        kopf.event(cast(kopf.Body, dict(body)), type=type_, reason=reason, message=message[:1000])

    # ---- create / resume / spec edits before the PyTorchJob exists --------------------------

    def ensure_children(self, namespace: str, name: str, retry: int, *, handler: str = "create") -> None:
        """`handler`: the metrics label (the create/resume handlers, or the re-check timer)."""
        with self.metrics.reconcile(handler), self._lock(namespace, name):
            body = self.kube.get_finetunejob(namespace, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            status = body.get("status") or {}
            if status.get("pytorchJob") and not self._lost_pytorchjob(body):
                return  # made before; later spec edits are the status watcher's (SpecApplied) business
            self._make_children(body, retry, recreate=bool(status.get("pytorchJob")))

    def _make_children(self, body: dict[str, Any], retry: int, *, recreate: bool = False) -> None:
        """Validate, then create what is missing. Raises Kopf's errors: permanent for a spec the
        user must fix, temporary (with backoff) while the PyTorchJob API is not served."""
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
        if not self.kube.pytorchjob_api_installed():
            waiting = st.waiting_for_crd_status(
                CRD_MISSING, body["metadata"].get("generation"), status.get("conditions"), now_rfc3339()
            )
            self._patch_status(body, st.status_patch(status, waiting))
            raise kopf.TemporaryError(CRD_MISSING, delay=backoff(retry))
        try:
            created = self._create_children(body, build_children(job, self.render_settings))
        except ApiException as exc:  # an API blip, a webhook or the CRD being reinstalled: retry later
            message = f"creating the children failed ({exc.status} {exc.reason}); retrying"
            failed = st.create_failed_status(
                message, body["metadata"].get("generation"), status.get("conditions"), now_rfc3339()
            )
            self._patch_status(body, st.status_patch(status, failed))
            raise kopf.TemporaryError(message, delay=backoff(retry)) from exc
        pj_name = job_name(body["metadata"]["name"])
        created_status = st.created_status(pj_name, body["metadata"].get("generation"), status, now_rfc3339())
        self._patch_status(body, st.status_patch(status, created_status))
        if created and recreate:
            self._event(body, "Normal", c.REASON_RECREATED, f"Re-created PyTorchJob {pj_name} (it was deleted)")
        elif created:
            self._event(body, "Normal", c.REASON_CREATED, f"Created PyTorchJob {pj_name}")

    def _lost_pytorchjob(self, body: Mapping[str, Any]) -> bool:
        """Whether an unfinished job's PyTorchJob is gone (deleted by hand): it is then made again,
        under the same name, and the trainer resumes from the checkpoints under spec.output.uri.
        A finished job keeps its result when Kubeflow's ttlSecondsAfterFinished removes the child."""
        if not awaiting_result(body.get("status") or {}):
            return False
        meta = body["metadata"]
        return self.kube.get_pytorchjob(meta["namespace"], job_name(meta["name"])) is None

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

    def _create_children(self, owner: dict[str, Any], children: list[dict[str, Any]]) -> bool:
        """Create what is missing, in order (the PyTorchJob last); True if the PyTorchJob was new.

        Names are deterministic, so a restarted operator finds what it made before (409) and
        adopts it instead of making a second one; an object of that name owned by something else
        is an error for the user to resolve, not something to take over.
        """
        uid = owner["metadata"].get("uid")
        made_pytorchjob = False
        for child in children:
            if child["kind"] == "PyTorchJob":
                annotations = child["metadata"].setdefault("annotations", {})
                annotations[st.APPLIED_SPEC_ANNOTATION] = st.spec_fingerprint(owner.get("spec") or {})
            # Only the owner reference: kopf.adopt would also copy every label of the FineTuneJob
            # (Argo CD tracking, Kueue queue labels) onto each child, where they mean something else.
            kopf.append_owner_reference(child, owner=cast(kopf.Body, owner))
            created = self.kube.create(child)
            if created is not None:
                made_pytorchjob = made_pytorchjob or child["kind"] == "PyTorchJob"
                continue
            stored = self.kube.read(child) or {}
            if not _owned_by(stored, uid):
                raise kopf.PermanentError(
                    f"{child['kind']} {child['metadata']['name']} already exists and does not belong to this "
                    "FineTuneJob; delete or rename it"
                )
        return made_pytorchjob

    # ---- suspend -------------------------------------------------------------------------------

    def propagate_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        with self.metrics.reconcile("suspend"):
            body = self.kube.get_finetunejob(namespace, name)
            pj_name = job_name(name)
            pj = self.kube.get_pytorchjob(namespace, pj_name) if body else None
            if body is None or pj is None or not _owned_by(pj, body["metadata"].get("uid")):
                return  # not created yet: it will be rendered with the current spec.suspend
            if ((pj.get("spec") or {}).get("runPolicy") or {}).get("suspend") is suspend:
                return
            self.kube.patch_pytorchjob(namespace, pj_name, {"spec": {"runPolicy": {"suspend": suspend}}})
            reason = c.REASON_SUSPENDING if suspend else c.REASON_RESUMING
            self._event(body, "Normal", reason, f"{reason} PyTorchJob {pj_name}")

    # ---- status --------------------------------------------------------------------------------

    def sync_status(self, namespace: str, name: str, deleted: Mapping[str, Any] | None = None) -> None:
        """Recompute the status from the stored pair. `deleted`: the PyTorchJob's final state, when
        the event behind this call is its deletion."""
        with self.metrics.reconcile("status"), self._lock(namespace, name):
            body = self.kube.get_finetunejob(namespace, name)
            if body is None:
                self.metrics.forget(namespace, name)
                return
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            status = body.get("status") or {}
            pj_name = job_name(name)
            uid = body["metadata"].get("uid")
            pj = self.kube.get_pytorchjob(namespace, pj_name) if status.get("pytorchJob") else None
            if pj is None and status.get("pytorchJob") and status.get("phase") not in c.FINISHED:
                # Only the deletion event tells how it ended: a PyTorchJob that finished and was
                # removed at once (ttlSecondsAfterFinished: 0) must not look deleted by hand.
                if deleted is None or not _owned_by(deleted, uid):
                    return
                if awaiting_result(status) and not _finished(deleted):
                    # One attempt now. If it fails, PyTorchJobCreated=False says why and starts the
                    # `retry_recreation` timer (Kopf never retries event handlers, and sleeping here
                    # would hold this job's lock and a worker thread).
                    self._make_children(body, 0, recreate=True)  # its creation event reports it
                    return
                pj = dict(deleted)
            if pj is not None and not _owned_by(pj, uid):
                pj = None
            if pj is None and not status.get("pytorchJob"):
                self.metrics.set_phase(namespace, name, status.get("phase") or c.PENDING)
                return  # nothing made yet: the create handler reports this stage
            observed = st.Observed(
                generation=body["metadata"].get("generation"),
                spec=body.get("spec") or {},
                status=status,
                pytorchjob_name=pj_name,
                pytorchjob=pj,
                now=now_rfc3339(),
                pod_failure=self._pod_failure(namespace, pj_name, pj, status),
            )
            desired, events = st.observe(observed)
            self._patch_status(body, st.status_patch(status, desired))
            for event in events:
                self._event(body, event.type, event.reason, event.message)
            self.metrics.set_phase(namespace, name, desired.get("phase"))

    def _pod_failure(
        self, namespace: str, pj_name: str, pj: dict[str, Any] | None, status: dict[str, Any]
    ) -> tuple[str, str] | None:
        """Why a pod died, looked up once: when the PyTorchJob has just failed."""
        failed_now = pj is not None and st.pytorchjob_phase(pj, user_suspended=False, stage=None)[0] == c.FAILED
        if not failed_now or status.get("phase") == c.FAILED:
            return None
        return st.pod_failure(self.kube.pytorchjob_pods(namespace, pj_name))

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget(namespace, name)
        with self._locks_lock:
            self._locks.pop((namespace, name), None)

    def _patch_status(self, body: Mapping[str, Any], patch: dict[str, Any]) -> None:
        if patch:
            meta = body["metadata"]
            self.kube.patch_finetunejob_status(meta["namespace"], meta["name"], patch)


def awaiting_result(status: Mapping[str, Any]) -> bool:
    """A job whose PyTorchJob was made and whose end is not recorded. The trainer's `done` counts as
    an end: the model is uploaded, and a PyTorchJob deleted right after it must not train again."""
    done = (status.get("progress") or {}).get("stage") == "done"
    return bool(status.get("pytorchJob")) and status.get("phase") not in c.FINISHED and not done


def recreation_failed(status: Mapping[str, Any]) -> bool:
    """An unfinished job whose PyTorchJob went and could not be made again yet (an API error, the
    CRD being reinstalled): the retry timer's filter. Only a failed attempt starts it, so a job
    whose PyTorchJob merely finished and went (ttlSecondsAfterFinished) is never re-created by it."""
    created = st.find_condition(status.get("conditions"), c.CREATED) or {}
    return awaiting_result(status) and created.get("status") == "False"


def _finished(pytorchjob: Mapping[str, Any]) -> bool:
    return st.pytorchjob_phase(dict(pytorchjob), user_suspended=False, stage=None)[0] in c.FINISHED


def owner_of(pytorchjob: Mapping[str, Any]) -> str | None:
    """The FineTuneJob a PyTorchJob belongs to, from its controller owner reference."""
    for ref in (pytorchjob.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "FineTuneJob" and ref.get("apiVersion", "").startswith("kubetune.io/"):
            return str(ref.get("name"))
    return None
