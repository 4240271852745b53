"""The dashboard's HTML. Every value from a job passes through `e()` (html.escape): a job named
`<script>` or a data row holding markup shows as text. Only strings built here (charts, tags) are
trusted, and they are joined with `Html` so the difference is visible in the code."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

import yaml

from kubetune.api import conditions
from kubetune.dashboard.charts import line_chart, sparkline
from kubetune.dashboard.jobs import JobView, series
from kubetune.dashboard.newjob import FIELDS, Field, field_of, options


class Html(str):
    """Markup built by this module: not escaped again."""


def e(value: Any) -> str:
    if isinstance(value, Html):
        return value
    return escape("" if value is None else str(value))


def layout(title: str, body: str) -> Html:
    return Html(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{e(title)} · kubetune</title>"
        '<link rel="stylesheet" href="/static/dashboard.css"></head><body>'
        '<header><a href="/">kubetune</a> <a class="nav" href="/new">new job</a>'
        ' <span class="ro">read-only</span></header>'
        f"<main>{body}</main>"
        '<script src="/static/dashboard.js"></script></body></html>'
    )


def age(created: str | None, now: datetime | None = None) -> str:
    """5s, 12m, 3h, 2d: like kubectl's AGE column."""
    if not created:
        return ""
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = int(((now or datetime.now(timezone.utc)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def job_href(job: JobView) -> str:
    return f"/jobs/{quote(job.namespace, safe='')}/{quote(job.name, safe='')}"


def _progress_bar(job: JobView) -> str:
    p = job.progress
    step, total = p.get("step"), p.get("totalSteps")
    if step is None or not total:
        return e(p.get("stage") or "")
    percent = p.get("percent", 100 * step / total)
    eta = f" · ETA {e(p['eta'])}" if p.get("eta") and job.phase not in conditions.FINISHED else ""
    return (
        f'<div class="bar" title="{e(percent)}%"><div style="width:{float(percent):.1f}%"></div></div>'
        f'<span class="steps">{e(step)}/{e(total)}{eta}</span>'
    )


def _last_loss(job: JobView) -> str:
    losses = job.losses
    return f"{losses[-1][1]:.4g}" if losses else ""


def job_rows(jobs: list[JobView]) -> Html:
    """The jobs table's body; the page polls for it and swaps it in without a reload."""
    if not jobs:
        return Html('<tr><td colspan="11" class="none">No FineTuneJobs.</td></tr>')
    rows = []
    for job in jobs:
        rows.append(
            f'<tr data-job="{e(job.namespace)}/{e(job.name)}" data-phase="{e(job.phase)}">'
            f'<td><a href="{e(job_href(job))}">{e(job.name)}</a></td><td>{e(job.namespace)}</td>'
            f'<td><span class="phase {e(job.phase.lower())}">{e(job.phase)}</span></td>'
            f'<td class="progress">{_progress_bar(job)}</td><td class="loss">{e(_last_loss(job))}</td>'
            f"<td>{sparkline(job.losses)}</td><td>{e(job.model)}</td><td>{e(job.method)}</td>"
            f"<td>{e(job.progress.get('stage') or '')}</td><td>{e(job.backend or '')}</td>"
            f'<td title="{e(job.created)}">{e(age(job.created))}</td></tr>'
        )
    return Html("".join(rows))


def _select(name: str, current: str, options: list[str]) -> str:
    choices = "".join(
        f'<option value="{e(o)}"{" selected" if o == current else ""}>{e(o or "all")}</option>' for o in ["", *options]
    )
    return f'<label>{e(name)} <select name="{e(name)}">{choices}</select></label>'


def jobs_page(jobs: list[JobView], namespaces: list[str], namespace: str, phase: str) -> Html:
    query = urlencode({k: v for k, v in (("namespace", namespace), ("phase", phase)) if v})
    head = "".join(
        f"<th>{h}</th>"
        for h in ("Name", "Namespace", "Phase", "Progress", "Loss", "", "Model", "Method", "Stage", "Backend", "Age")
    )
    body = (
        "<h1>Fine-tuning jobs</h1>"
        f'<form class="filters" method="get">{_select("namespace", namespace, namespaces)}'
        f"{_select('phase', phase, list(conditions.PHASES))}</form>"
        f'<table class="jobs"><thead><tr>{head}</tr></thead>'
        f'<tbody id="job-rows" data-refresh="/rows?{e(query)}">{job_rows(jobs)}</tbody></table>'
    )
    return layout("Jobs", body)


def _table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _timeline(job: JobView) -> str:
    items = [
        (
            c.get("lastTransitionTime"),
            "condition",
            f"{c.get('type')}={c.get('status')}",
            c.get("reason"),
            c.get("message"),
        )
        for c in job.conditions
    ] + [(ev["time"], f"event {ev['type'] or ''}".strip(), ev["reason"], "", ev["message"]) for ev in job.events]
    if not items:
        return "<p class=none>No conditions or events.</p>"
    items.sort(key=lambda item: item[0] or "")
    return _table(["Time", "Kind", "What", "Reason", "Message"], [list(i) for i in items], "timeline")


def _data_report(report: dict[str, Any] | None) -> str:
    if not report:
        return "<p class=none>No data report yet.</p>"
    summary = report.get("summary") or {}
    keys = ("rowsRead", "invalid", "truncated", "dropped", "totalTokens", "trainableTokens")
    out = _table(
        ["Rows read", "Invalid", "Truncated", "Dropped", "Tokens", "Trainable tokens"], [[summary.get(k) for k in keys]]
    )
    invalid = (report.get("invalid") or {}).get("rows") or []
    if invalid:
        shown = invalid[:20]
        out += f"<h3>First invalid rows ({len(shown)} of {e((report.get('invalid') or {}).get('count'))})</h3>"
        out += _table(
            ["File", "Row", "Reason"], [[r.get("file"), r.get("row"), r.get("reason")] for r in shown], "invalid"
        )
    return out


def _outputs(job: JobView) -> str:
    manifest = job.manifest
    if not manifest:
        return "<p class=none>No manifest yet: the outputs are complete once the trainer writes it.</p>"
    outputs = manifest.get("outputs") or {}
    out = _table(["Output", "URI"], [[k, v] for k, v in outputs.items()])
    commands = []
    if outputs.get("model"):
        commands.append(f"vllm serve {outputs['model']}")
    base = (manifest.get("baseModel") or {}).get("source") or job.model
    if outputs.get("adapter") and base:
        commands.append(f"vllm serve {base} --enable-lora --lora-modules {job.name}={outputs['adapter']}")
    for command in commands:
        out += f'<div class="command"><code>{e(command)}</code> <button type="button" class="copy">copy</button></div>'
    files = manifest.get("files") or []
    out += _table(["File", "Size", "sha256"], [[f.get("path"), f.get("size"), f.get("sha256")] for f in files], "files")
    return out


def job_page(job: JobView) -> Html:
    charts = "".join(
        line_chart(title, series(job.history, key))
        for title, key in (
            ("loss", "loss"),
            ("eval loss", "evalLoss"),
            ("learning rate", "learningRate"),
            ("tokens/s", "tokensPerSecond"),
        )
    )
    spec = yaml.safe_dump(job.spec, sort_keys=False) if job.spec else ""
    body = (
        f'<h1>{e(job.name)} <span class="phase {e(job.phase.lower())}">{e(job.phase)}</span></h1>'
        f'<p class="meta">namespace {e(job.namespace)} · model {e(job.model)} · method {e(job.method)}'
        f" · output {e(job.output_uri)}</p>"
        f'<div class="progress">{_progress_bar(job)}</div>'
        f'<section><h2>Training</h2><div class="charts">{charts}</div></section>'
        f"<section><h2>Conditions and events</h2>{_timeline(job)}</section>"
        f'<section id="data-report"><h2>Data report</h2>{_data_report(job.data_report)}</section>'
        f'<section id="outputs"><h2>Outputs</h2>{_outputs(job)}</section>'
        f'<section><h2>Spec</h2><pre class="spec">{e(spec)}</pre></section>'
    )
    return layout(job.name, body)


def _input(field: Field, value: str, index: int) -> str:
    attrs = f'id="f{index}" name="{e(field.path)}"'
    if field.kind == "choice":
        choices = "".join(
            f'<option value="{e(o)}"{" selected" if o == value else ""}>{e(o)}</option>' for o in options(field)
        )
        return f"<select {attrs}>{choices}</select>"
    kind = "number" if field.kind in ("int", "float") else "text"
    step = ' step="any"' if field.kind == "float" else ""
    return f'<input type="{kind}"{step} {attrs} value="{e(value)}">'


def new_job_page(form: dict[str, str], text: str, problems: list[dict[str, str]], *, can_create: bool = False) -> Html:
    """The form, each field with its problems beside it, and the YAML it makes; with `can_create`
    (the dashboard runs with --allow-create) also a button that creates the job in the cluster."""
    by_field: dict[str, list[str]] = {}
    for problem in problems:
        by_field.setdefault(field_of(problem["path"]), []).append(f"{problem['path']}: {problem['message']}")
    rows = []
    for i, field in enumerate(FIELDS):
        errors = "; ".join(by_field.get(field.path, []))
        rows.append(
            f'<div class="field" data-path="{e(field.path)}"><label for="f{i}">{e(field.label)}</label>'
            f'{_input(field, form.get(field.path, ""), i)}<span class="hint">{e(field.hint)}</span>'
            f'<span class="error" data-for="{e(field.path)}">{e(errors)}</span></div>'
        )
    other = "; ".join(by_field.get("", []))
    where = (
        "Download the YAML for GitOps or <code>kubectl apply -f</code>, or create the job here."
        if can_create
        else "Nothing is sent to the cluster: download the YAML for GitOps or <code>kubectl apply -f</code>."
    )
    apply = ' <button type="submit" formaction="/new/apply" id="apply">Create in cluster</button>' if can_create else ""
    body = (
        "<h1>New fine-tuning job</h1><p class=meta>Checked as you type by the validation <code>kubetune validate"
        f"</code> runs. {where}</p>"
        '<div class="newjob"><form id="new-job" method="post" action="/new.yaml">'
        f'{"".join(rows)}<span class="error" data-for="">{e(other)}</span>'
        f'<div><button type="submit">Download YAML</button>{apply} <button type="button" class="copy-yaml">copy'
        f'</button></div></form><pre id="yaml" class="spec">{e(text)}</pre></div>'
    )
    return layout("New job", body)
