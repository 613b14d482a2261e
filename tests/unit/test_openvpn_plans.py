"""Stock OpenVPN 2.6 configs turned into server and client plans (serverconf, clientconf).

The example configs of configs/vpn are the good base; each bad case edits one line (or adds
one) and checks that the refusal names the file and line. tls-crypt-v2 keys come from the real
openvpn binary.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from plugins.openvpn import clientconf, config, crypto, serverconf
from plugins.openvpn.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
VPN = ROOT / "configs" / "vpn"
OPENVPN = "/usr/sbin/openvpn"


# --------------------------------------------------------------------------- helpers


def _load(folder: str, name: str) -> tuple[str, dict[str, str]]:
    """A config's text and every file its files_needed names, read from its folder."""
    text = (VPN / folder / name).read_text()
    cfg = config.parse(text, source=name)
    files = {f: (VPN / folder / f).read_text() for f in serverconf.files_needed(cfg)}
    return text, files


def _edit(text: str, line: int | None, new: str | None) -> str:
    """Replace 1-based ``line`` with ``new`` (``new`` None: blank it, keeping the numbering);
    ``line`` None: append ``new`` as a new last line."""
    lines = text.splitlines()
    if line is None:
        lines.append(new)
    else:
        lines[line - 1] = "" if new is None else new
    return "\n".join(lines) + "\n"


def _server(text: str | None = None, files: dict[str, str] | None = None):
    base, base_files = _load("server", "server.conf")
    cfg = config.parse(base if text is None else text, source="server.conf")
    return serverconf.server_plan(cfg, base_files if files is None else files)


def _client1(text: str | None = None, files: dict[str, str] | None = None):
    base, base_files = _load("clients", "client1.conf")
    cfg = config.parse(base if text is None else text, source="client1.conf")
    return clientconf.client_plan(cfg, base_files if files is None else files)


SERVER_TEXT, SERVER_FILES = _load("server", "server.conf")
CLIENT1_TEXT, CLIENT1_FILES = _load("clients", "client1.conf")
SERVER_LINES = len(SERVER_TEXT.splitlines())
CLIENT1_LINES = len(CLIENT1_TEXT.splitlines())


@pytest.fixture(scope="module")
def v2keys(tmp_path_factory) -> tuple[str, str]:
    """(server key text, client key text) made by the real openvpn."""
    d = tmp_path_factory.mktemp("v2")
    subprocess.run([OPENVPN, "--genkey", "tls-crypt-v2-server", str(d / "s.key")],
                   check=True, capture_output=True, timeout=30)
    subprocess.run([OPENVPN, "--tls-crypt-v2", str(d / "s.key"), "--genkey",
                    "tls-crypt-v2-client", str(d / "c.key")],
                   check=True, capture_output=True, timeout=30)
    return (d / "s.key").read_text(), (d / "c.key").read_text()


# --------------------------------------------------------------------------- the example configs


def test_base_configs_are_what_the_tests_assume():
    # The line numbers below are those of the example files; fail loudly if they move.
    lines = SERVER_TEXT.splitlines()
    assert lines[2:7] == ["port 1194", "proto udp", "dev tun", "topology subnet",
                          "server 10.200.8.0 255.255.255.0"]
    assert lines[7:16] == ["ca ca.crt", "cert server.crt", "key server.key",
                           "crl-verify crl.pem", "dh none", "tls-crypt tc.key",
                           "data-ciphers AES-256-GCM:CHACHA20-POLY1305", "keepalive 10 60",
                           'push "route 10.200.9.0 255.255.255.0"']
    lines = CLIENT1_TEXT.splitlines()
    assert lines[1:5] == ["client", "dev tun", "proto udp", "remote 10.200.7.1 1194"]
    assert lines[7:12] == ["remote-cert-tls server", "ca ca.crt", "cert client1.crt",
                           "key client1.key", "tls-crypt tc.key"]


