"""Errors of the platform itself (configure, build, boot).

Every error here reads well as one line of text and may carry a ``hint``: what
to do about it. The CLI prints ``error: <message>`` and ``hint: <hint>`` and
never a traceback unless ``--debug`` is given.

Device errors (what a device raises while it runs) live in
:mod:`ingot.signatures`, next to the contracts that name them.
"""

from __future__ import annotations


class IngotError(Exception):
    """Base of all platform errors: a message and an optional hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ManifestError(IngotError):
    """An appliance manifest is missing, does not load, or is inconsistent."""


class PluginLoadError(IngotError):
    """A plugin could not be imported or registered; the message names it."""


class RegistryError(IngotError):
    """Two plugins claim the same backend, or a backend or kind is unknown."""


class KeyValueError(IngotError):
    """A key was given a value of the wrong type, is missing, or is unknown."""


class ConfigureError(IngotError):
    """The appliance cannot be resolved for this target with these options."""


class BuildError(IngotError):
    """An image could not be built from a plan."""


class BootError(IngotError):
    """The runtime could not bring an image up (bad plan, device failure)."""
