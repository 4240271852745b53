"""`kubetune dashboard --allow-create`: the new-job form creates the FineTuneJob it validated; without
the flag the dashboard cannot create anything. A real `kubetune dashboard` process against the API emulator."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.dashboard.newjob import FIELDS
from tests.integration.operator.harness import Cluster, wait_for

pytestmark = pytest.mark.integration


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the test reads the 303 itself


def _post(url: str, form: dict[str, str], origin: str | None = None) -> tuple[int, str, str]:
    """(status, Location, body) of a form POST, as a browser sends it."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if origin:
        headers["Origin"] = origin
    request = urllib.request.Request(url, urllib.parse.urlencode(form).encode(), headers, method="POST")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as r:
            return r.status, r.headers.get("Location", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", ""), exc.read().decode()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def _answers(url: str) -> bool:
    try:
        return bool(_get(url + "/healthz") == "ok")
    except OSError:
        return False


def _job_names(cluster: Cluster) -> list[str]:
    found = cluster.custom.list_namespaced_custom_object("kubetune.io", "v1alpha1", "default", "finetunejobs")
    return [j["metadata"]["name"] for j in found["items"]]


def _form(name: str, **changes: str) -> dict[str, str]:
    form = {f.path: f.default for f in FIELDS}
    form.update({"metadata.name": name, **changes})
    return form


def _start(cluster: Cluster, log: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    from kubetune.local import free_port

    port = free_port()
    command = [sys.executable, "-m", "kubetune.cli", "dashboard", "--kubeconfig", str(cluster.server.kubeconfig)]
    proc = subprocess.Popen([*command, "--port", str(port), *flags], stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for("the dashboard to answer", lambda: _answers(url), timeout=30)
    return proc, url


@pytest.fixture(scope="module")
def creating(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = _start(cluster, tmp_path_factory.mktemp("dash") / "creating.log", "--allow-create")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def read_only(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = _start(cluster, tmp_path_factory.mktemp("dash") / "read-only.log")
    yield url
    proc.terminate()
    proc.wait(10)


def test_a_valid_form_creates_the_job_and_leads_to_its_page(cluster: Cluster, creating: str) -> None:
    assert 'formaction="/new/apply"' in _get(creating + "/new")
    status, location, _ = _post(creating + "/new/apply", _form("from-the-form"), origin=creating)
    assert (status, location) == (303, "/jobs/default/from-the-form")
    created = cluster.job("from-the-form")
    assert created["spec"]["method"] == {"type": "lora", "lora": {"rank": 16}}
    assert "from-the-form" in _get(creating + location)


def test_an_invalid_form_creates_nothing_and_names_the_field(cluster: Cluster, creating: str) -> None:
    status, _, body = _post(creating + "/new/apply", _form("rank-zero", **{"spec.method.lora.rank": "0"}))
    assert status == 422
    assert "spec.method.lora.rank: must be &gt; 0 (got 0)" in body  # beside the field, escaped
    assert "rank-zero" not in _job_names(cluster)


def test_a_post_from_another_site_is_refused(cluster: Cluster, creating: str) -> None:
    status, _, _ = _post(creating + "/new/apply", _form("cross-site"), origin="http://evil.example")
    assert status == 403
    assert "cross-site" not in _job_names(cluster)


def test_without_allow_create_nothing_can_be_created(cluster: Cluster, read_only: str) -> None:
    assert "/new/apply" not in _get(read_only + "/new")
    status, _, _ = _post(read_only + "/new/apply", _form("sneaky"), origin=read_only)
    assert status in (404, 405)
    assert "sneaky" not in _job_names(cluster)
