"""Message authentication for the SMTP appliance: SPF (RFC 7208), DKIM
(RFC 6376, Ed25519 per RFC 8463), DMARC (RFC 7489) and the
``Authentication-Results`` header (RFC 8601).

SPF and DKIM are evaluated by pyspf and dkimpy; DMARC is written here from
RFC 7489. The libraries are synchronous and want to do their own DNS; here
they never touch the network. Each check runs them in a **replay** loop:

* the library gets a lookup function backed by a per-check dict;
* a lookup that is not in the dict raises :class:`_NeedLookup` (derived from
  ``BaseException``, so the libraries' ``except Exception`` cannot swallow it)
  carrying ``(name, type)``;
* the async wrapper catches it, asks the appliance's resolver
  (``await resolver.resolve(name, type)``), stores the answer (NXDOMAIN and
  NODATA as an empty list, a :class:`ResolveError` or an rcode other than
  NOERROR/NXDOMAIN as a temporary-failure marker that the lookup function
  turns into the library's own temporary DNS error) and runs the library
  again from the start;
* after :data:`MAX_ROUNDS` rounds the check gives up with ``temperror``.

The dict belongs to one check, so concurrent checks never share answers, and
no module global of either library is replaced. The library calls run on the
event loop thread: between lookups they only parse records and hash one
message (RSA verify is microseconds), which is cheaper than a hop to a
thread. Nothing here opens a socket or reads a clock of its own; time only
enters through the libraries (pyspf's ``%{t}`` macro, dkimpy's ``t=``/``x=``
checks).

Bad input (a garbage message, a malformed DKIM-Signature or DNS record)
never raises out of the ``check_*``/``verify_*`` functions: it becomes a
``permerror``/``fail``/``neutral`` result with a reason.

The organizational domain (RFC 7489 3.2) comes from the Public Suffix List
when the ``publicsuffixlist`` package is installed; otherwise it is the last
two labels of the name (right for ``example.com``, too short for names under
``co.uk``-style suffixes, which then align more strictly than they should).
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.utils
import email.policy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import dkim
import spf
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ingot.plugins.dns.stub import NOERROR, NXDOMAIN, ResolveError

__all__ = [
    "MAX_ROUNDS", "SIGNED_HEADERS", "SpfResult", "DkimResult", "DmarcResult", "DmarcRecord",
    "check_spf", "verify_dkim", "check_dmarc", "from_domain", "organizational_domain",
    "parse_dmarc", "authentication_results", "dkim_sign", "dkim_public_txt", "DkimSignError",
]

#: Most resolver round trips one check may need before it ends in temperror.
MAX_ROUNDS = 30
#: Per-lookup resolver timeout in seconds.
LOOKUP_TIMEOUT_S = 5.0
#: Header fields signed by :func:`dkim_sign` when present; From is oversigned.
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version",
    b"content-type", b"reply-to", b"in-reply-to", b"references",
)
MIN_RSA_BITS = 1024

T = TypeVar("T")


# --------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class SpfResult:
    """``result`` is one of pass, fail, softfail, neutral, none, temperror,
    permerror; ``domain`` the checked identity (the MAIL FROM domain, or the
    HELO name for a null sender); ``identity`` ``"mailfrom"`` or ``"helo"``."""

    result: str
    domain: str
    explanation: str = ""
    identity: str = "mailfrom"


@dataclass(frozen=True)
class DkimResult:
    """One DKIM-Signature's outcome: pass, fail, neutral, none, temperror or
    permerror; ``domain`` (d=), ``selector`` (s=) and ``header_b`` (the first
    eight characters of b=, RFC 6008) are empty when the signature did not
    parse that far."""

    result: str
    domain: str
    selector: str
    reason: str = ""
    header_b: str = ""


@dataclass(frozen=True)
class DmarcResult:
    """``result``: pass, fail, none, temperror, permerror. ``policy`` the
    policy that applies to the From domain (p=, or sp= for a subdomain) or
    None without a usable record; ``disposition`` what the receiver should
    do: ``"none"``, ``"quarantine"`` or ``"reject"``."""

    result: str
    policy: str | None
    domain: str | None
    disposition: str = "none"


@dataclass(frozen=True)
class DmarcRecord:
    """A parsed ``v=DMARC1`` record (RFC 7489 6.3); invalid optional tags
    are replaced by their defaults."""

    p: str
    sp: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


class DkimSignError(ValueError):
    """:func:`dkim_sign` cannot sign: the key or the message is unusable."""


# --------------------------------------------------------------------------
# the replay bridge


class _NeedLookup(BaseException):
    """Raised inside a library run for a lookup that is not answered yet."""

    def __init__(self, name: str, rtype: str) -> None:
        super().__init__(name, rtype)
        self.name = name
        self.rtype = rtype


class _TooManyRounds(Exception):
    pass


_TEMPFAIL = object()  # a lookup that failed for now


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


def _valid_name(name: str) -> bool:
    """A name the resolver can ask about: ASCII labels of 1..63 characters."""
    if not name or len(name) > 253:
        return False
    return all(0 < len(label) < 64 and label.isascii() and label.isprintable()
               and " " not in label for label in name.split("."))


class _Lookups:
    """The answers one check has got so far: ``(name, type) -> list | _TEMPFAIL``."""

    def __init__(self, resolver: Any) -> None:
        self.resolver = resolver
        self.answers: dict[tuple[str, str], Any] = {}
        self.missed: set[tuple[str, str]] = set()

    def get(self, name: str, rtype: str) -> Any:
        key = (_norm(name), rtype)
        if not _valid_name(key[0]):
            return []
        try:
            return self.answers[key]
        except KeyError:
            self.missed.add(key)  # in case the library swallows the exception
            raise _NeedLookup(*key) from None

    async def fill(self, name: str, rtype: str) -> list[object] | object:
        key = (name, rtype)
        if key in self.answers:
            return self.answers[key]
        try:
            answer = await self.resolver.resolve(name, rtype, timeout_s=LOOKUP_TIMEOUT_S)
        except ResolveError:
            value: Any = _TEMPFAIL
        else:
            if answer.rcode == NXDOMAIN:
                value = []
            elif answer.rcode != NOERROR:
                value = _TEMPFAIL
            else:
                value = list(answer.values)
        self.answers[key] = value
        return value


async def _replay(lookups: _Lookups, run: Callable[[], T],
                  follow: Callable[[str, str, Any], list[tuple[str, str]]] | None = None) -> T:
    """Run ``run`` until it needs no unanswered lookup. ``follow`` names
    lookups worth prefetching after an answer (the addresses of MX hosts)."""
    for _ in range(MAX_ROUNDS):
        lookups.missed.clear()
        try:
            result = run()
        except _NeedLookup as need:
            value = await lookups.fill(need.name, need.rtype)
            if follow is not None and value is not _TEMPFAIL:
                more = [(n, t) for n, t in follow(need.name, need.rtype, value)
                        if _valid_name(_norm(n))]
                await asyncio.gather(*(lookups.fill(_norm(n), t) for n, t in more))
            continue
        # A bare ``except:`` in the library (pyspf's exp= handling) may
        # have eaten a _NeedLookup: answer what it missed and run again.
        missed = [key for key in lookups.missed if key not in lookups.answers]
        if not missed:
            return result
        await asyncio.gather(*(lookups.fill(*key) for key in missed))
    raise _TooManyRounds(f"more than {MAX_ROUNDS} DNS round trips")


# --------------------------------------------------------------------------
# SPF


class _SpfQuery(spf.query):
    """pyspf's query with DNS answered from a :class:`_Lookups`."""

    def __init__(self, lookups: _Lookups, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lookups = lookups

    def dns(self, name, qtype, cnames=None, ignore_void=False):  # noqa: ANN001, ANN201
        if not name:
            raise spf.PermError("empty domain name in lookup")
        name = _norm(str(name))
        if not all(0 < len(label) < 64 for label in name.split(".")):
            return []  # as pyspf: an invalid name has no records
        value = self._lookups.get(name, qtype)
        if value is _TEMPFAIL:
            raise spf.TempError(f"DNS {qtype} lookup for {name} failed")
        result = list(value)
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


_SPF_RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror",
                          "permerror"})


