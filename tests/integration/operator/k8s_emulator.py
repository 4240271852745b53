"""A real HTTP Kubernetes API on 127.0.0.1 for the operator tests: kmock plus what kmock lacks.

kmock's `KubernetesEmulator` serves discovery, reads (get/list/watch) and an in-memory object store.
Its write path merges dicts without the API server's bookkeeping, which Kopf depends on. This layer
replaces the write path (create, patch, delete) with the API server's semantics that matter here:

- metadata stamping: uid, creationTimestamp, resourceVersion (a global counter), generation (bumped
  when spec changes), generateName, namespace taken from the URL;
- merge patches and JSON patches (Kopf's `test /metadata/resourceVersion` guard -> 422 on mismatch),
  a `metadata.resourceVersion` precondition in merge patches (-> 409);
- the status subresource: `/status` patches change only status, main-resource writes never do;
- finalizers and deletionTimestamp, and background garbage collection through ownerReferences
  (standing in for kube-controller-manager);
- CustomResourceDefinitions: creating one registers its resource, so "install the CRD" is real;
- list responses with kind/resourceVersion, label selectors, and watches that honour
  `resourceVersion`, `labelSelector` and `timeoutSeconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import re
import secrets
import threading
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import rendering

Resource = kmock.resource
_NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")
Key = tuple[Any, str | None, str]


# What the API server draws generateName suffixes from (apimachinery's util/rand: no vowels, no
# look-alike characters).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _guess_action(method: Any, name: str | None, params: dict[str, str]) -> Any:
    if method == kmock.method.GET:
        if params.get("watch") in ("true", "1"):
            return kmock.action.WATCH
        return kmock.action.FETCH if name else kmock.action.LIST
    if method == kmock.method.POST and not name:
        return kmock.action.CREATE
    return {kmock.method.PATCH: kmock.action.UPDATE, kmock.method.DELETE: kmock.action.DELETE}.get(method)


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _cell(obj: dict[str, Any], column: dict[str, Any]) -> Any:
    """A printer-column cell: a simple JSONPath; dates shown as ages, as the API server does."""
    value: Any = obj
    for part in column["jsonPath"].strip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return None
    if column["type"] == "date":
        then = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        seconds = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
        return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"
    return value


def _fields_match(selector: str | None, obj: dict[str, Any]) -> bool:
    """Equality field selectors on dotted paths: `involvedObject.name=x,metadata.namespace!=y`."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        negate = "!=" in term
        path, wanted = term.replace("!=", "=").replace("==", "=").split("=", 1)
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if (str(value) == wanted) == negate:
            return False
    return True


