"""Tests that run only when asked for: ``kernel_minimal`` (``INGOT_KERNEL_MINIMAL=1``).

Building the minimal kernel takes 3 to 10 minutes on two cores, so its
build-and-boot tests are *deselected* (not skipped, not passed) unless the
environment sets ``INGOT_KERNEL_MINIMAL=1``; the run's summary says so.
``.ci/run`` sets it, so CI runs them.
"""

from __future__ import annotations

import os

import pytest

KERNEL_MINIMAL_ENV = "INGOT_KERNEL_MINIMAL"
_deselected: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(KERNEL_MINIMAL_ENV) == "1":
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("kernel_minimal") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        _deselected.extend(item.nodeid for item in drop)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if _deselected:
        terminalreporter.write_line(
            f"kernel_minimal: {len(_deselected)} test(s) deselected (building the minimal "
            f"kernel takes minutes); set {KERNEL_MINIMAL_ENV}=1 to run them")
