"""The aiohttp application: GET only, nothing here writes to the cluster or the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from kubetune.dashboard import pages
from kubetune.dashboard.jobs import JobView

STATIC = Path(__file__).parent / "static"


class JobSource(Protocol):
    async def all(self) -> list[JobView]: ...

    async def one(self, namespace: str, name: str) -> JobView | None: ...


SOURCE = web.AppKey("source", JobSource)


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


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    # Belt and braces behind the escaping: no inline script runs, nothing is framed.
    response.headers["Content-Security-Policy"] = "default-src 'self'; style-src 'self' 'unsafe-inline'"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def build_app(source: JobSource) -> web.Application:
    app = web.Application(middlewares=[_headers])
    app[SOURCE] = source
    app.router.add_get("/", jobs_page)
    app.router.add_get("/rows", job_rows)
    app.router.add_get("/jobs/{namespace}/{name}", job_page)
    app.router.add_get("/healthz", healthz)  # the chart's probes: the process serves, whatever the API does
    app.router.add_static("/static", STATIC)
    return app