def _spf_domain_ok(domain: str) -> bool:
    """RFC 7208 4.3: a malformed or single-label domain gives ``none``."""
    labels = domain.split(".")
    return len(labels) >= 2 and _valid_name(domain) and all(_LABEL.match(x) for x in labels)


async def check_spf(resolver: Any, ip: str, mail_from: str, helo: str) -> SpfResult:
    """SPF for the client ``ip`` and the MAIL FROM address (``""`` or ``"<>"``
    for the null sender, then the HELO identity is checked, RFC 7208 2.4).

    Never raises for bad input: an unusable client address gives permerror,
    an unusable domain ``none`` (RFC 7208 4.3).
    """
    mail_from = (mail_from or "").strip()
    if mail_from.startswith("<") and mail_from.endswith(">"):
        mail_from = mail_from[1:-1]
    helo = (helo or "").strip()
    identity = "mailfrom" if mail_from else "helo"
    domain = _norm(mail_from.rpartition("@")[2] if mail_from else helo)
    if not _spf_domain_ok(domain):
        return SpfResult("none", domain, "no valid domain to check", identity)
    lookups = _Lookups(resolver)
    family = "AAAA" if ":" in ip else "A"

    def run() -> tuple[str, int, str]:
        query = _SpfQuery(lookups, ip, mail_from, helo, strict=True)
        return query.check()

    def follow(name: str, rtype: str, value: Any) -> list[tuple[str, str]]:
        if rtype == "MX":
            return [(host, family) for _, host in sorted(value)[:spf.MAX_MX]]
        if rtype == "PTR":
            return [(host, family) for host in value[:spf.MAX_PTR]]
        return []

    try:
        result, _code, explanation = await _replay(lookups, run, follow)
    except _TooManyRounds as exc:
        return SpfResult("temperror", domain, str(exc), identity)
    except Exception as exc:  # pyspf on input it did not expect
        return SpfResult("permerror", domain, f"SPF evaluation failed: {exc}", identity)
    if result not in _SPF_RESULTS:
        result = "permerror"
    return SpfResult(result, domain, explanation, identity)


