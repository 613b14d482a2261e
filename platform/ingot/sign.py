"""Signed images: ``ingot keygen``, ``ingot sign``, ``ingot verify``.

What is signed is a *statement*: canonical JSON (sorted keys, no spaces,
UTF-8) naming the image, every file it covers with its size and sha256, and
the sha256 of its contents listing::

    {"contents": {"path": "dns-unix.contents.json", "sha256": "..."},
     "files": [{"path": "dns-unix.contents.json", "sha256": "...", "size": 4711},
               {"path": "dns-unix.pyz", "sha256": "...", "size": 1234567}],
     "image": "dns-unix.pyz", "layout": "file", "type": "ingot-image-statement/1"}

An image is laid out in one of two ways:

* ``file``: one file (``<name>-unix.pyz``, ``<name>-oci.tar``) with its
  contents listing ``<stem>.contents.json`` beside it. Both are covered, by
  their names in the image's folder; the signature is ``<image>.sig``.
* ``folder``: a folder (``<name>-vm/``, ``<name>-qubes/``). Every regular file
  in it is covered by its ``/``-separated path inside the folder, except the
  signature itself, ``<folder>/signature.json``; the contents listing is
  ``contents.json`` when the folder has one.

The signature file is JSON: the statement, the algorithm (``ed25519``), the
signer's public key (base64 of its 32 raw bytes), its key id (the first 16
hex digits of the sha256 of those bytes) and the base64 signature over the
canonical statement. Ed25519 is deterministic, so signing the same image with
the same key twice gives the same file.

Verifying trusts only the keys it is given: the public key inside the
signature file says who claims to have signed, never who is trusted. It
checks the signature over the statement with the trusted key, then hashes
every file again and compares.

The pure part (statements, envelopes, comparisons) takes and returns plain
data; only the functions at the bottom touch files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import IngotError

ALGORITHM = "ed25519"
FORMAT = "ingot-signature/1"
STATEMENT_TYPE = "ingot-image-statement/1"
FOLDER_SIGNATURE = "signature.json"
FOLDER_CONTENTS = "contents.json"
SIG_SUFFIX = ".sig"
CONTENTS_SUFFIX = ".contents.json"
PUBLIC_SUFFIX = ".pub"

TrustedKey = str | os.PathLike | Ed25519PublicKey | bytes


# --------------------------------------------------------------------------
# errors


class SignatureError(IngotError):
    """An image's signature is missing, malformed, untrusted or does not match."""


class SignatureMissing(SignatureError):
    """The image has no signature file."""


class SignatureMalformed(SignatureError):
    """The signature file is not an Ingot signature (bad JSON, fields, algorithm)."""


class BadSignature(SignatureError):
    """The signature does not verify over its statement with the trusted key."""


class UnknownKey(SignatureError):
    """The image was signed by a key that is not among the trusted ones."""


