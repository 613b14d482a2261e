"""The ``resolver`` device kind: an appliance that looks names up through the stub resolver,
asking the DNS appliance (both as built images)."""

from __future__ import annotations

import textwrap

from tests.conftest import ROOT, Cli, run_image
from tests.integration.test_dns_image import ZONES, Server

MANIFEST = '''
from ingot.keys import key
from ingot.manifest import Appliance, device
from ingot.plugins.dns.device import Resolver
from ingot.signatures import Stack

appliance = Appliance(name="lookup", main="app:Lookup", doc="resolves names", plugins=["dns"],
                      devices=[device("stack", Stack), device("resolver", Resolver)],
                      keys=[key("names", list, "names to look up")])
'''

APP = '''
class Lookup:
    def __init__(self, resolver, keys, log):
        self.resolver, self.keys, self.log = resolver, keys, log

    async def start(self):
        for name in self.keys.names:
            for rtype in ("A", "MX"):
                answer = await self.resolver.resolve(name, rtype)
                self.log.info("answer", name=name, rtype=rtype, rcode=answer.rcode,
                              values=";".join(map(str, answer.values)))
        again = await self.resolver.resolve(self.keys.names[0], "A")
        self.log.info("cached", from_cache=again.from_cache)
'''


def test_an_appliance_resolves_through_the_dns_appliance(cli: Cli, tmp_path):
    app = tmp_path / "lookup"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "manifest.py").write_text(textwrap.dedent(MANIFEST))
    (app / "app.py").write_text(textwrap.dedent(APP))
    res = cli("configure", app)
    assert "resolver/stub (plugin dns)" in res.out
    assert res.out.count("stack/socket") == 1  # the resolver reuses the appliance's stack
    cli("build", app)
    cli("configure", ROOT / "appliances" / "dns", "--zones", "direct")
    cli("build", ROOT / "appliances" / "dns")
    srv = Server(cli.image("dns-unix"), "--zones-path", str(ZONES))
    try:
        res = run_image(cli.image("lookup-unix"), "--names", "www.example.test,nothing.example.test",
                        "--resolver-upstreams", f"127.0.0.1:{srv.port}")
    finally:
        srv.stop()
    assert res.rc == 0, res.out
    assert 'name=www.example.test rtype=A rcode=0 values=192.0.2.10' in res.out
    assert "name=nothing.example.test rtype=A rcode=3" in res.out
    assert "from_cache=True" in res.out
    res = run_image(cli.image("lookup-unix"), "--names", "x")
    assert res.rc == 2 and "missing required key --resolver-upstreams" in res.out
