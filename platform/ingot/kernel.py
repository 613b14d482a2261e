"""Kernels for the ``vm`` and ``qubes`` targets, and the modules they load.

Two options (``ingot configure ... --kernel debian|minimal``):

``debian``
    Debian's ``linux-image-cloud-amd64`` (its newest installed
    ``/boot/vmlinuz-*-cloud-amd64``). Built as root on Debian, the build
    installs the package when it is missing; elsewhere it is a clear error.
    Its drivers (virtio_net, virtio_rng, tun, nf_tables, the ACPI button,
    evdev, xen-netfront) are modules: the image carries the ones the
    appliance needs, with their dependencies from ``modules.dep``, and PID 1
    loads them in dependency order.

``minimal``
    Built from Debian's ``linux-source-6.1`` with the committed fragment
    ``kernel-minimal.config`` on top of ``make tinyconfig``; everything is
    built in (no modules). See :mod:`ingot.kernel_minimal`; the build is
    cached outside the repository, keyed by the fragment's hash.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BuildError

KERNELS = ("debian", "minimal")
DEBIAN_PACKAGE = "linux-image-cloud-amd64"

BASE_MODULES = ("virtio_pci", "virtio_net", "virtio_rng", "button", "evdev")
"""What every VM image loads when the kernel has them as modules: the
virtio PCI transport and NIC, the entropy source (Python needs entropy at
once), the ACPI power button and the input events PID 1 reads it from."""


@dataclass
class Kernel:
    """A kernel to put into an image."""

    option: str
    vmlinuz: Path
    release: str = ""
    modules_dir: Path | None = None
    """``/lib/modules/<release>`` when the kernel has loadable modules."""
    dep: dict[str, list[str]] = field(default_factory=dict)
    """Module name -> [its file, then the files it depends on] (modules.dep)."""
    builtin: set[str] = field(default_factory=set)


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _modname(path: str) -> str:
    base = os.path.basename(path)
    return _norm(re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base))


def _version_key(path: Path) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", path.name)]


def _read_modules(kernel: Kernel) -> None:
    base = kernel.modules_dir
    if base is None:
        return
    try:
        text = (base / "modules.dep").read_text()
    except OSError as exc:
        raise BuildError(f"cannot read {base / 'modules.dep'}: {exc.strerror}",
                         hint=f"reinstall {DEBIAN_PACKAGE} or run depmod") from None
    for line in text.splitlines():
        mod, _, deps = line.partition(":")
        if mod:
            kernel.dep[_modname(mod)] = [mod] + deps.split()
    try:
        kernel.builtin = {_modname(line.strip()) for line in
                          (base / "modules.builtin").read_text().splitlines() if line.strip()}
    except OSError:
        kernel.builtin = set()


def debian(*, install: bool | None = None,
           progress: Callable[[str], None] = lambda _m: None) -> Kernel:
    """The newest installed Debian cloud kernel (installing it as root when missing)."""
    found = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"), key=_version_key)
    if not found:
        may = os.geteuid() == 0 and shutil.which("apt-get") is not None
        if install is False or not may:
            raise BuildError(f"the debian kernel option needs Debian's {DEBIAN_PACKAGE}",
                             hint=f"install it: apt-get install {DEBIAN_PACKAGE} (as root), "
                                  "or configure with --kernel minimal")
        progress(f"      installing {DEBIAN_PACKAGE} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        proc = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y",
                               "-q", "--no-install-recommends", DEBIAN_PACKAGE],
                              env=env, capture_output=True, text=True)
        found = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"), key=_version_key)
        if proc.returncode != 0 or not found:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no kernel"]
            raise BuildError(f"apt-get install {DEBIAN_PACKAGE} failed: {tail[0]}",
                             hint="run 'apt-get update' first, or use --kernel minimal")
    vmlinuz = found[-1]
    release = vmlinuz.name[len("vmlinuz-"):]
    kernel = Kernel("debian", vmlinuz, release, Path("/lib/modules") / release)
    _read_modules(kernel)
    return kernel


def get(option: str, *, progress: Callable[[str], None] = lambda _m: None) -> Kernel:
    """The kernel of ``option`` (see the module docstring)."""
    if option == "debian":
        return debian(progress=progress)
    if option == "minimal":
        from .kernel_minimal import build_minimal
        return Kernel("minimal", build_minimal(progress=progress))
    raise BuildError(f"unknown kernel {option!r}", hint="choose one of: " + ", ".join(KERNELS))


def modules_in_order(kernel: Kernel, names: Iterable[str]) -> list[str]:
    """Module files (relative to ``modules_dir``) for ``names``, each after its dependencies.

    A name built into the kernel is left out; an unknown name is an error.
    A kernel without modules needs none.
    """
    if kernel.modules_dir is None:
        return []
    order: list[str] = []
    done: set[str] = set()

    def add(name: str, chain: tuple[str, ...]) -> None:
        if name in done:
            return
        entry = kernel.dep.get(name)
        if entry is None:
            if name in kernel.builtin:
                done.add(name)
                return
            via = f" (needed by {chain[-1]})" if chain else ""
            raise BuildError(f"kernel {kernel.release} has no module {name!r}{via}",
                             hint="check the plugin's ingot_vm_kernel_modules, or the kernel")
        done.add(name)
        for dep in entry[1:]:
            add(_modname(dep), chain + (name,))
        order.append(entry[0])

    for name in names:
        add(_norm(name), ())
    return order