def test_files_needed_server():
    cfg = config.parse(SERVER_TEXT, source="server.conf")
    # `dh none` names no file
    assert serverconf.files_needed(cfg) == ["ca.crt", "server.crt", "server.key", "crl.pem",
                                            "tc.key"]


def test_files_needed_skips_inline_blocks():
    text = _edit(SERVER_TEXT, 8, "<ca>\n" + SERVER_FILES["ca.crt"] + "</ca>")
    cfg = config.parse(text, source="server.conf")
    assert "ca.crt" not in serverconf.files_needed(cfg)
    files = dict(SERVER_FILES)
    del files["ca.crt"]
    plan = serverconf.server_plan(cfg, files)
    assert plan.ca.strip() == SERVER_FILES["ca.crt"].strip()


def test_example_server_plan():
    plan = _server()
    assert plan.proto == "udp"
    assert plan.host == "0.0.0.0"
    assert plan.port == 1194
    assert plan.network == ipaddress.IPv4Network("10.200.8.0/24")
    assert plan.pool is None
    assert plan.ca == SERVER_FILES["ca.crt"]
    assert plan.cert == SERVER_FILES["server.crt"]
    assert plan.key == SERVER_FILES["server.key"]
    assert plan.crl == SERVER_FILES["crl.pem"]
    assert "BEGIN X509 CRL" in plan.crl
    assert plan.wrap == "tls-crypt"
    assert plan.wrap_key.to_bytes() == crypto.parse_static_key(SERVER_FILES["tc.key"]).to_bytes()
    assert plan.key_direction is None
    assert plan.auth == "SHA1"
    assert plan.data_ciphers == ("AES-256-GCM", "CHACHA20-POLY1305")
    assert (plan.ping_s, plan.ping_restart_s) == (10, 120)  # keepalive 10 60: server doubles
    assert plan.push == (("route", "10.200.9.0", "255.255.255.0"),)
    assert plan.client_to_client is False
    assert plan.max_clients == 1024
    assert plan.hand_window_s == 60
    assert plan.tun_mtu == 1500
    assert plan.reneg_s == 3600
    assert plan.tran_window_s == 60
    assert plan.v2_key is None


def test_server_plan_options():
    text = SERVER_TEXT
    for extra in ("proto tcp-server", "port 443", "local 192.0.2.7",
                  "ifconfig-pool 10.200.8.50 10.200.8.99", "client-to-client", "max-clients 7",
                  "hand-window 30", "tun-mtu 1400", "reneg-sec 600", "tran-window 20",
                  "reneg-bytes 0", "ping 5", "ping-restart 40", "auth sha256"):
        text = _edit(text, None, extra)
    plan = _server(text)
    assert plan.proto == "tcp"
    assert plan.port == 443
    assert plan.host == "192.0.2.7"
    assert plan.pool == (ipaddress.IPv4Address("10.200.8.50"), ipaddress.IPv4Address("10.200.8.99"))
    assert plan.client_to_client is True
    assert plan.max_clients == 7
    assert plan.hand_window_s == 30
    assert plan.tun_mtu == 1400
    assert plan.reneg_s == 600
    assert plan.tran_window_s == 20
    assert (plan.ping_s, plan.ping_restart_s) == (5, 40)
    assert plan.auth == "SHA256"


def test_server_default_data_ciphers_and_no_crl():
    text = _edit(_edit(SERVER_TEXT, 14, None), 11, None)
    files = {k: v for k, v in SERVER_FILES.items() if k != "crl.pem"}
    plan = _server(text, files)
    assert plan.data_ciphers == ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
    assert plan.crl is None


