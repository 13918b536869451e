"""pytest plugin for mutation/warm.py's baseline run: one coverage context per test.

Loaded with ``-p coverage_contexts`` while coverage measures the run (``COVERAGE_PROCESS_START``).
Inside each test, coverage's dynamic context is the test's node id, and ``WARM_TEST_CONTEXT``
holds it too, so Python subprocesses started by the test, whose coverage configuration reads
``context = ${WARM_TEST_CONTEXT}``, record their lines under the same id.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import coverage
import pytest


@contextlib.contextmanager
def test_context(nodeid: str) -> Iterator[None]:
    """Attribute what runs inside to ``nodeid``, in this process and in its subprocesses."""
    measuring = coverage.Coverage.current()
    os.environ["WARM_TEST_CONTEXT"] = nodeid
    if measuring is not None:
        measuring.switch_context(nodeid)
    try:
        yield
    finally:
        os.environ.pop("WARM_TEST_CONTEXT", None)
        if measuring is not None:
            measuring.switch_context("")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with test_context(item.nodeid):
        yield
