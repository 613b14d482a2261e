"""Ingot's own packet library: sans-I/O parsing and building of Ethernet,
ARP, IPv4, ICMP, UDP, TCP headers, IPv6, ICMPv6 and neighbour discovery, with the
ARP and neighbour caches and IPv4 reassembly as state machines.

Nothing here does I/O: no socket, clock, sleep or randomness. Time is an
argument (``now_ns``, monotonic nanoseconds); state machines return what to
do as frozen dataclasses. The ``direct`` stack imports these modules and
owns the network device and the timers.

==============  ==========================================================
module          what it holds
==============  ==========================================================
``errors``      :class:`ParseError`, the one error parsers raise
``buffers``     what parsers accept; payloads are memoryview slices
``counters``    :class:`Counters`, named "dropped and counted" statistics
``checksum``    Internet checksum, pseudo-header sums, RFC 1624 update
``ethernet``    frames, one VLAN tag, MAC helpers, EtherTypes
``arp``         ARP packets and :class:`ArpCache` (resolve, queue, retry)
``ipv4``        headers, TTL decrement, :class:`Reassembler`
``icmp``        ICMPv4 echo and errors (quoting header + 8 bytes)
``udp``         datagrams with checksum over IPv4/IPv6 pseudo-headers
``tcp``         segment headers and options (no state machine)
``ipv6``        fixed header, extension header chain walk
``icmpv6``      ICMPv6 type/code, echo
``ndp``         neighbour discovery (RFC 4861): NS/NA checks and frames,
                :class:`NeighborCache` (ARP's cache for IPv6)
==============  ==========================================================

Parsers take any bytes-like object and raise only :class:`errors.ParseError`
on bad input; payloads they return borrow the caller's buffer (see
:mod:`.buffers`). This package registers no devices and its ``__init__``
imports nothing: import the modules you use.
"""
