"""Loading plugins: built-in ones by name, third-party ones by entry point.

Built-in plugins are listed in :data:`BUILTIN_PLUGINS` and are also declared
under the ``ingot.plugins`` entry-point group, the same group a third-party
plugin package uses::

    [project.entry-points."ingot.plugins"]
    myplugin = "myplugin.ingot_plugin"

Environment variables:

``INGOT_DISABLE_PLUGIN_AUTOLOAD=1``
    load only the built-in plugins (no entry-point scanning).
``INGOT_DISABLE_PLUGINS=a,b``
    do not load the plugins with these names.
``INGOT_TRACE_HOOKS=1``
    print every hook call and result on standard error.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from types import ModuleType

import pluggy

from . import hookspecs
from .errors import PluginLoadError, RegistryError
from .registry import DeviceSpec, Registry
from .signatures import KINDS

GROUP = "ingot.plugins"

BUILTIN_PLUGINS: dict[str, str] = {
    "unix": "ingot.plugins.unix",
    "random": "ingot.plugins.random",
    "kv": "ingot.plugins.kv",
    "stack-socket": "ingot.plugins.stack_socket",
    "tls": "ingot.plugins.tls",
    "stack-direct": "ingot.plugins.stack_direct",
    "netif": "ingot.plugins.netif",
    "dns": "ingot.plugins.dns",
    "qubesdb": "ingot.plugins.qubesdb",
    "firewall": "ingot.plugins.firewall",
    "smtp": "ingot.plugins.smtp",
    "imap": "ingot.plugins.imap",
    "mailstore": "ingot.plugins.mailstore.plugin",
    "openvpn": "ingot.plugins.openvpn",
}
"""Plugin name -> module of the plugins that ship with Ingot."""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def new_manager() -> pluggy.PluginManager:
    """An empty plugin manager with Ingot's hookspecs (and tracing if asked)."""
    pm = pluggy.PluginManager("ingot")
    pm.add_hookspecs(hookspecs)
    if _truthy("INGOT_TRACE_HOOKS"):
        pm.trace.root.setwriter(lambda text: print(text, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


def import_plugin(name: str, module: str, origin: str) -> ModuleType:
    """Import one plugin module; a failure names the plugin and where it came from."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise PluginLoadError(
            f"plugin {name!r} ({origin}: {module}) failed to import: "
            f"{type(exc).__name__}: {exc}",
            hint=f"fix or uninstall it, or skip it with INGOT_DISABLE_PLUGINS={name}") from exc


def discover(autoload: bool | None = None) -> dict[str, tuple[str, str]]:
    """Plugin name -> (module, origin) of every plugin that would be loaded."""
    disabled = {n.strip() for n in os.environ.get("INGOT_DISABLE_PLUGINS", "").split(",")
                if n.strip()}
    found: dict[str, tuple[str, str]] = {}
    for name, module in BUILTIN_PLUGINS.items():
        if name not in disabled:
            found[name] = (module, "built-in")
    if autoload is None:
        autoload = not _truthy("INGOT_DISABLE_PLUGIN_AUTOLOAD")
    if autoload:
        from importlib.metadata import entry_points

        builtin_modules = set(BUILTIN_PLUGINS.values())
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            if ep.value in builtin_modules or ep.name in disabled:
                continue
            if ep.name in found:
                raise PluginLoadError(
                    f"two plugins are named {ep.name!r}: {found[ep.name][0]} and {ep.value}",
                    hint="uninstall one of them")
            dist = getattr(ep, "dist", None)
            origin = f"entry point of {dist.name}" if dist is not None else "entry point"
            found[ep.name] = (ep.value, origin)
    return found


def load(plugins: Mapping[str, str] | None = None, *,
         autoload: bool | None = None) -> tuple[pluggy.PluginManager, Registry]:
    """Load plugins and collect their kinds and device backends.

    With ``plugins`` (name -> module, as an image's plan lists them) exactly
    those are registered and nothing is discovered; otherwise the built-in
    plugins and (unless disabled) the entry-point ones.
    """
    pm = new_manager()
    if plugins is None:
        wanted = discover(autoload)
    else:
        wanted = {name: (module, "plan") for name, module in plugins.items()}
    for name, (module, origin) in wanted.items():
        mod = import_plugin(name, module, origin)
        try:
            pm.register(mod, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginLoadError(f"plugin {name!r} ({module}) could not be registered: {exc}",
                                  hint="check its hook names against ingot.hookspecs") from None
    return pm, build_registry(pm)


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Ask every plugin for its kinds and device specs."""
    reg = Registry()
    reg.kinds.update(KINDS)
    for impl in pm.hook.ingot_kinds_register.get_hookimpls():
        kinds = impl.function() or {}
        for kind, cls in kinds.items():
            if kind in reg.kinds and reg.kinds[kind] is not cls:
                raise RegistryError(f"plugin {impl.plugin_name!r} redeclares device kind {kind!r}")
            reg.kinds[kind] = cls
    for impl in pm.hook.ingot_devices_register.get_hookimpls():
        specs = impl.function() or []
        for spec in specs:
            if not isinstance(spec, DeviceSpec):
                raise RegistryError(
                    f"plugin {impl.plugin_name!r} returned {type(spec).__name__} from "
                    "ingot_devices_register, expected DeviceSpec")
            reg.add(spec, impl.plugin_name)
    reg.check_defaults()
    return reg


def plugin_module(pm: pluggy.PluginManager, name: str) -> str:
    """The module name a registered plugin was loaded from."""
    plugin = pm.get_plugin(name)
    if plugin is None:
        raise RegistryError(f"plugin {name!r} is not installed")
    return plugin.__name__
