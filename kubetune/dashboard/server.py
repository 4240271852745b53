"""The aiohttp application. Read-only unless started with `--allow-create`: the Kubernetes calls are
list and get, the outputs are read, and the new-job form's POSTs validate and return YAML. With
`--allow-create` one more POST creates the FineTuneJob the form describes, as the dashboard's own
ServiceAccount (the chart grants `create` only when `dashboard.allowCreate` is set)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from kubetune.dashboard import newjob, pages
from kubetune.dashboard.jobs import JobView

STATIC = Path(__file__).parent / "static"


class JobSource(Protocol):
    async def all(self) -> list[JobView]: ...

    async def one(self, namespace: str, name: str) -> JobView | None: ...


class JobCreator(Protocol):
    async def create(self, manifest: dict[str, Any]) -> tuple[str, str]: ...


SOURCE = web.AppKey("source", JobSource)
CREATOR = web.AppKey("creator", JobCreator)


def _filtered(jobs: list[JobView], request: web.Request) -> tuple[list[JobView], str, str]:
    namespace, phase = request.query.get("namespace", ""), request.query.get("phase", "")
    shown = [j for j in jobs if (not namespace or j.namespace == namespace) and (not phase or j.phase == phase)]
    return shown, namespace, phase


def _html(markup: str) -> web.Response:
    return web.Response(text=markup, content_type="text/html")


async def jobs_page(request: web.Request) -> web.Response:
    jobs = await request.app[SOURCE].all()
    shown, namespace, phase = _filtered(jobs, request)
    return _html(pages.jobs_page(shown, sorted({j.namespace for j in jobs}), namespace, phase))


async def job_rows(request: web.Request) -> web.Response:
    shown, _, _ = _filtered(await request.app[SOURCE].all(), request)
    return _html(pages.job_rows(shown))


async def job_page(request: web.Request) -> web.Response:
    job = await request.app[SOURCE].one(request.match_info["namespace"], request.match_info["name"])
    if job is None:
        raise web.HTTPNotFound(text="no such FineTuneJob")
    return _html(pages.job_page(job))


def _form_defaults() -> dict[str, str]:
    return {f.path: f.default for f in newjob.FIELDS}


def _can_create(request: web.Request) -> bool:
    return CREATOR in request.app


async def new_job_page(request: web.Request) -> web.Response:
    form = _form_defaults()
    return _html(pages.new_job_page(form, *newjob.check(form), can_create=_can_create(request)))


async def new_job_check(request: web.Request) -> web.Response:
    """The live check behind the form: YAML and problems, each with the form field it belongs to."""
    form = {k: str(v) for k, v in (await request.post()).items()}
    text, problems = newjob.check(form)
    return web.json_response({"yaml": text, "problems": [{**p, "field": newjob.field_of(p["path"])} for p in problems]})


async def new_job_yaml(request: web.Request) -> web.Response:
    """The YAML as a download when it validates; else the form again, with the problems beside the fields."""
    form = {k: str(v) for k, v in (await request.post()).items()}
    text, problems = newjob.check(form)
    if problems:
        page = pages.new_job_page(form, text, problems, can_create=_can_create(request))
        return web.Response(text=page, content_type="text/html", status=422)
    name = re.sub(r"[^a-z0-9.-]", "", form.get("metadata.name", "")) or "finetunejob"
    return web.Response(
        text=text,
        content_type="application/yaml",
        headers={"Content-Disposition": f'attachment; filename="{name}.yaml"'},
    )


async def new_job_apply(request: web.Request) -> web.Response:
    """Create the job (only routed with --allow-create): the same checks as the YAML download first."""
    from kubernetes.client.exceptions import ApiException

    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != request.host:
        # A page elsewhere posting to this one (a browser sends Origin with every POST): refused.
        raise web.HTTPForbidden(text=f"cross-origin request from {origin} refused")
    form = {k: str(v) for k, v in (await request.post()).items()}
    text, problems = newjob.check(form)
    if not problems:
        try:
            namespace, name = await request.app[CREATOR].create(newjob.manifest(form))
        except ApiException as exc:
            what = "the dashboard's ServiceAccount may not create FineTuneJobs there" if exc.status == 403 else ""
            problems = [{"path": "", "message": f"the cluster refused it ({exc.status} {exc.reason}) {what}".strip()}]
            problems.append({"path": "", "message": _api_message(exc)})
        except PermissionError as exc:
            problems = [{"path": "metadata.namespace", "message": str(exc)}]
        else:
            raise web.HTTPSeeOther(f"/jobs/{namespace}/{name}")
    page = pages.new_job_page(form, text, problems, can_create=True)
    return web.Response(text=page, content_type="text/html", status=422)


def _api_message(exc: Any) -> str:
    """The API server's own message (a Status body), else its raw text."""
    import json

    try:
        return str(json.loads(exc.body).get("message", ""))
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    # Belt and braces behind the escaping: no inline script runs, nothing is framed.
    response.headers["Content-Security-Policy"] = "default-src 'self'; style-src 'self' 'unsafe-inline'"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def build_app(source: JobSource, creator: JobCreator | None = None) -> web.Application:
    """`creator`: where the new-job form may create jobs (`--allow-create`); None keeps it read-only."""
    app = web.Application(middlewares=[_headers])
    app[SOURCE] = source
    app.router.add_get("/", jobs_page)
    app.router.add_get("/rows", job_rows)
    app.router.add_get("/jobs/{namespace}/{name}", job_page)
    app.router.add_get("/new", new_job_page)
    # POSTs that only validate: nothing reaches the cluster.
    app.router.add_post("/new/check", new_job_check)
    app.router.add_post("/new.yaml", new_job_yaml)
    if creator is not None:
        app[CREATOR] = creator
        app.router.add_post("/new/apply", new_job_apply)
    app.router.add_get("/healthz", healthz)  # the chart's probes: the process serves, whatever the API does
    app.router.add_static("/static", STATIC)
    return app
