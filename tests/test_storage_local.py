"""LocalStorage: atomic writes under one folder, and nothing written outside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfyq.errors import TransientFailure
from comfyq.settings import Settings
from comfyq.storage import LocalStorage, StorageFailure, build_storage, object_key


def test_put_writes_the_bytes_under_the_key(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    obj = storage.put(object_key(3, 2, "img.png"), b"png-bytes", "image/png")
    path = tmp_path / "out" / "3" / "2" / "img.png"
    assert path.read_bytes() == b"png-bytes"
    assert obj.to_record() == {"key": "3/2/img.png", "size": 9, "content_type": "image/png",
                               "location": str(path.resolve())}


def test_put_is_atomic_and_leaves_no_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("1/1/a.png", b"old", "image/png")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageFailure, match="disk full"):
        storage.put("1/1/a.png", b"new and longer", "image/png")
    monkeypatch.undo()
    assert (tmp_path / "1/1/a.png").read_bytes() == b"old"  # the reader never sees a half-written file
    assert [p.name for p in (tmp_path / "1/1").iterdir()] == ["a.png"]  # the temp file was removed too


def test_overwrite_replaces_the_whole_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("1/1/a.png", b"a much longer first version", "image/png")
    storage.put("1/1/a.png", b"short", "image/png")
    assert (tmp_path / "1/1/a.png").read_bytes() == b"short"
    assert [p.name for p in (tmp_path / "1/1").iterdir()] == ["a.png"]


@pytest.mark.parametrize("key", ["../escape.png", "1/../../escape.png", "/etc/passwd-copy"])
def test_a_key_escaping_the_folder_is_refused(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path / "out")
    with pytest.raises(StorageFailure, match="escapes the storage folder"):
        storage.put(key, b"x", "text/plain")
    assert not (tmp_path / "escape.png").exists()


def test_object_key_keeps_only_the_file_name() -> None:
    assert object_key(9, 1, "../../etc/passwd") == "9/1/passwd"
    assert object_key(9, 1, "sub\\dir\\x.png") == "9/1/x.png"
    assert object_key(9, 1, "") == "9/1/output"


def test_storage_failures_are_retried_like_transient_failures() -> None:
    exc = StorageFailure("down")
    assert isinstance(exc, TransientFailure) and exc.retryable
    assert exc.to_record()["type"] == "storage_error"


def test_local_storage_has_no_presigned_urls(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path).presigned_url("1/1/a.png", 60) is None


def test_build_storage_local_uses_the_storage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYQ_STORAGE_BACKEND", raising=False)
    storage = build_storage(Settings(storage_backend="local", storage_dir=tmp_path / "o"))
    assert isinstance(storage, LocalStorage) and storage.root == (tmp_path / "o").resolve()
