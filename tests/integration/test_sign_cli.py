"""Signed images end to end: keygen, sign, verify, inspect, tampering; file and folder images."""

import json
import stat

import pytest

from ingot import sign
from tests.conftest import ROOT, Cli


@pytest.fixture
def hello(cli: Cli):
    """A built hello unix image and a key pair in the CLI's working folder."""
    cli("configure", ROOT / "appliances" / "hello", "--target", "unix")
    cli("build", ROOT / "appliances" / "hello")
    cli("keygen", "signer")
    return cli.image("hello-unix")


def _fails(cli: Cli, *args) -> str:
    res = cli(*args, check=False)
    assert res.rc == 1, res.out + res.err
    assert "Traceback" not in res.err
    lines = res.err.splitlines()
    assert lines[0].startswith("ingot: error: ") and lines[1].startswith("hint: ")
    return lines[0]


def _signature_line(cli: Cli, image) -> str:
    out = cli("inspect", image, check=False).out  # a stand-in vm folder is no real image
    return next(line for line in out.splitlines() if line.startswith("signature: "))


def test_keygen_writes_a_private_key_0600_and_its_public_key(cli):
    res = cli("keygen", "k")
    priv, pub = cli.cwd / "k", cli.cwd / "k.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in priv.read_bytes()
    assert b"BEGIN PUBLIC KEY" in pub.read_bytes()
    kid = sign.key_id(sign.load_public_key(pub))
    assert kid in res.out
    assert sign.key_id(sign.load_private_key(priv).public_key()) == kid


def test_keygen_refuses_to_overwrite_unless_forced(cli):
    cli("keygen", "k")
    before = (cli.cwd / "k").read_bytes()
    assert "exists" in _fails(cli, "keygen", "k")
    assert (cli.cwd / "k").read_bytes() == before
    cli("keygen", "k", "--force")
    assert (cli.cwd / "k").read_bytes() != before
    assert stat.S_IMODE((cli.cwd / "k").stat().st_mode) == 0o600


def test_sign_and_verify_a_unix_image(cli, hello):
    kid = sign.key_id(sign.load_public_key(cli.cwd / "signer.pub"))
    res = cli("sign", hello, "--key", "signer")
    sig = cli.cwd / "images" / "hello-unix.pyz.sig"
    assert sig.is_file() and str(sig.relative_to(cli.cwd)) in res.out
    res = cli("verify", hello, "--key", "signer.pub")
    assert res.out.strip() == f"signature good: key {kid}, 2 files"
    env = json.loads(sig.read_text())
    assert env["algorithm"] == "ed25519" and env["key_id"] == kid
    st = env["statement"]
    assert st["image"] == "hello-unix.pyz" and st["layout"] == "file"
    assert [f["path"] for f in st["files"]] == ["hello-unix.contents.json", "hello-unix.pyz"]
    assert st["contents"]["path"] == "hello-unix.contents.json"


def test_signing_twice_gives_identical_signature_files(cli, hello):
    cli("sign", hello, "--key", "signer")
    sig = cli.cwd / "images" / "hello-unix.pyz.sig"
    first = sig.read_bytes()
    cli("sign", hello, "--key", "signer")
    assert sig.read_bytes() == first
    # a rebuild is byte-identical, so the old signature still holds
    cli("build", ROOT / "appliances" / "hello")
    cli("verify", hello, "--key", "signer.pub")


