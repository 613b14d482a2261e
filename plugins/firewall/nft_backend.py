"""The ``packet_filter/nftables`` device: the Qubes rules run by the kernel.

The kernel forwards; this backend only configures it, the way a Linux Qubes
firewall VM is configured:

* :meth:`NftFilter.start` turns on IPv4 forwarding and loads the ruleset that
  :func:`ingot.plugins.firewall.nft.compile_ruleset` writes (``nft -f -``).
* :meth:`NftFilter.attach` sets a client interface up as Qubes'
  ``vif-route-qubes`` does for a vif: the client gateway as a ``/32`` on the
  interface (the client's ARP for its gateway is answered), proxy ARP on,
  and a ``/32`` route to the client through it (clients are point-to-point
  links). Stale connection-tracking entries of that address are purged first
  when ``conntrack`` (conntrack-tools) is installed.
* Every change (attach, detach, :meth:`NftFilter.set_rules`) compiles the
  whole table anew and replaces it in one ``nft`` transaction: the next
  packet sees the new rules, and tracked connections, which live outside the
  table, go on (``ct state established,related accept`` first in each client
  chain).
* :meth:`NftFilter.detach` removes the route, the address, the client's chain
  and (with ``conntrack``) the client's tracked connections.
* :meth:`NftFilter.stats` reads the table's named counters (``nft -j list
  table``), one per drop reason, under the names the python backend uses
  (``drop.spoofed``, ``drop.rule``...: :data:`~ingot.plugins.firewall.nft.COUNTERS`),
  plus the number of tracked connections (NAT entries) of the namespace.
* :meth:`NftFilter.close` deletes the table, undoes the routes and addresses
  and puts IPv4 (and IPv6) forwarding back as it was.

Changes are serialised by a lock: ``start``/``attach`` run ``nft`` in a worker
thread (``asyncio.to_thread``) so the loop keeps going; ``set_rules`` and
``detach`` are synchronous by contract and wait for ``nft`` (a few ms).

Keys (on a device named ``packet_filter``: ``--packet-filter-uplink-ifname``):

``uplink-ifname``
    the interface towards upstream (default ``eth0``); what leaves it is
    masqueraded to the setup's ``uplink_ip``.
``table``
    the nftables table (``inet`` family) this backend owns (default
    ``ingot-fw``); it is replaced whole on every change.

IPv6: when the setup has ``uplink_ip6`` and ``client_gateway6`` (Qubes'
``/qubes-ip6`` and ``/qubes-netvm-gateway6``), :meth:`NftFilter.start` turns
on IPv6 forwarding too and a client may be attached by its IPv6 address as
well, on the same interface as its IPv4 one: the interface gets
``client_gateway6/128`` (no duplicate address detection; the kernel then
answers the client's neighbour solicitations for it) and a ``/128`` route to
the client, and the table filters it by its own chain (``dst6`` rules,
ICMPv6 admin-prohibited for drops), masquerades it to ``uplink_ip6`` and lets
neighbour discovery through. The firewall's own uplink address and default
route are the VM's (Qubes' ``setup-ip`` sets them), as for IPv4. Without
those setup fields IPv6 from clients is dropped and an IPv6 client is
refused (``Unsupported``).

Needs the ``nft`` and ``ip`` commands (nftables, iproute2) and root (or
CAP_NET_ADMIN) in the network namespace it configures.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from ingot.log import Logger
from ingot.registry import DeviceContext, DeviceSpec
from ingot.signatures import ClientRules, Closed, DeviceError, FilterSetup, Unsupported

from .nft import (
    COUNTERS,
    check_ifname,
    check_ipv4,
    check_table,
    has_ipv6,
    compile_ruleset,
    delete_script,
    rules_problem,
)

from . import NFT_SPEC
TIMEOUT_S = 10.0
"""How long one ``nft``/``ip``/``conntrack`` command may take."""

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
IP6_FORWARD = "/proc/sys/net/ipv6/conf/all/forwarding"
CONNTRACK_COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"


def nft_spec() -> DeviceSpec:
    """The registry entry of this backend (the plugin registers the same object)."""
    return NFT_SPEC


def connect(ctx: DeviceContext) -> NftFilter:
    """The device factory."""
    return NftFilter(uplink_ifname=ctx.keys["uplink-ifname"], table=ctx.keys["table"],
                     log=ctx.log, uplink_flag=ctx.key_flag("uplink-ifname"))


# --------------------------------------------------------------------------
# commands


def _one_line(text: str) -> str:
    """nft's message on one line: its ``Error:`` lines, else its first line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error:" in ln]
    return "; ".join(errors or lines[:1]) or "no message"


