"""Ingot: single-purpose network appliances from Python plugins.

The platform: device signatures (:mod:`ingot.signatures`), hooks
(:mod:`ingot.hookspecs`), keys, manifests, the build and the runtime.
Plugins mark hook implementations with :data:`hookimpl`.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("ingot")
"""Marks a plugin's hook implementation: ``@ingot.hookimpl``."""

__all__ = ["hookimpl", "__version__"]
