"""OpenVPN config files as stock OpenVPN writes and reads them."""

import ast
from pathlib import Path

import pytest

from ingot.plugins.openvpn import config
from ingot.plugins.openvpn.config import ConfigError, parse

SERVER = """\
# a server as FIELD-NOTES has it
dev tun
proto udp
port 1194
topology subnet
server 10.200.8.0 255.255.255.0
ca ca.crt
cert server.crt
key server.key  # inline comment
dh none
tls-crypt tc.key
data-ciphers AES-256-GCM:CHACHA20-POLY1305
keepalive 10 60
push "route 10.200.9.0 255.255.255.0"
push "dhcp-option DNS 10.200.8.1"
verb 3
persist-key
disable-dco
"""

CLIENT = """\
client
dev tun
remote 127.0.0.1 1194 udp
nobind
remote-cert-tls server
verify-x509-name 'gateway server' name
<ca>
-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
</ca>
<tls-crypt>
-----BEGIN OpenVPN Static key V1-----
00
-----END OpenVPN Static key V1-----
</tls-crypt>
--data-ciphers AES-256-GCM
"""


def test_a_server_config_reads_in_order_with_lines():
    c = parse(SERVER, "server.conf")
    names = [d.name for d in c.directives]
    assert names[:3] == ["dev", "proto", "port"]
    assert "verb" not in names and "persist-key" not in names  # ignored
    assert c.last("server").args == ("10.200.8.0", "255.255.255.0")
    assert c.last("key").args == ("server.key",)
    assert [d.args for d in c.all("push")] == [("route 10.200.9.0 255.255.255.0",),
                                               ("dhcp-option DNS 10.200.8.1",)]
    assert c.last("keepalive").line == 13
    assert config.split_push(c.all("push")[0].args[0]) == ["route", "10.200.9.0",
                                                           "255.255.255.0"]


def test_inline_blocks_quotes_and_dashes():
    c = parse(CLIENT)
    assert c.file("ca").startswith("-----BEGIN CERTIFICATE-----\nMIIB")
    assert c.last("ca").line == 7 and c.last("ca").args == ()
    assert "OpenVPN Static key V1" in c.file("tls-crypt")
    assert c.last("verify-x509-name").args == ("gateway server", "name")
    assert c.value("data-ciphers") == "AES-256-GCM"
    assert c.has("client") and not c.has("server")


@pytest.mark.parametrize("text, where, what", [
    ("dev tun\nfrobnicate yes\n", "t:2", "unsupported directive 'frobnicate'"),
    ("keepalive 10\n", "t:1", "keepalive takes 2 argument(s), got 1"),
    ("remote\n", "t:1", "remote takes 1 to 3 argument(s), got 0"),
    ('push "route 10.0.0.0\n', "t:1", "unterminated double quote"),
    ("verify-x509-name 'x\n", "t:1", "unterminated single quote"),
    ("<ca>\nabc\n", "t:1", "<ca> has no closing </ca>"),
    ("<connection>\nremote x\n</connection>\n", "t:1", "<connection> cannot be given inline"),
])
def test_bad_configs_name_the_line(text, where, what):
    with pytest.raises(ConfigError) as err:
        parse(text, "t")
    assert str(err.value).startswith(where + ": ") and what in str(err.value)


def test_escapes_in_double_quotes_and_comments():
    c = parse('push "dhcp-option DOMAIN \\"a b\\""\n; a comment\n# another\n')
    assert c.last("push").args == ('dhcp-option DOMAIN "a b"',)
    assert len(c.directives) == 1


def test_the_parser_does_no_io():
    tree = ast.parse(Path(config.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"socket", "asyncio", "time", "random", "os", "subprocess"}
