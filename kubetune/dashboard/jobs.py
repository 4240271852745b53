"""Where the dashboard's jobs come from: FineTuneJobs on a cluster, or the outputs of local runs.

Both sources give `JobView`s. Progress history, the data report and the manifest are files in the
job's output (`progress.jsonl`, `data_report.json`, `manifest.json`), read with the job's storage
settings and this process's own credentials; a job's status only holds the latest progress event.
Nothing here writes, and nothing reads a Secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from kubetune.api import conditions
from kubetune.api import v1alpha1 as api

log = logging.getLogger(__name__)

LOCAL_NAMESPACE = "local"
OUTPUT_FILES = ("progress.jsonl", "data_report.json", "manifest.json")
# Stages of progress.jsonl mapped to the phase the operator would show (a local run has no operator).
_STAGE_PHASES = {
    "preparing": conditions.PENDING,
    "training": conditions.TRAINING,
    "exporting": conditions.EXPORTING,
    "uploading": conditions.EXPORTING,
    "done": conditions.SUCCEEDED,
    "failed": conditions.FAILED,
}


@dataclass
class JobView:
    """One job as the pages show it. `spec` is the FineTuneJob's spec as a plain dict."""

    name: str
    namespace: str
    phase: str
    spec: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    backend: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)  # the latest event
    history: list[dict[str, Any]] = field(default_factory=list)  # every event, oldest first
    conditions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    data_report: dict[str, Any] | None = None  # data_report.json, or the status summary as {"summary": ...}
    manifest: dict[str, Any] | None = None
    output_uri: str | None = None

    @property
    def model(self) -> str:
        """From the spec, else the manifest (a local run's output found without its config)."""
        manifest = self.manifest or {}
        return str(
            (self.spec.get("model") or {}).get("source") or (manifest.get("baseModel") or {}).get("source") or ""
        )

    @property
    def method(self) -> str:
        return str((self.spec.get("method") or {}).get("type") or (self.manifest or {}).get("method") or "")

    @property
    def losses(self) -> list[tuple[float, float]]:
        return series(self.history, "loss")


