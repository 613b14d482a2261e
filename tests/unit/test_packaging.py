"""The package-dir mapping lists every package; built-ins are entry points too."""

import tomllib
from pathlib import Path

from ingot.plugin import BUILTIN_PLUGINS, GROUP

ROOT = Path(__file__).resolve().parents[2]
CONF = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(CONF["tool"]["setuptools"]["packages"])
    mapping = CONF["tool"]["setuptools"]["package-dir"]
    for prefix, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join((prefix, *rel.parts)) if rel.parts else prefix
            if any(part in ("__pycache__",) for part in rel.parts):
                continue
            assert name in listed, f"{name} ({init.parent}) is missing from pyproject packages"


def test_builtin_plugins_are_declared_as_entry_points():
    eps = CONF["project"]["entry-points"][GROUP]
    assert eps == BUILTIN_PLUGINS


def test_platform_folder_is_never_a_top_level_package():
    import platform
    assert "platform/ingot" not in (platform.__file__ or "")
    assert hasattr(platform, "python_version")
