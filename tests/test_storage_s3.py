"""S3Storage against a real S3 API (moto's server as a child process), and a worker storing to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from comfyq.errors import ConfigurationError
from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import Settings
from comfyq.storage import S3Storage, StorageFailure, build_storage, object_key
from tests.e2e_support import TINY_GRAPH, Stack
from tests.s3_server import S3Server, unique_bucket

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def test_put_then_read_back_through_a_presigned_url(s3_storage: S3Storage) -> None:
    key = object_key(42, 1, "ComfyUI_00001_.png")
    assert key == "42/1/ComfyUI_00001_.png"
    obj = s3_storage.put(key, PNG, "image/png")
    assert obj.key == key and obj.size == len(PNG) and obj.content_type == "image/png"
    assert obj.location == f"s3://{s3_storage.bucket}/{key}"
    url = s3_storage.presigned_url(key, 600)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == PNG and response.headers["Content-Type"] == "image/png"


def test_attempts_get_keys_of_their_own(s3_storage: S3Storage) -> None:
    first = s3_storage.put(object_key(7, 1, "out.png"), b"first", "image/png")
    second = s3_storage.put(object_key(7, 2, "../../out.png"), b"second", "image/png")
    assert (first.key, second.key) == ("7/1/out.png", "7/2/out.png")
    stored = {o.object_name for o in s3_storage.client.list_objects(s3_storage.bucket, prefix="7/", recursive=True)}
    assert stored == {"7/1/out.png", "7/2/out.png"}
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
def test_server_down_is_a_storage_failure_and_back_on_the_same_port_works(tmp_path: Path) -> None:
    server = S3Server(tmp_path / "logs", name="moto-s3-restarted").start()
    try:
        storage = server.storage()
        storage.put("1/1/a.txt", b"a", "text/plain")
        port = server.port
        server.stop()
        with pytest.raises(StorageFailure) as raised:
            storage.put("1/2/a.txt", b"a", "text/plain")
        assert raised.value.retryable and raised.value.error_type == "storage_error"
        assert server.endpoint in raised.value.message
        assert isinstance(raised.value.__cause__, Exception)  # the client's error is kept as the cause only
        server.start()
        assert server.port == port
        # moto keeps nothing across a restart: the bucket is gone, so this also exercises NoSuchBucket -> create.
        obj = storage.put("1/3/a.txt", b"again", "text/plain")
        assert requests.get(storage.presigned_url(obj.key, 60), timeout=10).content == b"again"
    finally:
        server.stop()


def test_a_server_that_never_ran_is_a_storage_failure(tmp_path: Path) -> None:
    server = S3Server(tmp_path / "logs").start()
    endpoint = server.endpoint
    server.stop()
    storage = S3Storage(endpoint, "a", "b", unique_bucket(), connect_timeout=1.0)
    with pytest.raises(StorageFailure, match="S3 bucket check failed"):
        storage.put("1/1/a.txt", b"a", "text/plain")


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
    assert output["key"].startswith(f"{job_id}/1/") and output["location"] == f"s3://{bucket}/{output['key']}"
    stat = s3_server.storage(bucket).client.stat_object(bucket, output["key"])
    assert stat.size == output["size"] and stat.content_type == output["content_type"] == "image/png"
    assert not list(stack.storage_dir.rglob("*.png"))  # nothing went to the local folder