def test_server_tls_auth_plan():
    text = _edit(SERVER_TEXT, 13, "tls-auth ta.key 0")
    cfg = config.parse(text, source="server.conf")
    assert "ta.key" in serverconf.files_needed(cfg)
    plan = serverconf.server_plan(cfg, {**SERVER_FILES, "ta.key": (VPN / "server/ta.key").read_text()})
    assert plan.wrap == "tls-auth"
    assert plan.key_direction == 0
    assert plan.wrap_key.to_bytes() == crypto.parse_static_key(
        (VPN / "server/ta.key").read_text()).to_bytes()
    # the direction may come from key-direction instead
    text = _edit(_edit(SERVER_TEXT, 13, "tls-auth ta.key"), None, "key-direction 1")
    plan = _server(text, {**SERVER_FILES, "ta.key": (VPN / "server/ta.key").read_text()})
    assert plan.key_direction == 1
    # and is bidirectional without either
    plan = _server(_edit(SERVER_TEXT, 13, "tls-auth ta.key"),
                   {**SERVER_FILES, "ta.key": (VPN / "server/ta.key").read_text()})
    assert plan.key_direction is None


def test_server_tls_crypt_v2_plan(v2keys):
    skey, ckey = v2keys
    text = _edit(SERVER_TEXT, 13, "tls-crypt-v2 v2server.key")
    cfg = config.parse(text, source="server.conf")
    assert "v2server.key" in serverconf.files_needed(cfg)
    plan = serverconf.server_plan(cfg, {**SERVER_FILES, "v2server.key": skey})
    assert plan.wrap == "tls-crypt-v2"
    assert plan.wrap_key is None
    assert isinstance(plan.v2_key, crypto.TlsCryptV2ServerKey)
    client_key = crypto.TlsCryptV2ClientKey.from_text(ckey)
    kc, _meta = plan.v2_key.unwrap_client_key(client_key.wkc)
    assert kc.to_bytes() == client_key.kc.to_bytes()


@pytest.mark.parametrize("folder,name,expect", [
    ("clients", "client1.conf", {"verify_name": None, "cert": "client1.crt", "key": "client1.key"}),
    ("router", "client.conf", {"verify_name": "server", "cert": "client2.crt", "key": "client2.key"}),
])
def test_example_client_plans(folder, name, expect):
    text, files = _load(folder, name)
    cfg = config.parse(text, source=name)
    assert clientconf.is_client(cfg)
    assert serverconf.files_needed(cfg) == ["ca.crt", expect["cert"], expect["key"], "tc.key"]
    plan = clientconf.client_plan(cfg, files)
    assert plan.host == "10.200.7.1"
    assert plan.port == 1194
    assert plan.proto == "udp"
    assert plan.wrap == "tls-crypt"
    assert plan.wrap_key.to_bytes() == crypto.parse_static_key(files["tc.key"]).to_bytes()
    assert plan.key_direction is None
    assert plan.server_eku is True
    assert plan.verify_name == expect["verify_name"]
    assert plan.ca == files["ca.crt"]
    assert plan.cert == files[expect["cert"]]
    assert plan.key == files[expect["key"]]
    assert plan.auth == "SHA1"
    assert plan.data_ciphers == ("AES-256-GCM", "CHACHA20-POLY1305")
    assert (plan.reneg_s, plan.tran_window_s, plan.hand_window_s) == (3600, 60, 60)
    assert plan.v2_key is None


def test_client_tls_crypt_key_matches_server():
    # the example client and server share the tls-crypt key
    assert _client1().wrap_key.to_bytes() == _server().wrap_key.to_bytes()


def test_client_plan_options():
    text = _edit(CLIENT1_TEXT, 5, "remote 192.0.2.9 443 tcp-client")
    for extra in ("reneg-sec 120", "tran-window 15", "hand-window 20", "auth sha512"):
        text = _edit(text, None, extra)
    plan = _client1(text)
    assert (plan.host, plan.port, plan.proto) == ("192.0.2.9", 443, "tcp")
    assert (plan.reneg_s, plan.tran_window_s, plan.hand_window_s) == (120, 15, 20)
    assert plan.auth == "SHA512"
    # the port from `port` when the remote has none; remote-cert-tls absent: no EKU check
    text = _edit(_edit(_edit(CLIENT1_TEXT, 5, "remote 192.0.2.9"), None, "port 1195"), 8, None)
    plan = _client1(text)
    assert plan.port == 1195
    assert plan.server_eku is False


