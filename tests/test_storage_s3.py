"""S3Storage against a real S3 API (moto's server as a child process), errors moto cannot produce from a small
real HTTP server answering S3's error documents, and a worker storing to S3."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from comfyq import storage as storage_module
from comfyq.errors import ConfigurationError, StorageUnavailable
from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import Settings
from comfyq.storage import (
    S3Storage,
    StorageFailure,
    StorageRejected,
    build_storage,
    job_prefix,
    object_key,
    storage_namespace,
)
from tests.e2e_support import TINY_GRAPH, Stack
from tests.s3_server import S3Server, unique_bucket

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
NS = "0123456789abcdef0123456789abcdef"


def test_put_then_read_back_through_a_presigned_url(s3_storage: S3Storage) -> None:
    key = object_key(NS, 42, 1, "ComfyUI_00001_.png")
    assert key == f"{NS}/42/1/ComfyUI_00001_.png"
    obj = s3_storage.put(key, PNG, "image/png")
    assert obj.key == key and obj.size == len(PNG) and obj.content_type == "image/png"
    assert obj.location == f"s3://{s3_storage.bucket}/{key}"
    url = s3_storage.presigned_url(key, 600)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == PNG and response.headers["Content-Type"] == "image/png"


def test_attempts_get_keys_of_their_own(s3_storage: S3Storage) -> None:
    first = s3_storage.put(object_key(NS, 7, 1, "out.png"), b"first", "image/png")
    second = s3_storage.put(object_key(NS, 7, 2, "../../out.png"), b"second", "image/png")
    assert (first.key, second.key) == (f"{NS}/7/1/out.png", f"{NS}/7/2/out.png")
    stored = {o.object_name for o in s3_storage.client.list_objects(s3_storage.bucket, prefix=f"{NS}/7/",
                                                                     recursive=True)}
    assert stored == {f"{NS}/7/1/out.png", f"{NS}/7/2/out.png"}
    assert requests.get(s3_storage.presigned_url(first.key, 60), timeout=10).content == b"first"


def test_missing_bucket_is_created_on_first_put(s3_storage: S3Storage) -> None:
    assert not s3_storage.client.bucket_exists(s3_storage.bucket)
    s3_storage.put("1/1/a.txt", b"a", "text/plain")
    assert s3_storage.client.bucket_exists(s3_storage.bucket)


def test_bucket_deleted_after_first_use_is_created_again(s3_storage: S3Storage) -> None:
    s3_storage.put("1/1/a.txt", b"a", "text/plain")
    s3_storage.client.remove_object(s3_storage.bucket, "1/1/a.txt")
    s3_storage.client.remove_bucket(s3_storage.bucket)
    assert not s3_storage.client.bucket_exists(s3_storage.bucket)
    obj = s3_storage.put("1/2/b.txt", b"bb", "text/plain")
    assert obj.size == 2
    stat = s3_storage.client.stat_object(s3_storage.bucket, "1/2/b.txt")
    assert stat.size == 2 and stat.content_type == "text/plain"


def test_presigned_url_for_a_missing_object_answers_404(s3_storage: S3Storage) -> None:
    s3_storage.put("1/1/a.txt", b"a", "text/plain")
    assert requests.get(s3_storage.presigned_url("1/1/nope.txt", 60), timeout=10).status_code == 404


def test_presigned_url_beyond_seven_days_is_a_storage_failure(s3_storage: S3Storage) -> None:
    with pytest.raises(StorageFailure, match="presigning"):
        s3_storage.presigned_url("1/1/a.txt", 8 * 24 * 3600)


@pytest.mark.timeout(90)
def test_server_down_is_an_outage_and_back_on_the_same_port_works(tmp_path: Path) -> None:
    server = S3Server(tmp_path / "logs", name="moto-s3-restarted").start()
    try:
        storage = server.storage()
        storage.put("1/1/a.txt", b"a", "text/plain")
        port = server.port
        server.stop()
        with pytest.raises(StorageUnavailable) as raised:
            storage.put("1/2/a.txt", b"a", "text/plain")
        assert raised.value.dependency == "storage" and server.endpoint in str(raised.value)
        assert isinstance(raised.value.__cause__, Exception)  # the client's error is kept as the cause only
        server.start()
        assert server.port == port
        # moto keeps nothing across a restart: the bucket is gone, so this also exercises NoSuchBucket -> create.
        obj = storage.put("1/3/a.txt", b"again", "text/plain")
        assert requests.get(storage.presigned_url(obj.key, 60), timeout=10).content == b"again"
    finally:
        server.stop()


def test_a_server_that_never_ran_is_an_outage(tmp_path: Path) -> None:
    server = S3Server(tmp_path / "logs").start()
    endpoint = server.endpoint
    server.stop()
    storage = S3Storage(endpoint, "a", "b", unique_bucket(), connect_timeout=1.0)
    with pytest.raises(StorageUnavailable, match="S3 bucket check failed"):
        storage.put("1/1/a.txt", b"a", "text/plain")
    with pytest.raises(StorageUnavailable, match="S3 listing of"):
        storage.delete_prefixes([job_prefix(NS, 1)])


def test_delete_prefixes_removes_every_attempt_of_a_job_in_batches(s3_storage: S3Storage,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module, "DELETE_BATCH", 2)  # several DeleteObjects requests for one job
    keys = [f"{NS}/7/1/a.png", f"{NS}/7/1/b.png", f"{NS}/7/2/a.png", f"{NS}/8/1/a.png", f"{NS}/70/1/a.png",
            "other-installation/7/1/a.png", "7/1/a.png"]
    for key in keys:
        s3_storage.put(key, b"x", "image/png")
    assert s3_storage.delete_prefixes([job_prefix(NS, 7), job_prefix(NS, 99)]) == 3
    left = {o.object_name for o in s3_storage.client.list_objects(s3_storage.bucket, recursive=True)}
    assert left == {f"{NS}/8/1/a.png", f"{NS}/70/1/a.png", "other-installation/7/1/a.png", "7/1/a.png"}


def test_deleting_from_a_bucket_that_does_not_exist_removes_nothing(s3_storage: S3Storage) -> None:
    assert s3_storage.delete_prefixes([job_prefix(NS, 1)]) == 0
    assert s3_storage.delete([f"{NS}/1/1/a.png"]) == 0


def test_delete_prefixes_refuses_a_prefix_that_is_not_a_folder(s3_storage: S3Storage) -> None:
    with pytest.raises(ValueError, match="must name a folder"):
        s3_storage.delete_prefixes([f"{NS}/1"])


class CannedS3(BaseHTTPRequestHandler):
    """Answers like S3 for the bucket (it exists) and, for an upload, with the outcome its key names: S3's own
    error documents for errors moto never gives (EntityTooLarge, SlowDown, AccessDenied), or a proxy's 413."""

    protocol_version = "HTTP/1.1"
    hits: Counter[str]
    ERRORS = {"entity-too-large": (400, "EntityTooLarge"), "slow-down": (503, "SlowDown"),
              "internal-error": (500, "InternalError"), "access-denied": (403, "AccessDenied"),
              "invalid-argument": (400, "InvalidArgument")}

    def answer(self, status: int, body: bytes = b"", content_type: str = "application/xml",
               headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.answer(200)

    def do_GET(self) -> None:
        self.answer(200, b'<?xml version="1.0" encoding="UTF-8"?><LocationConstraint '
                         b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">us-east-1</LocationConstraint>')

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.path.split("?", 1)[0].split("/", 2)[2]
        outcome = key.rsplit("/", 1)[-1].split(".", 1)[0]
        self.hits[outcome] += 1
        if outcome == "proxy-too-large":
            self.answer(413, b"<html><body>413 Request Entity Too Large</body></html>", "text/html")
        elif outcome in self.ERRORS:
            status, code = self.ERRORS[outcome]
            self.answer(status, (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                                 f"<Message>canned {code}</Message><Key>{key}</Key><RequestId>1</RequestId>"
                                 "</Error>").encode())
        else:
            self.answer(200, headers={"ETag": '"0123456789abcdef0123456789abcdef"'})

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def canned_s3() -> Iterator[tuple[S3Storage, Counter[str]]]:
    """An S3Storage on the canned server (port 0), and the uploads it saw per outcome; shut down afterwards."""
    hits: Counter[str] = Counter()
    handler = type("Handler", (CannedS3,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="canned-s3", daemon=True)
    thread.start()
    try:
        yield S3Storage(f"127.0.0.1:{server.server_port}", "k", "s", "canned", region="us-east-1",
                        connect_timeout=2.0, read_timeout=5.0), hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("outcome", "raised"), [
    ("entity-too-large", StorageRejected), ("proxy-too-large", StorageRejected),
    ("slow-down", StorageUnavailable), ("internal-error", StorageUnavailable),
    ("access-denied", StorageUnavailable), ("invalid-argument", StorageFailure),
])
def test_s3_errors_are_sorted_into_outage_rejection_or_transient(
        canned_s3: tuple[S3Storage, Counter[str]], outcome: str, raised: type[Exception]) -> None:
    storage, hits = canned_s3
    assert storage.put(f"{NS}/1/1/ok.png", PNG, "image/png").size == len(PNG)  # the bucket works
    with pytest.raises(raised) as info:
        storage.put(f"{NS}/1/1/{outcome}.png", PNG, "image/png")
    assert type(info.value) is raised and storage.endpoint in str(info.value)
    if raised is StorageRejected:
        assert info.value.to_record()["type"] == "storage_rejected" and not info.value.retryable  # type: ignore[attr-defined]
    assert hits[outcome] == (2 if outcome in {"slow-down", "internal-error"} else 1)  # 5xx: retried once


def _s3_settings(**overrides: object) -> Settings:
    return Settings.model_validate({"storage_backend": "s3", **overrides})


@pytest.fixture
def no_s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COMFYQ_S3_ENDPOINT", "COMFYQ_S3_ACCESS_KEY", "COMFYQ_S3_SECRET_KEY", "COMFYQ_S3_BUCKET",
                 "COMFYQ_S3_REGION", "COMFYQ_S3_SECURE", "COMFYQ_STORAGE_BACKEND"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_s3_env")
def test_build_storage_from_settings_gives_a_working_s3_storage(s3_server: S3Server) -> None:
    bucket = unique_bucket()
    storage = build_storage(_s3_settings(s3_endpoint=s3_server.endpoint, s3_access_key=s3_server.access_key,
                                         s3_secret_key=s3_server.secret_key, s3_bucket=bucket))
    assert isinstance(storage, S3Storage) and storage.bucket == bucket
    obj = storage.put("5/1/x.bin", b"xyz", "application/octet-stream")
    assert obj.location == f"s3://{bucket}/5/1/x.bin"
    url = storage.presigned_url("5/1/x.bin", 60)
    assert url is not None and requests.get(url, timeout=10).content == b"xyz"


@pytest.mark.usefixtures("no_s3_env")
def test_build_storage_accepts_an_endpoint_url(s3_server: S3Server) -> None:
    storage = build_storage(_s3_settings(s3_endpoint=s3_server.url + "/", s3_access_key="k", s3_secret_key="s",
                                         s3_bucket=unique_bucket()))
    assert isinstance(storage, S3Storage) and storage.endpoint == s3_server.endpoint
    assert storage.put("1/1/a", b"a", "text/plain").size == 1


@pytest.mark.usefixtures("no_s3_env")
@pytest.mark.parametrize(("given", "missing"), [
    ({}, "COMFYQ_S3_ENDPOINT, COMFYQ_S3_ACCESS_KEY, COMFYQ_S3_SECRET_KEY"),
    ({"s3_endpoint": "minio:9000", "s3_access_key": "k"}, "COMFYQ_S3_SECRET_KEY"),
    ({"s3_access_key": "k", "s3_secret_key": "s"}, "COMFYQ_S3_ENDPOINT"),
])
def test_missing_s3_settings_are_a_configuration_error(given: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigurationError, match=f"needs {missing}$"):
        build_storage(_s3_settings(**given))


@pytest.mark.usefixtures("no_s3_env")
def test_an_invalid_bucket_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="COMFYQ_S3_BUCKET"):
        build_storage(_s3_settings(s3_endpoint="minio:9000", s3_access_key="k", s3_secret_key="s",
                                   s3_bucket="no spaces allowed"))


@pytest.mark.slow
def test_a_worker_stores_its_outputs_in_s3(stack: Stack, queue: JobQueue, s3_server: S3Server) -> None:
    stack.standin()
    bucket = unique_bucket()
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    worker = stack.worker("w1", "--burst", storage_backend="s3", s3_endpoint=s3_server.endpoint,
                          s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key, s3_bucket=bucket)
    assert worker.wait(60) == 0
    row = queue.get(job_id, "default")
    assert row is not None and row["status"] == "succeeded", row
    [output] = row["outputs"]
    assert output["key"].startswith(f"{storage_namespace(queue.db)}/{job_id}/1/") and output["location"] == f"s3://{bucket}/{output['key']}"
    stat = s3_server.storage(bucket).client.stat_object(bucket, output["key"])
    assert stat.size == output["size"] and stat.content_type == output["content_type"] == "image/png"
    assert not list(stack.storage_dir.rglob("*.png"))  # nothing went to the local folder
