"""Where outputs go. Keys are <installation>/<job id>/<attempt>/<file>: the installation id (migration 0010)
keeps installations that share a folder or a bucket apart (each numbers its jobs from 1), and a retried attempt
never overwrites the outputs the job row points at, so at-least-once execution still has an exactly-once effect.
Rows stored before 0010 keep their <job id>/<attempt>/<file> keys; every method takes any key, so those stay
readable and deletable.

Failures come in three kinds, because the worker acts differently on each:
- StorageUnavailable (comfyq.errors): the backend is down, slow, full, read-only or refuses our credentials.
  Not the job's fault: no attempt is spent and the worker waits for storage to come back.
- StorageRejected: this object cannot be stored on this backend (over its size limit, a key escaping the
  folder). Trying again cannot help: the job fails for good.
- StorageFailure: anything not known to be either, a transient job failure retried within max_attempts, so an
  unknown error caused by one job cannot stall every worker."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import check_bucket_name

from comfyq.errors import ConfigurationError, PermanentFailure, StorageUnavailable, TransientFailure
from comfyq.settings import Settings

if TYPE_CHECKING:
    from comfyq.db import Database

log = logging.getLogger(__name__)
T = TypeVar("T")

DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1000 keys per request


class StorageFailure(TransientFailure):
    """A storage error that is neither a known outage nor this object's own fault; retried with backoff."""

    error_type = "storage_error"


class StorageRejected(PermanentFailure):
    """The backend refuses this object for good (too large, a key escaping the folder): the job fails."""

    error_type = "storage_rejected"


# Errors any caller showing storage results handles alike (the API signs URLs, retention deletes).
STORAGE_ERRORS: tuple[type[Exception], ...] = (StorageUnavailable, StorageRejected, StorageFailure)

# Local errors of the disk or the process, not of one file: full, read-only, no permission, broken, gone.
_LOCAL_OUTAGE_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EIO", "ESTALE", "ENOTCONN", "ETIMEDOUT", "EMFILE",
    "ENFILE", "ENOMEM", "ENODEV", "ENXIO", "EHOSTDOWN", "EHOSTUNREACH") if hasattr(errno, name))
# Errors of this one file: over the file system's size limit, a name too long for it.
_LOCAL_REJECTED_ERRNOS = frozenset({errno.EFBIG, errno.ENAMETOOLONG})

# S3 error codes of the service or of our access to it (AWS and MinIO names); any 5xx status is one too.
_S3_OUTAGE_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "AccessDenied", "AllAccessDisabled",
    "AccountProblem", "InvalidAccessKeyId", "SignatureDoesNotMatch", "RequestTimeTooSkewed", "NoSuchBucket",
    "XMinioStorageFull", "XMinioServerNotInitialized", "XMinioReadQuorum", "XMinioWriteQuorum"})
# S3 error codes that belong to the object itself.
_S3_REJECTED_CODES = frozenset({"EntityTooLarge", "KeyTooLongError", "XMinioInvalidObjectName"})
_HTTP_TOO_LARGE = 413  # a proxy in front of the S3 API refusing the body (nginx client_max_body_size)


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

    def delete_prefixes(self, prefixes: Sequence[str]) -> int:
        """Remove every object under each prefix (a folder, ending in "/"): retention removes a job's
        outputs of every attempt, also those of fenced attempts no row lists. Returns how many were removed."""
        ...


def storage_namespace(db: Database) -> str:
    """This installation's id, the first segment of every key; read once at start (it never changes)."""
    row = db.fetch_one("installation_id")
    if row is None:
        raise ConfigurationError("the installation table has no row; was migration 0010 edited?")
    return str(row["id"])


def _segment(namespace: str) -> str:
    """The namespace checked to be one folder name: a key must never gain or lose a level."""
    if not namespace or "/" in namespace or "\\" in namespace or namespace in {".", ".."}:
        raise ValueError(f"storage namespace {namespace!r} is not a single key segment")
    return namespace


def object_key(namespace: str, job_id: int, attempt: int, filename: str) -> str:
    """<namespace>/<job>/<attempt>/<file>; only the file name's last part is kept, so no key leaves its folder."""
    safe = os.path.basename(filename.replace("\\", "/")) or "output"
    return f"{_segment(namespace)}/{int(job_id)}/{int(attempt)}/{safe}"