def test_client_tls_auth_direction():
    ta = (VPN / "clients/ta.key").read_text()
    plan = _client1(_edit(CLIENT1_TEXT, 12, "tls-auth ta.key 1"), {**CLIENT1_FILES, "ta.key": ta})
    assert plan.wrap == "tls-auth"
    assert plan.key_direction == 1
    assert plan.wrap_key.to_bytes() == crypto.parse_static_key(ta).to_bytes()


# --------------------------------------------------------------------------- bad server configs

TC_KEY = SERVER_FILES["tc.key"]


def _files(**changes):
    """The server's files with some replaced (value) or removed (None)."""
    files = dict(SERVER_FILES)
    for k, v in changes.items():
        k = k.replace("_", ".")
        if v is None:
            files.pop(k, None)
        else:
            files[k] = v
    return files


APPEND = None  # `line` for _edit: add a last line
N = SERVER_LINES + 1  # the line number an appended directive gets

BAD_SERVER = [
    # (line to replace or APPEND, new text, files, expected fragment)
    (5, "dev tap", None, "server.conf:5: only `dev tun` is supported"),
    (5, "dev tap0", None, "server.conf:5: only `dev tun` is supported"),
    (APPEND, "dev-type tap", None, f"server.conf:{N}: only dev-type tun is supported"),
    (6, "topology net30", None, "server.conf:6: only `topology subnet` is supported, not 'net30'"),
    (6, "topology p2p", None, "server.conf:6: only `topology subnet`"),
    (4, "proto udp6", None, "server.conf:4: proto 'udp6' is not supported"),
    (4, "proto tcp6", None, "server.conf:4: proto 'tcp6' is not supported"),
    (4, "proto tcp-client", None, "server.conf:4: proto 'tcp-client' is not supported"),
    (14, "data-ciphers AES-256-GCM:FOO-GCM", None,
     "server.conf:14: data cipher 'FOO-GCM' is not supported"),
    (14, "data-ciphers BF-CBC", None, "server.conf:14: data cipher 'BF-CBC' is not supported"),
    (14, "data-ciphers AES-256-GCM:DES-EDE3-CBC", None,
     "server.conf:14: data cipher 'DES-EDE3-CBC' is not supported"),
    (14, "data-ciphers AES-256-CFB", None, "server.conf:14: data cipher 'AES-256-CFB'"),
    (APPEND, "reneg-bytes 1000", None, f"server.conf:{N}: reneg-bytes is not supported"),
    (APPEND, "reneg-pkts 5000", None, f"server.conf:{N}: reneg-pkts is not supported"),
    (APPEND, "reneg-bytes lots", None, f"server.conf:{N}: reneg-bytes must be a number"),
    # two wrappings: the later line is named
    (APPEND, "tls-auth ta.key 0", None,
     f"server.conf:{N}: tls-crypt and tls-auth cannot both be used"),
    (APPEND, "tls-crypt-v2 v2.key", None,
     f"server.conf:{N}: tls-crypt and tls-crypt-v2 cannot both be used"),
    (APPEND, "auth MD5", None, f"server.conf:{N}: auth 'MD5' is not supported"),
    (APPEND, "auth BOGUS", None, f"server.conf:{N}: auth 'BOGUS' is not supported"),
    (14, "data-ciphers :", None, "server.conf:14: data-ciphers names no cipher"),
    (APPEND, "mode p2p", None, f"server.conf:{N}: only `mode server` is supported"),
    (7, "server 10.200.8.0 255.255.255.0 nopool", None, "server.conf:7: `server ... nopool`"),
    (APPEND, "local vpn.example.com", None,
     f"server.conf:{N}: 'vpn.example.com' is not an IPv4 address"),
    (11, "crl-verify crls dir", None, "server.conf:11: `crl-verify FILE dir` is not supported"),
    (APPEND, "tls-version-min 1.4", None, f"server.conf:{N}: tls-version-min '1.4'"),
    (APPEND, "tls-version-min 1.2 or-lowest", None, f"server.conf:{N}: tls-version-min VERSION"),
    (8, "ca missing-ca.crt", None, "server.conf:8: ca file 'missing-ca.crt' not found"),
]