class FileChanged(SignatureError):
    """A covered file's bytes differ from what was signed."""

    def __init__(self, path: str, expected: str, actual: str, message: str,
                 hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.path, self.expected, self.actual = path, expected, actual


class FileAdded(SignatureError):
    """A file is in the image that the signature does not cover."""

    def __init__(self, path: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.path = path


class FileMissing(SignatureError):
    """A file the signature covers is no longer there."""

    def __init__(self, path: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.path = path


class KeyFileError(SignatureError):
    """A key file is missing, unreadable, of the wrong kind, or would be overwritten."""


# --------------------------------------------------------------------------
# the pure part: statements and envelopes


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | bytes) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    raw = key if isinstance(key, bytes) else raw_public(key)
    return hashlib.sha256(raw).hexdigest()[:16]


def make_statement(image: str, layout: str, files: Iterable[dict[str, Any]],
                   contents: str | None) -> dict[str, Any]:
    """The statement for ``image`` whose covered ``files`` are ``{path, size, sha256}``.

    ``contents`` is the path (among ``files``) of the contents listing, or None.
    """
    entries = sorted(({"path": f["path"], "size": int(f["size"]), "sha256": f["sha256"]}
                      for f in files), key=lambda f: f["path"])
    listing = None
    if contents is not None:
        match = [f for f in entries if f["path"] == contents]
        if not match:
            raise ValueError(f"contents listing {contents!r} is not among the files")
        listing = {"path": contents, "sha256": match[0]["sha256"]}
    return {"type": STATEMENT_TYPE, "image": image, "layout": layout,
            "contents": listing, "files": entries}


def canonical(statement: dict[str, Any]) -> bytes:
    """The bytes that are signed: JSON with sorted keys, no spaces, UTF-8."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def make_envelope(statement: dict[str, Any], private: Ed25519PrivateKey) -> dict[str, Any]:
    """The content of a signature file: ``statement`` signed by ``private``."""
    public = raw_public(private.public_key())
    return {
        "format": FORMAT,
        "algorithm": ALGORITHM,
        "key_id": key_id(public),
        "public_key": base64.b64encode(public).decode("ascii"),
        "signature": base64.b64encode(private.sign(canonical(statement))).decode("ascii"),
        "statement": statement,
    }


def dump_envelope(envelope: dict[str, Any]) -> bytes:
    return (json.dumps(envelope, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def parse_envelope(data: bytes, where: str) -> dict[str, Any]:
    """Check a signature file's shape; returns it with ``public_key``/``signature`` decoded."""
    def bad(why: str) -> SignatureMalformed:
        return SignatureMalformed(f"{where} is not an Ingot signature ({why})",
                                  hint="sign the image again with 'ingot sign IMAGE --key KEY'")
    try:
        env = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"not JSON: {exc}") from None
    if not isinstance(env, dict):
        raise bad("not a JSON object")
    if env.get("format") != FORMAT:
        raise bad(f"format {env.get('format')!r}, expected {FORMAT!r}")
    if env.get("algorithm") != ALGORITHM:
        raise bad(f"algorithm {env.get('algorithm')!r}, expected {ALGORITHM!r}")
    try:
        public = base64.b64decode(env["public_key"], validate=True)
        signature = base64.b64decode(env["signature"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise bad(f"public_key or signature: {exc}") from None
    if len(public) != 32 or len(signature) != 64:
        raise bad("public_key must be 32 bytes and signature 64 bytes")
    if env.get("key_id") != key_id(public):
        raise bad("key_id does not belong to public_key")
    st = env.get("statement")
    if not (isinstance(st, dict) and st.get("type") == STATEMENT_TYPE
            and isinstance(st.get("files"), list)
            and all(isinstance(f, dict) and {"path", "size", "sha256"} <= f.keys()
                    for f in st["files"])):
        raise bad("no valid statement")
    return {**env, "public_key": public, "signature": signature}


def check_envelope(env: dict[str, Any], trusted: list[Ed25519PublicKey]) -> str:
    """Check the signature of a parsed envelope with one of the ``trusted`` keys.

    Returns the signer's key id. The envelope's own public key only picks which
    trusted key to use: a key that is not trusted raises :class:`UnknownKey`.
    """
    by_raw = {raw_public(k): k for k in trusted}
    key = by_raw.get(env["public_key"])
    if key is None:
        known = ", ".join(sorted(key_id(r) for r in by_raw)) or "none"
        raise UnknownKey(f"signed by key {env['key_id']}, which is not trusted "
                         f"(trusted: {known})",
                         hint="give the signer's public key with --key, after checking "
                              "where it comes from")
    try:
        key.verify(env["signature"], canonical(env["statement"]))
    except InvalidSignature:
        raise BadSignature(f"bad signature: the statement signed as key {env['key_id']} "
                           "does not verify (the signature file was altered)",
                           hint="get the image and its signature again from the signer") from None
    return env["key_id"]


def compare(signed: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise for the first difference between a signed and a current statement.

    Changed files come first, then missing, then added ones; the message says
    how many more differences there are.
    """
    rebuild = "the image differs from what was signed: rebuild it or get it again, then verify"
    old = {f["path"]: f for f in signed["files"]}
    new = {f["path"]: f for f in current["files"]}
    problems: list[SignatureError] = []
    for path in sorted(old.keys() & new.keys()):
        a, b = old[path], new[path]
        if a["sha256"] != b["sha256"] or a["size"] != b["size"]:
            problems.append(FileChanged(
                path, a["sha256"], b["sha256"],
                f"file changed: {path} (signed sha256 {a['sha256']}, size {a['size']}; "
                f"now sha256 {b['sha256']}, size {b['size']})", hint=rebuild))
    for path in sorted(old.keys() - new.keys()):
        problems.append(FileMissing(path, f"file missing: {path} is signed but not there",
                                    hint=rebuild))
    for path in sorted(new.keys() - old.keys()):
        problems.append(FileAdded(path, f"file added: {path} is not covered by the signature",
                                  hint=rebuild))
    if not problems and signed != current:
        problems.append(BadSignature(
            f"the signed statement is for image {signed.get('image')!r} "
            f"({signed.get('layout')}), this is {current['image']!r} ({current['layout']})",
            hint="verify the image the signature was made for"))
    if problems:
        first = problems[0]
        if len(problems) > 1:
            first.message += f" (and {len(problems) - 1} more differences)"
            first.args = (first.message,)
        raise first


# --------------------------------------------------------------------------
# files: layouts, keys, sign, verify


@dataclass(frozen=True)
class Layout:
    """Where an image's covered files and its signature are."""

    image: Path
    kind: str          # "file" or "folder"
    root: Path         # paths in the statement are relative to this folder
    signature: Path
    contents: str | None  # path of the contents listing, relative to root

    def files(self) -> list[str]:
        """The covered files' paths relative to ``root``, sorted."""
        if self.kind == "file":
            names = [self.image.name] + ([self.contents] if self.contents else [])
            return sorted(names)
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in dirnames + filenames:
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix()
                if full.is_symlink() or not (full.is_dir() or full.is_file()):
                    raise SignatureError(f"{full} is not a regular file or folder",
                                         hint="an image folder holds regular files only")
                if name in filenames and rel != FOLDER_SIGNATURE:
                    found.append(rel)
        return sorted(found)


def layout(image: str | os.PathLike) -> Layout:
    """How ``image`` (a file or a folder) is laid out; raises if it is not there."""
    path = Path(image)
    if path.is_dir():
        contents = FOLDER_CONTENTS if (path / FOLDER_CONTENTS).is_file() else None
        return Layout(path, "folder", path, path / FOLDER_SIGNATURE, contents)
    if not path.is_file():
        raise SignatureError(f"no image at {path}",
                             hint="give an image file (images/NAME-unix.pyz) or folder "
                                  "(images/NAME-vm)")
    if path.name.endswith(SIG_SUFFIX):
        raise SignatureError(f"{path} is a signature, not an image",
                             hint=f"give the image itself: {path.with_suffix('')}")
    if path.name.endswith(CONTENTS_SUFFIX):
        stem = path.name.removesuffix(CONTENTS_SUFFIX)
        raise SignatureError(f"{path} is a contents listing, not an image",
                             hint=f"give the image itself, e.g. {path.parent / stem}.pyz")
    contents = path.stem + CONTENTS_SUFFIX
    if not (path.parent / contents).is_file():
        raise SignatureError(f"{path} has no contents listing ({path.parent / contents})",
                             hint="rebuild the image with 'ingot build'")
    return Layout(path, "file", path.parent, path.parent / (path.name + SIG_SUFFIX), contents)


def signature_path(image: str | os.PathLike) -> Path:
    """Where the signature of ``image`` is (or would be)."""
    path = Path(image)
    if path.is_dir():
        return path / FOLDER_SIGNATURE
    return path.parent / (path.name + SIG_SUFFIX)


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def scan(lay: Layout) -> dict[str, Any]:
    """The statement for the image as its files are now."""
    files = []
    for rel in lay.files():
        size, sha = _hash_file(lay.root / rel)
        files.append({"path": rel, "size": size, "sha256": sha})
    return make_statement(lay.image.name, lay.kind, files, lay.contents)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def generate_key(path: str | os.PathLike, *, force: bool = False) -> KeyPair:
    """Write a new private key to ``path`` (PEM PKCS8, mode 0600) and its public key to
    ``path.pub`` (PEM SubjectPublicKeyInfo). Refuses to overwrite unless ``force``."""
    private_path = Path(path)
    public_path = Path(str(private_path) + PUBLIC_SUFFIX)
    if not force:
        for p in (private_path, public_path):
            if p.exists():
                raise KeyFileError(f"{p} exists; not overwriting a key",
                                   hint="choose another path, or give --force to replace it")
    if not private_path.parent.is_dir():
        raise KeyFileError(f"no folder {private_path.parent} for the key")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_atomic(private_path, pem, 0o600)
    _write_atomic(public_path, pub, 0o644)
    return KeyPair(private_path, public_path, key_id(private.public_key()))


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"no {what} key at {path}",
                           hint="make a key pair with 'ingot keygen PATH'") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} key {path}: {exc.strerror}") from None


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    path = Path(path)
    data = _read_key_file(path, "private")
    if b"PRIVATE KEY" not in data:
        raise KeyFileError(f"{path} is not a private key",
                           hint="sign with the private key (PATH), not PATH.pub")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path} is encrypted; Ingot reads unencrypted PKCS8 keys",
                           hint="keep the key on an encrypted disk or token instead") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key",
                           hint="make one with 'ingot keygen PATH'")
    return key


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """A public key file: PEM (as ``ingot keygen`` writes) or base64 of the raw 32 bytes."""
    path = Path(path)
    data = _read_key_file(path, "public")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path} is a private key; verify with the public key",
                           hint=f"give {path}{PUBLIC_SUFFIX}, and keep {path} secret")
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"{path} is not a readable PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path} is not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise KeyFileError(f"{path} is neither a PEM public key nor base64 of 32 raw bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def _trusted(keys: TrustedKey | Iterable[TrustedKey]) -> list[Ed25519PublicKey]:
    if isinstance(keys, (str, os.PathLike, Ed25519PublicKey, bytes)):
        keys = [keys]
    out = []
    for k in keys:
        if isinstance(k, Ed25519PublicKey):
            out.append(k)
        elif isinstance(k, bytes):
            out.append(Ed25519PublicKey.from_public_bytes(k))
        else:
            out.append(load_public_key(k))
    return out


