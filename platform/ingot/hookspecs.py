"""Every hook of Ingot, grouped by lifecycle. This module is the reference.

Hooks do not *define* devices (the :mod:`ingot.signatures` protocols do);
they let plugins *provide and select* implementations and take part in
configure, build and boot. All hooks are synchronous; a hook implementation
does no I/O (``ingot_image_collect`` reads the files the plan names, and that
is its job). Implement a hook with ``@ingot.hookimpl`` in a module registered
under the ``ingot.plugins`` entry-point group.

Which hooks run where:

========================  ===========  ========  =======  ===============
hook                      configure    build     boot     ``ingot plugins``
========================  ===========  ========  =======  ===============
ingot_kinds_register      yes          yes       yes      yes
ingot_devices_register    yes          yes       yes      yes
ingot_plan_validate       yes
ingot_image_collect                    yes
ingot_modules_require                  yes
ingot_loop_select                                yes
ingot_device_connected                           yes
ingot_appliance_stopped                          yes
ingot_sandbox_syscalls                           yes
========================  ===========  ========  =======  ===============

At configure and build time every installed plugin is loaded. At boot an
image registers only the plugins its plan names (no entry-point scanning).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - types only
    from .image import ImageWriter
    from .plan import Plan
    from .registry import DeviceSpec

hookspec = pluggy.HookspecMarker("ingot")

# --------------------------------------------------------------------------
# registration


@hookspec
def ingot_kinds_register() -> dict[str, type]:
    """Declare new device kinds: ``{kind name: signature Protocol class}``.

    Called once when plugins are loaded, before ``ingot_devices_register``,
    at configure, build and boot time. The built-in kinds (see
    ``ingot.signatures.KINDS``) need no declaration. Declaring a kind that
    already exists with another class is an error.

    :return: a mapping, possibly empty.
    """


@hookspec
def ingot_devices_register() -> list[DeviceSpec]:
    """List the device backends this plugin provides.

    Called once when plugins are loaded, at configure, build and boot time,
    and by ``ingot plugins``. Each :class:`~ingot.registry.DeviceSpec` names
    its kind, backend name, the targets it works on, its keys, the modules
    an image needs for it and its factory (``"module:function"``, imported
    only when a plan chooses the backend). Two plugins providing the same
    kind and backend is an error naming both.

    :return: a list of specs, possibly empty.
    """


# --------------------------------------------------------------------------
# configure


@hookspec
def ingot_plan_validate(plan: Plan) -> list[str] | None:
    """Check a resolved plan before ``ingot configure`` writes it.

    Called at configure time on every loaded plugin, after backends and keys
    are resolved. A plugin checks what it knows about, e.g. that the folder
    a ``crunch`` backend will bake exists.

    :param plan: the resolved :class:`~ingot.plan.Plan` (do not modify it).
    :return: problems as one-line messages (each stops the configure step),
        or ``None``/``[]`` when satisfied.
    """


# --------------------------------------------------------------------------
# build


@hookspec
def ingot_image_collect(plan: Plan, image: ImageWriter) -> None:
    """Add data to an image being built.

    Called at build time on every loaded plugin, after the module closure is
    known and before the image is written. A plugin adds the data its chosen
    backends need at run time, e.g. ``crunch`` adds the files of a folder
    with ``image.add_data(device, path, data)``. Everything added is listed
    in the image's contents with size and sha256.

    :param plan: the plan being built (read only).
    :param image: the :class:`~ingot.image.ImageWriter` collecting the image.
    """


@hookspec
def ingot_modules_require(plan: Plan) -> list[str] | None:
    """Name the Linux kernel modules a ``vm`` or ``qubes`` image must load.

    Called at build time on every loaded plugin for the VM targets. A plugin
    returns the module names (``tun``, ``nft_masq``) its chosen backends need
    beyond the base set (virtio PCI and net, virtio-rng, the ACPI button,
    evdev), or None. The build adds their dependencies from the kernel's
    ``modules.dep`` and PID 1 loads them in order; a name the kernel has
    built in is left out, an unknown name fails the build.

    :param plan: the plan being built (read only).
    :return: kernel module names, or None.
    """


# --------------------------------------------------------------------------
# boot


@hookspec(firstresult=True)
def ingot_loop_select(plan: Plan, device_keys: Mapping[str, Mapping[str, Any]]
                      ) -> Callable[[], Any] | None:
    """Choose the event loop the image runs on, before it starts.

    Called once at boot inside an image, on the plugins the plan names,
    after runtime keys are parsed and before any device connects (devices
    connect inside the running loop). The first non-None result wins; with
    none, asyncio's own loop is used. The ``socket`` stack answers with
    uvloop's loop when the image carries uvloop and its ``uvloop`` key is
    true.

    :param plan: the image's plan.
    :param device_keys: each device's key values by device name, then by the
        backend's short key name.
    :return: a loop factory (a callable returning a new event loop), or None.
    """


@hookspec
def ingot_device_connected(name: str, spec: DeviceSpec, device: Any) -> None:
    """Observe a device that the runtime just connected.

    Called at boot inside an image, on the plugins the plan names, once per
    device in dependency order, before the appliance is constructed.

    :param name: the device's name in the plan (``"kv_ro"``, ``"zones"``).
    :param spec: the backend's :class:`~ingot.registry.DeviceSpec`.
    :param device: the connected device object.
    """


@hookspec
def ingot_appliance_stopped(plan: Plan, exit_code: int) -> None:
    """Observe the end of an appliance, after its devices are closed.

    Called inside an image on the plugins the plan names, when ``start()``
    returned, failed or was stopped by SIGTERM/SIGINT.

    :param plan: the image's plan.
    :param exit_code: the process exit code about to be returned.
    """


@hookspec
def ingot_sandbox_syscalls(plan: Plan) -> list[str] | None:
    """Name the syscalls a sandboxed image needs beyond the sandbox's base set.

    Called once at boot inside an image, on the plugins the plan names, when
    ``--sandbox`` is ``on`` or ``kill``, after runtime keys are parsed and
    before any device connects. A plugin returns the syscall names (as
    ``strace`` spells them: ``"ioctl"``, ``"pread64"``) that its chosen
    backends make after the appliance is ready and that
    :data:`ingot.sandbox.BASE` lacks, or None. A name unknown on the
    machine's architecture, or one of :data:`ingot.sandbox.FORBIDDEN`
    (``execve``, ``ptrace``, ``mount`` ...), stops the boot. Naming
    ``ioctl`` allows every ioctl request, not only the base set's few.

    :param plan: the image's plan (read only).
    :return: syscall names, or None.
    """
