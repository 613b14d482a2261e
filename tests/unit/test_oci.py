"""The OCI image layout writer (ingot.oci) on a few synthetic root entries.

The layouts are made in memory; only the two tests of write_oci's own file
contract (atomic replace, nothing written on an error) use a temporary folder."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from ingot import oci
from ingot.rootfs import Entry

ENTRIES = [
    Entry("usr/bin/python3", "file", 0o755, b"\x7fELF not really"),
    Entry("usr/lib/ingot/__main__.py", "file", 0o644, b"print('hi')\n"),
    Entry("usr/lib/ingot/_ingot/plan.json", "file", 0o644, b"{}"),
    Entry("usr/lib-dynload/x.so", "file", 0o755, b"so"),
    Entry("lib64", "symlink", 0o777, b"usr/lib64"),
    Entry("usr/lib64/ld.so", "file", 0o755, b"ld"),
    Entry("dev/null", "chardev", 0o666, rdev=(1, 3)),
    Entry("tmp", "dir", 0o1777),
]
ENTRY = ["/usr/bin/python3", "-IS", "/usr/lib/ingot/__main__.py"]


def build(entries=ENTRIES, name: str = "demo-oci", **kw) -> bytes:
    """The layout tar write_oci writes, made in memory."""
    return oci.layout_tar(oci.layout(entries, name=name, entrypoint=ENTRY,
                                     architecture="amd64", **kw))


def read(image: bytes) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(image)) as tar:
        members = tar.getmembers()
        files = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}  # type: ignore
    return members, files


def blob(files: dict[str, bytes], desc: dict) -> bytes:
    algo, hexdigest = desc["digest"].split(":")
    assert algo == "sha256"
    data = files[f"blobs/sha256/{hexdigest}"]
    assert len(data) == desc["size"]
    return data


def test_the_layout_holds_oci_layout_index_and_blobs_named_by_their_digests():
    members, files = read(build())
    assert [m.name for m in members][:2] == ["blobs", "blobs/sha256"]
    assert sorted(files) == [m.name for m in members if m.isfile()]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert name.rsplit("/", 1)[1] == hashlib.sha256(data).hexdigest()
    assert len([n for n in files if n.startswith("blobs/")]) == 3  # layer, config, manifest
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0), m.name
        assert m.mode == (0o755 if m.isdir() else 0o644), m.name


def test_index_manifest_and_config_carry_the_oci_media_types_and_settings():
    _, files = read(build(labels={"org.example.kind": "test"}))
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == oci.MEDIA_INDEX
    [desc] = index["manifests"]
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert desc["annotations"] == {"org.opencontainers.image.ref.name": "latest"}
    assert desc["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest = json.loads(blob(files, desc))
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == oci.MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    config = json.loads(blob(files, manifest["config"]))
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["created"] == "1970-01-01T00:00:00Z"
    assert config["config"]["Entrypoint"] == ENTRY
    assert config["config"]["WorkingDir"] == "/"
    assert config["config"]["Env"] == ["PATH=/usr/bin"]
    assert "User" not in config["config"] and "Cmd" not in config["config"]
    assert config["config"]["Labels"] == {"org.opencontainers.image.title": "demo-oci",
                                          "org.example.kind": "test"}
    raw = gzip.decompress(blob(files, layer))
    assert config["rootfs"] == {"type": "layers",
                                "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}


def test_the_layer_lists_folders_before_their_contents_owned_by_root_and_no_devices():
    _, files = read(build())
    index = json.loads(files["index.json"])
    manifest = json.loads(blob(files, index["manifests"][0]))
    compressed = blob(files, manifest["layers"][0])
    assert compressed[4:8] == b"\0\0\0\0"  # gzip header: time 0
    raw = gzip.decompress(compressed)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
        data = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}  # type: ignore
    names = [m.name for m in members]
    assert names == ["lib64", "tmp", "usr", "usr/bin", "usr/bin/python3", "usr/lib",
                     "usr/lib/ingot", "usr/lib/ingot/__main__.py", "usr/lib/ingot/_ingot",
                     "usr/lib/ingot/_ingot/plan.json", "usr/lib-dynload",
                     "usr/lib-dynload/x.so", "usr/lib64", "usr/lib64/ld.so"]
    assert not any(n.startswith("dev") for n in names)
    by_name = {m.name: m for m in members}
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0), m.name
        assert not (m.ischr() or m.isblk()), m.name
    assert by_name["lib64"].issym() and by_name["lib64"].linkname == "usr/lib64"
    assert by_name["tmp"].isdir() and by_name["tmp"].mode == 0o1777
    assert by_name["usr/bin/python3"].mode == 0o755
    assert by_name["usr/lib/ingot/__main__.py"].mode == 0o644
    assert data["usr/lib/ingot/__main__.py"] == b"print('hi')\n"


def test_the_same_entries_give_byte_identical_tars_and_a_change_changes_the_digests():
    first = build()
    assert build(list(reversed(ENTRIES))) == first
    changed = [*ENTRIES[:2], Entry("usr/lib/ingot/_ingot/plan.json", "file", 0o644, b"{ }"),
               *ENTRIES[3:]]
    assert build(changed) != first


def test_user_cmd_ports_and_tag_are_written_when_given():
    _, files = read(build(user="65534:65534", cmd=["--port", "5300"],
                          exposed_ports=["5300/udp", "5300/tcp"], tag="v1"))
    index = json.loads(files["index.json"])
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    manifest = json.loads(blob(files, index["manifests"][0]))
    config = json.loads(blob(files, manifest["config"]))["config"]
    assert config["User"] == "65534:65534" and config["Cmd"] == ["--port", "5300"]
    assert config["ExposedPorts"] == {"5300/tcp": {}, "5300/udp": {}}


def write(tmp_path: Path, entries=ENTRIES) -> Path:
    out = tmp_path / "demo-oci.tar"
    oci.write_oci(entries, out, name="demo-oci", entrypoint=ENTRY, architecture="amd64")
    return out


def test_write_oci_replaces_the_file_atomically_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "demo-oci.tar"
    out.write_bytes(b"old")
    assert write(tmp_path).read_bytes() == build()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-oci.tar"]


@pytest.mark.parametrize("bad", [
    Entry("/usr/bin/x", "file", 0o644), Entry("usr/../etc/passwd", "file", 0o644),
    Entry("usr/fifo", "fifo", 0o644),
])
def test_a_bad_entry_is_refused_and_nothing_is_written(tmp_path, bad):
    with pytest.raises(ValueError):
        write(tmp_path, [*ENTRIES, bad])
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_a_folder_is_needed_is_refused():
    with pytest.raises(ValueError, match="not a folder"):
        build([Entry("usr", "file", 0o644, b"x"), Entry("usr/bin/y", "file", 0o644)])


def test_an_empty_entry_point_is_refused():
    with pytest.raises(ValueError, match="entry point"):
        oci.layout(ENTRIES, name="x", entrypoint=[], architecture="amd64")
