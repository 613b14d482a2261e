"""TLS for the control channel: OpenSSL through pyOpenSSL, over memory buffers, sans-I/O.

OpenVPN 2.6 derives data keys with the TLS keying-material exporter (RFC 5705, label
``EXPORTER-OpenVPN-datakeys``) when both ends agree on ``tls-ekm``. CPython's ``ssl`` has no
exporter, so a key state's TLS session is a pyOpenSSL ``Connection`` with no socket: bytes from
the peer go in with :meth:`TlsSession.feed`, bytes for the peer come out of
:meth:`TlsSession.pending`, and nothing here touches a clock, a socket or a file after the
:class:`TlsConfig` is built.

Errors are ours, not pyOpenSSL's: :class:`TlsVerifyFailed` (the peer's certificate was
rejected; ``message`` is OpenSSL's verify message, e.g. ``certificate revoked``),
:class:`TlsClosed` (the peer sent close_notify) and :class:`TlsFailure` (anything else, e.g. an
alert from the peer). "Not done yet, feed me more" is not an error: :meth:`TlsSession.handshake`
returns False and :meth:`TlsSession.read` returns ``b""``.
"""

from __future__ import annotations

from OpenSSL import SSL

__all__ = ["TlsConfig", "TlsSession", "TlsFailure", "TlsVerifyFailed", "TlsClosed",
           "EKM_LABEL", "verify_message"]

EKM_LABEL = b"EXPORTER-OpenVPN-datakeys"

# OpenSSL's X509_verify_cert_error_string() for the codes a VPN peer meets (x509_vfy.h values)
_VERIFY_MESSAGES = {
    2: "unable to get issuer certificate",
    3: "unable to get certificate CRL",
    4: "unable to decrypt certificate's signature",
    6: "unable to decode issuer public key",
    7: "certificate signature failure",
    8: "CRL signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    11: "CRL is not yet valid",
    12: "CRL has expired",
    13: "format error in certificate's notBefore field",
    14: "format error in certificate's notAfter field",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "invalid CA certificate",
    25: "path length constraint exceeded",
    26: "unsupported certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
    32: "key usage does not include certificate signing",
    35: "key usage does not include CRL signing",
}


def verify_message(errnum: int) -> str:
    return _VERIFY_MESSAGES.get(errnum, f"X509 verify error {errnum}")


class TlsFailure(Exception):
    """The TLS session cannot go on (``str(e)`` says why)."""


class TlsVerifyFailed(TlsFailure):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TlsClosed(TlsFailure):
    pass


def _reason(e: SSL.Error) -> str:
    parts = e.args[0] if e.args and isinstance(e.args[0], list) else []
    reasons = [p[-1] for p in parts if isinstance(p, tuple) and p and p[-1]]
    return "; ".join(reasons) or str(e) or type(e).__name__


def _verify(conn: SSL.Connection, cert, errnum: int, depth: int, ok: int) -> bool:
    if not ok:
        session = conn.get_app_data()
        if session is not None and session.verify_error is None:
            session.verify_error = errnum
    return bool(ok)


class TlsConfig:
    """What every key state's TLS session of one endpoint shares: certificate, key, CA, CRL,
    TLS 1.2 at least (or 1.3: ``min_version``), the peer's certificate required and verified. Build it once (it reads
    the PEM data through memory files); :meth:`session` is cheap."""

    def __init__(self, *, server: bool, cert_pem: str, key_pem: str, ca_pem: str,
                 crl_pem: str | None = None, min_version: str = "1.2") -> None:
        from ingot.plugins.tls.context import private_file

        self.server = server
        ctx = SSL.Context(SSL.TLS_METHOD)
        versions = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
        if min_version not in versions:
            raise ValueError(f"TLS minimum version {min_version!r} (1.2 or 1.3)")
        ctx.set_min_proto_version(versions[min_version])
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        try:
            with private_file(cert_pem.rstrip("\n").encode() + b"\n") as path:
                ctx.use_certificate_chain_file(path)
        except SSL.Error as e:
            raise ValueError(f"cannot load the certificate: {_reason(e)}") from None
        try:
            with private_file(key_pem.encode()) as path:
                ctx.use_privatekey_file(path)
            ctx.check_privatekey()
        except SSL.Error as e:
            raise ValueError(f"cannot load the private key: {_reason(e)}") from None
        try:
            with private_file(ca_pem.encode()) as path:
                ctx.load_verify_locations(path)
        except SSL.Error as e:
            raise ValueError(f"cannot load the CA certificates: {_reason(e)}") from None
        if crl_pem:
            try:  # the file lookup takes CRLs as well as certificates
                with private_file(crl_pem.encode()) as path:
                    ctx.load_verify_locations(path)
            except SSL.Error as e:
                raise ValueError(f"cannot load the CRL: {_reason(e)}") from None
            from OpenSSL.crypto import X509StoreFlags
            ctx.get_cert_store().set_flags(X509StoreFlags.CRL_CHECK)
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if server else 0)
        ctx.set_verify(mode, _verify)
        self._ctx = ctx

    def session(self) -> TlsSession:
        return TlsSession(self._ctx, self.server)


class TlsSession:
    """One TLS session over memory buffers (see the module docstring)."""

    def __init__(self, ctx: SSL.Context, server: bool) -> None:
        self.verify_error: int | None = None
        self._conn = SSL.Connection(ctx, None)
        self._conn.set_app_data(self)
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self.done = False

    def feed(self, data: bytes) -> None:
        """Bytes from the peer."""
        if data:  # an empty write is an error to OpenSSL's BIO
            try:
                self._conn.bio_write(data)
            except SSL.Error as e:
                self._raise(e)

    def pending(self) -> bytes:
        """Bytes for the peer (b"" when none)."""
        out = []
        while True:
            try:
                chunk = self._conn.bio_read(1 << 16)
            except SSL.Error:  # WantReadError: nothing buffered
                break
            if not chunk:
                break
            out.append(chunk)
        return b"".join(out)

    def _raise(self, e: SSL.Error):
        if isinstance(e, SSL.ZeroReturnError):
            raise TlsClosed("the peer closed the TLS session") from None
        if self.verify_error is not None:
            raise TlsVerifyFailed(verify_message(self.verify_error)) from None
        raise TlsFailure(_reason(e)) from None

    def handshake(self) -> bool:
        """Go on with the handshake: True once it is complete."""
        if self.done:
            return True
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as e:
            self._raise(e)
        self.done = True
        return True

    def read(self) -> bytes:
        """Application data that has arrived (b"" when none yet)."""
        out = []
        while True:
            try:
                chunk = self._conn.recv(1 << 16)
            except SSL.WantReadError:
                break
            except SSL.Error as e:
                if out:  # hand out what came before the close; the error comes next time
                    break
                self._raise(e)
            if not chunk:
                break
            out.append(chunk)
        return b"".join(out)

    def write(self, data: bytes) -> None:
        try:
            self._conn.sendall(data)
        except SSL.Error as e:
            self._raise(e)

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate, DER (None before the handshake or without one)."""
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        if cert is None:
            return None
        from cryptography.hazmat.primitives.serialization import Encoding
        return cert.public_bytes(Encoding.DER)

    def export_keying_material(self, label: bytes = EKM_LABEL, size: int = 256) -> bytes:
        """RFC 5705 keying material, no context (what OpenVPN's tls-ekm asks of OpenSSL)."""
        if not self.done:
            raise TlsFailure("no keying material before the handshake is complete")
        return self._conn.export_keying_material(label, size)
