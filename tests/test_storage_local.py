"""LocalStorage: atomic writes under one folder, nothing written outside it, failures sorted into outage (a full
or read-only disk) and the object's own fault, and removal of a job's whole folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfyq.errors import DependencyUnavailable, JobFailure, StorageUnavailable, TransientFailure
from comfyq.settings import Settings
from comfyq.storage import (
    LocalStorage,
    StorageFailure,
    StorageRejected,
    build_storage,
    job_prefix,
    object_key,
)
from tests.tmpfs import SmallDisk, small_disk  # noqa: F401 - fixture

NS = "0123456789abcdef0123456789abcdef"


def test_put_writes_the_bytes_under_the_key(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    obj = storage.put(object_key(NS, 3, 2, "img.png"), b"png-bytes", "image/png")
    path = tmp_path / "out" / NS / "3" / "2" / "img.png"
    assert path.read_bytes() == b"png-bytes"
    assert obj.to_record() == {"key": f"{NS}/3/2/img.png", "size": 9, "content_type": "image/png",
                               "location": str(path.resolve())}


def test_put_is_atomic_and_leaves_no_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("1/1/a.png", b"old", "image/png")

    def broken_replace(_src: str, _dst: str) -> None:
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
def test_a_key_escaping_the_folder_is_rejected_for_good(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path / "out")
    with pytest.raises(StorageRejected, match="escapes the storage folder") as raised:
        storage.put(key, b"x", "text/plain")
    assert not raised.value.retryable and raised.value.to_record()["type"] == "storage_rejected"
    assert not (tmp_path / "escape.png").exists()


def test_object_key_keeps_only_the_file_name() -> None:
    assert object_key(NS, 9, 1, "../../etc/passwd") == f"{NS}/9/1/passwd"
    assert object_key(NS, 9, 1, "sub\\dir\\x.png") == f"{NS}/9/1/x.png"
    assert object_key(NS, 9, 1, "") == f"{NS}/9/1/output"
    assert job_prefix(NS, 9) == f"{NS}/9/"


@pytest.mark.parametrize("namespace", ["", "a/b", "..", "a\\b"])
def test_a_namespace_must_be_one_key_segment(namespace: str) -> None:
    with pytest.raises(ValueError, match="single key segment"):
        object_key(namespace, 1, 1, "a.png")


def test_the_three_kinds_of_storage_errors() -> None:
    """An outage is not a job failure (no attempt is spent); a rejection fails the job for good; anything
    else is retried like any transient failure."""
    assert isinstance(StorageUnavailable("down"), DependencyUnavailable)
    assert not isinstance(StorageUnavailable("down"), JobFailure)
    rejected = StorageRejected("too large")
    assert not rejected.retryable and rejected.to_record()["type"] == "storage_rejected"
    unknown = StorageFailure("odd")
    assert isinstance(unknown, TransientFailure) and unknown.retryable
    assert unknown.to_record()["type"] == "storage_error"


def test_a_full_disk_is_an_outage_and_leaves_nothing_behind(small_disk: SmallDisk) -> None:  # noqa: F811
    storage = LocalStorage(small_disk.path)
    storage.put("ns0000001/1/1/small.png", b"fits", "image/png")
    with pytest.raises(StorageUnavailable, match="No space left on device"):
        storage.put("ns0000001/2/1/big.png", b"\0" * (128 * 1024), "image/png")
    assert not list(small_disk.path.rglob(".part-*"))  # the partial temp file was removed
    assert (small_disk.path / "ns0000001/1/1/small.png").read_bytes() == b"fits"


def test_a_read_only_disk_is_an_outage_for_writes_and_deletes(small_disk: SmallDisk) -> None:  # noqa: F811
    storage = LocalStorage(small_disk.path)
    storage.put("ns0000001/1/1/a.png", b"a", "image/png")
    small_disk.read_only()
    with pytest.raises(StorageUnavailable, match="Read-only file system"):
        storage.put("ns0000001/1/2/b.png", b"b", "image/png")
    with pytest.raises(StorageUnavailable, match="Read-only file system"):
        storage.put("ns0000001/1/1/a.png", b"replaced", "image/png")  # folder exists: fails at the temp file
    with pytest.raises(StorageUnavailable, match="Read-only file system"):
        storage.delete(["ns0000001/1/1/a.png"])
    with pytest.raises(StorageUnavailable, match="Read-only file system"):
        storage.delete_prefixes(["ns0000001/1/"])
    small_disk.writable()
    assert (small_disk.path / "ns0000001/1/1/a.png").read_bytes() == b"a"
    assert storage.delete_prefixes(["ns0000001/1/"]) == 1  # back: the retry removes it


def test_delete_prefixes_removes_every_attempt_of_a_job_and_nothing_else(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for key in (f"{NS}/7/1/a.png", f"{NS}/7/1/b.png", f"{NS}/7/2/a.png", f"{NS}/8/1/a.png", f"{NS}/70/1/a.png",
                "other-installation/7/1/a.png", "7/1/a.png"):
        storage.put(key, b"x", "image/png")
    assert storage.delete_prefixes([job_prefix(NS, 7), job_prefix(NS, 99)]) == 3
    assert not (tmp_path / NS / "7").exists()
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(["7/1/a.png", f"{NS}/70/1/a.png", f"{NS}/8/1/a.png", "other-installation/7/1/a.png"])


def test_delete_prefixes_never_follows_a_link_out_of_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    storage = LocalStorage(tmp_path / "out")
    storage.put(f"{NS}/1/1/a.png", b"a", "image/png")
    (tmp_path / "out" / NS / "1" / "2").symlink_to(outside, target_is_directory=True)
    assert storage.delete_prefixes([job_prefix(NS, 1)]) == 2  # the file and the link itself
    assert (outside / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("prefix", ["", "/", f"{NS}/1", "../", "./", f"{NS}/../", f"{NS}/../../"])
def test_delete_prefixes_refuses_what_is_not_a_folder_inside_the_storage(tmp_path: Path, prefix: str) -> None:
    storage = LocalStorage(tmp_path / "out")
    storage.put(f"{NS}/1/1/a.png", b"a", "image/png")
    try:
        removed = storage.delete_prefixes([prefix])
    except ValueError:
        removed = 0
    assert removed == 0 and (tmp_path / "out" / NS / "1/1/a.png").exists()


def test_local_storage_has_no_presigned_urls(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path).presigned_url("1/1/a.png", 60) is None


def test_build_storage_local_uses_the_storage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYQ_STORAGE_BACKEND", raising=False)
    storage = build_storage(Settings(storage_backend="local", storage_dir=tmp_path / "o"))
    assert isinstance(storage, LocalStorage) and storage.root == (tmp_path / "o").resolve()
