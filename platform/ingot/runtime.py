"""The runtime: boot an image's plan and run its appliance.

Boot order, each step logged:

1. read the plan baked into the image (no plugin discovery);
2. parse runtime keys: command line, ``INGOT_*`` environment, the baked
   values, the defaults (``--help`` lists them);
3. register the plan's plugins and connect devices in dependency order;
   a device that fails stops the boot with one line naming it and its keys;
4. construct the appliance (its constructor receives devices, ``keys`` and
   ``log`` by parameter name) and run ``await start()``.

SIGTERM and SIGINT cancel ``start()``; devices are then closed in reverse
order and the process exits 0. ``start()`` returning also exits 0; an
exception escaping it is logged on one line and exits 1. Exit 2 means the
boot failed (bad keys, a device that did not connect).
"""

from __future__ import annotations

# Only what the first log line needs is imported here; the boot sequence
# (ingot.boot) is imported after it, so that start-up is visible at once.
import json
import os
import sys
TYPE_CHECKING = False  # typing is not imported before the first log line
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

from . import log as logmod

EXIT_OK, EXIT_FAILED, EXIT_BOOT = 0, 1, 2


def _read_plan(image: str | None) -> dict[str, Any]:
    loader = sys.modules["__main__"].__dict__.get("__loader__")
    raw = None
    if loader is not None and hasattr(loader, "get_data"):
        try:
            raw = loader.get_data("_ingot/plan.json")
        except OSError:
            raw = None
    if raw is None and image is not None:
        if os.path.isdir(image):
            with open(os.path.join(image, "_ingot", "plan.json"), "rb") as fh:
                raw = fh.read()
        else:
            import zipfile
            with zipfile.ZipFile(image) as zf:
                raw = zf.read("_ingot/plan.json")
    if raw is None:
        raise OSError("no plan found in the image; rebuild it with 'ingot build'")
    return json.loads(raw)


def main(argv: list[str] | None = None, *, image: str | None = None,
         env: Mapping[str, str] | None = None) -> int:
    """Boot the image's plan; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    log = logmod.get("boot")
    try:
        raw = _read_plan(image)
        name = f"{raw['appliance']}-{raw['target']}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("cannot read the plan", error=str(exc))
        return EXIT_BOOT
    if "--help" not in argv and "-h" not in argv:
        log.info("booting", image=name, python=sys.version.split()[0])
    from . import boot

    return boot.run(raw, argv, image, env, log)
