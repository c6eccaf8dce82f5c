"""An S3 server on loopback for the tests: moto, run as a separate process (inside the test process, rasterio's
writes to it were seen to hang), and the AWS environment pointing at it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiling.storage import settings as storage_settings

#: Seconds the server gets to start listening.
START_TIMEOUT = 30


def wait_for_server(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    """Return once a server ``process`` accepts connections on loopback ``port``; fail if it ends or is slow."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def new_bucket(self) -> str:
        name = f"b{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload(self, local: Path, url: str) -> str:
        bucket, key = url.removeprefix("s3://").split("/", 1)
        self.client().upload_file(str(local), bucket, key)
        return url

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", ()))


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A moto S3 server in a process of its own on a free loopback port: its endpoint URL and process."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_server(port, process, "the moto S3 server")
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with moto_server() as (endpoint, process):
        yield S3Server(endpoint, process)


def writes_fail_after(monkeypatch: pytest.MonkeyPatch, chunks: int) -> Callable[[], None]:
    """Make the work store fail, as a store that went away would, once ``chunks`` chunks are written; the value
    puts the store back."""
    from tiling.errors import write_failure
    from tiling.writers import workstore

    original, written = workstore.WorkStore.write, []

    def failing(self, index, rows, cols, probs):  # type: ignore[no-untyped-def]
        if len(written) == chunks:
            raise write_failure(self.location.url, OSError(5, "the store went away"))
        original(self, index, rows, cols, probs)
        written.append(index)

    monkeypatch.setattr(workstore.WorkStore, "write", failing)
    return lambda: monkeypatch.setattr(workstore.WorkStore, "write", original)


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Server]:
    """The server, with this process's AWS environment pointing at it (and no profile files of the user's)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path / "cache"))
    _clear_filesystems()
    yield s3_server
    _clear_filesystems()
    for key in list(storage_settings._APPLIED):
        if os.environ.get(key) == storage_settings._APPLIED.pop(key):
            del os.environ[key]


def _clear_filesystems() -> None:
    """fsspec caches a filesystem per set of options; a test that changes the environment needs a fresh one."""
    import fsspec

    for cls in (fsspec.get_filesystem_class("s3"),):
        cls.clear_instance_cache()
