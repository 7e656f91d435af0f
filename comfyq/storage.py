"""Where outputs go. Keys are <job id>/<attempt>/<file>, so a retried attempt never overwrites the outputs
the job row points at, and at-least-once execution still has an exactly-once effect."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name

from comfyq.errors import ConfigurationError, TransientFailure
from comfyq.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class StorageFailure(TransientFailure):
    """The backend refused or failed a write; retried like any transient failure."""

    error_type = "storage_error"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    content_type: str
    location: str

    def to_record(self) -> dict[str, object]:
        return {"key": self.key, "size": self.size, "content_type": self.content_type,
                "location": self.location}


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> StoredObject: ...

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """A time-limited GET URL for the object, or None when the backend has no URLs to give."""
        ...

    def delete(self, keys: list[str]) -> int:
        """Remove objects (retention); missing ones are not an error. Returns how many were removed."""
        ...


def object_key(job_id: int, attempt: int, filename: str) -> str:
    safe = os.path.basename(filename.replace("\\", "/")) or "output"
    return f"{job_id}/{attempt}/{safe}"


class LocalStorage:
    """A folder on disk; writes are atomic (temp file + rename) so a crash never leaves half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StorageFailure(f"key {key!r} escapes the storage folder")
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # no .part- files left behind by failed writes
            raise StorageFailure(f"cannot write {path}: {exc}") from exc
        return StoredObject(key=key, size=len(data), content_type=content_type, location=str(path))

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """Files on disk have no URL of their own."""
        return None

    def delete(self, keys: list[str]) -> int:
        removed = 0
        for key in keys:
            path = (self.root / key).resolve()
            if self.root not in path.parents:
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageFailure(f"cannot delete {path}: {exc}") from exc
            with contextlib.suppress(OSError):  # drop the now-empty <job>/<attempt>/ folders
                path.parent.rmdir()
                path.parent.parent.rmdir()
        return removed


class S3Storage:
    """Any S3 API (MinIO, AWS, ...) through the minio client. Timeouts are short and the client retries
    at most once, so a down server surfaces quickly as StorageFailure and the job's own backoff takes over."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, *, region: str | None = None,
                 secure: bool = False, connect_timeout: float = 3.0, read_timeout: float = 30.0,
                 retries: int = 1) -> None:
        if endpoint.startswith(("http://", "https://")):
            secure = endpoint.startswith("https://")
            endpoint = endpoint.split("://", 1)[1]
        endpoint = endpoint.rstrip("/")
        try:
            check_bucket_name(bucket)
        except ValueError as exc:
            raise ConfigurationError(f"COMFYQ_S3_BUCKET: {exc}") from exc
        self.endpoint = endpoint
        self.bucket = bucket
        self.region = region
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout), maxsize=10,
            cert_reqs="CERT_REQUIRED",  # the system trust store (OpenSSL honours SSL_CERT_FILE itself)
            retries=urllib3.Retry(total=retries, read=0, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))
        try:
            self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                                region=region, http_client=http)
        except ValueError as exc:
            raise ConfigurationError(f"COMFYQ_S3_ENDPOINT {endpoint!r}: {exc}") from exc
        self._bucket_ready = False

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one client call; every failure becomes StorageFailure, never a minio/urllib3 exception."""
        try:
            return action()
        except S3Error as exc:
            raise StorageFailure(f"S3 {what} failed at {self.endpoint}: {exc.code}: {exc.message}",
                                 details={"code": exc.code, "bucket": self.bucket}) from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise StorageFailure(f"S3 {what} failed at {self.endpoint}: {type(exc).__name__}: {exc}",
                                 details={"bucket": self.bucket}) from exc

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        if not self._call("bucket check", lambda: self.client.bucket_exists(self.bucket)):
            try:
                self._call("bucket creation", lambda: self.client.make_bucket(self.bucket, location=self.region))
                log.info("created bucket %s at %s", self.bucket, self.endpoint)
            except StorageFailure as exc:
                if exc.details.get("code") not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise  # another worker creating it at the same moment is fine; anything else is not
        self._bucket_ready = True

    def _put_object(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        self._ensure_bucket()
        try:
            self._call(f"upload of {key}", lambda: self._put_object(key, data, content_type))
        except StorageFailure as exc:
            if exc.details.get("code") != "NoSuchBucket":
                raise
            log.warning("bucket %s vanished at %s; creating it again", self.bucket, self.endpoint)
            self._bucket_ready = False
            self._ensure_bucket()
            self._call(f"upload of {key}", lambda: self._put_object(key, data, content_type))
        return StoredObject(key=key, size=len(data), content_type=content_type,
                            location=f"s3://{self.bucket}/{key}")

    def delete(self, keys: list[str]) -> int:
        """Batch delete (S3 DeleteObjects); deleting a missing key succeeds, as S3 defines it."""
        if not keys:
            return 0

        def remove() -> list[Any]:
            objects = [DeleteObject(key) for key in keys]
            return list(self.client.remove_objects(self.bucket, objects))

        try:
            errors = self._call("delete", remove)
        except StorageFailure as exc:
            if exc.details.get("code") == "NoSuchBucket":
                return 0
            raise
        failed = [e for e in errors if getattr(e, "code", "") != "NoSuchKey"]
        if failed:
            raise StorageFailure(f"S3 delete failed for {len(failed)} objects: {failed[0]}")
        return len(keys) - len(errors)

    def presigned_url(self, key: str, expires_seconds: int) -> str:
        """A GET URL valid for expires_seconds (at most 7 days, the S3 limit)."""
        expires = timedelta(seconds=expires_seconds)
        return self._call(f"presigning {key}",
                          lambda: self.client.presigned_get_object(self.bucket, key, expires=expires))


def build_storage(settings: Settings) -> Storage:
    """The backend the settings name; S3 settings missing for backend "s3" are a configuration error."""
    if settings.storage_backend == "local":
        return LocalStorage(settings.storage_dir)
    if settings.storage_backend == "s3":
        endpoint, access, secret = settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key
        if not (endpoint and access and secret):
            missing = [name for name, value in (("COMFYQ_S3_ENDPOINT", endpoint), ("COMFYQ_S3_ACCESS_KEY", access),
                                                ("COMFYQ_S3_SECRET_KEY", secret)) if not value]
            raise ConfigurationError(f"storage backend 's3' needs {', '.join(missing)}")
        return S3Storage(endpoint, access, secret, settings.s3_bucket, region=settings.s3_region,
                         secure=settings.s3_secure)
    raise ConfigurationError(f"unknown storage backend {settings.storage_backend!r}")
