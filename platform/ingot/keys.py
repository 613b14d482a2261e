"""Typed configuration keys (the MirageOS ``Key`` module).

A key has a name, a type, a doc line, an optional default and a *stage*:

* ``build`` keys are fixed by ``ingot configure`` and baked into the image;
  giving one to a running image is an error.
* ``runtime`` keys are parsed at boot, from (highest first) the command line
  ``--name value``, the environment ``INGOT_NAME``, on the ``vm`` target the
  kernel command line ``name=value``, then the value baked at configure
  time, then the default.

Names are lower case words joined by ``-`` (``log-level``); the CLI flag is
``--log-level`` and the environment variable ``INGOT_LOG_LEVEL``. Values are
parsed from text by the key's type and then checked by its ``validate``
function, which raises ``ValueError`` with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import KeyValueError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of a key that must be given."""

Stage = Literal["build", "runtime"]

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    """``true/yes/on/1`` or ``false/no/off/0`` (any case)."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected one of true/false, yes/no, on/off, 1/0")


def parse_list(text: str) -> list[str]:
    """A comma-separated list; blanks around items are dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


_PARSERS: dict[Any, tuple[str, Callable[[str], Any]]] = {
    str: ("string", str),
    int: ("integer", lambda s: int(s.strip(), 0)),
    float: ("number", lambda s: float(s.strip())),
    bool: ("boolean", parse_bool),
    list: ("list", parse_list),
}


@dataclass(frozen=True)
class Key:
    """One typed key. See the module docstring for stages and sources."""

    name: str
    type: Any
    doc: str
    default: Any = REQUIRED
    stage: Stage = "runtime"
    validate: Callable[[Any], None] | None = None
    choices: tuple[Any, ...] | None = None
    secret: bool = False
    owner: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"key name {self.name!r} must be lower-case words joined by '-'")
        if self.stage not in ("build", "runtime"):
            raise ValueError(f"key {self.name!r}: stage must be 'build' or 'runtime'")
        if self.type not in _PARSERS and not callable(self.type):
            raise ValueError(f"key {self.name!r}: type must be str, int, float, bool, "
                             "list or a parse function")
        if not self.doc:
            raise ValueError(f"key {self.name!r} needs a doc line")

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return "INGOT_" + self.name.upper().replace("-", "_")

    @property
    def type_name(self) -> str:
        if self.type in _PARSERS:
            return _PARSERS[self.type][0]
        return getattr(self.type, "__name__", "value").replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def where(self) -> str:
        """How a user sets this key, for error hints."""
        if self.stage == "build":
            return f"{self.flag} at 'ingot configure'"
        return f"{self.flag} or {self.env}"

    def parse(self, text: str, source: str = "") -> Any:
        """Parse and validate a textual value; ``KeyValueError`` on bad input."""
        parser = _PARSERS[self.type][1] if self.type in _PARSERS else self.type
        try:
            value = parser(text)
        except (ValueError, TypeError) as exc:
            raise KeyValueError(
                f"{self.flag}{_src(source)}: {text!r} is not a valid {self.type_name}"
                f"{': ' + str(exc) if str(exc) and self.type not in (int, float) else ''}",
                hint=f"{self.flag}: {self.doc}") from None
        return self.check(value, source)

    def check(self, value: Any, source: str = "") -> Any:
        """Validate an already typed value (a default or a baked value)."""
        if self.type in _PARSERS and self.type is not float and value is not None:
            expected = self.type
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise KeyValueError(
                    f"{self.flag}{_src(source)}: {value!r} is not a valid {self.type_name}",
                    hint=f"{self.flag}: {self.doc}")
        if self.choices is not None and value not in self.choices:
            raise KeyValueError(
                f"{self.flag}{_src(source)}: {value!r} is not one of "
                + ", ".join(map(str, self.choices)),
                hint=f"{self.flag}: {self.doc}")
        if self.validate is not None:
            try:
                self.validate(value)
            except ValueError as exc:
                raise KeyValueError(f"{self.flag}{_src(source)}: {exc}",
                                    hint=f"{self.flag}: {self.doc}") from None
        return value

    def to_text(self, value: Any) -> str:
        """The textual form of a value, which :meth:`parse` reads back."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return ",".join(map(str, value))
        return str(value)


def _src(source: str) -> str:
    return f" (from {source})" if source else ""


def key(name: str, type: Any, doc: str, default: Any = REQUIRED, *,
        stage: Stage = "runtime", validate: Callable[[Any], None] | None = None,
        choices: Iterable[Any] | None = None, secret: bool = False) -> Key:
    """Declare a key (the manifest and plugin spelling of :class:`Key`)."""
    return Key(name=name, type=type, doc=doc, default=default, stage=stage,
               validate=validate, choices=tuple(choices) if choices is not None else None,
               secret=secret)


def positive(value: int | float) -> None:
    """A validator: the value must be > 0."""
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")


def non_negative(value: int | float) -> None:
    """A validator: the value must be >= 0."""
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")


def port(value: int) -> None:
    """A validator: a TCP/UDP port number (0 means any free port)."""
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535)")


PLATFORM_KEYS: tuple[Key, ...] = (
    key("log-level", str, "Least severe log level shown", "info",
        choices=("debug", "info", "warning", "error")),
    key("sandbox", str, "Seccomp filter installed once the appliance is ready: off, on (other "
        "syscalls fail with EPERM) or kill (they kill the process); see docs/sandbox.md", "off",
        choices=("off", "on", "kill")),
    key("user", str, "User to become once the ports are bound (a name or uid:gid; needs root); "
        "empty: keep", ""),
)
"""Runtime keys every image has."""


def parse_argv(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``--name value`` / ``--name=value`` pairs from other words.

    Returns ``({name: text}, rest)``. A flag without a value is an error,
    except ``--name`` followed by another flag, which means ``true``.
    """
    values: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--") and len(word) > 2:
            name, eq, text = word[2:].partition("=")
            if not eq:
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    text = argv[i + 1]
                    i += 1
                else:
                    text = "true"
            if name in values:
                raise KeyValueError(f"--{name} given twice")
            values[name] = text
        else:
            rest.append(word)
        i += 1
    return values, rest


def resolve(keys: Iterable[Key], given: Mapping[str, str], env: Mapping[str, str],
            baked: Mapping[str, Any], *, extra_sources: Mapping[str, str] | None = None,
            context: str = "") -> dict[str, Any]:
    """Values of runtime ``keys`` from the sources, highest first.

    ``given`` holds command-line texts by key name, ``env`` the process
    environment, ``extra_sources`` e.g. the kernel command line, ``baked``
    typed values fixed at configure time. A missing required key raises
    :class:`KeyValueError`.
    """
    out: dict[str, Any] = {}
    for k in keys:
        if k.name in given:
            out[k.name] = k.parse(given[k.name], "command line")
        elif k.env in env:
            out[k.name] = k.parse(env[k.env], k.env)
        elif extra_sources and k.name in extra_sources:
            out[k.name] = k.parse(extra_sources[k.name], "kernel command line")
        elif k.name in baked:
            value = baked[k.name]
            if k.type not in _PARSERS and isinstance(value, str):
                out[k.name] = k.parse(value, "image")
            else:
                out[k.name] = k.check(value, "image")
        elif not k.required:
            out[k.name] = k.default
        else:
            raise KeyValueError(f"missing required key {k.flag}{context}",
                                hint=f"set {k.where()}: {k.doc}")
    return out