def _run(argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "",
                                           f"no answer after {TIMEOUT_S:g} s")
    except OSError as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


def _interface_exists(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


class NftFilter:
    """:class:`ingot.signatures.PacketFilter` through the kernel and nftables."""

    def __init__(self, *, uplink_ifname: str = "eth0", table: str = "ingot-fw",
                 log: Any = None, uplink_flag: str = "--packet-filter-uplink-ifname",
                 nft: str = "nft", ip: str = "ip", conntrack: str | None = "conntrack"
                 ) -> None:
        """``nft``/``ip``/``conntrack``: the commands (``conntrack=None``: never purge)."""
        try:
            self.uplink = check_ifname(uplink_ifname)
            self.table = check_table(table)
        except ValueError as exc:
            raise DeviceError(str(exc)) from None
        self.log = log or Logger("firewall.nft")
        self._uplink_flag = uplink_flag
        self._nft, self._ip = nft, ip
        self._conntrack = conntrack
        self._conntrack_warned = False
        self._lock = threading.Lock()
        self._setup: FilterSetup | None = None
        self._clients: dict[str, str] = {}       # client ip -> interface
        self._rules: dict[str, ClientRules] = {}
        self._forward_before: str | None = None
        self._forward6_before: str | None = None
        self._closed = False
        self._final: dict[str, int] = {}

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"packet_filter/nftables (table {self.table}) is closed")

    def _read_counters(self) -> dict[str, tuple[int, int]]:
        proc = _run([self._nft, "-j", "list", "table", "inet", self.table])
        if proc.returncode != 0:
            return {}
        try:
            items = json.loads(proc.stdout).get("nftables", [])
        except (ValueError, AttributeError):
            return {}
        out = {}
        for item in items:
            counter = item.get("counter") if isinstance(item, dict) else None
            if isinstance(counter, dict) and counter.get("table") == self.table:
                out[str(counter.get("name"))] = (int(counter.get("packets", 0)),
                                                 int(counter.get("bytes", 0)))
        return out

    def script(self) -> str:
        """The script the current state compiles to (what the next change applies)."""
        if self._setup is None:
            raise DeviceError("packet_filter/nftables: not started")
        # copies: a worker thread compiles while the loop's thread may change the state
        clients, rules = dict(self._clients), dict(self._rules)
        return compile_ruleset(self._setup, clients, rules, self.table,
                               uplink_ifname=self.uplink, counters=self._read_counters())

    def _apply(self) -> None:
        """Replace the table with one compiled from the current state (under the lock)."""
        with self._lock:
            try:
                script = self.script()
            except ValueError as exc:
                raise DeviceError(f"packet_filter/nftables: {exc}") from None
            proc = _run([self._nft, "-f", "-"], input=script)
        if proc.returncode != 0:
            raise DeviceError(f"nft refused the ruleset of table inet {self.table}: "
                              f"{_one_line(proc.stderr or proc.stdout)}")

    def _ip_cmd(self, *args: str, check: bool = True) -> None:
        proc = _run([self._ip, *args])
        if check and proc.returncode != 0:
            raise DeviceError(f"ip {' '.join(args)}: {_one_line(proc.stderr)}")

    def _sysctl(self, path: str, value: str) -> str | None:
        """Write ``value`` to ``/proc/sys/...``; the previous value, None if unreadable."""
        try:
            with open(path) as f:
                old = f.read().strip()
        except OSError:
            old = None
        with open(path, "w") as f:
            f.write(value)
        return old

    def _purge_conntrack(self, client_ip: str) -> None:
        """Forget the tracked connections from and to ``client_ip`` (conntrack-tools)."""
        tool = shutil.which(self._conntrack) if self._conntrack else None
        if tool is None:
            if self._conntrack and not self._conntrack_warned:
                self._conntrack_warned = True
                self.log.warning("conntrack (conntrack-tools) is not installed: tracked "
                                 "connections of attached/detached clients are left to time "
                                 "out", client=client_ip)
            return
        family = "ipv6" if ":" in client_ip else "ipv4"
        for flag in ("-s", "-d"):
            # exit status 1 with "0 flow entries have been deleted" is normal
            _run([tool, "-D", "-f", family, flag, client_ip])

    def _client_ip(self, client_ip: object) -> str:
        try:
            addr = ipaddress.ip_address(client_ip)  # type: ignore[arg-type]
        except ValueError:
            raise DeviceError(f"packet_filter/nftables: {client_ip!r} is not an IP "
                              "address") from None
        if addr.version != 4 and not (self._setup is not None and has_ipv6(self._setup)):
            raise Unsupported(f"IPv6 client {addr} (the setup has no IPv6 addresses: IPv6 "
                              "is dropped)", "packet_filter/nftables")
        return str(addr)

    # ----------------------------------------------------------------- contract

    async def start(self, setup: FilterSetup) -> None:
        """Enable IPv4 forwarding and load the ruleset (no clients yet)."""
        import asyncio

        self._check_open()
        if self._setup is not None:
            raise DeviceError("packet_filter/nftables: started twice")
        for tool, package in ((self._nft, "nftables"), (self._ip, "iproute2")):
            if shutil.which(tool) is None:
                raise DeviceError(f"packet_filter/nftables: the {tool!r} command is missing "
                                  f"(install {package})")
        if not _interface_exists(self.uplink):
            raise DeviceError(f"packet_filter/nftables: uplink interface {self.uplink!r} "
                              f"does not exist (set it with {self._uplink_flag})")
        try:
            compile_ruleset(setup, {}, {}, self.table, uplink_ifname=self.uplink)
            if setup.client_gateway:
                check_ipv4(setup.client_gateway, "client_gateway")
        except ValueError as exc:
            raise DeviceError(f"packet_filter/nftables: bad setup: {exc}") from None
        try:
            self._forward_before = self._sysctl(IP_FORWARD, "1")
        except OSError as exc:
            raise DeviceError(f"packet_filter/nftables: cannot enable IPv4 forwarding "
                              f"({IP_FORWARD}): {exc.strerror or exc}") from None
        if has_ipv6(setup):
            try:
                self._forward6_before = self._sysctl(IP6_FORWARD, "1")
            except OSError as exc:
                self._restore_forwarding()
                raise DeviceError(f"packet_filter/nftables: cannot enable IPv6 forwarding "
                                  f"({IP6_FORWARD}): {exc.strerror or exc}") from None
        self._setup = setup
        try:
            await asyncio.to_thread(self._apply)
        except BaseException:
            self._setup = None
            self._restore_forwarding()
            raise
        self.log.info("nftables ruleset loaded", table=f"inet {self.table}",
                      uplink=self.uplink, uplink_ip=setup.uplink_ip,
                      virtual_dns=",".join(setup.virtual_dns),
                      upstream_dns=",".join(setup.upstream_dns))

    async def attach(self, client_ip: str, ifname: str) -> None:
        """Route ``client_ip`` through ``ifname`` (a vif) and give it a chain (deny all)."""
        import asyncio

        self._check_open()
        ip = self._client_ip(client_ip)
        try:
            ifname = check_ifname(ifname)
        except ValueError as exc:
            raise DeviceError(f"packet_filter/nftables: {exc}") from None
        if self._setup is None:
            raise DeviceError("packet_filter/nftables: attach before start")
        if ifname == self.uplink:
            raise DeviceError(f"packet_filter/nftables: {ifname} is the uplink interface")
        for other, other_if in self._clients.items():
            # one IPv4 and one IPv6 address (the same VM's) per interface
            if other_if == ifname and other != ip and (":" in other) == (":" in ip):
                raise DeviceError(f"packet_filter/nftables: interface {ifname} already "
                                  f"serves client {other}")
        if not _interface_exists(ifname):
            raise DeviceError(f"packet_filter/nftables: interface {ifname!r} does not exist")
        old_if = self._clients.get(ip)
        if old_if is not None and old_if != ifname:
            self._unroute(ip, old_if)
        self._clients[ip] = ifname
        try:
            # the anti-spoofing rules and the (deny-all) chain come first, then the link
            await asyncio.to_thread(self._apply)
            await asyncio.to_thread(self._purge_conntrack, ip)
            await asyncio.to_thread(self._route, ip, ifname)
        except BaseException:
            self._clients.pop(ip, None)
            await asyncio.to_thread(self._unroute, ip, ifname)
            try:
                await asyncio.to_thread(self._apply)
            except DeviceError as exc:
                self.log.error("could not take the client out again", client=ip, error=exc)
            raise
        self.log.info("client attached", client=ip, ifname=ifname,
                      rules="set" if ip in self._rules else "none (deny all)")

    def _route(self, ip: str, ifname: str) -> None:
        assert self._setup is not None
        if ":" in ip:
            self._route6(ip, ifname)
            return
        gateway = self._setup.client_gateway
        self._ip_cmd("link", "set", "dev", ifname, "up")
        if gateway:
            self._ip_cmd("addr", "replace", f"{gateway}/32", "dev", ifname)
        try:
            self._sysctl(f"/proc/sys/net/ipv4/conf/{ifname}/proxy_arp", "1")
        except OSError as exc:
            raise DeviceError(f"packet_filter/nftables: proxy ARP on {ifname}: "
                              f"{exc.strerror or exc}") from None
        self._ip_cmd("route", "replace", f"{ip}/32", "dev", ifname)

    def _route6(self, ip: str, ifname: str) -> None:
        """The IPv6 side of a client's link: the gateway6 as a /128 on the
        interface (the kernel answers neighbour solicitations for it), a /128
        route to the client."""
        assert self._setup is not None
        conf = f"/proc/sys/net/ipv6/conf/{ifname}/"
        try:
            self._sysctl(conf + "disable_ipv6", "0")
            self._sysctl(conf + "accept_dad", "0")
        except OSError as exc:
            raise DeviceError(f"packet_filter/nftables: IPv6 on {ifname}: "
                              f"{exc.strerror or exc}") from None
        self._ip_cmd("link", "set", "dev", ifname, "up")
        self._ip_cmd("-6", "addr", "replace", f"{self._setup.client_gateway6}/128", "dev",
                     ifname, "nodad")
        self._ip_cmd("-6", "route", "replace", f"{ip}/128", "dev", ifname)

    def _unroute(self, ip: str, ifname: str) -> None:
        """Undo :meth:`_route`; the interface may be gone already (never raises)."""
        if not _interface_exists(ifname):
            return
        if ":" in ip:
            self._ip_cmd("-6", "route", "del", f"{ip}/128", "dev", ifname, check=False)
            gateway6 = self._setup.client_gateway6 if self._setup else ""
            if gateway6:
                self._ip_cmd("-6", "addr", "del", f"{gateway6}/128", "dev", ifname,
                             check=False)
            return
        self._ip_cmd("route", "del", f"{ip}/32", "dev", ifname, check=False)
        gateway = self._setup.client_gateway if self._setup else ""
        if gateway:
            self._ip_cmd("addr", "del", f"{gateway}/32", "dev", ifname, check=False)
        try:
            self._sysctl(f"/proc/sys/net/ipv4/conf/{ifname}/proxy_arp", "0")
        except OSError:
            pass

    def detach(self, client_ip: str) -> None:
        """Forget the client: its chain, route, rules and tracked connections."""
        try:
            ip = str(ipaddress.ip_address(client_ip))
        except ValueError:
            return
        ifname = self._clients.pop(ip, None)
        self._rules.pop(ip, None)
        if ifname is None or self._closed or self._setup is None:
            return
        try:
            self._apply()
        except DeviceError as exc:
            self.log.error("could not remove the client's chain", client=ip, error=exc)
        self._unroute(ip, ifname)
        self._purge_conntrack(ip)
        self.log.info("client detached", client=ip, ifname=ifname)

    def set_rules(self, rules: ClientRules) -> None:
        """Replace one client's rules; applied before this returns (when attached)."""
        self._check_open()
        if not isinstance(rules, ClientRules):
            raise DeviceError(f"packet_filter/nftables: {rules!r} is not ClientRules")
        try:
            ip = str(ipaddress.ip_address(rules.client))
        except ValueError:
            raise DeviceError(f"packet_filter/nftables: client {rules.client!r} is not an "
                              "IP address") from None
        before = self._rules.get(ip)
        self._rules[ip] = rules
        if self._setup is not None:
            problem = rules_problem(rules, self._setup)
            if problem is not None:
                self.log.warning("client denied everything", client=ip, reason=problem)
        if ip in self._clients and self._setup is not None:
            try:
                self._apply()
            except DeviceError:
                if before is None:  # the kernel still has the old rules: so do we
                    self._rules.pop(ip, None)
                else:
                    self._rules[ip] = before
                raise
            self.log.info("rules applied", client=ip, rules=len(rules.rules),
                          policy=rules.policy)

    def stats(self) -> dict[str, int]:
        """Packets per named counter under the python backend's names
        (``forwarded``, ``drop.<reason>``...; see ``nft.COUNTERS``), bytes
        forwarded (``forwarded.bytes``), clients attached, and the tracked
        connections of the namespace (``conntrack.entries``, NAT included)."""
        if self._closed:
            return dict(self._final)
        out: dict[str, int] = {}
        counters = self._read_counters()
        for name, stat in COUNTERS.items():
            if name in counters:
                out[stat] = counters[name][0]
        if "forwarded" in counters:
            out["forwarded.bytes"] = counters["forwarded"][1]
        out["clients"] = len(self._clients)
        try:
            with open(CONNTRACK_COUNT) as f:
                out["conntrack.entries"] = int(f.read().strip())
        except (OSError, ValueError):
            pass
        return out

    def _restore_forwarding(self) -> None:
        for path, attr in ((IP_FORWARD, "_forward_before"), (IP6_FORWARD, "_forward6_before")):
            before = getattr(self, attr)
            if before is not None:
                try:
                    self._sysctl(path, before)
                except OSError:
                    pass
                setattr(self, attr, None)

    def close(self) -> None:
        """Delete the table, undo routes and addresses, restore forwarding. Never raises."""
        if self._closed:
            return
        try:
            self._final = self.stats()
        except Exception:  # noqa: BLE001 - close never raises
            self._final = {}
        self._closed = True
        if self._setup is None:
            return
        try:
            with self._lock:
                proc = _run([self._nft, "-f", "-"], input=delete_script(self.table))
            if proc.returncode != 0:
                self.log.error("could not delete the nftables table", table=self.table,
                               error=_one_line(proc.stderr))
        except Exception as exc:  # noqa: BLE001
            self.log.error("could not delete the nftables table", error=str(exc))
        for ip, ifname in list(self._clients.items()):
            try:
                self._unroute(ip, ifname)
            except Exception:  # noqa: BLE001
                pass
        self._clients.clear()
        self._restore_forwarding()
        self.log.info("nftables ruleset removed", table=f"inet {self.table}")
