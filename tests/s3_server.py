"""A real S3 API for the storage tests: moto's standalone server as a child process, stopped by PID."""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from comfyq.processes import ManagedProcess, ProcessFailed
from comfyq.storage import S3Storage

log = logging.getLogger(__name__)

# werkzeug (under moto) prints the port it really bound, so port 0 works and no port is guessed.
MOTO_READY = r"Running on http://127\.0\.0\.1:(\d+)"


class S3Server:
    """One moto server process. stop() and start() again keep the port, to test a server that comes back;
    moto keeps everything in memory, so a restarted server has no buckets."""

    access_key = "comfyq-test-access"
    secret_key = "comfyq-test-secret"  # moto accepts any credentials; these only have to be consistent

    def __init__(self, log_dir: Path, name: str = "moto-s3") -> None:
        self.log_dir = log_dir
        self.name = name
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def endpoint(self) -> str:
        """host:port, the form the minio client and COMFYQ_S3_ENDPOINT take."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self, timeout: float = 30.0) -> S3Server:
        """Start on port 0 the first time, on the same port after a stop (retrying while it is still taken)."""
        deadline = time.monotonic() + timeout
        while True:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            env.pop("MOTO_PORT", None)
            argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
            proc = ManagedProcess(self.name, argv, env=env, log_path=self.log_dir / f"{self.name}.log")
            try:
                match = proc.start(MOTO_READY, timeout=max(deadline - time.monotonic(), 1.0))
            except ProcessFailed:
                proc.stop(timeout=5)
                if self.port == 0 or time.monotonic() > deadline:
                    raise
                log.info("port %s still taken; retrying", self.port)
                time.sleep(0.2)
                continue
            assert match is not None
            self.port = int(match.group(1))
            self.process = proc
            break
        self._wait_until_answering(deadline)
        return self

    def _wait_until_answering(self, deadline: float) -> None:
        while True:
            try:
                requests.get(self.url + "/", timeout=2)  # ListBuckets; any answer means it serves
                return
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)
            self.process = None

    def storage(self, bucket: str | None = None) -> S3Storage:
        """An S3Storage on this server, on a bucket of its own unless one is named."""
        return S3Storage(self.endpoint, self.access_key, self.secret_key, bucket or unique_bucket(),
                         connect_timeout=2.0, read_timeout=10.0)


def unique_bucket() -> str:
    return f"comfyq-t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto server shared by the session (tests that stop it start an S3Server of their own).
    Use .endpoint ("127.0.0.1:PORT"), .access_key and .secret_key."""
    server = S3Server(tmp_path_factory.mktemp("moto-logs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_storage(s3_server: S3Server) -> S3Storage:
    """An S3Storage on a bucket no other test uses (not created yet: the first put creates it)."""
    return s3_server.storage()