def test_a_flipped_byte_in_the_image_fails_naming_the_file(cli, hello):
    cli("sign", hello, "--key", "signer")
    data = bytearray(hello.read_bytes())
    data[len(data) // 2] ^= 0x01
    hello.write_bytes(bytes(data))
    line = _fails(cli, "verify", hello, "--key", "signer.pub")
    assert "file changed: hello-unix.pyz" in line
    env = json.loads((cli.cwd / "images" / "hello-unix.pyz.sig").read_text())
    signed = {f["path"]: f["sha256"] for f in env["statement"]["files"]}
    assert signed["hello-unix.pyz"] in line
    assert sign.scan(sign.layout(hello))["files"][1]["sha256"] in line
    assert _signature_line(cli, hello).startswith("signature: INVALID (file changed: "
                                                  "hello-unix.pyz")


def test_an_edited_contents_listing_fails(cli, hello):
    cli("sign", hello, "--key", "signer")
    listing = cli.cwd / "images" / "hello-unix.contents.json"
    data = json.loads(listing.read_text())
    data["files"] = data["files"][1:]
    listing.write_text(json.dumps(data, sort_keys=True, indent=1) + "\n")
    assert "file changed: hello-unix.contents.json" in _fails(
        cli, "verify", hello, "--key", "signer.pub")
    listing.unlink()
    assert "no contents listing" in _fails(cli, "verify", hello, "--key", "signer.pub")


def test_a_wrong_public_key_is_an_unknown_key(cli, hello):
    cli("sign", hello, "--key", "signer")
    cli("keygen", "stranger")
    line = _fails(cli, "verify", hello, "--key", "stranger.pub")
    assert "not trusted" in line
    # several trusted keys: one of them is enough
    cli("verify", hello, "--key", "stranger.pub", "--key", "signer.pub")


def test_an_altered_signature_file_is_bad(cli, hello):
    cli("sign", hello, "--key", "signer")
    sig = cli.cwd / "images" / "hello-unix.pyz.sig"
    env = json.loads(sig.read_text())
    env["statement"]["image"] = "other-unix.pyz"
    sig.write_text(json.dumps(env))
    assert "bad signature" in _fails(cli, "verify", hello, "--key", "signer.pub")
    sig.write_text("{not json")
    assert "not an Ingot signature" in _fails(cli, "verify", hello, "--key", "signer.pub")
    assert _signature_line(cli, hello).startswith("signature: INVALID (")


def test_missing_signature_and_missing_keys_are_clear_errors(cli, hello):
    line = _fails(cli, "verify", hello, "--key", "signer.pub")
    assert "is not signed" in line and "hello-unix.pyz.sig" in line
    assert "no public key at nothing.pub" in _fails(cli, "verify", hello, "--key",
                                                    "nothing.pub")
    assert "no private key at nothing" in _fails(cli, "sign", hello, "--key", "nothing")
    assert "is a private key" in _fails(cli, "verify", hello, "--key", "signer")
    assert "not a private key" in _fails(cli, "sign", hello, "--key", "signer.pub")
    assert "no image at" in _fails(cli, "sign", "images/nothing.pyz", "--key", "signer")
    assert not (cli.cwd / "images" / "hello-unix.pyz.sig").exists()


def test_inspect_shows_each_signature_state(cli, hello):
    assert _signature_line(cli, hello) == "signature: none"
    cli("sign", hello, "--key", "signer")
    kid = sign.key_id(sign.load_public_key(cli.cwd / "signer.pub"))
    assert _signature_line(cli, hello) == (
        f"signature: key {kid}, valid for current files "
        "(not checked against a trusted key; use ingot verify)")
    data = json.loads(cli("inspect", "--json", hello).out)
    assert data["signature"].startswith(f"key {kid}, valid")
    (cli.cwd / "images" / "hello-unix.contents.json").write_text("{}\n")
    assert _signature_line(cli, hello).startswith(
        "signature: INVALID (file changed: hello-unix.contents.json")


def _vm_folder(cli: Cli):
    folder = cli.cwd / "images" / "demo-vm"
    (folder / "boot").mkdir(parents=True)
    (folder / "vmlinuz").write_bytes(b"\x7fkernel" * 100)
    (folder / "initramfs").write_bytes(b"\x1f\x8bcpio" * 100)
    (folder / "boot" / "cmdline").write_text("console=ttyS0\n")
    (folder / "contents.json").write_text('{"files": []}\n')
    return folder


def test_folder_image_sign_verify_tamper_add_and_remove(cli):
    cli("keygen", "signer")
    folder = _vm_folder(cli)
    assert _signature_line(cli, folder) == "signature: none"
    cli("sign", folder, "--key", "signer")
    sig = folder / "signature.json"
    env = json.loads(sig.read_text())
    assert [f["path"] for f in env["statement"]["files"]] == \
        ["boot/cmdline", "contents.json", "initramfs", "vmlinuz"]
    assert env["statement"]["layout"] == "folder"
    assert env["statement"]["image"] == "demo-vm"
    assert env["statement"]["contents"]["path"] == "contents.json"
    assert "4 files" in cli("verify", folder, "--key", "signer.pub").out
    assert "valid for current files" in _signature_line(cli, folder)
    first = sig.read_bytes()
    cli("sign", folder, "--key", "signer")
    assert sig.read_bytes() == first

    (folder / "extra").write_text("x")
    assert "file added: extra" in _fails(cli, "verify", folder, "--key", "signer.pub")
    (folder / "extra").unlink()
    (folder / "boot" / "cmdline").write_text("console=ttyS0 init=/bin/sh\n")
    assert "file changed: boot/cmdline" in _fails(cli, "verify", folder, "--key",
                                                  "signer.pub")
    assert _signature_line(cli, folder).startswith("signature: INVALID (file changed: "
                                                   "boot/cmdline")
    (folder / "boot" / "cmdline").write_text("console=ttyS0\n")
    cli("verify", folder, "--key", "signer.pub")
    (folder / "initramfs").unlink()
    assert "file missing: initramfs" in _fails(cli, "verify", folder, "--key", "signer.pub")


def test_folder_image_with_a_symlink_is_refused(cli):
    cli("keygen", "signer")
    folder = _vm_folder(cli)
    (folder / "link").symlink_to(cli.cwd / "signer")
    assert "not a regular file" in _fails(cli, "sign", folder, "--key", "signer")


def test_a_single_file_image_of_another_target_uses_its_stem_listing(tmp_path):
    """An oci tar with ``<stem>.contents.json`` beside it signs like a pyz."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "dns-oci.tar").write_bytes(b"tar" * 1000)
    (images / "dns-oci.contents.json").write_text("{}\n")
    pair = sign.generate_key(tmp_path / "k")
    path = sign.sign(images / "dns-oci.tar", pair.private)
    assert path == images / "dns-oci.tar.sig"
    result = sign.verify(images / "dns-oci.tar", pair.public)
    assert result.key_id == pair.key_id and result.files == 2
    assert sign.verify(images / "dns-oci.tar", [sign.load_public_key(pair.public)]).files == 2
    with pytest.raises(sign.SignatureError):
        sign.sign(images / "dns-oci.contents.json", pair.private)
    with pytest.raises(sign.SignatureError) as exc:
        sign.verify(images / "dns-oci.tar.sig", pair.public)
    assert exc.value.hint == f"give the image itself: {images / 'dns-oci.tar'}"
