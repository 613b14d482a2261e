"""Choosing the event loop the socket stack runs on.

Devices are connected inside the running loop, so the loop has to be picked
before it starts: the runtime asks this module, then starts the loop::

    factory = loop_factory(keys["stack-uvloop"])
    with asyncio.Runner(loop_factory=factory) as runner:   # None: asyncio's own
        runner.run(boot())

``policy()`` gives the same choice as an event loop policy, for code that
calls ``asyncio.set_event_loop_policy`` before ``asyncio.run``. Without
uvloop installed (it is the optional ``fast`` extra) both return None and
asyncio's own loop is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def _uvloop():  # -> module | None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def loop_factory(enabled: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop.new_event_loop`` when ``enabled`` and uvloop is installed, else None."""
    uvloop = _uvloop() if enabled else None
    return uvloop.new_event_loop if uvloop is not None else None


def policy(enabled: bool = True) -> asyncio.AbstractEventLoopPolicy | None:
    """uvloop's event loop policy when ``enabled`` and uvloop is installed, else None."""
    uvloop = _uvloop() if enabled else None
    return uvloop.EventLoopPolicy() if uvloop is not None else None


def name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``: which loop this is, for the log."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