def _selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    """Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-separated."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with an API-server-like write path (see the module docstring)."""

    _revision: int = attrs.field(default=0, init=False)
    _watchers: dict[Any, set[asyncio.Queue[dict[str, Any]]]] = attrs.field(factory=lambda: defaultdict(set), init=False)
    # Owner uid -> keys of objects that named it in ownerReferences (for garbage collection).
    _owned: dict[str, set[Key]] = attrs.field(factory=lambda: defaultdict(set), init=False)
    # additionalPrinterColumns of registered CRDs, for server-side printing (kubectl get).
    _columns: dict[tuple[str, str, str], list[dict[str, Any]]] = attrs.field(factory=dict, init=False)
    # Called as observer(event_type, obj) on every stored change, in the server's thread (benchmarks).
    observers: list[Callable[[str, dict[str, Any]], None]] = attrs.field(factory=list, init=False)
    # Plural -> how many creates of it to answer 503 (an API server blip, for retry tests).
    unavailable_creates: dict[str, int] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()

    # ---- request routing --------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock parses /api/v1/namespaces[/name] as "namespace <plural>"; route it as the resource.
        match = _NAMESPACES_PATH.match(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        params = dict(raw_request.query)
        method = kmock.method(raw_request.method)
        name = match.group(1)
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=params,
            headers=dict(raw_request.headers),
            data=json.loads(body) if body else None,
            body=body,
            text=body.decode(errors="replace"),
            resource=Resource("v1/namespaces"),
            name=name,
            action=_guess_action(method, name, params),
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except rendering.StreamingError as exc:  # the stream is open: end it, as kmock does
            response: aiohttp.web.StreamResponse = exc.args[0]
            await response.write_eof()
            return response
        except Exception as exc:
            return await self._render_error(exc)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        # Served here directly, not through kmock's reaction routing: that re-checks every past
        # request on each new one, which is quadratic and dominates a benchmark of hundreds of jobs.
        try:
            discovery = self._discovery(request)
            if discovery is not None:
                return aiohttp.web.json_response(await discovery)
            if resource is None or resource.plural is None or resource.version is None:
                return await super()._handle(request)  # anything else kmock knows
            if request.action == kmock.action.WATCH:
                return await self._stream(request)
            as_table = "as=Table" in request.headers.get("Accept", request.headers.get("accept", ""))
            if request.action == kmock.action.LIST:
                listed = await self._serve_list(request)
                return aiohttp.web.json_response(self._table(resource, listed["items"]) if as_table else listed)
            if request.action == kmock.action.FETCH:
                async with self._lock:
                    self._info(resource)
                    obj = self._current(resource, request.namespace, request.name or "")
                return aiohttp.web.json_response(self._table(resource, [obj]) if as_table else obj)
            async with self._lock:
                obj, code = self._write(request)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)
        return aiohttp.web.json_response(obj, status=code)

    def _discovery(self, request: kmock.Request) -> Any:
        """The discovery handler for this request, if it is one (kmock's own handlers)."""
        if request.method != kmock.method.GET:
            return None
        path = request.url.path.rstrip("/")
        if path in ("/apis", "/api", "/version"):
            serve = {"/apis": self._serve_apis, "/api": self._serve_api, "/version": self._serve_server_version}
            return serve[path](request)
        resource = request.resource
        if resource is None or resource.plural is not None:
            return None
        if resource.version is not None:
            return self._serve_version(request)
        return self._serve_group(request) if resource.group else None

    def _write(self, request: kmock.Request) -> tuple[dict[str, Any], int]:
        action = request.action
        if action == kmock.action.CREATE:
            if self.unavailable_creates.get(request.resource.plural, 0) > 0:
                self.unavailable_creates[request.resource.plural] -= 1
                raise _error(503, "ServiceUnavailable", "the server is currently unable to handle the request")
            return self._create(request.resource, request.namespace, request.data), 201
        if request.name is None or action not in (kmock.action.UPDATE, kmock.action.DELETE):
            raise _error(405, "MethodNotAllowed", f"{request.method} is not supported here")
        if action == kmock.action.UPDATE:
            headers = {k.lower(): v for k, v in request.headers.items()}
            return self._patch(request, headers.get("content-type", "")), 200
        return self._delete(request.resource, request.namespace, request.name), 200

    async def _stream(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self._info(request.resource)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)  # type: ignore[arg-type]
        try:
            async for event in self._serve_watch(request):
                if event != b"":
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away: the watch is over
        return response

    # ---- helpers -------------------------------------------------------------------------------

    def _info(self, resource: Any) -> kmock.ResourceInfo:
        for known in self.resources:
            if known == resource:
                return self.resources[known]
        raise _error(404, "NotFound", f"the server could not find the requested resource ({resource})")

    def _next_version(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _current(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any]:
        key = (resource, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            raise _error(404, "NotFound", f'{resource.plural} "{name}" not found')
        return copy.deepcopy(self._objects[key].raw)

    def _store(self, key: Key, obj: dict[str, Any], event: str) -> None:
        if event == "DELETED":
            self._objects[key].delete()
        else:
            self._objects[key] = obj  # only the latest version: memory stays flat under benchmarks
            for ref in obj["metadata"].get("ownerReferences") or []:
                self._owned[ref.get("uid")].add(key)
        for observer in self.observers:
            observer(event, obj)
        for queue in self._watchers[key[0]]:
            queue.put_nowait({"type": event, "object": copy.deepcopy(obj)})

    # ---- writes --------------------------------------------------------------------------------

    def _create(self, resource: Any, namespace: str | None, data: Any) -> dict[str, Any]:
        info = self._info(resource)
        if not isinstance(data, dict):
            raise _error(400, "BadRequest", "the body must be an object")
        obj = copy.deepcopy(data)
        meta = obj.setdefault("metadata", {})
        if info.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = self._generated_name(resource, meta)
        if not meta.get("name"):
            raise _error(422, "Invalid", "metadata.name: Required value")
        key = (resource, meta.get("namespace"), meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise _error(409, "AlreadyExists", f'{resource.plural} "{meta["name"]}" already exists')
        if "status" in info.subresources:
            obj.pop("status", None)
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            resourceVersion=self._next_version(),
            generation=1,
        )
        meta.pop("deletionTimestamp", None)
        if resource.plural == "customresourcedefinitions":
            self._register_crd(obj)
        self._store(key, obj, "ADDED")
        return obj

    def _generated_name(self, resource: Any, meta: dict[str, Any]) -> str:
        """generateName plus five characters from the API server's alphabet, one not in use: Kopf does
        not retry an Event that hits a taken name (409), and benchmarks post thousands of Events,
        where random suffixes alone would collide."""
        while True:
            name = meta["generateName"] + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
            key = (resource, meta.get("namespace"), name)
            if key not in self._objects or self._objects[key].deleted:
                return name

    def _patch(self, request: kmock.Request, content_type: str) -> dict[str, Any]:
        resource, namespace, name = request.resource, request.namespace, request.name
        assert name is not None
        info = self._info(resource)
        old = self._current(resource, namespace, name)
        if "json-patch" in content_type:
            try:
                new = jsonpatch.JsonPatch(request.data).apply(old)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise _error(422, "Invalid", f"the patch test failed: {exc}") from None
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise _error(422, "Invalid", str(exc)) from None
        else:
            if not isinstance(request.data, dict):
                raise _error(400, "BadRequest", "a merge patch must be an object")
            wanted = (request.data.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != old["metadata"].get("resourceVersion"):
                raise _error(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                )
            new = merge_patch(old, request.data)
        new = self._keep_managed_fields(info, request.subresource, old, new)
        if new == old:
            return old
        if new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1
        new["metadata"]["resourceVersion"] = self._next_version()
        key = (resource, namespace, name)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._store(key, new, "DELETED")
            self._collect_garbage(meta["uid"])
        else:
            self._store(key, new, "MODIFIED")
        return new

    @staticmethod
    def _keep_managed_fields(
        info: kmock.ResourceInfo, subresource: str | None, old: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        """What a client may not change: identity fields; status or everything-but-status."""
        for field in (
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            "name",
            "namespace",
        ):
            if field in old["metadata"]:
                new.setdefault("metadata", {})[field] = old["metadata"][field]
            else:
                new.setdefault("metadata", {}).pop(field, None)
        if subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        if "status" in info.subresources:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        return new

    def _delete(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any]:
        self._info(resource)
        obj = self._current(resource, namespace, name)
        key = (resource, namespace, name)
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = self._next_version()
                self._store(key, obj, "MODIFIED")
            return obj
        meta["resourceVersion"] = self._next_version()
        self._store(key, obj, "DELETED")
        if resource.plural == "customresourcedefinitions":
            self._unregister_crd(obj)
        self._collect_garbage(meta["uid"])
        return obj

    def _collect_garbage(self, owner_uid: str) -> None:
        """Background cascading deletion: what kube-controller-manager's GC does for dependents."""
        for resource, namespace, name in sorted(self._owned.pop(owner_uid, set()), key=str):
            with contextlib.suppress(kmock.KubernetesError):  # already gone through another owner
                self._delete(resource, namespace, name)

    # ---- CRDs ----------------------------------------------------------------------------------

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            subresources = set((version.get("subresources") or {}).keys())
            self._columns[(spec["group"], version["name"], names["plural"])] = list(
                version.get("additionalPrinterColumns") or []
            )
            self.resources[f"{spec['group']}/{version['name']}/{names['plural']}"] = kmock.ResourceInfo(
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                kind=names.get("kind"),
                singular=names.get("singular") or names["plural"],
                shortnames=names.get("shortNames") or [],
                categories=names.get("categories") or [],
                verbs=["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
                subresources=subresources,
            )

    def _unregister_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        for version in spec.get("versions") or []:
            key = f"{spec['group']}/{version['name']}/{spec['names']['plural']}"
            for known in list(self.resources):
                if known == key:
                    del self.resources[known]

    # ---- reads ---------------------------------------------------------------------------------

    def _matching(self, request: kmock.Request, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if not _selector_matches(request.params.get("labelSelector"), meta.get("labels") or {}):
            return False
        return _fields_match(request.params.get("fieldSelector"), obj)

    async def _serve_version(self, request: kmock.Request) -> dict[str, Any]:
        # Subresources carry no short names on a real server (kubectl warns about ambiguity otherwise).
        listing: Any = await super()._serve_version(request)
        for entry in listing.get("resources", []):
            if "/" in entry["name"]:
                entry["shortNames"], entry["categories"] = [], []
        return listing

    def _listed(self, request: kmock.Request) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(stored.raw)
            for (resource, _, _), stored in list(self._objects.items())
            if resource == request.resource and not stored.deleted and self._matching(request, stored.raw)
        ]

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        info = self._info(request.resource)
        async with self._lock:
            items = self._listed(request)
            revision = str(self._revision)
        resource = request.resource
        assert resource is not None
        api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        return {
            "apiVersion": api_version,
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": revision},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        yield b""  # send the headers now: a quiet watch must still be an open stream
        self._info(request.resource)
        since = request.params.get("resourceVersion") or "0"
        since_number = int(since) if since.isdigit() else 0
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        async with self._lock:
            initial: list[dict[str, Any]] = [
                {"type": "ADDED", "object": obj}
                for obj in self._listed(request)
                if int(obj["metadata"].get("resourceVersion") or 0) > since_number
            ]
            self._watchers[request.resource].add(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            for event in initial:
                yield event
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    return
                if self._matching(request, event["object"]):
                    yield event
        finally:
            self._watchers[request.resource].discard(queue)

    def _table(self, resource: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Server-side printing (what `kubectl get` asks for): the CRD's printer columns."""
        columns = self._columns.get((resource.group, resource.version, resource.plural))
        if columns is None:
            columns = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        definitions = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
        definitions += [
            {
                "name": c["name"],
                "type": c["type"],
                "format": "",
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in columns
        ]
        rows = [
            {
                "cells": [obj["metadata"]["name"], *(_cell(obj, c) for c in columns)],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
            for obj in items
        ]
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self._revision)},
            "columnDefinitions": definitions,
            "rows": rows,
        }

    # ---- direct access for fixtures (thread-safe through the loop) -----------------------------

    def seed(self, resource: str, obj: dict[str, Any]) -> None:
        """Create an object before serving (e.g. the default namespace)."""
        res = Resource(resource)
        self._create(res, (obj.get("metadata") or {}).get("namespace"), obj)


class RunningApiServer:
    """The emulator served by `kmock.Server` from a background thread, with a kubeconfig for it."""

    def __init__(self, workdir: Path) -> None:
        self.emulator = ApiServer()
        self.emulator.seed("v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        self.kubeconfig = workdir / "kubeconfig.yaml"
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)
        self._failure: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with kmock.Server(self.emulator, host="127.0.0.1") as server:
            self.url = f"http://127.0.0.1:{server.port}"
            self._ready.set()
            await self._stop.wait()

    def start(self) -> RunningApiServer:
        self._thread.start()
        if not self._ready.wait(20) or self._failure is not None:
            raise RuntimeError(f"the API emulator did not start: {self._failure!r}")
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict()))
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig_for(self, token: str) -> Path:
        """A kubeconfig whose bearer token names its user, so `api_calls(token)` tells their calls apart."""
        path = self.kubeconfig.with_name(f"kubeconfig-{token}.yaml")
        path.write_text(yaml.safe_dump(self.kubeconfig_dict(token)))
        return path

    def api_calls(self, token: str) -> set[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], verb) of every request made with this token, as RBAC
        authorizes them; discovery (/api, /apis, /version) needs no grant and is left out."""
        calls = set()
        for request in list(self.emulator._requests):
            headers = {k.lower(): v for k, v in request.headers.items()}
            if headers.get("authorization") != f"Bearer {token}":
                continue
            call = rbac_attributes(request.method, request.url.path, dict(request.params))
            if call is not None:
                calls.add(call)
        return calls

    def kubeconfig_dict(self, token: str = "not-checked") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": "default"}}
            ],
            "current-context": "emulator",
        }


def rbac_attributes(method: str, path: str, params: dict[str, str]) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) of a resource request, as the API server's
    RequestInfoFactory derives them; None for a non-resource (discovery) request."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]  # namespaced: namespaces/<ns>/<resource>[/<name>[/<subresource>]]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    method = str(getattr(method, "name", method)).upper()
    if method == "GET":
        verb = "watch" if params.get("watch") in ("true", "1") else ("get" if name else "list")
    else:
        verb = {
            "POST": "create",
            "PATCH": "patch",
            "PUT": "update",
            "DELETE": "delete" if name else "deletecollection",
        }[method]
    return group, resource, verb


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
