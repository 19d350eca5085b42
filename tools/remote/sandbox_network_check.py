"""Checks that a test runs with loopback and no other network.

Every test target is tagged ``block-network`` (tools/python.bzl), so Bazel's linux-sandbox
gives it a network namespace of its own in which only ``lo`` exists. This check is itself
such a test: it fails when a test would have the network after all -- run without the
sandbox (``--spawn_strategy=local``, or a machine where Bazel falls back to the
processwrapper sandbox) or on a remote worker that leaves the network on -- so that
cannot happen unnoticed. It sends nothing off the machine: connecting a UDP socket only
looks up a route, and the address is in TEST-NET-2 (RFC 5737), which no one owns.
"""

from __future__ import annotations

import errno
import socket
import sys

#: TEST-NET-2 (RFC 5737): reserved for documentation, never routed on the internet.
OUTSIDE = ("198.51.100.1", 9)
LOOPBACK = "127.0.0.1"


def route_outside() -> str | None:
    """None when no route leads off the machine, else what connect() found."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect(OUTSIDE)
        except OSError as exc:
            if exc.errno == errno.ENETUNREACH:
                return None
            return f"unexpected error {errno.errorcode.get(exc.errno or 0)}: {exc}"
        return f"a route to {OUTSIDE[0]} exists (local address {udp.getsockname()[0]})"


def loopback_echo() -> bytes:
    """Sends a few bytes over a TCP connection on loopback and returns what arrived."""
    with socket.create_server((LOOPBACK, 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection((LOOPBACK, port), timeout=5) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                return conn.recv(4)


def main() -> int:
    interfaces = sorted(name for _, name in socket.if_nameindex())
    outside = route_outside()
    echoed = loopback_echo()
    print(f"interfaces: {interfaces}")
    print(f"route off the machine: {outside or 'none (ENETUNREACH)'}")
    print(f"loopback TCP echo: {echoed!r}")
    failures = []
    if interfaces != ["lo"]:
        failures.append(f"network interfaces other than lo: {interfaces}")
    if outside is not None:
        failures.append(outside)
    if echoed != b"ping":
        failures.append(f"loopback echo returned {echoed!r}")
    for failure in failures:
        print(f"FAIL: {failure}: this test is not network-isolated", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