BAD_SERVER_FILES = [
    # (files, expected fragment): the config unchanged
    (_files(ca_crt=None), "server.conf:8: ca file 'ca.crt' not found in the config store"),
    (_files(server_crt=None), "server.conf:9: cert file 'server.crt' not found"),
    (_files(server_key=None), "server.conf:10: key file 'server.key' not found"),
    (_files(crl_pem=None), "server.conf:11: crl-verify file 'crl.pem' not found"),
    (_files(tc_key=None), "server.conf:13: tls-crypt file 'tc.key' not found"),
    (_files(tc_key="garbage\n"), "server.conf:13: tls-crypt key: not an OpenVPN Static key V1"),
    (_files(tc_key="\n".join(TC_KEY.splitlines()[:-3] + TC_KEY.splitlines()[-1:]) + "\n"),
     "server.conf:13: tls-crypt key: static key: need 256 bytes"),
    (_files(tc_key=TC_KEY.replace(TC_KEY.splitlines()[5], "zz" * 16)),
     "server.conf:13: tls-crypt key: static key: invalid hex"),
]


@pytest.mark.parametrize("line,new,files,fragment", BAD_SERVER)
def test_bad_server_config(line, new, files, fragment):
    text = _edit(SERVER_TEXT, line, new)
    with pytest.raises(ConfigError) as e:
        _server(text, files)
    assert fragment in str(e.value)


@pytest.mark.parametrize("files,fragment", BAD_SERVER_FILES)
def test_bad_server_files(files, fragment):
    with pytest.raises(ConfigError) as e:
        _server(SERVER_TEXT, files)
    assert fragment in str(e.value)


@pytest.mark.parametrize("line,new,fragment", [
    (7, "server 10.200.8.1 255.255.255.0", "server.conf:7: bad server subnet"),
    (7, "server 10.200.8.0 255.255.255.254", "server.conf:7: the server subnet is too small"),
    (7, "server 10.200.8.0 nonsense", "server.conf:7: bad server subnet"),
    (7, None, "server.conf: `server NET MASK` is required"),
    (3, "port 70000", "server.conf:3: port must be 1 to 65535, got 70000"),
    (3, "port 0", "server.conf:3: port must be 1 to 65535"),
    (3, "port http", "server.conf:3: port must be a number, got 'http'"),
    (9, None, "server.conf: `cert` is required in server mode"),
    (15, "keepalive 0 60", "server.conf:15: keepalive interval must be 1"),
    (15, "keepalive 10 x", "server.conf:15: keepalive timeout must be a number"),
    (16, 'push ""', "server.conf:16: empty push"),
    (13, "tls-auth ta.key 2", "server.conf:13: key direction must be 0 to 1"),
    (APPEND, "ifconfig-pool 10.200.9.10 10.200.9.20", f"server.conf:{N}: ifconfig-pool must lie"),
    (APPEND, "ifconfig-pool 10.200.8.90 10.200.8.10", f"server.conf:{N}: ifconfig-pool must lie"),
    (APPEND, "ifconfig-pool 10.200.8.x 10.200.8.10", f"server.conf:{N}: '10.200.8.x' is not an IPv4"),
    (APPEND, "max-clients 0", f"server.conf:{N}: max-clients must be 1"),
    (APPEND, "tun-mtu 100", f"server.conf:{N}: tun-mtu must be 576 to 65535"),
    (APPEND, "hand-window 0", f"server.conf:{N}: hand-window must be 1"),
    (APPEND, "tran-window 0", f"server.conf:{N}: tran-window must be 1"),
    (APPEND, "reneg-sec -1", f"server.conf:{N}: reneg-sec must be 0"),
    (APPEND, "client", f"server.conf:{N}: this is a client config"),
    (APPEND, "tls-client", f"server.conf:{N}: this is a client config"),
])
def test_bad_server_values(line, new, fragment):
    files = {**SERVER_FILES, "ta.key": (VPN / "server/ta.key").read_text()}
    with pytest.raises(ConfigError) as e:
        _server(_edit(SERVER_TEXT, line, new), files)
    assert fragment in str(e.value)


