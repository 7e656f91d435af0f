"""Connections of a test's own beside the Database under test: one to look (autocommit), one that holds locks in
an open transaction so a statement of the code under test blocks where the test wants it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from comfyq.db import connect_once


@pytest.fixture
def admin(db_url: str) -> Iterator[Any]:
    """A connection of the test's own, outside the Database under test (autocommit)."""
    conn = connect_once(db_url)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def locker(db_url: str) -> Iterator[Any]:
    """A second connection that holds table locks in an open transaction; rolled back in teardown."""
    conn = connect_once(db_url)
    conn.autocommit = False
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def count_jobs(admin: Any) -> int:
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM job_queue")
        return int(cur.fetchone()[0])