def job_prefix(namespace: str, job_id: int) -> str:
    """The folder holding every attempt's outputs of one job of this installation."""
    return f"{_segment(namespace)}/{int(job_id)}/"


def _check_prefix(prefix: str) -> None:
    """A prefix must be a folder: "1" would also match job 12, "" everything."""
    if not prefix.endswith("/") or not prefix.strip("/"):
        raise ValueError(f"prefix {prefix!r} must name a folder: not empty, ending in '/'")


def _local_error(what: str, path: Path, exc: OSError) -> Exception:
    """Classify an OSError of the local backend (see the module docstring)."""
    message = f"cannot {what} {path}: {exc}"
    if exc.errno in _LOCAL_OUTAGE_ERRNOS:
        return StorageUnavailable(message)
    if exc.errno in _LOCAL_REJECTED_ERRNOS:
        return StorageRejected(message, details={"errno": errno.errorcode.get(exc.errno or 0, str(exc.errno))})
    return StorageFailure(message)


class LocalStorage:
    """A folder on disk; writes are atomic (temp file + rename) so a crash never leaves half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _inside(self, key: str) -> Path | None:
        """The path of a key, or None when it would leave the folder (or be the folder itself)."""
        path = (self.root / key).resolve()
        return path if self.root in path.parents else None

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        path = self._inside(key)
        if path is None:
            raise StorageRejected(f"key {key!r} escapes the storage folder", details={"key": key})
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
            raise _local_error("write", path, exc) from exc
        return StoredObject(key=key, size=len(data), content_type=content_type, location=str(path))

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """Files on disk have no URL of their own (the API serves them: GET /jobs/{id}/outputs/{n})."""
        return None

    def path_of(self, key: str) -> Path | None:
        """The file holding a key, for the API to serve; None when the key would leave the folder."""
        return self._inside(key)

    def delete(self, keys: list[str]) -> int:
        removed = 0
        for key in keys:
            path = self._inside(key)
            if path is None:
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _local_error("delete", path, exc) from exc
            with contextlib.suppress(OSError):  # drop the now-empty <job>/<attempt>/ folders
                path.parent.rmdir()
                path.parent.parent.rmdir()
        return removed

    def delete_prefixes(self, prefixes: Sequence[str]) -> int:
        """Remove each prefix's folder with everything in it; symbolic links are removed, never followed."""
        removed = 0
        for prefix in prefixes:
            _check_prefix(prefix)
            folder = self._inside(prefix)
            if folder is not None:
                removed += self._remove_tree(folder)
        return removed

    def _remove_tree(self, folder: Path) -> int:
        removed = 0
        current = folder

        def unreadable(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError):  # os.walk would skip what it cannot list
                raise exc

        try:
            for dirpath, dirnames, filenames in os.walk(folder, topdown=False, onerror=unreadable):
                current = Path(dirpath)
                links = [name for name in dirnames if os.path.islink(os.path.join(dirpath, name))]
                for name in [*filenames, *links]:
                    current = Path(dirpath, name)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(current)
                        removed += 1
                current = Path(dirpath)
                try:
                    os.rmdir(dirpath)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.ENOTEMPTY:  # a file written meanwhile stays; not worth failing for
                        raise
        except OSError as exc:
            raise _local_error("delete", current, exc) from exc
        return removed


