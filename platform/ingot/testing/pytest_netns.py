"""The pytest plugin of :mod:`ingot.testing.netns`.

Load it from a ``conftest.py`` (or a test module)::

    pytest_plugins = ["ingot.testing.pytest_netns"]

It gives

``netns`` (fixture)
    a :class:`~ingot.testing.netns.Lab`: ``netns()`` makes a host,
    ``netns.switch()`` a bridge to plug hosts into. Every namespace the test
    made is deleted when it ends, passed or failed.
``netns`` (marker) / :data:`requires_netns`
    marks a test that needs namespaces. It is skipped only when they cannot
    work here: not root, or no ``ip`` command. Where both exist (CI runs as
    root) the test runs, and a broken setup fails it loudly.

At the start of a session, namespaces left by runs that died more than ten
minutes ago are deleted (:func:`~ingot.testing.netns.sweep_stale`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .netns import Lab, install_exit_sweep, sweep_stale, unavailable

requires_netns = pytest.mark.netns
"""``pytestmark = requires_netns``: the test needs root and ``ip``."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root and iproute2 (network namespaces)")
    if unavailable() is None:
        install_exit_sweep()
        sweep_stale()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None:
        reason = unavailable()
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture
def netns() -> Iterator[Lab]:
    """A factory of hosts (network namespaces), all removed after the test."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