# --------------------------------------------------------------------------
# DKIM


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return "" if value is None else str(value)


def _pick_key(records: list[tuple[bytes, ...]]) -> bytes:
    """The key record among the TXT records at a selector name."""
    joined = [b"".join(strings) for strings in records]
    for text in joined:
        if text.lstrip().startswith(b"v=DKIM1"):
            return text
    return joined[0] if joined else b""


async def _verify_one(lookups: _Lookups, message: bytes, idx: int) -> DkimResult:
    seen: dict[str, Any] = {}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        qname = _text(name)
        value = lookups.get(qname, "TXT")
        seen["key"] = value
        if value is _TEMPFAIL:
            raise dkim.DnsTimeoutError(f"key lookup for {qname} failed")
        return _pick_key(value)

    def run() -> DkimResult:
        seen.clear()
        checker = dkim.DKIM(message, minkey=MIN_RSA_BITS)
        outcome = "permerror"
        reason = ""
        try:
            ok = checker.verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.NaClNotFoundError:
            outcome, reason = "neutral", "ed25519 keys need the pynacl package"
        except dkim.ValidationError as exc:
            text = str(exc)
            if "body hash mismatch" in text:
                outcome, reason = "fail", "body hash mismatch"
            else:
                reason = f"invalid signature: {text}"
        except dkim.DKIMException as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            key = seen.get("key")
            if ok:
                outcome = "pass"
            elif key is _TEMPFAIL:
                outcome, reason = "temperror", "key lookup failed"
            elif "key" in seen and not _pick_key(key):
                reason = "no key for signature"
            elif "key" in seen and _bad_key(key):
                reason = "unusable key record: " + _bad_key(key)
            else:
                outcome, reason = "fail", "signature did not verify"
        fields = getattr(checker, "signature_fields", None) or {}
        b = re.sub(rb"\s+", b"", fields.get(b"b", b""))[:8]
        return DkimResult(outcome, _text(fields.get(b"d")).lower(), _text(fields.get(b"s")),
                          reason, _text(b))

    try:
        return await _replay(lookups, run)
    except _TooManyRounds as exc:
        return DkimResult("temperror", "", "", str(exc))
    except Exception as exc:  # dkimpy on input it did not expect
        return DkimResult("permerror", "", "", f"DKIM evaluation failed: {exc!r}")


def _bad_key(records: list[tuple[bytes, ...]]) -> str:
    try:
        dkim.evaluate_pk(b"key", _pick_key(records))
    except dkim.NaClNotFoundError:
        return ""
    except Exception as exc:  # KeyFormatError and friends
        return str(exc) or type(exc).__name__
    return ""


