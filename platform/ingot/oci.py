"""The ``oci`` target's writer: an OCI image layout (image-spec 1.0), as one tar file.

The tar holds the layout of `opencontainers/image-spec` ``image-layout.md``::

    blobs/sha256/<config digest>     the image configuration (JSON)
    blobs/sha256/<layer digest>      the root, one gzip-compressed tar layer
    blobs/sha256/<manifest digest>   the image manifest (JSON)
    index.json                       names the manifest, tagged ``latest``
    oci-layout                       {"imageLayoutVersion":"1.0.0"}

so that ``skopeo ... oci-archive:<file>:latest`` reads it as it is, and the
folder it unpacks to is an OCI layout for ``umoci unpack --image <dir>:latest``.

Reproducibility: every tar member (of the layer and of the outer tar) has
owner 0:0 with empty owner names and time 0; the layer lists folders before
their contents, in path order; gzip's header carries time 0 and no file
name; the JSON documents are written with sorted keys and no spaces; the
configuration's ``created`` is the epoch. The same entries give the same
bytes, hence the same digests.

The layer holds no device nodes (an OCI runtime provides ``/dev``; a node in
a layer cannot be unpacked rootless). The image runs as root by default
(``config.User`` is not set) because appliances such as DNS listen on
ports below 1024; ``--user 65534:65534`` works for an appliance given a
port of 1024 or more, as the root holds nothing the appliance writes.
The configuration's ``Env`` is only ``PATH=/usr/bin``: the entry point is an
absolute path, the interpreter runs isolated (``-I``: no ``PYTHON*``
variables, no user site), and the root holds bytecode without sources, so
Python writes nothing to it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .rootfs import Entry, tree

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYOUT = {"imageLayoutVersion": "1.0.0"}
EPOCH = "1970-01-01T00:00:00Z"
REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"
ENV = ("PATH=/usr/bin",)
ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                 "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
                 "riscv64": "riscv64"}
"""``platform.machine()`` values and their GOARCH names, which the image-spec uses."""


def host_architecture() -> str:
    """The OCI (GOARCH) name of the build host's architecture: the interpreter in a root is
    the build host's."""
    machine = platform.machine().lower()
    try:
        return ARCHITECTURES[machine]
    except KeyError:
        raise ValueError(f"no OCI architecture name known for machine {machine!r}") from None


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode & 0o7777
    info.size = size
    info.linkname = link
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """The uncompressed layer: ``entries`` as a PAX tar, folders before their contents.

    Character devices are left out (the runtime provides ``/dev``); an unknown
    kind or a path that is absolute or climbs out (``..``) is a ``ValueError``.
    """
    chosen: dict[str, Entry] = {}
    for e in entries:
        parts = e.path.split("/")
        if not e.path or e.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad path in a root: {e.path!r}")
        if e.kind == "chardev":
            continue
        if e.kind not in ("file", "dir", "symlink"):
            raise ValueError(f"{e.path}: unknown entry kind {e.kind!r}")
        chosen[e.path] = e
    chosen = {e.path: e for e in tree(chosen)}  # every parent folder a member too
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # by path components: a folder comes right before its own contents
        for path in sorted(chosen, key=lambda p: p.split("/")):
            e = chosen[path]
            if e.kind == "dir":
                tar.addfile(_info(path, tarfile.DIRTYPE, e.mode))
            elif e.kind == "symlink":
                tar.addfile(_info(path, tarfile.SYMTYPE, e.mode or 0o777,
                                  link=e.data.decode()))
            else:
                tar.addfile(_info(path, tarfile.REGTYPE, e.mode, len(e.data)),
                            io.BytesIO(e.data))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


@dataclass(frozen=True)
class Layout:
    """The blobs and documents of an image layout (before they are put in a tar)."""

    blobs: dict[str, bytes]
    """``sha256:<hex>`` -> bytes: the layer, the configuration and the manifest."""
    index: bytes
    manifest_digest: str
    config_digest: str
    layer_digest: str
    diff_id: str


