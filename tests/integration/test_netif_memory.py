"""The memory devices wired together in one process, and the plugin's registration."""

from __future__ import annotations

import asyncio
import io

import pytest

from ingot.errors import KeyValueError
from ingot.log import Logger, Sink
from ingot.plugins import netif
from ingot.plugins.netif import memory
from ingot.plugins.netif.device import QUEUE
from ingot.registry import DeviceContext
from ingot.signatures import MessageTooLong
from ingot.testing.devices import check_closing

FRAME = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x06" + bytes(28)


def context(kind: str, segment: str, **keys) -> DeviceContext:
    keys = {"segment": segment, "mtu": 1500, **keys}
    if kind == "net":
        keys.setdefault("mac", "")
    return DeviceContext(name=kind, kind=kind, backend="memory", target="unix", keys=keys,
                         deps={}, data=None, log=Logger(kind, Sink(io.StringIO(), "debug")))


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, 5)
    return asyncio.run(bounded())


def test_two_devices_on_one_segment_talk_and_do_not_hear_themselves():
    a = memory.connect_net(context("net", "t-pair"))
    b = memory.connect_net(context("net", "t-pair", mac="02:aa:00:00:00:02"))
    assert a.mac == bytes.fromhex("020000000001") and b.mac == bytes.fromhex("02aa00000002")

    async def main():
        a.write(FRAME)
        b.write(FRAME[::-1])
        assert await b.read() == FRAME
        assert await a.read() == FRAME[::-1]
        assert not a._items and not b._items
    run(main())
    assert a.stats_dict()["tx_packets"] == 1 and b.stats_dict()["rx_packets"] == 1
    a.close()
    b.close()


def test_a_test_attaches_to_a_devices_segment():
    dev = memory.connect_tun(context("tun", "t-probe"))
    probe = memory.segment("t-probe", "tun").attach()
    packet = bytes.fromhex("4500001c") + bytes(24)

    async def main():
        probe.write(packet)
        got = await dev.read()
        dev.write(bytearray(got))  # a mutable buffer is copied, not kept
        return await probe.read()
    assert run(main()) == packet
    dev.close()
    probe.close()


def test_a_segment_is_a_hub():
    seg = memory.segment("t-hub")
    ports = [seg.attach() for _ in range(3)]

    async def main():
        ports[0].write(FRAME)
        return [await p.read() for p in ports[1:]]
    assert run(main()) == [FRAME, FRAME]
    assert not ports[0]._items
    ports[1].close()
    assert len(seg.ports) == 2
    for p in ports:
        p.close()


def test_limits_drops_and_closing():
    seg = memory.segment("t-limits")
    a, b = seg.attach(mtu=1500), seg.attach()
    with pytest.raises(MessageTooLong):
        a.write(bytes(1515))
    a.write(bytes(1514))
    a.write(bytes(13))  # shorter than an Ethernet header
    assert a.stats.malformed == 1 and a.dropped == 1
    for _ in range(QUEUE + 10):
        a.write(FRAME)
    assert b.stats.rx_dropped == 11 and a.dropped == 12  # the 1514-byte frame waits too

    run(check_closing(a, FRAME))
    b.write(FRAME)  # nobody left to hear it: fine
    b.close()


def test_segments_by_kind_and_name_are_separate():
    net, tun = memory.segment("t-same"), memory.segment("t-same", "tun")
    assert net is not tun and memory.segment("t-same") is net
    with pytest.raises(ValueError):
        memory.segment("x", "ethernet")


def test_the_plugin_registers_five_backends_on_linux_targets():
    specs = {(s.kind, s.backend): s for s in netif.ingot_devices_register()}
    assert sorted(specs) == [("net", "afpacket"), ("net", "memory"), ("net", "tap"),
                             ("tun", "memory"), ("tun", "tun")]
    for (kind, backend), spec in specs.items():
        assert not spec.default_on
        if backend != "memory":
            assert spec.targets == ("unix", "vm", "qubes")
        module, _, func = spec.factory.partition(":")
        assert callable(getattr(__import__(module, fromlist=[func]), func))
    keys = {name: {k.name: k.default for k in spec.keys} for name, spec in specs.items()}
    assert keys[("net", "tap")] == {"ifname": "tap0", "vnet-hdr": False, "offload": True,
                                    "mac": ""}
    assert keys[("tun", "tun")] == {"ifname": "tun0", "vnet-hdr": False, "offload": True}
    assert keys[("net", "afpacket")] == {"ifname": "eth0", "vnet-hdr": True,
                                         "promiscuous": False}
    assert keys[("net", "memory")] == {"segment": "default", "mtu": 1500, "mac": ""}


@pytest.mark.parametrize("name,text", [("ifname", "a/b"), ("ifname", "x" * 16),
                                       ("ifname", "has space"), ("mac", "01:00:5e:00:00:01"),
                                       ("mac", "02:00"), ("mtu", "20")])
def test_bad_key_values_are_refused(name, text):
    spec = {s.backend: s for s in netif.ingot_devices_register() if s.kind == "net"}
    backend = "memory" if name == "mtu" else "tap"
    (k,) = [k for k in spec[backend].keys if k.name == name]
    with pytest.raises(KeyValueError):
        k.parse(text)
