"""Fixtures shared by every test area.

- `tiny_model_dir`: a tiny Llama model + trained tokenizer saved to disk once per session and loaded
  back through the normal `from_pretrained` path by the code under test.
- `s3_server`: a real S3 server (SeaweedFS) on 127.0.0.1 for the session.
- `free_port`: a TCP port free on 127.0.0.1, chosen as `kubetune run --local` chooses MASTER_PORT.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Keep tests hermetic: no hub, no telemetry, small thread pools on 2-core CI machines.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubetune.devtools.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", chat_template="chatml")


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model without a chat template (a 'base' model)."""
    from kubetune.devtools.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-base") / "model", chat_template=None)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[object]:
    from kubetune.devtools.s3server import S3Server

    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The S3 server, with its AWS_* variables set in this process for the test's duration."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def free_port() -> int:
    from kubetune.local import free_port

    return free_port()
