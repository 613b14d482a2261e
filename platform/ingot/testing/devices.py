"""Checks that every ``net`` and ``tun`` device must pass, for backend tests.

    await check_closing(device, frame)

Each check raises ``AssertionError`` saying what the device got wrong.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ingot.signatures import Closed


async def _raises_closed(what: str, call: Any) -> None:
    try:
        result = call()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result
    except Closed:
        return
    raise AssertionError(f"{what} did not raise Closed")


async def check_closing(device: Any, packet: bytes, *, settle_s: float = 0.05) -> None:
    """``close()`` ends a waiting read with ``Closed``; later reads and writes raise it;
    a second ``close()`` does nothing.

    The test sends nothing meanwhile, but a kernel interface that just came
    up may still get the kernel's own chatter (IGMP or MLD reports, router
    solicitations): such frames are read and passed over, up to 20 of them,
    until a read is still waiting after ``settle_s``. ``packet`` is a valid
    frame or packet for the device.
    """
    seen = []
    for _ in range(20):
        waiting = asyncio.ensure_future(device.read())
        await asyncio.sleep(settle_s)
        if not waiting.done():
            break
        seen.append(waiting.result())
    else:
        raise AssertionError(f"read() never waited: it kept returning, e.g. {seen[-1]!r}")
    device.close()
    await _raises_closed("a read waiting at close()", lambda: waiting)
    await _raises_closed("read() after close()", device.read)
    device.close()
    await _raises_closed("write() after close()", lambda: device.write(packet))
