"""Shared fixtures: a real node process per test module, stopped at the end."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodeproc import NodeProcess, stop_all_nodes

GENEROUS_LIMITS = """
[limits]
requests_per_minute = 100000
burst = 10000
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("node"), config_extra=GENEROUS_LIMITS).start()
    try:
        yield proc
    finally:
        proc.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No node process outlives the test session, whatever failed."""
    stop_all_nodes()
