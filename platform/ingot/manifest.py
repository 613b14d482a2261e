"""The manifest eDSL: ``appliances/<name>/manifest.py`` (the MirageOS ``config.ml``).

A manifest is a Python module that defines ``appliance``::

    from ingot.manifest import Appliance, device
    from ingot.keys import key, positive
    from ingot.signatures import KvRO, Stack

    appliance = Appliance(
        name="echo",
        main="app:Echo",                      # relative to the appliance package
        doc="TCP and UDP echo with a greeting",
        devices=[
            device("stack", Stack),
            device("kv_ro", KvRO, default={"unix": "direct", "vm": "crunch"}),
        ],
        keys=[key("port", int, "Port to listen on", 7, validate=positive)],
    )

The main class's constructor receives, by parameter name, the devices (by
their names here), ``keys`` (a namespace of key values) and ``log``; its
``async start()`` runs the appliance. The ambient devices ``mclock``,
``pclock``, ``sleep`` and ``random`` are added unless ``ambient=False``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from .errors import ManifestError
from .keys import Key
from .registry import TARGETS

_DEVICE_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_APP_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class DeviceRequest:
    """One device an appliance needs: its name, signature and per-target defaults."""

    name: str
    signature: type
    default: Mapping[str, str] = field(default_factory=dict)
    doc: str = ""


def device(name: str, signature: type, *, default: str | Mapping[str, str] | None = None,
           doc: str = "") -> DeviceRequest:
    """Declare a device. ``default`` is a backend name for every target, or
    ``{target: backend}``; without it the registry's default for the kind is used."""
    if not _DEVICE_NAME.match(name):
        raise ManifestError(f"device name {name!r} must be a lower-case identifier")
    if isinstance(default, str):
        defaults: Mapping[str, str] = {t: default for t in TARGETS}
    else:
        defaults = dict(default or {})
    return DeviceRequest(name, signature, defaults, doc)


@dataclass(frozen=True)
class Appliance:
    """An appliance's manifest."""

    name: str
    main: str
    doc: str
    devices: Sequence[DeviceRequest] = ()
    keys: Sequence[Key] = ()
    plugins: Sequence[str] = ()
    modules: Sequence[str] = ()
    ambient: bool = True
    targets: Sequence[str] = TARGETS

    def __post_init__(self) -> None:
        if not _APP_NAME.match(self.name):
            raise ManifestError(f"appliance name {self.name!r} must be a lower-case identifier")
        if ":" not in self.main:
            raise ManifestError(f"appliance {self.name!r}: main must be 'module:Class', "
                                f"got {self.main!r}")
        names = [d.name for d in self.devices]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ManifestError(f"appliance {self.name!r} declares device(s) twice: "
                                + ", ".join(sorted(dup)))
        knames = [k.name for k in self.keys]
        dupk = {n for n in knames if knames.count(n) > 1}
        if dupk:
            raise ManifestError(f"appliance {self.name!r} declares key(s) twice: "
                                + ", ".join(sorted(dupk)))


@dataclass(frozen=True)
class Loaded:
    """A manifest loaded from a folder, and where its package lives."""

    appliance: Appliance
    package: str          # import name of the appliance package
    path_entry: str | None  # folder to put on sys.path (out-of-tree appliances)
    directory: Path

    @property
    def main_module(self) -> str:
        """``main``'s module, which is relative to the appliance package."""
        mod = self.appliance.main.partition(":")[0].lstrip(".")
        return mod if mod.startswith(self.package + ".") else f"{self.package}.{mod}"

    @property
    def main_ref(self) -> str:
        return f"{self.main_module}:{self.appliance.main.partition(':')[2]}"

    @property
    def manifest_module(self) -> str:
        return f"{self.package}.manifest"


def _package_for(directory: Path) -> tuple[str, str | None]:
    """The import name of an appliance folder, and a sys.path entry if needed."""
    try:
        import ingot.appliances as builtin
        for base in builtin.__path__:
            if Path(base).resolve() == directory.parent:
                return f"ingot.appliances.{directory.name}", None
    except ImportError:  # pragma: no cover - ingot always ships appliances
        pass
    return directory.name, str(directory.parent)


def load(directory: str | Path) -> Loaded:
    """Load ``<directory>/manifest.py``; every failure is a :class:`ManifestError`."""
    path = Path(directory).resolve()
    manifest = path / "manifest.py"
    if not manifest.is_file():
        raise ManifestError(f"{directory}: no manifest.py there",
                            hint="an appliance folder holds manifest.py and its code")
    if not (path / "__init__.py").is_file():
        raise ManifestError(f"{directory}: not a Python package (no __init__.py)",
                            hint="add an empty __init__.py next to manifest.py")
    package, entry = _package_for(path)
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", package):
        raise ManifestError(f"{directory}: folder name {path.name!r} is not a Python identifier")
    if entry is not None and entry not in sys.path:
        sys.path.insert(0, entry)
    modname = f"{package}.manifest"
    try:
        module = importlib.import_module(modname)
    except ManifestError:
        raise
    except SyntaxError as exc:
        raise ManifestError(f"{manifest}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:  # noqa: BLE001 - report any manifest failure as one line
        where = _where(exc, manifest)
        raise ManifestError(f"{manifest}{where}: {type(exc).__name__}: {exc}",
                            hint="fix the manifest; run with --debug for the traceback") from exc
    appliance = getattr(module, "appliance", None)
    if not isinstance(appliance, Appliance):
        raise ManifestError(f"{manifest}: defines no 'appliance = Appliance(...)'")
    return Loaded(appliance, package, entry, path)


def _where(exc: BaseException, manifest: Path) -> str:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == manifest:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f":{line}" if line else ""


def import_module(name: str) -> ModuleType:
    """Import a module by name, raising :class:`ManifestError` with its name on failure."""
    if importlib.util.find_spec(name.split(".")[0]) is None:
        raise ManifestError(f"module {name!r} not found")
    return importlib.import_module(name)
