"""Key-value stores: ``kv_ro`` and ``kv_rw`` devices.

========  =======  ==========================================  ==============
kind      backend  what                                        default on
========  =======  ==========================================  ==============
kv_ro     direct   a host folder, read as it is                unix
kv_ro     crunch   a folder baked into the image at build      vm, qubes, oci
kv_ro     git      one commit of a git repository
kv_rw     memory   the process's memory (tests, caches)
kv_rw     direct   a host folder; atomic, journalled batches   unix
kv_rw     git      a branch; a batch is a commit; push/pull
========  =======  ==========================================  ==============

One module per backend (``direct``, ``crunch``, ``memory``, ``git``);
``common`` holds what every store shares, ``write`` what the writable ones
share, ``bake`` what ``crunch`` reads at build time. Only ``git`` imports
dulwich, so an image without a git store holds no git code. This module
imports nothing but the platform: factories are named, not imported.
"""

from __future__ import annotations

from typing import Any

import ingot
from ingot.keys import key, non_negative
from ingot.registry import DeviceSpec

from .common import check_author

_P = "ingot.plugins.kv"


@ingot.hookimpl
def ingot_devices_register() -> list[DeviceSpec]:
    repo = key("repo", str, "Path of the git repository (bare or not)")
    return [
        DeviceSpec("kv_ro", "direct", f"{_P}.direct:connect_ro",
                   "A host folder, read as it is (files are values, folders dictionaries)",
                   keys=(key("path", str, "The folder to serve"),),
                   default_on=("unix",)),
        DeviceSpec("kv_ro", "crunch", f"{_P}.crunch:connect",
                   "A folder baked into the image at build time (read into memory at start)",
                   keys=(key("source", str, "The folder to bake into the image (relative: "
                             "from the working folder, else the appliance folder)",
                             stage="build"),),
                   default_on=("vm", "qubes", "oci")),
        DeviceSpec("kv_ro", "git", f"{_P}.git:connect_ro",
                   "One commit of a git repository",
                   keys=(repo,
                         key("ref", str, "Branch, tag or commit to read", "HEAD"),
                         key("subdir", str, "Serve only this folder of the commit", ""))),
        DeviceSpec("kv_rw", "memory", f"{_P}.memory:connect",
                   "The process's memory; lost when it ends (tests, caches)",
                   keys=(key("limit", int, "Most bytes of values held (0: no limit)", 0,
                             validate=non_negative),)),
        DeviceSpec("kv_rw", "direct", f"{_P}.direct:connect_rw",
                   "A host folder; every write atomic and fsynced, batches journalled",
                   keys=(key("path", str, "The folder to keep the store in (made if missing)"),
                         key("poll", float, "Seconds between scans for changes by other "
                             "processes while watched (0: never)", 0.5,
                             validate=non_negative)),
                   default_on=("unix",)),
        DeviceSpec("kv_rw", "git", f"{_P}.git:connect_rw",
                   "A branch of a git repository: each write or batch is a commit; "
                   "pull and push a remote",
                   keys=(repo,
                         key("branch", str, "The branch holding the store", "main"),
                         key("remote", str, "URL or path of the remote to pull from and push "
                             "to (empty: none)", ""),
                         key("author", str, "Author and committer of commits, 'Name <email>'",
                             "Ingot <ingot@localhost>", validate=check_author),
                         key("init", bool, "Create a bare repository when repo does not exist",
                             False))),
    ]


@ingot.hookimpl
def ingot_plan_validate(plan: Any) -> list[str]:
    from .bake import problems

    return problems(plan)


@ingot.hookimpl
def ingot_image_collect(plan: Any, image: Any) -> None:
    from .bake import collect

    collect(plan, image)
