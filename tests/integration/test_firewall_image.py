"""The firewall image holds only the backends it was configured with, and bad QubesDB
configuration stops it with one clear line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, Cli, run_image


def _paths(cli: Cli) -> set[str]:
    files = json.loads((cli.cwd / "images" / "firewall-unix.contents.json").read_text())["files"]
    return {f["path"] for f in files}


@pytest.mark.parametrize("backend, present, absent", [
    ("python", {"engine.py", "l2.py", "python_backend.py", "rules.py"},
     {"nft.py", "nft_backend.py"}),
    ("nftables", {"nft.py", "nft_backend.py", "rules.py"},
     {"engine.py", "l2.py", "python_backend.py"}),
])
def test_an_image_holds_only_its_packet_filter(cli: Cli, backend, present, absent):
    extra = ["--uplink", "afpacket"] if backend == "python" else []
    cli("configure", ROOT / "appliances" / "firewall", "--qubesdb", "file", "--filter", backend,
        *extra)
    cli("build", ROOT / "appliances" / "firewall")
    names = {p.rsplit("/", 1)[-1] for p in _paths(cli) if "/firewall/" in p}
    assert present <= names and not absent & names, sorted(names)
    paths = _paths(cli)
    # no DNS server, no qubesdb socket backend, no git: only the stub resolver
    assert not any(p.endswith(("dns/server.py", "qubesdb/socket.py", "kv/git.py"))
                   or "dulwich" in p for p in paths)
    assert any(p.endswith("dns/stub.py") for p in paths)


def test_missing_qubesdb_entries_stop_the_boot_with_one_line(cli: Cli, tmp_path):
    cli("configure", ROOT / "appliances" / "firewall", "--qubesdb", "file",
        "--filter", "nftables")
    cli("build", ROOT / "appliances" / "firewall")
    db = tmp_path / "qubesdb.json"
    db.write_text(json.dumps({"/qubes-ip": "10.200.0.2"}))
    res = run_image(cli.image("firewall-unix"), "--qubesdb-path", db)
    errors = [line for line in res.out.splitlines() if "level=error" in line]
    assert res.rc == 1 and len(errors) == 1, res.out + res.err
    assert "QubesDB has no /qubes-gateway" in errors[0] and "Traceback" not in res.out + res.err
    db.write_text("{ not json")
    res = run_image(cli.image("firewall-unix"), "--qubesdb-path", db)
    assert res.rc == 2 and "qubesdb" in res.out and "Traceback" not in res.out + res.err
