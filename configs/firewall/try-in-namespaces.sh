#!/bin/bash
# Try a firewall image without Qubes: one client VM, the firewall and an upstream
# network as Linux network namespaces (root needed), the example QubesDB file with
# the client behind a veth. Everything it makes is removed when it ends.
#
#   bash configs/firewall/try-in-namespaces.sh images/firewall-unix.pyz [python|nftables]
#
# Prints what the client sees: ping and TCP 80 upstream allowed (and masqueraded),
# TCP 8080 refused with ICMP "administratively prohibited" by the client's rules.
set -euo pipefail
image=$(realpath "$1")
backend=${2:-python}
here=$(dirname "$(realpath "$0")")
tag=$$
c=ingot-try-c$tag fw=ingot-try-fw$tag up=ingot-try-up$tag
work=$(mktemp -d)
fwpid=""

cleanup() {
    [ -n "$fwpid" ] && kill "$fwpid" 2>/dev/null && wait "$fwpid" 2>/dev/null || true
    for ns in "$c" "$fw" "$up"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

for ns in "$c" "$fw" "$up"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add vif11.0 netns "$fw" type veth peer name eth0 netns "$c"
ip link add uplink netns "$fw" type veth peer name eth0 netns "$up"
for dev in "$fw vif11.0" "$fw uplink" "$c eth0" "$up eth0"; do
    set -- $dev; ip -n "$1" link set "$2" up
done
# the client VM: 10.137.0.11/32, its gateway the firewall (as Qubes sets a VM up)
ip -n "$c" addr add 10.137.0.11/32 dev eth0
ip -n "$c" route add 10.137.0.1/32 dev eth0
ip -n "$c" route add default via 10.137.0.1 dev eth0
# upstream: the firewall's gateway, with a web server on port 80 and 8080
ip -n "$up" addr add 10.200.0.1/24 dev eth0
# the firewall's own kernel address (the python data plane answers for 10.200.0.2)
if [ "$backend" = python ]; then
    ip -n "$fw" addr add 10.200.0.3/24 dev uplink
    filter=(--uplink-ifname uplink)
else
    ip -n "$fw" addr add 10.200.0.2/24 dev uplink
    filter=(--filter-uplink-ifname uplink)
fi
for port in 80 8080; do
    ip netns exec "$up" python3 -m http.server -b 10.200.0.1 "$port" -d "$work" \
        >/dev/null 2>&1 &
done

ip netns exec "$fw" python3 "$image" --qubesdb-path "$here/qubesdb.json" "${filter[@]}" \
    --log-level warning >"$work/fw.log" 2>&1 &
fwpid=$!
for _ in $(seq 100); do
    ip netns exec "$c" ping -c1 -W1 10.200.0.1 >/dev/null 2>&1 && break
    sleep 0.2
done

probe() {
    ip netns exec "$c" python3 - "$1" <<'EOF'
import errno, socket, sys
port = int(sys.argv[1])
try:
    with socket.create_connection(("10.200.0.1", port), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        print(f"tcp {port}: {s.recv(12).decode()}")
except OSError as exc:
    print(f"tcp {port}: {errno.errorcode.get(exc.errno, exc)}")
EOF
}
ip netns exec "$c" ping -c2 -W2 10.200.0.1 | grep -E "packets transmitted"
probe 80
probe 8080
kill "$fwpid"; wait "$fwpid" || { echo "firewall exited with $?"; cat "$work/fw.log"; exit 1; }
fwpid=""
echo "firewall stopped cleanly"