class S3Storage:
    """Any S3 API (MinIO, AWS, ...) through the minio client. Timeouts are short and the client retries
    at most once, so a down server surfaces quickly as StorageUnavailable and the worker waits for it."""

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

    def _call(self, what: str, action: Callable[[], T], *, passthrough: frozenset[str] | set[str] = frozenset(),
              of_object: bool = False) -> T:
        """Run client calls; a failure becomes one of the three storage errors, never a minio/urllib3 one.
        S3 error codes in passthrough are raised as S3Error for the caller to handle (NoSuchBucket, ...).
        of_object: a request the client itself refuses (ValueError: the object's name or size) is the
        object's fault, StorageRejected."""
        try:
            return action()
        except S3Error as exc:
            if exc.code in passthrough:
                raise
            status = getattr(exc.response, "status", None)
            raise self._classified(f"S3 {what} failed at {self.endpoint}: {exc.code}: {exc.message}",
                                   exc.code, status) from exc
        except (ServerError, InvalidResponseError) as exc:  # a body that is not S3's XML: a proxy, a gateway
            status = exc.status_code if isinstance(exc, ServerError) else getattr(exc, "_code", None)  # no accessor
            raise self._classified(f"S3 {what} failed at {self.endpoint}: {type(exc).__name__}: {exc}",
                                   None, status) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, reset, timed out, 5xx after retries
            raise StorageUnavailable(f"S3 {what} failed at {self.endpoint}: {type(exc).__name__}: {exc}") from exc
        except (MinioException, ValueError) as exc:
            message = f"S3 {what} failed at {self.endpoint}: {type(exc).__name__}: {exc}"
            if of_object and isinstance(exc, ValueError):
                raise StorageRejected(message, details={"bucket": self.bucket}) from exc
            raise StorageFailure(message, details={"bucket": self.bucket}) from exc

    def _classified(self, message: str, code: str | None, status: int | None) -> Exception:
        """The storage error for an S3 error code or HTTP status (see the module docstring)."""
        if code in _S3_REJECTED_CODES or status == _HTTP_TOO_LARGE:
            return StorageRejected(message, details={"code": code, "bucket": self.bucket})
        if code in _S3_OUTAGE_CODES or (status is not None and status >= 500):
            return StorageUnavailable(message)
        return StorageFailure(message, details={"code": code, "bucket": self.bucket})

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        if not self._call("bucket check", lambda: self.client.bucket_exists(self.bucket)):
            try:
                self._call("bucket creation", lambda: self.client.make_bucket(self.bucket, location=self.region),
                           passthrough={"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
                log.info("created bucket %s at %s", self.bucket, self.endpoint)
            except S3Error:
                pass  # another worker created it at the same moment
        self._bucket_ready = True

    def _put_object(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        self._ensure_bucket()
        upload = f"upload of {key}"
        try:
            self._call(upload, lambda: self._put_object(key, data, content_type), passthrough={"NoSuchBucket"},
                       of_object=True)
        except S3Error:
            log.warning("bucket %s vanished at %s; creating it again", self.bucket, self.endpoint)
            self._bucket_ready = False
            self._ensure_bucket()
            self._call(upload, lambda: self._put_object(key, data, content_type), of_object=True)
        return StoredObject(key=key, size=len(data), content_type=content_type,
                            location=f"s3://{self.bucket}/{key}")

    def _remove(self, keys: list[str]) -> int:
        """One DeleteObjects request (at most DELETE_BATCH keys); deleting a missing key succeeds, as S3
        defines it."""
        errors = self._call("delete", lambda: list(self.client.remove_objects(
            self.bucket, [DeleteObject(key) for key in keys])), passthrough={"NoSuchBucket"})
        failed = [e for e in errors if getattr(e, "code", "") != "NoSuchKey"]
        if failed:
            first = failed[0]
            raise self._classified(f"S3 delete failed at {self.endpoint} for {len(failed)} objects, first "
                                   f"{first.name}: {first.code}: {first.message}", first.code, None)
        return len(keys) - len(errors)

    def delete(self, keys: list[str]) -> int:
        """Batch delete (S3 DeleteObjects, DELETE_BATCH keys a request)."""
        removed = 0
        try:
            for start in range(0, len(keys), DELETE_BATCH):
                removed += self._remove(keys[start:start + DELETE_BATCH])
        except S3Error:  # NoSuchBucket: nothing left to delete
            pass
        return removed

    def _list(self, prefix: str) -> list[str]:
        """Every key under prefix (a job's few outputs; ListObjectsV2 pages through more)."""
        def names() -> list[str]:
            return [str(obj.object_name) for obj in self.client.list_objects(self.bucket, prefix=prefix,
                                                                              recursive=True)]
        return self._call(f"listing of {prefix}", names, passthrough={"NoSuchBucket"})

    def delete_prefixes(self, prefixes: Sequence[str]) -> int:
        """Lists each prefix (ListObjectsV2) and deletes what it finds in batches of DELETE_BATCH keys."""
        for prefix in prefixes:
            _check_prefix(prefix)
        removed = 0
        batch: list[str] = []
        try:
            for prefix in prefixes:
                for name in self._list(prefix):
                    batch.append(name)
                    if len(batch) == DELETE_BATCH:
                        removed += self._remove(batch)
                        batch = []
            if batch:
                removed += self._remove(batch)
        except S3Error:  # NoSuchBucket: nothing left to delete
            pass
        return removed

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