def sign(image_path: str | os.PathLike, private_key_path: str | os.PathLike) -> Path:
    """Sign the image (file or folder); returns the signature file's path."""
    lay = layout(image_path)
    private = load_private_key(private_key_path)
    _write_atomic(lay.signature, dump_envelope(make_envelope(scan(lay), private)), 0o644)
    return lay.signature


@dataclass(frozen=True)
class VerifyResult:
    key_id: str
    files: int
    signature: Path
    statement: dict[str, Any]


def _read_envelope(lay: Layout) -> dict[str, Any]:
    try:
        data = lay.signature.read_bytes()
    except FileNotFoundError:
        raise SignatureMissing(f"{lay.image} is not signed (no {lay.signature})",
                               hint=f"sign it with 'ingot sign {lay.image} --key PRIVATE', "
                                    "or get the signature from who built it") from None
    except OSError as exc:
        raise SignatureMalformed(f"cannot read {lay.signature}: {exc.strerror}") from None
    return parse_envelope(data, str(lay.signature))


def verify(image_path: str | os.PathLike,
           trusted: TrustedKey | Iterable[TrustedKey]) -> VerifyResult:
    """Check the image's signature with the ``trusted`` key(s), then every file's hash.

    ``trusted`` is a public key file path, a key, raw key bytes, or a list of them.
    Raises a :class:`SignatureError` subclass naming what is wrong.
    """
    lay = layout(image_path)
    keys = _trusted(trusted)
    env = _read_envelope(lay)
    kid = check_envelope(env, keys)
    compare(env["statement"], scan(lay))
    return VerifyResult(kid, len(env["statement"]["files"]), lay.signature, env["statement"])


def signature_state(image_path: str | os.PathLike) -> str:
    """One line for ``ingot inspect``: ``none``, ``key <id>, valid ...`` or ``INVALID (...)``.

    This checks the signature against the key embedded in the signature file
    (so it says nothing about who signed) and every file's hash.
    """
    if not signature_path(image_path).exists():
        return "none"
    try:
        lay = layout(image_path)
        env = _read_envelope(lay)
        kid = check_envelope(env, [Ed25519PublicKey.from_public_bytes(env["public_key"])])
        compare(env["statement"], scan(lay))
    except SignatureError as exc:
        return f"INVALID ({exc.message})"
    return (f"key {kid}, valid for current files "
            "(not checked against a trusted key; use ingot verify)")
