"""The ``qubesdb`` device: Qubes' per-VM configuration database.

QubesDB holds ``(path, value)`` pairs that dom0 writes for a VM: its own
addresses (``/qubes-ip``, ``/qubes-gateway``, ``/qubes-primary-dns``...),
and for a firewall VM its clients' rules (``/qubes-firewall/<ip>/NNNN``)
and the reload trigger (the empty write to ``/qubes-firewall/<ip>``). The
contract is :class:`ingot.signatures.QubesDB`: ``read``, ``multiread``,
``list``, ``write``, ``watch``, ``close``; the rules for paths, prefixes and
values are in :mod:`.paths` (a path begins with ``/``, at most 63
characters from ``[a-zA-Z0-9_.:/-]``; a value at most 3072 bytes).

========  ==================================================  ================
backend   what                                                targets
========  ==================================================  ================
socket    qubesdb-daemon's Unix socket, as Qubes' own tools   unix, vm, qubes
file      a TOML or JSON file, watched for changes            all
========  ==================================================  ================

``socket`` (:mod:`.socket`, protocol in :mod:`.protocol`)
    One connection to the daemon. Key ``path``: the socket, default
    ``/var/run/qubes/qubesdb.sock`` (inside a Qubes VM). No reconnection:
    a lost connection ends every watcher and makes every call raise
    ``DeviceError`` naming the socket.

``file`` (:mod:`.file`, format in :mod:`.table`)
    Outside Qubes and in tests. Key ``path`` (required): a ``.toml`` or
    ``.json`` file holding one flat table of ``"path" = "value"`` strings::

        "/qubes-ip" = "10.137.0.1"
        "/qubes-firewall/10.137.0.11/policy" = "drop"
        "/qubes-firewall/10.137.0.11/0000" = "action=accept proto=tcp dstports=443-443"

    Key ``poll`` (default 0.5): seconds between checks of the file's mtime,
    size and inode (it is also checked before every call; 0: only then). A
    change fires the watchers of every path added, changed or removed; a
    file that does not parse is logged once and the previous contents stay.
    ``write()`` keeps values in memory on top of the file (reads and
    watchers see them; the file is never written).

    Key ``bake`` (build, default false): ``ingot build`` reads the file named
    by ``path`` (given at configure time; relative: from the working folder,
    else the appliance folder) and carries it in the image (module
    :mod:`.bake`), e.g. for a ``vm`` or ``qubes`` image, which has no host
    folder to read. The image then reads its own copy, never a host file,
    and does not poll it (an image's data never changes); ``write()`` works
    as above. Run from the source tree (no image), the named file is read.

Neither backend is a default: an appliance's manifest chooses per target
(the firewall: ``file`` on unix and oci, ``socket`` on vm and qubes). This
module imports nothing but the platform; factories are named, not imported.
"""

from __future__ import annotations

from typing import Any

import ingot
from ingot.keys import key, non_negative
from ingot.registry import DeviceSpec

_P = "ingot.plugins.qubesdb"


def _table_file(value: str) -> None:
    # the rule of .table.format_of, not imported: a socket image holds no table code
    if not value.lower().endswith((".toml", ".json")):
        raise ValueError(f"{value!r} must end with .toml or .json")


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    return [
        DeviceSpec("qubesdb", "socket", f"{_P}.socket:connect",
                   "qubesdb-daemon's Unix socket (inside a Qubes VM)",
                   targets=("unix", "vm", "qubes"),
                   keys=(key("path", str, "The Unix socket of qubesdb-daemon",
                             "/var/run/qubes/qubesdb.sock"),)),
        DeviceSpec("qubesdb", "file", f"{_P}.file:connect",
                   "QubesDB entries from a TOML or JSON file, watched for changes "
                   "(outside Qubes, tests)",
                   keys=(key("path", str, "The .toml or .json file holding a table of "
                             "\"path\" = \"value\" strings", validate=_table_file),
                         key("poll", float, "Seconds between checks of the file for "
                             "changes (0: only before each call)", 0.5,
                             validate=non_negative),
                         key("bake", bool, "Carry the file named by --qubesdb-path in the "
                             "image (read at build time; the image reads its own copy and "
                             "does not poll it)", False, stage="build"))),
    ]


@ingot.hookimpl
def ingot_plan_validate(plan: Any) -> list[str]:
    from .bake import problems

    return problems(plan)


@ingot.hookimpl
def ingot_image_collect(plan: Any, image: Any) -> None:
    from .bake import collect

    collect(plan, image)