async def verify_dkim(resolver: Any, message: bytes) -> list[DkimResult]:
    """One :class:`DkimResult` per DKIM-Signature header, in header order
    (an empty list for an unsigned message: ``dkim=none``).

    RSA keys shorter than 1024 bits give permerror. A missing key (NXDOMAIN
    or no TXT record) or an unusable key record gives permerror, a failed
    key lookup temperror (RFC 6376 6.1.2); a body or header that does not
    match gives fail; an Ed25519 signature without pynacl installed gives
    neutral. A message that does not parse gives a single permerror.
    """
    try:
        parsed = dkim.DKIM(message, minkey=MIN_RSA_BITS)
        count = sum(1 for name, _ in parsed.headers if name.lower() == b"dkim-signature")
    except Exception as exc:
        return [DkimResult("permerror", "", "", f"message does not parse: {exc}")]
    lookups = _Lookups(resolver)  # shared by the signatures of one message
    return [await _verify_one(lookups, message, i) for i in range(count)]


def _load_key(private_key_pem: bytes) -> tuple[bytes, bytes, Any]:
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except Exception as exc:
        raise DkimSignError(f"cannot load the private key: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimSignError(f"RSA key of {key.key_size} bits is too small")
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        return b"rsa-sha256", pem, key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        return b"ed25519-sha256", base64.b64encode(raw), key
    raise DkimSignError(f"unsupported key type {type(key).__name__} (RSA or Ed25519)")


def dkim_sign(message: bytes, *, domain: str, selector: str, private_key_pem: bytes,
              headers: list[bytes] | None = None) -> bytes:
    """The ``DKIM-Signature: ...\\r\\n`` header (folded) to prepend to
    ``message``: relaxed/relaxed, rsa-sha256 for an RSA key, ed25519-sha256
    (RFC 8463, needs pynacl) for an Ed25519 key, given as PEM.

    ``headers`` (default :data:`SIGNED_HEADERS`) are signed when present in
    the message, and From once more (oversigned) so that no second From can
    be added. Raises :class:`DkimSignError` for an unusable key or a message
    without From.
    """
    algorithm, private, _ = _load_key(private_key_pem)
    try:
        present = {name.lower() for name, _ in dkim.DKIM(message).headers}
    except Exception as exc:
        raise DkimSignError(f"message does not parse: {exc}") from None
    if b"from" not in present:
        raise DkimSignError("message has no From header")
    wanted = [h.lower() for h in (headers if headers is not None else SIGNED_HEADERS)]
    include = [h for h in dict.fromkeys(wanted) if h in present]
    if b"from" not in include:
        include.insert(0, b"from")
    include.append(b"from")
    try:
        return dkim.sign(message, selector.encode("ascii"), domain.encode("ascii"), private,
                         canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=algorithm,
                         include_headers=include)
    except dkim.DKIMException as exc:
        raise DkimSignError(str(exc)) from None


def dkim_public_txt(private_key_pem: bytes) -> str:
    """The TXT record text that publishes the public half of the key, e.g.
    ``v=DKIM1; k=rsa; p=MIIB...`` (p= is the DER SubjectPublicKeyInfo for RSA,
    the raw 32-byte key for Ed25519). Longer than 255 characters for RSA-2048:
    publish it as several strings of one TXT record."""
    _, _, key = _load_key(private_key_pem)
    public = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")


# --------------------------------------------------------------------------
# DMARC


def from_domain(message: bytes) -> str | None:
    """The domain of the RFC5322.From address, lower case, or None when the
    message has no From, several From fields, or a From that does not hold
    exactly one address with a domain (DMARC then cannot be evaluated:
    :func:`check_dmarc` gives permerror)."""
    try:
        # the header block only, parsed the cheap way (compat32: no header objects)
        end = message.find(b"\r\n\r\n")
        if end < 0:
            end = message.find(b"\n\n")
        head = message if end < 0 else message[:end + 2]
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        fields = headers.get_all("From") or []
        if len(fields) != 1:
            return None
        addresses = [a for a in email.utils.getaddresses([str(fields[0])]) if any(a)]
        if len(addresses) != 1 or "@" not in addresses[0][1]:
            return None
        domain = _norm(addresses[0][1].rpartition("@")[2])
        if not domain:
            return None
        if not domain.isascii():
            domain = domain.encode("idna").decode("ascii")
        return domain if _valid_name(domain) else None
    except Exception:
        return None


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the domain one label below its public suffix, by the Public
    Suffix List the ``publicsuffixlist`` package ships (read once)."""
    domain = _norm(domain)
    return _psl().privatesuffix(domain) or domain


_PSL: Any = None


def _psl() -> Any:
    global _PSL
    if _PSL is None:
        import importlib.resources

        from publicsuffixlist import PublicSuffixList

        # read through importlib.resources: the list is inside the image's zip
        data = importlib.resources.files("publicsuffixlist") / "public_suffix_list.dat"
        with data.open("rb") as source:
            _PSL = PublicSuffixList(source)
    return _PSL


_POLICIES = ("none", "quarantine", "reject")


def parse_dmarc(text: str) -> DmarcRecord:
    """Parse a DMARC record; ``ValueError`` when it does not start with
    ``v=DMARC1`` or has no valid p= (and no rua= that would make it p=none,
    RFC 7489 6.6.3 step 6). Unknown tags are ignored; an invalid sp=, adkim=,
    aspf= or pct= falls back to its default."""
    tags: dict[str, str] = {}
    parts = [part.strip() for part in text.split(";")]
    for i, part in enumerate(parts):
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"tag without '=': {part!r}")
        name, value = name.strip().lower(), value.strip()
        if i == 0 and (name != "v" or value != "DMARC1"):
            raise ValueError("record does not start with v=DMARC1")
        tags.setdefault(name, value)
    if "v" not in tags:
        raise ValueError("record does not start with v=DMARC1")
    p = tags.get("p", "").lower()
    if p not in _POLICIES:
        if "rua" in tags and "mailto:" in tags["rua"].lower():
            p = "none"
        else:
            raise ValueError(f"no valid p= tag ({tags.get('p')!r})")
    sp = tags.get("sp", "").lower() or None
    if sp is not None and sp not in _POLICIES:
        sp = None
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    if not 0 <= pct <= 100:
        pct = 100
    return DmarcRecord(p, sp, adkim if adkim in ("r", "s") else "r",
                       aspf if aspf in ("r", "s") else "r", pct)


async def _dmarc_records(lookups: _Lookups, domain: str) -> list[str] | None:
    """The v=DMARC1 TXT records at ``_dmarc.<domain>``, None on a failed lookup."""
    name = f"_dmarc.{domain}"
    if not _valid_name(name):
        return []
    value = await lookups.fill(name, "TXT")
    if value is _TEMPFAIL:
        return None
    texts = [b"".join(strings).decode("ascii", "replace") for strings in value]
    return [t for t in texts if re.match(r"\s*v\s*=\s*DMARC1\s*(;|$)", t)]


def _aligned(identifier: str, author: str, mode: str) -> bool:
    identifier, author = _norm(identifier), _norm(author)
    if not identifier or not author:
        return False
    if mode == "s":
        return identifier == author
    return organizational_domain(identifier) == organizational_domain(author)


async def check_dmarc(resolver: Any, from_domain: str | None, spf: SpfResult | None,
                      dkim: list[DkimResult], *, roll: int = 0) -> DmarcResult:
    """DMARC (RFC 7489) for the author domain ``from_domain``.

    The policy record is looked up at ``_dmarc.<from_domain>``, then at
    ``_dmarc.<organizational domain>`` (where sp= applies, if given). The
    message passes when SPF passed for an aligned MAIL FROM (or HELO for a
    null sender) domain or any DKIM signature passed with an aligned d=;
    alignment is relaxed (same organizational domain) or strict (same name)
    per aspf=/adkim=.

    Results: ``none`` without a record (or with several, RFC 7489 6.6.3),
    ``temperror`` when a lookup failed, ``permerror`` for a record without a
    valid policy or when ``from_domain`` is None (see :func:`from_domain`).
    ``roll`` is a number 0..99 from the caller's random device: a failing
    message gets the policy when ``roll < pct``, else the next milder one
    (RFC 7489 6.6.4); the default 0 applies it whenever pct > 0.
    """
    if not from_domain:
        return DmarcResult("permerror", None, None, "none")
    author = _norm(from_domain)
    org = organizational_domain(author)
    lookups = _Lookups(resolver)
    records = await _dmarc_records(lookups, author)
    policy_domain = author
    if records is not None and not records and org != author:
        records = await _dmarc_records(lookups, org)
        policy_domain = org
    if records is None:
        return DmarcResult("temperror", None, author, "none")
    if not records:
        return DmarcResult("none", None, author, "none")
    if len(records) > 1:
        return DmarcResult("none", None, author, "none")
    try:
        record = parse_dmarc(records[0])
    except ValueError:
        return DmarcResult("permerror", None, author, "none")
    policy = record.p
    if policy_domain != author and record.sp is not None:
        policy = record.sp
    spf_ok = (spf is not None and spf.result == "pass"
              and _aligned(spf.domain, author, record.aspf))
    dkim_ok = any(r.result == "pass" and _aligned(r.domain, author, record.adkim) for r in dkim)
    if spf_ok or dkim_ok:
        return DmarcResult("pass", policy, author, "none")
    disposition = policy
    if roll >= record.pct:
        disposition = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
    return DmarcResult("fail", policy, author, disposition)


# --------------------------------------------------------------------------
# Authentication-Results


_TSPECIALS = set('()<>@,;:\\"/[]?=')
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DOMAIN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$")


def _clean(text: str, limit: int = 200) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return text[:limit]


def _quoted(text: str) -> str:
    """A quoted-string without quoted-pairs (several A-R readers do not undo
    them): double quotes become single ones, backslashes slashes."""
    return '"' + _clean(text).replace("\\", "/").replace('"', "'") + '"'


def _pvalue(text: str) -> str:
    """A property value: a token, a domain, an address, else a quoted string."""
    text = _clean(text, 300)
    if text and all(c not in _TSPECIALS and c != " " for c in text):
        return text
    local, at, domain = text.rpartition("@")
    if at and _DOMAIN.match(domain) and (not local or _DOT_ATOM.match(local)):
        return text
    if _DOMAIN.match(text):
        return text
    return _quoted(text)


def _fold(words: list[str], first: int) -> list[str]:
    """Words into lines of at most 78 characters where possible; ``first``
    is what the first line already holds."""
    lines: list[str] = []
    line = ""
    used = first
    for word in words:
        if line and used + 1 + len(word) > 78:
            lines.append(line)
            line, used = word, 8 + len(word)  # continuation lines start with a tab
        elif line:
            line, used = f"{line} {word}", used + 1 + len(word)
        else:
            line, used = word, used + len(word)
    if line:
        lines.append(line)
    return lines


def authentication_results(authserv_id: str, spf: SpfResult | None, dkim: list[DkimResult] | None,
                           dmarc: DmarcResult | None, *, helo: str, mail_from: str,
                           from_domain: str | None) -> str:
    """The value of an ``Authentication-Results:`` header (RFC 8601), folded
    for a field name of 24 characters (``Authentication-Results: ``) with
    CRLF + tab, one method per line, lines of at most 78 characters where
    the values allow (never near 998). ``dkim`` empty gives ``dkim=none``;
    a None check is left out. The caller writes
    ``b"Authentication-Results: " + value + "\\r\\n"``."""
    lines = [_clean(authserv_id, 255) or "localhost"]
    resinfos: list[list[str]] = []
    if spf is not None:
        words = ["spf=" + spf.result]
        mail_from = (mail_from or "").strip().strip("<>")
        if mail_from:
            words.append("smtp.mailfrom=" + _pvalue(mail_from))
        elif helo:
            words.append("smtp.helo=" + _pvalue(helo))
        resinfos.append(words)
    if dkim is not None:
        if not dkim:
            resinfos.append(["dkim=none"])
        for result in dkim:
            words = ["dkim=" + result.result]
            if result.reason and result.result != "pass":
                words.append("reason=" + _quoted(result.reason))
            if result.domain:
                words.append("header.d=" + _pvalue(result.domain))
            if result.selector:
                words.append("header.s=" + _pvalue(result.selector))
            if result.header_b:
                words.append("header.b=" + _pvalue(result.header_b))
            resinfos.append(words)
    if dmarc is not None:
        words = ["dmarc=" + dmarc.result]
        if dmarc.policy is not None:
            words.append(f"(p={dmarc.policy} dis={dmarc.disposition})")
        domain = from_domain or dmarc.domain
        if domain:
            words.append("header.from=" + _pvalue(domain))
        resinfos.append(words)
    if not resinfos:
        return lines[0] + "; none"
    for i, words in enumerate(resinfos):
        text = _fold(words, 8)
        if i < len(resinfos) - 1:
            text[-1] += ";"
        lines.extend(text)
    lines[0] += ";"
    return "\r\n\t".join(lines)