def layout(entries: Iterable[Entry], *, name: str, entrypoint: Sequence[str],
           cmd: Sequence[str] = (), env: Sequence[str] = ENV, working_dir: str = "/",
           user: str = "", labels: Mapping[str, str] | None = None,
           exposed_ports: Iterable[str] = (), architecture: str | None = None,
           tag: str = "latest") -> Layout:
    """The image layout of a root: see :func:`write_oci` for the arguments."""
    if not entrypoint:
        raise ValueError("an image needs an entry point")
    raw = layer_tar(entries)
    layer = _gzip(raw)
    diff_id = _digest(raw)
    arch = architecture or host_architecture()
    config: dict[str, object] = {
        "Entrypoint": list(entrypoint),
        "Env": list(env),
        "WorkingDir": working_dir,
        "Labels": {TITLE: name, **dict(labels or {})},
    }
    if cmd:
        config["Cmd"] = list(cmd)
    if user:
        config["User"] = user
    ports = sorted(set(exposed_ports))
    if ports:
        config["ExposedPorts"] = {p: {} for p in ports}
    image_config = _canonical({
        "created": EPOCH,
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": EPOCH, "created_by": f"ingot build ({name})"}],
    })
    manifest = _canonical({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(image_config),
                   "size": len(image_config)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": _digest(layer), "size": len(layer)}],
        "annotations": {TITLE: name},
    })
    index = _canonical({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": _digest(manifest),
                       "size": len(manifest),
                       "platform": {"architecture": arch, "os": "linux"},
                       "annotations": {REF_NAME: tag}}],
    })
    blobs = {_digest(b): b for b in (layer, image_config, manifest)}
    return Layout(blobs, index, _digest(manifest), _digest(image_config), _digest(layer),
                  diff_id)


def layout_tar(lay: Layout) -> bytes:
    """The layout as one tar: folders, blobs by digest, ``index.json``, ``oci-layout``."""
    files = {f"blobs/sha256/{d.split(':', 1)[1]}": b for d, b in lay.blobs.items()}
    files["index.json"] = lay.index
    files["oci-layout"] = _canonical(LAYOUT)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for folder in ("blobs", "blobs/sha256"):
            tar.addfile(_info(folder, tarfile.DIRTYPE, 0o755))
        for path in sorted(files):
            tar.addfile(_info(path, tarfile.REGTYPE, 0o644, len(files[path])),
                        io.BytesIO(files[path]))
    return buf.getvalue()


def write_oci(entries: Iterable[Entry], out_path: Path | str, *, name: str,
              entrypoint: Sequence[str], cmd: Sequence[str] = (), env: Sequence[str] = ENV,
              working_dir: str = "/", user: str = "", labels: Mapping[str, str] | None = None,
              exposed_ports: Iterable[str] = (), architecture: str | None = None,
              tag: str = "latest") -> Layout:
    """Write the root ``entries`` as an OCI image layout in one tar file at ``out_path``.

    ``entrypoint`` (and ``cmd``, its default arguments, none by default) start
    the appliance; ``env`` is the configuration's environment; ``user`` its
    ``User`` (empty: the runtime's default, root); ``labels`` are added to
    ``org.opencontainers.image.title`` = ``name``; ``exposed_ports`` are
    ``"53/udp"``-style names; ``architecture`` defaults to the build host's;
    ``tag`` is the ``org.opencontainers.image.ref.name`` of the manifest in
    ``index.json``. The file is replaced atomically (a temporary file in the
    same folder, then a rename). Returns the layout's digests and blobs.
    """
    lay = layout(entries, name=name, entrypoint=entrypoint, cmd=cmd, env=env,
                 working_dir=working_dir, user=user, labels=labels,
                 exposed_ports=exposed_ports, architecture=architecture, tag=tag)
    blob = layout_tar(lay)
    from .build import write_atomic

    write_atomic(Path(out_path), blob)
    return lay
