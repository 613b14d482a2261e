"""Ingot: single-purpose network appliances from Python plugins.

The platform: device signatures (:mod:`ingot.signatures`), hooks
(:mod:`ingot.hookspecs`), keys, manifests, the build and the runtime.
Plugins mark hook implementations with :data:`hookimpl`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]


def __getattr__(name: str) -> Any:
    # pluggy is imported on first use, so that an image's first log line does
    # not wait for it
    if name == "hookimpl":
        import pluggy

        marker = pluggy.HookimplMarker("ingot")
        globals()["hookimpl"] = marker
        return marker
    raise AttributeError(f"module 'ingot' has no attribute {name!r}")
