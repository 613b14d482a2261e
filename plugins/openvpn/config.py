"""OpenVPN configuration files, as stock OpenVPN 2.6 reads them (sans-I/O: text in).

Syntax (OpenVPN's ``man openvpn``, "configuration files"): one directive per
line, its arguments separated by blanks; ``#`` or ``;`` at the start of a
word begins a comment; an argument may be quoted with ``"..."`` (backslash
escapes ``\\\\``, ``\\"`` and blanks) or ``'...'`` (no escapes); a leading
``--`` on the directive is allowed. Inline files are blocks::

    <ca>
    -----BEGIN CERTIFICATE-----
    ...
    </ca>

:func:`parse` returns the directives in order with their line numbers; an
unknown directive is a :class:`ConfigError` naming the line, unless it is in
:data:`IGNORED` (known to be harmless here: documented in the guide). What
each directive means is the job of the mode that uses it (server, client);
:data:`SUPPORTED` lists those the gateway understands, with their argument
counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INLINE = frozenset({"ca", "cert", "key", "tls-auth", "tls-crypt", "tls-crypt-v2", "crl-verify",
                    "dh", "extra-certs", "pkcs12", "secret", "auth-user-pass", "http-proxy-user-pass"})
"""Directives whose file argument may be given as an inline block."""

SUPPORTED: dict[str, tuple[int, int]] = {
    # name: (least, most) arguments
    "client": (0, 0), "server": (2, 3), "mode": (1, 1), "tls-server": (0, 0),
    "tls-client": (0, 0), "dev": (1, 1), "dev-type": (1, 1), "proto": (1, 1), "port": (1, 1),
    "lport": (1, 1), "rport": (1, 1), "local": (1, 2), "remote": (1, 3), "nobind": (0, 0),
    "topology": (1, 1), "ifconfig-pool": (2, 3), "ifconfig": (2, 2), "push": (1, 1),
    "route": (1, 4), "route-gateway": (1, 1), "redirect-gateway": (0, 4),
    "dhcp-option": (1, 2), "verify-x509-name": (1, 2), "remote-cert-tls": (1, 1),
    "data-ciphers": (1, 1), "data-ciphers-fallback": (1, 1), "cipher": (1, 1), "auth": (1, 1),
    "ca": (1, 1), "cert": (1, 1), "key": (1, 1), "dh": (1, 1), "crl-verify": (1, 2),
    "tls-auth": (1, 2), "tls-crypt": (1, 1), "tls-crypt-v2": (1, 2), "key-direction": (1, 1),
    "keepalive": (2, 2), "ping": (1, 1), "ping-restart": (1, 1), "ping-exit": (1, 1),
    "reneg-sec": (1, 2), "reneg-bytes": (1, 1), "reneg-pkts": (1, 1), "tran-window": (1, 1),
    "hand-window": (1, 1), "explicit-exit-notify": (0, 1), "client-to-client": (0, 0),
    "max-clients": (1, 1), "tls-version-min": (1, 2), "tun-mtu": (1, 1), "mssfix": (0, 2),
    "disable-dco": (0, 0), "tls-timeout": (1, 1), "replay-window": (1, 2),
    "duplicate-cn": (0, 0), "username-as-common-name": (0, 0), "auth-nocache": (0, 0),
    "pull": (0, 0), "tls-ekm": (0, 0),
}

IGNORED: frozenset[str] = frozenset({
    # process and logging settings that mean nothing inside an appliance
    "verb", "mute", "status", "status-version", "log", "log-append", "writepid", "daemon",
    "user", "group", "persist-key", "persist-tun", "chroot", "script-security", "up", "down",
    "mute-replay-warnings", "resolv-retry", "connect-retry", "connect-retry-max", "suppress-timestamps",
    "machine-readable-output", "ifconfig-pool-persist", "management", "sndbuf", "rcvbuf",
    "txqueuelen", "fast-io", "float", "auth-retry", "setenv", "ignore-unknown-option",
})
"""Known directives that are accepted and have no effect here (listed in the guide)."""


class ConfigError(ValueError):
    """A config that cannot be used; the text names the file and line."""


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...]
    line: int
    inline: str | None = None
    """The content of an inline block (``<ca>...</ca>``); then ``args`` is empty."""


@dataclass
class Config:
    directives: list[Directive] = field(default_factory=list)
    source: str = "config"

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.directives if d.name == name]

    def last(self, name: str) -> Directive | None:
        found = self.all(name)
        return found[-1] if found else None

    def has(self, name: str) -> bool:
        return any(d.name == name for d in self.directives)

    def value(self, name: str, default: str | None = None) -> str | None:
        d = self.last(name)
        return d.args[0] if d is not None and d.args else default

    def file(self, name: str) -> str | None:
        """An inline block's text, or the file name given as the argument."""
        d = self.last(name)
        if d is None:
            return None
        return d.inline if d.inline is not None else d.args[0]


def split_words(line: str, where: str) -> list[str]:
    """A line's words, with OpenVPN's quoting; comments dropped."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t\r\f\v":
            i += 1
            continue
        if c in "#;":
            break
        word: list[str] = []
        while i < n and line[i] not in " \t\r\f\v":
            c = line[i]
            if c == '"':
                i += 1
                while i < n and line[i] != '"':
                    if line[i] == "\\" and i + 1 < n:
                        i += 1
                    word.append(line[i])
                    i += 1
                if i >= n:
                    raise ConfigError(f"{where}: unterminated double quote")
                i += 1
            elif c == "'":
                end = line.find("'", i + 1)
                if end < 0:
                    raise ConfigError(f"{where}: unterminated single quote")
                word.append(line[i + 1:end])
                i = end + 1
            elif c == "\\" and i + 1 < n:
                word.append(line[i + 1])
                i += 2
            else:
                word.append(c)
                i += 1
        words.append("".join(word))
    return words


def parse(text: str, source: str = "config") -> Config:
    """Parse a whole config (see the module docstring)."""
    config = Config(source=source)
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number = i + 1
        where = f"{source}:{number}"
        raw = lines[i].strip()
        i += 1
        if raw.startswith("<") and raw.endswith(">") and not raw.startswith("</"):
            name = raw[1:-1].strip().lower()
            if name not in INLINE:
                raise ConfigError(f"{where}: <{name}> cannot be given inline")
            body: list[str] = []
            while i < len(lines) and lines[i].strip().lower() != f"</{name}>":
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise ConfigError(f"{where}: <{name}> has no closing </{name}>")
            i += 1
            config.directives.append(Directive(name, (), number, "\n".join(body) + "\n"))
            continue
        words = split_words(raw, where)
        if not words:
            continue
        name = words[0].lower()
        if name.startswith("--"):
            name = name[2:]
        args = tuple(words[1:])
        if name in IGNORED:
            continue
        if name not in SUPPORTED:
            raise ConfigError(f"{where}: unsupported directive {words[0]!r} (the guide lists "
                              "what the gateway reads and what it ignores)")
        least, most = SUPPORTED[name]
        if not least <= len(args) <= most:
            want = str(least) if least == most else f"{least} to {most}"
            raise ConfigError(f"{where}: {name} takes {want} argument(s), got {len(args)}")
        config.directives.append(Directive(name, args, number))
    return config


def split_push(option: str) -> list[str]:
    """A pushed option's words (``route 10.0.0.0 255.0.0.0``)."""
    return split_words(option, "push")
