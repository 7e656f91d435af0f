"""Where outputs go. Keys are <job id>/<attempt>/<file>, so a retried attempt never overwrites the outputs
the job row points at, and at-least-once execution still has an exactly-once effect."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from comfyq.errors import TransientFailure


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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageFailure(f"cannot write {path}: {exc}") from exc
        return StoredObject(key=key, size=len(data), content_type=content_type, location=str(path))


def build_storage(backend: str, storage_dir: Path) -> Storage:
    if backend == "local":
        return LocalStorage(storage_dir)
    raise ValueError(f"unknown storage backend {backend!r}")
