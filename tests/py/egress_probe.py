"""Try to reach destinations the way a shadow's code would, and say what happened.

Arguments: PROTO,HOST,PORT ... (PROTO tcp or udp; HOST an IPv4 or IPv6 address). For each, one
line "PROTO,HOST,PORT ok" or "PROTO,HOST,PORT errno N": a TCP connect, or one unconnected UDP
datagram (sendto). Run by tests/tests/egress_fence_b.rs inside a test cgroup and namespace.
"""
import socket
import sys


def attempt(proto, host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.settimeout(5)
    try:
        if proto == "tcp":
            s.connect((host, port))
        else:
            s.sendto(b"shadow egress probe", (host, port))
        return "ok"
    except OSError as e:
        return f"errno {e.errno}"
    finally:
        s.close()


for arg in sys.argv[1:]:
    proto, host, port = arg.split(",")
    print(arg, attempt(proto, host, int(port)), flush=True)