@pytest.mark.parametrize("keytext,fragment", [
    ("garbage\n", "no 'OpenVPN tls-crypt-v2 server key' PEM block"),
    ("-----BEGIN OpenVPN tls-crypt-v2 server key-----\n!!!not base64!!!\n"
     "-----END OpenVPN tls-crypt-v2 server key-----\n", "invalid base64"),
    ("-----BEGIN OpenVPN tls-crypt-v2 server key-----\nAAAA\n"
     "-----END OpenVPN tls-crypt-v2 server key-----\n", "need 128 bytes, got 3"),
    ("client", "no 'OpenVPN tls-crypt-v2 server key' PEM block"),  # a client key, not a server one
])
def test_bad_tls_crypt_v2_server_key(v2keys, keytext, fragment):
    if keytext == "client":
        keytext = v2keys[1]
    text = _edit(SERVER_TEXT, 13, "tls-crypt-v2 v2server.key")
    with pytest.raises(ConfigError) as e:
        _server(text, {**SERVER_FILES, "v2server.key": keytext})
    msg = str(e.value)
    assert msg.startswith("server.conf:13: tls-crypt-v2 server key:")
    assert fragment in msg


def test_tls_crypt_v2_server_key_missing_file():
    text = _edit(SERVER_TEXT, 13, "tls-crypt-v2 v2server.key")
    with pytest.raises(ConfigError, match=r"server\.conf:13: tls-crypt-v2 file 'v2server.key' not found"):
        _server(text, SERVER_FILES)


def test_server_plan_refuses_bad_directive_at_parse():
    with pytest.raises(ConfigError, match=r"server\.conf:18: unsupported directive 'fragment'"):
        config.parse(_edit(SERVER_TEXT, None, "fragment 1300"), source="server.conf")


# --------------------------------------------------------------------------- client mode


def test_client_tls_crypt_v2(v2keys):
    skey, ckey = v2keys
    text = _edit(CLIENT1_TEXT, 12, "tls-crypt-v2 v2client.key")
    cfg = config.parse(text, source="client1.conf")
    assert "v2client.key" in serverconf.files_needed(cfg)
    plan = clientconf.client_plan(cfg, {**CLIENT1_FILES, "v2client.key": ckey})
    assert plan.wrap == "tls-crypt-v2"
    assert plan.wrap_key is None
    assert isinstance(plan.v2_key, crypto.TlsCryptV2ClientKey)
    kc, _meta = crypto.TlsCryptV2ServerKey.from_text(skey).unwrap_client_key(plan.v2_key.wkc)
    assert kc.to_bytes() == plan.v2_key.kc.to_bytes()
    # the plan holds exactly the file's key
    assert plan.v2_key.to_text().split() == ckey.split()


def test_client_tls_crypt_v2_inline(v2keys):
    _skey, ckey = v2keys
    text = _edit(CLIENT1_TEXT, 12, "<tls-crypt-v2>\n" + ckey + "</tls-crypt-v2>")
    plan = _client1(text)
    assert plan.wrap == "tls-crypt-v2"
    assert plan.v2_key.kc.to_bytes() == crypto.TlsCryptV2ClientKey.from_text(ckey).kc.to_bytes()


