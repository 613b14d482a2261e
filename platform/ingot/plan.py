"""A build plan: an appliance resolved for one target against the installed plugins.

``ingot configure`` writes it as ``_build/<name>/plan.toml`` (readable, the
user may review it); ``ingot build`` reads it; the image carries it as
``_ingot/plan.json``, and the runtime boots from it without looking for
plugins.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import BuildError

FORMAT = 1


@dataclass
class PlannedDevice:
    """One device of the plan, with its chosen backend."""

    name: str
    kind: str
    backend: str
    plugin: str
    factory: str
    keys: dict[str, Any] = field(default_factory=dict)
    """Values of the backend's keys fixed at configure time, by short name."""
    deps: dict[str, str] = field(default_factory=dict)
    """Role -> name of the device passed in ``DeviceContext.deps``."""


@dataclass
class Plan:
    """Everything the build and the runtime need to know."""

    appliance: str
    target: str
    package: str
    main: str
    manifest: str
    devices: list[PlannedDevice]
    keys: dict[str, Any] = field(default_factory=dict)
    """Appliance and platform key values fixed at configure time."""
    plugins: dict[str, str] = field(default_factory=dict)
    """Plugin name -> module: registered at boot, consulted at build."""
    modules: list[str] = field(default_factory=list)
    """Extra modules the image must hold (spec and manifest ``modules``)."""
    source: str = ""
    """The appliance folder (build host only; not used at run time)."""
    path_entry: str = ""
    """A sys.path entry needed to import an out-of-tree appliance at build time."""
    python: str = ""
    ingot: str = ""
    format: int = FORMAT

    @property
    def image_name(self) -> str:
        return f"{self.appliance}-{self.target}"

    def device(self, name: str) -> PlannedDevice:
        for dev in self.devices:
            if dev.name == name:
                return dev
        raise KeyError(name)

    def devices_of(self, kind: str, backend: str | None = None) -> list[PlannedDevice]:
        """The plan's devices of ``kind`` (and ``backend``, if given)."""
        return [d for d in self.devices
                if d.kind == kind and (backend is None or d.backend == backend)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        if data.get("format") != FORMAT:
            raise BuildError(f"plan format {data.get('format')!r} is not {FORMAT}",
                             hint="run 'ingot configure' again")
        data = dict(data)
        data["devices"] = [PlannedDevice(**d) for d in data.get("devices", [])]
        try:
            return cls(**data)
        except TypeError as exc:
            raise BuildError(f"malformed plan: {exc}", hint="run 'ingot configure' again") from None

    def to_json(self, *, for_image: bool = False) -> str:
        data = self.to_dict()
        if for_image:  # host paths do not belong in a sealed image
            data["source"] = ""
            data["path_entry"] = ""
        return json.dumps(data, sort_keys=True, indent=1)

    @classmethod
    def from_toml(cls, text: str, where: str = "plan") -> "Plan":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BuildError(f"{where}: {exc}", hint="run 'ingot configure' again") from None
        return cls.from_dict(data)
