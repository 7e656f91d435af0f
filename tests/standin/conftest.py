"""Fixtures that start a real stand-in process per test and always stop it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.standin.helpers")

from tests.support.standin import StandinProcess  # noqa: E402


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandinProcess]:
    """A started stand-in with fast timings, stopped in teardown even if the test fails."""
    process = StandinProcess(tmp_path, node_seconds=0.01, sampler_step_seconds=0.002)
    try:
        process.start()
        yield process
    finally:
        process.stop()


@pytest.fixture
def slow_standin(tmp_path: Path) -> Iterator[StandinProcess]:
    """A stand-in whose nodes take long enough that a prompt can be interrupted or watched mid-run."""
    process = StandinProcess(tmp_path, node_seconds=0.2, sampler_step_seconds=0.01)
    try:
        process.start()
        yield process
    finally:
        process.stop()
