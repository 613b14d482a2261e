#!/bin/bash
# Try a VPN gateway image on one machine: a client, the gateway and a LAN behind it as Linux
# network namespaces (root needed), a stock `openvpn` client with the example certificates.
# Everything it makes is removed when it ends.
#
#   bash configs/vpn/try-in-namespaces.sh images/vpn-unix.pyz [client1|client2|revoked]
#
#   cli 10.200.7.2 --veth-- 10.200.7.1 srv [tun ovpn0 10.200.8.1/24] 10.200.9.1 --veth-- 10.200.9.2 lan
#
# The gateway runs in `srv` on the example config (configs/vpn/server), its clients' packets
# leave through the tun interface ovpn0 and the kernel of `srv` masquerades them out to `lan`
# (nftables), so the LAN host answers the tunnel without a route back to it. The client in
# `cli` is configs/vpn/clients/client1.conf with `remote` set to the gateway's veth address.
# Prints what the client sees: the tunnel up, a ping to the gateway's tunnel address and one to
# the LAN host, then the gateway's own log lines and its exit on SIGTERM. With `revoked` (a
# certificate in the example CRL) the gateway refuses the client instead.
set -euo pipefail
image=$(realpath "$1")
who=${2:-client1}
here=$(dirname "$(realpath "$0")")
openvpn=$(command -v openvpn || echo /usr/sbin/openvpn)
[ -x "$openvpn" ] || { echo "openvpn not found: install the package 'openvpn'"; exit 1; }
tag=$$
cli=ingot-vpn-cli$tag srv=ingot-vpn-srv$tag lan=ingot-vpn-lan$tag
gw_ip=10.200.7.1
work=$(mktemp -d)
gwpid="" clipid=""

cleanup() {
    [ -n "$clipid" ] && kill "$clipid" 2>/dev/null && wait "$clipid" 2>/dev/null || true
    [ -n "$gwpid" ] && kill "$gwpid" 2>/dev/null && wait "$gwpid" 2>/dev/null || true
    for ns in "$cli" "$srv" "$lan"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# wait_for FILE TEXT PID SECONDS: until FILE holds TEXT (fails if PID exits first)
wait_for() {
    for _ in $(seq $(( $4 * 10 ))); do
        grep -qF -- "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    echo "'$2' not seen in $4 s; $1 ends with:"; tail -n 30 "$1"
    return 1
}

for ns in "$cli" "$srv" "$lan"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add eth0 netns "$cli" type veth peer name wan netns "$srv"
ip link add lan netns "$srv" type veth peer name eth0 netns "$lan"
for dev in "$cli eth0" "$srv wan" "$srv lan" "$lan eth0"; do
    set -- $dev; ip -n "$1" link set "$2" up
done
ip -n "$cli" addr add 10.200.7.2/24 dev eth0
ip -n "$srv" addr add "$gw_ip/24" dev wan
ip -n "$srv" addr add 10.200.9.1/24 dev lan
ip -n "$lan" addr add 10.200.9.2/24 dev eth0      # no route back to 10.200.8.0/24: NAT does it
# the gateway's tunnel interface: made here, addressed and NATed by the host (srv's kernel)
ip -n "$srv" tuntap add ovpn0 mode tun
ip -n "$srv" addr add 10.200.8.1/24 dev ovpn0
ip netns exec "$srv" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$srv" nft -f - <<'EOF'
table ip ingot-vpn-nat {
    chain post {
        type nat hook postrouting priority 100;
        oifname "lan" masquerade
    }
}
EOF

ip netns exec "$srv" python3 "$image" --config-path "$here/server" --tun-ifname ovpn0 \
    --stats-interval 0 >"$work/gateway.log" 2>&1 &
gwpid=$!
wait_for "$work/gateway.log" "msg=ready" "$gwpid" 20

# the stock client: client1.conf with the gateway's veth address as its remote
cp "$here"/clients/{ca.crt,"$who".crt,"$who".key,tc.key} "$work/"
chmod 600 "$work/$who.key"
sed -e "s/^remote .*/remote $gw_ip 1194/" -e "s/^cert .*/cert $who.crt/" \
    -e "s/^key .*/key $who.key/" "$here/clients/client1.conf" >"$work/client.conf"
ip netns exec "$cli" "$openvpn" --config "$work/client.conf" --cd "$work" \
    --connect-retry 1 --explicit-exit-notify 1 >"$work/client.log" 2>&1 &
clipid=$!
if [ "$who" = revoked ]; then
    wait_for "$work/gateway.log" 'msg="client gone"' "$gwpid" 20
    echo "client refused: $(grep -m1 -oE 'reason="[^"]*"' "$work/gateway.log")"
else
    wait_for "$work/client.log" "Initialization Sequence Completed" "$clipid" 30
    echo "client connected: $(grep -m1 -oE 'ifconfig [0-9.]+ [0-9.]+' "$work/client.log")," \
         "cipher $(grep -m1 -oE "cipher '[A-Z0-9-]+'" "$work/client.log" | cut -d"'" -f2)"
    ip netns exec "$cli" ping -c2 -W2 10.200.8.1 | grep "packets transmitted" \
        | sed 's/^/gateway 10.200.8.1: /'
    ip netns exec "$cli" ping -c2 -W2 10.200.9.2 | grep "packets transmitted" \
        | sed 's/^/lan host 10.200.9.2: /'
    echo "lan reachable through NAT"
fi

kill "$clipid"; wait "$clipid" || true
clipid=""
wait_for "$work/gateway.log" 'msg="client gone"' "$gwpid" 10 || true
rc=0
kill "$gwpid"; wait "$gwpid" || rc=$?
gwpid=""
echo "gateway log:"
grep -E 'msg=(ready|listening|"client connected"|"client gone"|counters|stopped)' \
    "$work/gateway.log" | sed -E 's/^ts=[^ ]+ //; s/^/  /'
if [ "$rc" -ne 0 ]; then
    echo "gateway exited with $rc"; tail -n 30 "$work/gateway.log"; exit 1
fi
echo "gateway stopped cleanly"
