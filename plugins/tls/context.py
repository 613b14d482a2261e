"""Building ``ssl.SSLContext`` objects from TLS configs, from bytes only.

``ssl`` loads a certificate chain and key only from a file. The PEM bytes go
to a memory-backed file (``memfd_create``, read back through
``/proc/self/fd``) where the kernel has one, else to a ``0600`` temporary file
that is removed right after loading. Trust anchors load from memory
(``cadata``). Contexts are kept per config, since loading keys and
certificates costs far more than a handshake's setup.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Hashable, Iterator

from ingot.signatures import TlsClientConfig, TlsError, TlsServerConfig

CACHE_SIZE = 32
"""Contexts kept; the oldest is dropped beyond that."""


def _version(name: str) -> ssl.TLSVersion:
    try:
        return ssl.TLSVersion[name.replace(".", "_")]
    except KeyError:
        raise TlsError(f"unknown TLS version {name!r} (use TLSv1.2 or TLSv1.3)") from None


def reason(exc: ssl.SSLError) -> str:
    """A readable reason for an ``ssl`` error (what :class:`TlsError` carries)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return "the peer closed the connection during the handshake"
    if exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextlib.contextmanager
def private_file(data: bytes, *, memfd: bool = True) -> Iterator[str]:
    """A path whose contents are ``data``, readable only by this process, gone afterwards."""
    if memfd and hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("ingot-tls", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"  # opening it reads the memory file from the start
        finally:
            os.close(fd)
        return
    import tempfile  # only here: it pulls in shutil and random

    fd, path = tempfile.mkstemp(prefix="ingot-tls-")  # mode 0600
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def load_chain(ctx: ssl.SSLContext, chain: bytes, key: bytes) -> None:
    """Load a PEM certificate chain and its PEM private key into ``ctx``."""
    with private_file(chain.rstrip(b"\n") + b"\n" + key) as path:
        try:
            ctx.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise TlsError(f"cannot load the certificate chain and key: {reason(exc)}") from None
        except (OSError, ValueError) as exc:
            raise TlsError(f"cannot load the certificate chain and key: {exc}") from None


def server_context(config: TlsServerConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _version(config.minimum_version)
    load_chain(ctx, config.certificate_chain, config.private_key)
    if config.alpn:
        ctx.set_alpn_protocols(list(config.alpn))
    return ctx


def client_context(config: TlsClientConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.verify:
        try:
            if config.ca_certificates is not None:
                ctx.load_verify_locations(cadata=config.ca_certificates.decode("ascii"))
            else:
                ctx.load_default_certs()
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
            raise TlsError(f"cannot load the CA certificates: {exc}") from None
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if config.alpn:
        ctx.set_alpn_protocols(list(config.alpn))
    return ctx


class Contexts:
    """Server and client contexts by config, at most :data:`CACHE_SIZE` of them."""

    def __init__(self) -> None:
        self._cache: dict[Hashable, ssl.SSLContext] = {}

    def _get(self, key: Hashable, make) -> ssl.SSLContext:  # noqa: ANN001
        ctx = self._cache.get(key)
        if ctx is None:
            ctx = make()
            if len(self._cache) >= CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = ctx
        return ctx

    def server(self, config: TlsServerConfig) -> ssl.SSLContext:
        key = ("server", config.certificate_chain, config.private_key, tuple(config.alpn),
               config.minimum_version)
        return self._get(key, lambda: server_context(config))

    def client(self, config: TlsClientConfig) -> ssl.SSLContext:
        key = ("client", config.ca_certificates, config.verify, tuple(config.alpn))
        return self._get(key, lambda: client_context(config))

    def clear(self) -> None:
        self._cache.clear()
