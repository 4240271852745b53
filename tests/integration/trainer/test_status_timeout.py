"""A status patch to an API server that accepts the connection and never answers must not stall rank 0."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from kubetune.reporting import REQUEST_TIMEOUT, StatusReporter

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts every connection, reads nothing and never replies."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)  # kept open: the client waits for an answer that never comes

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def test_default_timeout_is_bounded():
    connect, read = REQUEST_TIMEOUT
    assert connect <= 5 and read <= 15


def test_patch_to_a_silent_api_server_gives_up_within_the_timeout(silent_server: str) -> None:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = silent_server
    api_client = client.ApiClient(configuration)
    reporter = StatusReporter("job", "ns", api_client=api_client, request_timeout=(1.0, 2.0))
    # In a thread, so that a patch without a timeout fails this test instead of hanging it.
    report = threading.Thread(
        target=reporter.report,
        daemon=True,
        kwargs={"progress": {"stage": "training", "step": 1, "totalSteps": 10}, "force": True},
    )
    started = time.monotonic()
    report.start()
    report.join(timeout=8)
    assert not report.is_alive(), "the status patch hung on a server that never answers"
    assert reporter.failures == 1 and reporter.patches_sent == 0  # reported as a failure, never raised
    assert time.monotonic() - started > 1.5  # it did wait for the read timeout, i.e. the server was reached
    close = threading.Thread(target=reporter.close, daemon=True)  # flushes the kept update: bounded too
    close.start()
    close.join(timeout=8)
    assert not close.is_alive()
