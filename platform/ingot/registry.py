"""What plugins provide: device specs, and the registry that collects them.

A plugin returns :class:`DeviceSpec` values from ``ingot_devices_register``.
A spec names its implementation as a ``"module:function"`` string so that
registering a backend imports nothing heavy: the module is imported (and
put into an image) only when a plan chooses that backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import RegistryError
from .keys import Key

TARGETS: tuple[str, ...] = ("unix", "vm", "qubes", "oci")
"""Every build target Ingot knows."""


@dataclass(frozen=True)
class DeviceSpec:
    """One backend of one device kind, as a plugin registers it.

    ``factory`` is ``"module:function"``; the function takes a
    :class:`DeviceContext` and returns the device or an awaitable of it.
    ``keys`` are the backend's own keys with short names (``path``); for a
    device named ``zones`` they become ``--zones-path``. ``modules`` lists
    modules the image must hold beyond what the factory module imports
    (plugins imported by name at run time). ``requires`` names other devices
    the backend needs as ``(role, kind)``; the plan connects those first and
    passes them in ``DeviceContext.deps[role]``. ``default_on`` lists the
    targets on which this backend is the default of its kind.
    """

    kind: str
    backend: str
    factory: str
    doc: str
    targets: tuple[str, ...] = TARGETS
    keys: tuple[Key, ...] = ()
    modules: tuple[str, ...] = ()
    requires: tuple[tuple[str, str], ...] = ()
    default_on: tuple[str, ...] = ()
    plugin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if ":" not in self.factory:
            raise ValueError(f"{self.kind}/{self.backend}: factory must be 'module:function'")
        unknown = set(self.targets) - set(TARGETS)
        if unknown:
            raise ValueError(f"{self.kind}/{self.backend}: unknown targets {sorted(unknown)}")

    @property
    def module(self) -> str:
        return self.factory.partition(":")[0]


def device_key_name(device: str, short: str) -> str:
    """The full key name of a backend key on a device: ``kv_ro`` + ``path`` -> ``kv-ro-path``."""
    return f"{device.replace('_', '-')}-{short}"


@dataclass
class DeviceContext:
    """What a device factory receives when the runtime connects it."""

    name: str
    kind: str
    backend: str
    target: str
    keys: Mapping[str, Any]
    deps: Mapping[str, Any]
    data: Any  # ingot.image.ImageData or None
    log: Any   # ingot.log.Logger

    def key_flag(self, short: str) -> str:
        """The command-line flag that sets one of this device's keys (for errors)."""
        return "--" + device_key_name(self.name, short)


class Registry:
    """All device backends of the loaded plugins, by kind and backend name."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], DeviceSpec] = {}
        self.kinds: dict[str, type] = {}

    def add(self, spec: DeviceSpec, plugin: str) -> None:
        spec = replace(spec, plugin=plugin)
        if spec.kind not in self.kinds:
            raise RegistryError(
                f"plugin {plugin!r} registers backend {spec.backend!r} for unknown kind "
                f"{spec.kind!r}", hint="known kinds: " + ", ".join(sorted(self.kinds)))
        old = self._specs.get((spec.kind, spec.backend))
        if old is not None:
            raise RegistryError(
                f"backend {spec.backend!r} of kind {spec.kind!r} is registered twice: by "
                f"plugin {old.plugin!r} and by plugin {plugin!r}",
                hint="uninstall one of them, or disable one with INGOT_DISABLE_PLUGINS")
        self._specs[(spec.kind, spec.backend)] = spec

    def check_defaults(self) -> None:
        """At most one default backend per kind and target."""
        seen: dict[tuple[str, str], DeviceSpec] = {}
        for spec in self._specs.values():
            for target in spec.default_on:
                other = seen.get((spec.kind, target))
                if other is not None:
                    raise RegistryError(
                        f"two default {spec.kind!r} backends on target {target!r}: "
                        f"{other.backend!r} (plugin {other.plugin!r}) and {spec.backend!r} "
                        f"(plugin {spec.plugin!r})")
                seen[(spec.kind, target)] = spec

    def get(self, kind: str, backend: str) -> DeviceSpec:
        spec = self._specs.get((kind, backend))
        if spec is None:
            known = self.backends(kind)
            raise RegistryError(
                f"unknown {kind} backend {backend!r}",
                hint=("available: " + ", ".join(known)) if known
                else f"no installed plugin provides a {kind} device")
        return spec

    def backends(self, kind: str) -> list[str]:
        return sorted(b for (k, b) in self._specs if k == kind)

    def default(self, kind: str, target: str) -> DeviceSpec | None:
        for spec in self._specs.values():
            if spec.kind == kind and target in spec.default_on:
                return spec
        return None

    def specs(self) -> Iterable[DeviceSpec]:
        return sorted(self._specs.values(), key=lambda s: (s.kind, s.backend))
