"""The ``resolver`` device kind, and its ``stub`` backend: DNS lookups for other appliances.

An appliance that needs names resolved (the mail appliance for MX records,
the firewall for ``dsthost`` rules) declares ``device("resolver", Resolver)``
and gets a :class:`~.stub_adapter.StubResolver` forwarding to the upstream
servers of the ``upstreams`` key, over the appliance's own ``stack``.
"""

from __future__ import annotations

from typing import Protocol

from ingot.registry import DeviceContext


class Resolver(Protocol):
    """Looks names up (a stub resolver: it asks recursive upstream servers).

    ``resolve`` returns an :class:`~ingot.plugins.dns.stub.Answer` whose
    ``rcode`` may be NXDOMAIN (an answer, not an error) and whose ``values``
    are decoded (A/AAAA: address strings; MX: ``(preference, host)``...).
    Answers are cached by their TTL (negative ones by the SOA minimum).
    """

    async def resolve(self, name: str, rtype: int | str = "A", timeout_s: float = 5.0):
        """The answer to ``(name, rtype)``; ``ResolveError`` when every upstream
        failed or ``timeout_s`` passed. Stopped by cancellation."""
        ...

    def close(self) -> None:
        """Stop; pending lookups raise ``ResolveError``. Never raises."""
        ...


def connect(ctx: DeviceContext):
    from .stub_adapter import StubResolver

    upstreams = ctx.keys["upstreams"]
    if not upstreams:
        raise ValueError(f"no upstream servers (set {ctx.key_flag('upstreams')})")
    return StubResolver(ctx.deps["stack"], ctx.deps["mclock"], ctx.deps["random"], upstreams,
                        log=ctx.log)
