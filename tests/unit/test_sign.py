"""The pure part of image signing: statements, envelopes, comparisons (no files)."""

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ingot import sign

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def _files(**blobs: bytes) -> list[dict]:
    return [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for p, b in blobs.items()]


def _statement(image: bytes = b"image", listing: bytes = b"{}") -> dict:
    files = [*_files(x=image), *_files(x=listing)]
    files[0]["path"], files[1]["path"] = "dns-unix.pyz", "dns-unix.contents.json"
    return sign.make_statement("dns-unix.pyz", "file", files, "dns-unix.contents.json")


def _parsed(env: dict) -> dict:
    return sign.parse_envelope(sign.dump_envelope(env), "test.sig")


def test_statement_names_image_files_and_contents_listing_sorted():
    st = _statement()
    assert st["type"] == sign.STATEMENT_TYPE and st["image"] == "dns-unix.pyz"
    assert st["layout"] == "file"
    assert [f["path"] for f in st["files"]] == ["dns-unix.contents.json", "dns-unix.pyz"]
    assert st["files"][1] == {"path": "dns-unix.pyz", "size": 5,
                              "sha256": hashlib.sha256(b"image").hexdigest()}
    assert st["contents"] == {"path": "dns-unix.contents.json",
                              "sha256": hashlib.sha256(b"{}").hexdigest()}


def test_statement_needs_its_contents_listing_among_the_files():
    with pytest.raises(ValueError):
        sign.make_statement("x", "folder", _files(vmlinuz=b"k"), "contents.json")
    assert sign.make_statement("x", "folder", _files(vmlinuz=b"k"), None)["contents"] is None


def test_canonical_form_is_sorted_compact_utf8():
    data = sign.canonical({"b": 1, "a": "é"})
    assert data == '{"a":"é","b":1}'.encode("utf-8")
    assert sign.canonical(json.loads(data)) == data


def test_key_id_is_16_hex_of_the_raw_public_key_hash():
    raw = sign.raw_public(KEY.public_key())
    assert len(raw) == 32
    assert sign.key_id(KEY.public_key()) == hashlib.sha256(raw).hexdigest()[:16]
    assert sign.key_id(raw) == sign.key_id(KEY.public_key())


def test_envelope_is_deterministic_and_carries_key_and_algorithm():
    st = _statement()
    one, two = sign.make_envelope(st, KEY), sign.make_envelope(st, KEY)
    assert sign.dump_envelope(one) == sign.dump_envelope(two)
    assert one["algorithm"] == "ed25519" and one["format"] == sign.FORMAT
    assert base64.b64decode(one["public_key"]) == sign.raw_public(KEY.public_key())
    assert one["key_id"] == sign.key_id(KEY.public_key())
    KEY.public_key().verify(base64.b64decode(one["signature"]), sign.canonical(st))


def test_check_envelope_accepts_the_trusted_key():
    env = _parsed(sign.make_envelope(_statement(), KEY))
    assert sign.check_envelope(env, [OTHER.public_key(), KEY.public_key()]) == \
        sign.key_id(KEY.public_key())


def test_an_untrusted_key_is_unknown_even_if_embedded():
    env = _parsed(sign.make_envelope(_statement(), KEY))
    with pytest.raises(sign.UnknownKey) as exc:
        sign.check_envelope(env, [OTHER.public_key()])
    assert sign.key_id(KEY.public_key()) in exc.value.message
    assert sign.key_id(OTHER.public_key()) in exc.value.message
    with pytest.raises(sign.UnknownKey):
        sign.check_envelope(env, [])


def test_an_altered_statement_is_a_bad_signature():
    env = sign.make_envelope(_statement(), KEY)
    env["statement"]["files"][1]["sha256"] = "0" * 64
    with pytest.raises(sign.BadSignature):
        sign.check_envelope(_parsed(env), [KEY.public_key()])


def test_a_signature_by_another_key_under_the_trusted_key_name_is_bad():
    env = sign.make_envelope(_statement(), OTHER)
    trusted = sign.make_envelope(_statement(), KEY)
    env["public_key"], env["key_id"] = trusted["public_key"], trusted["key_id"]
    with pytest.raises(sign.BadSignature):
        sign.check_envelope(_parsed(env), [KEY.public_key()])


@pytest.mark.parametrize("edit, why", [
    (lambda e: e.update(algorithm="rsa"), "algorithm"),
    (lambda e: e.update(format="other/1"), "format"),
    (lambda e: e.update(key_id="0" * 16), "key_id"),
    (lambda e: e.update(signature="not base64!"), "signature"),
    (lambda e: e.update(public_key=base64.b64encode(b"short").decode()), "32 bytes"),
    (lambda e: e.pop("statement"), "statement"),
    (lambda e: e["statement"].update(files=[{"path": "x"}]), "statement"),
])
def test_malformed_envelopes_are_refused_with_a_reason(edit, why):
    env = sign.make_envelope(_statement(), KEY)
    edit(env)
    with pytest.raises(sign.SignatureMalformed) as exc:
        sign.parse_envelope(sign.dump_envelope(env), "x.sig")
    assert why in exc.value.message and "x.sig" in exc.value.message
    with pytest.raises(sign.SignatureMalformed):
        sign.parse_envelope(b"\xff not json", "x.sig")


def test_compare_names_the_changed_file_with_both_hashes():
    signed = _statement()
    now = _statement(image=b"imagE")
    with pytest.raises(sign.FileChanged) as exc:
        sign.compare(signed, now)
    err = exc.value
    assert err.path == "dns-unix.pyz"
    assert err.expected == hashlib.sha256(b"image").hexdigest() in err.message
    assert err.actual == hashlib.sha256(b"imagE").hexdigest() in err.message
    assert err.hint


def test_compare_reports_missing_and_added_files_and_counts_the_rest():
    signed = sign.make_statement("v", "folder", _files(vmlinuz=b"k", initramfs=b"i"), None)
    fewer = sign.make_statement("v", "folder", _files(vmlinuz=b"k"), None)
    more = sign.make_statement("v", "folder",
                               _files(vmlinuz=b"k", initramfs=b"i", extra=b"x"), None)
    with pytest.raises(sign.FileMissing) as exc:
        sign.compare(signed, fewer)
    assert exc.value.path == "initramfs"
    with pytest.raises(sign.FileAdded) as exc:
        sign.compare(signed, more)
    assert exc.value.path == "extra"
    both = sign.make_statement("v", "folder", _files(vmlinuz=b"K", other=b"o"), None)
    with pytest.raises(sign.FileChanged) as exc:
        sign.compare(signed, both)
    assert "(and 2 more differences)" in exc.value.message


def test_compare_refuses_a_statement_for_another_image():
    signed = sign.make_statement("a-vm", "folder", _files(vmlinuz=b"k"), None)
    other = sign.make_statement("b-vm", "folder", _files(vmlinuz=b"k"), None)
    sign.compare(signed, signed)
    with pytest.raises(sign.BadSignature) as exc:
        sign.compare(signed, other)
    assert "a-vm" in exc.value.message and "b-vm" in exc.value.message