def series(history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """(step, value) of every event that has both."""
    return [(float(e["step"]), float(e[key])) for e in history if e.get(key) is not None and e.get("step") is not None]


def parse_progress(text: str) -> list[dict[str, Any]]:
    """progress.jsonl's events; a line cut short by a concurrent write is skipped."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _read_output(uri: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    """{file name: contents} of the output files that exist under `uri`; unreadable ones are left out."""
    from kubetune import storage

    opts = storage.StorageOptions.from_spec(api.StorageSpec.model_validate((spec or {}).get("storage") or {}))
    found: dict[str, Any] = {}
    for name in OUTPUT_FILES:
        target = storage.join(uri, name)
        try:
            if not storage.exists(target, opts):
                continue
            text = storage.read_bytes(target, opts).decode(errors="replace")
            found[name] = parse_progress(text) if name.endswith(".jsonl") else json.loads(text)
        except Exception as exc:  # a dashboard shows what it can: one unreadable file is not an error page
            log.warning("cannot read %s: %s", target, exc)
    return found


def _fill_from_output(job: JobView, files: dict[str, Any]) -> None:
    """The output's history, ended by the status's event when that is newer: the trainer patches the
    status at once but uploads progress.jsonl at most every 30 s."""
    history = list(files.get("progress.jsonl") or [])
    latest = job.progress
    if latest and (not history or (latest.get("step") or 0) > (history[-1].get("step") or 0)):
        history.append(latest)
    job.history = history
    job.progress = latest or (history[-1] if history else {})
    job.data_report = files.get("data_report.json") or job.data_report
    job.manifest = files.get("manifest.json")


# --------------------------------------------------------------------------------------------
# Local runs
# --------------------------------------------------------------------------------------------


class LocalJobs:
    """The jobs `kubetune run --local` left under a directory: every folder holding one of the output
    files is a job's output, and each run's `config.yaml` (under `.kubetune/runs/`) names its job and
    output, wherever that is (S3 included)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def all(self) -> list[JobView]:
        return await asyncio.to_thread(self._scan)

    async def one(self, namespace: str, name: str) -> JobView | None:
        return next((j for j in await self.all() if (j.namespace, j.name) == (namespace, name)), None)

    def _scan(self) -> list[JobView]:
        configs: dict[str, dict[str, Any]] = {}  # output uri -> resolved FineTuneJob
        for path in sorted(self.root.rglob("config.yaml")):
            try:
                doc = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(doc, dict) and doc.get("kind") == api.KIND:
                configs[_normal(doc["spec"]["output"]["uri"])] = doc
        outputs = {_normal(str(p.parent)) for name in OUTPUT_FILES for p in self.root.rglob(name)}
        jobs = [self._job(uri, configs.get(uri)) for uri in sorted(outputs | configs.keys())]
        return sorted(jobs, key=lambda j: j.created or "", reverse=True)

    def _job(self, uri: str, config: dict[str, Any] | None) -> JobView:
        spec = (config or {}).get("spec") or {}
        files = _read_output(uri, spec)
        manifest_job = (files.get("manifest.json") or {}).get("job") or {}
        name = (config or {}).get("metadata", {}).get("name") or manifest_job.get("name") or Path(uri).name
        job = JobView(name=str(name), namespace=LOCAL_NAMESPACE, phase=conditions.PENDING, spec=spec, output_uri=uri)
        _fill_from_output(job, files)
        stage = job.progress.get("stage")
        job.phase = conditions.SUCCEEDED if job.manifest else _STAGE_PHASES.get(str(stage), conditions.PENDING)
        if not job.manifest and job.phase == conditions.SUCCEEDED:
            job.phase = conditions.EXPORTING  # "done" is written just before the manifest
        first = job.history[0].get("updatedAt") if job.history else None
        job.created = first or (job.manifest or {}).get("createdAt")
        return job


def _normal(uri: str) -> str:
    if uri.startswith("s3://"):
        return uri.rstrip("/") + "/"
    return str(Path(uri.removeprefix("file://")).resolve())


# --------------------------------------------------------------------------------------------
# A cluster
# --------------------------------------------------------------------------------------------


class ClusterJobs:
    """FineTuneJobs and their Events through the Kubernetes API (list and get only)."""

    def __init__(self, api_client: Any, namespace: str | None = None) -> None:
        import kubernetes

        self.namespace = namespace
        # output uri -> (status.progress.updatedAt, output files): the output is read again only
        # when the trainer has reported since, so polling the jobs page costs S3 nothing while idle.
        self._outputs: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)

    @classmethod
    def connect(cls, namespace: str | None = None, kubeconfig: str | None = None) -> ClusterJobs:
        """The kubeconfig named, else the in-cluster config inside a pod, else KUBECONFIG or ~/.kube/config."""
        import kubernetes

        if kubeconfig is None:
            try:
                kubernetes.config.load_incluster_config()
                return cls(kubernetes.client.ApiClient(), namespace)
            except kubernetes.config.ConfigException:
                pass
        return cls(kubernetes.config.new_client_from_config(config_file=kubeconfig), namespace)

    async def all(self) -> list[JobView]:
        return await asyncio.to_thread(self._list)

    async def one(self, namespace: str, name: str) -> JobView | None:
        return await asyncio.to_thread(self._get, namespace, name)

    async def create(self, manifest: dict[str, Any]) -> tuple[str, str]:
        """Create the FineTuneJob (only with `--allow-create`); (namespace, name). ApiException as the API said."""
        namespace = manifest.get("metadata", {}).get("namespace") or self.namespace or "default"
        if self.namespace and namespace != self.namespace:
            raise PermissionError(f"this dashboard serves namespace {self.namespace} only, not {namespace}")
        created = await asyncio.to_thread(
            self.custom.create_namespaced_custom_object, api.GROUP, api.VERSION, namespace, api.PLURAL, manifest
        )
        return namespace, created["metadata"]["name"]

    def _list(self) -> list[JobView]:
        if self.namespace:
            found = self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL)
        else:
            found = self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)
        jobs = [_from_object(obj) for obj in found.get("items", [])]
        for job in jobs:
            self._fill(job)
        return sorted(jobs, key=lambda j: j.created or "", reverse=True)

    def _fill(self, job: JobView) -> None:
        if not job.output_uri:
            return
        seen = job.progress.get("updatedAt")
        cached = self._outputs.get(job.output_uri)
        if cached is None or cached[0] != seen or seen is None:
            cached = (seen, _read_output(job.output_uri, job.spec))
            self._outputs[job.output_uri] = cached
        _fill_from_output(job, cached[1])

    def _get(self, namespace: str, name: str) -> JobView | None:
        from kubernetes.client.exceptions import ApiException

        if self.namespace and namespace != self.namespace:
            return None
        try:
            obj = self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        job = _from_object(obj)
        self._fill(job)
        events = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        job.events = sorted(
            (_event(e) for e in events.items if e.involved_object.kind == api.KIND and e.involved_object.name == name),
            key=lambda e: e["time"] or "",
        )
        return job


def _from_object(obj: dict[str, Any]) -> JobView:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    progress = status.get("progress") or {}
    report = status.get("dataReport")
    return JobView(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        phase=status.get("phase") or conditions.PENDING,
        spec=obj.get("spec") or {},
        created=meta.get("creationTimestamp"),
        backend=status.get("backend"),
        progress=progress,
        history=[progress] if progress else [],
        conditions=status.get("conditions") or [],
        data_report={"summary": report} if report else None,
        output_uri=(obj.get("spec") or {}).get("output", {}).get("uri"),
    )


def _event(e: Any) -> dict[str, Any]:
    when = e.last_timestamp or e.event_time or e.first_timestamp or (e.metadata and e.metadata.creation_timestamp)
    return {
        "time": when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(when, datetime) else when,
        "type": e.type,
        "reason": e.reason,
        "message": e.message,
        "count": e.count,
    }