@pytest.mark.parametrize("keytext,fragment", [
    ("garbage\n", "no 'OpenVPN tls-crypt-v2 client key' PEM block"),
    ("-----BEGIN OpenVPN tls-crypt-v2 client key-----\n%%%%\n"
     "-----END OpenVPN tls-crypt-v2 client key-----\n", "invalid base64"),
    ("-----BEGIN OpenVPN tls-crypt-v2 client key-----\nAAAA\n"
     "-----END OpenVPN tls-crypt-v2 client key-----\n", "too short"),
    ("server", "no 'OpenVPN tls-crypt-v2 client key' PEM block"),  # the server key by mistake
])
def test_bad_tls_crypt_v2_client_key(v2keys, keytext, fragment):
    if keytext == "server":
        keytext = v2keys[0]
    text = _edit(CLIENT1_TEXT, 12, "tls-crypt-v2 v2client.key")
    with pytest.raises(ConfigError) as e:
        _client1(text, {**CLIENT1_FILES, "v2client.key": keytext})
    msg = str(e.value)
    assert msg.startswith("client1.conf:12: tls-crypt-v2 client key:")
    assert fragment in msg


M = CLIENT1_LINES + 1  # the line an appended directive gets in client1.conf


@pytest.mark.parametrize("line,new,fragment", [
    (5, "remote some.host.name 1194",
     "client1.conf:5: remote 'some.host.name' must be an IPv4 address"),
    (5, "remote 2001:db8::1 1194", "client1.conf:5: remote '2001:db8::1' must be an IPv4"),
    (5, "remote 10.200.7.1 0", "client1.conf:5: remote port must be 1 to 65535"),
    (5, "remote 10.200.7.1 vpn", "client1.conf:5: remote port must be a number"),
    (5, None, "client1.conf: `remote HOST [PORT]` is required in client mode"),
    (8, "remote-cert-tls client", "client1.conf:8: a client checks `remote-cert-tls server`"),
    (APPEND, "verify-x509-name x subject",
     f"client1.conf:{M}: only `verify-x509-name NAME name`"),
    (APPEND, "verify-x509-name x", f"client1.conf:{M}: only `verify-x509-name NAME name`"),
    (APPEND, "verify-x509-name x name-prefix", f"client1.conf:{M}: only `verify-x509-name"),
    (3, "dev tap", "client1.conf:3: only `dev tun` is supported (IP packets), not 'tap'"),
    (APPEND, "dev-type tap", f"client1.conf:{M}: only dev-type tun is supported"),
    (APPEND, "topology net30", f"client1.conf:{M}: only `topology subnet` is supported"),
    (APPEND, "mode server", f"client1.conf:{M}: `mode` is a server directive"),
    (APPEND, "tls-server", f"client1.conf:{M}: `tls-server` is a server directive"),
    (APPEND, "server 10.8.0.0 255.255.255.0", f"client1.conf:{M}: `server` is a server directive"),
    (APPEND, "auth MD5", f"client1.conf:{M}: auth 'MD5' is not supported"),
    (13, "data-ciphers :", "client1.conf:13: data-ciphers names no cipher"),
    (APPEND, "reneg-bytes -1", f"client1.conf:{M}: reneg-bytes must be 0"),
    (4, "proto udp6", "client1.conf:4: proto 'udp6' is not supported"),
    (4, "proto tcp-server", "client1.conf:4: proto 'tcp-server' is not supported"),
    (APPEND, "port 99999", f"client1.conf:{M}: port must be 1 to 65535"),
    (13, "data-ciphers AES-256-GCM:BF-CBC", "client1.conf:13: data cipher 'BF-CBC'"),
    (APPEND, "tls-auth ta.key 1", f"client1.conf:{M}: tls-crypt and tls-auth cannot both be used"),
    (APPEND, "tls-crypt-v2 v2.key", f"client1.conf:{M}: tls-crypt and tls-crypt-v2 cannot both"),
    (9, "ca other-ca.crt", "client1.conf:9: ca file 'other-ca.crt' not found"),
    (10, None, "client1.conf: `cert` is required in client mode"),
    (APPEND, "reneg-sec -5", f"client1.conf:{M}: reneg-sec must be 0"),
    (APPEND, "tran-window 0", f"client1.conf:{M}: tran-window must be 1"),
    (APPEND, "hand-window x", f"client1.conf:{M}: hand-window must be a number"),
])
def test_bad_client_config(line, new, fragment):
    with pytest.raises(ConfigError) as e:
        _client1(_edit(CLIENT1_TEXT, line, new))
    assert fragment in str(e.value)


