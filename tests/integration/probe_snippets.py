"""Source text shared by the probe scripts that firewall tests run inside namespaces
(each script is a string handed to ``python -c``, so it cannot import test code)."""

ERROR_QUEUE = r'''
import socket, struct
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = 25
_ORIGINS = {(socket.SOL_IP, IP_RECVERR): (2, "icmp"),             # SO_EE_ORIGIN_ICMP
            (socket.IPPROTO_IPV6, IPV6_RECVERR): (3, "icmp6")}    # SO_EE_ORIGIN_ICMP6

def icmp_error(s):
    """The ICMP error the socket's error queue holds, as " icmp T/C" (" icmp6 T/C"),
    or "" (the socket needs IP_RECVERR / IPV6_RECVERR set)."""
    s.setblocking(False)  # with a timeout set, Python would first wait for readability
    try:
        _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
    except OSError:
        return ""
    for level, kind, data in anc:
        origin = _ORIGINS.get((level, kind))
        if origin is not None and len(data) >= 8:
            _, got, itype, code = struct.unpack_from("IBBB", data)
            if got == origin[0]:
                return " %s %d/%d" % (origin[1], itype, code)
    return ""
'''