def test_client_proto_in_remote_named_even_with_a_proto_line():
    text = _edit(CLIENT1_TEXT, 5, "remote 10.200.7.1 1194 udp6")  # line 4 says `proto udp`
    with pytest.raises(ConfigError, match=r"client1\.conf:5: proto 'udp6' is not supported"):
        _client1(text)


def test_client_renegotiation_limits_and_tls_minimum():
    plan = _client1(_edit(_edit(CLIENT1_TEXT, None, "reneg-bytes 1000000"), None,
                          "reneg-pkts 5000") + "tls-version-min 1.3 or-highest\n")
    assert (plan.reneg_bytes, plan.reneg_pkts, plan.tls_min) == (1000000, 5000, "1.3")
    assert _client1(CLIENT1_TEXT).tls_min == "1.2"


@pytest.mark.parametrize("value,expect", [("1.0", "1.2"), ("1.2", "1.2"), ("1.3", "1.3")])
def test_server_tls_minimum(value, expect):
    plan = _server(_edit(SERVER_TEXT, None, f"tls-version-min {value}"), SERVER_FILES)
    assert plan.tls_min == expect


def test_client_proto_in_remote_refused():
    # proto given as the remote's third word, no `proto` line: the remote's line is named
    text = _edit(_edit(CLIENT1_TEXT, 4, None), 5, "remote 10.200.7.1 1194 udp6")
    with pytest.raises(ConfigError, match=r"client1\.conf:5: proto 'udp6' is not supported"):
        _client1(text)


@pytest.mark.parametrize("name", ["ca.crt", "client1.crt", "client1.key", "tc.key"])
def test_client_missing_file(name):
    files = {k: v for k, v in CLIENT1_FILES.items() if k != name}
    line = {"ca.crt": 9, "client1.crt": 10, "client1.key": 11, "tc.key": 12}[name]
    with pytest.raises(ConfigError, match=rf"client1\.conf:{line}: \S+ file '{name}' not found"):
        _client1(files=files)


def test_client_malformed_tls_crypt_key():
    with pytest.raises(ConfigError, match=r"client1\.conf:12: tls-crypt key: not an OpenVPN"):
        _client1(files={**CLIENT1_FILES, "tc.key": "nope\n"})


# --------------------------------------------------------------------------- is_client


@pytest.mark.parametrize("text,expect", [
    ("client\nremote 10.0.0.1\n", True),
    ("tls-client\npull\nremote 10.0.0.1\n", True),
    ("--client\n", True),
    (SERVER_TEXT, False),
    ("tls-server\n", False),
    ("", False),
])
def test_is_client(text, expect):
    assert clientconf.is_client(config.parse(text, source="x.conf")) is expect


def test_is_client_example_configs():
    assert clientconf.is_client(config.parse(CLIENT1_TEXT, source="client1.conf"))
    assert clientconf.is_client(config.parse((VPN / "router/client.conf").read_text()))
    assert not clientconf.is_client(config.parse(SERVER_TEXT, source="server.conf"))
