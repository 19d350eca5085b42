"""auth.server_main: arguments, addresses, bind failures."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from auth import server_main
from auth.testing import AuthServerProcess


def test_defaults_bind_loopback_8081() -> None:
    args = server_main.parse_args([])
    assert (args.host, args.port, args.log_format) == ("127.0.0.1", 8081, "json")


def test_addresses_are_printable_for_ipv4_and_ipv6() -> None:
    assert server_main._address("127.0.0.1", 5) == "127.0.0.1:5"
    assert server_main._address("::1", 5) == "[::1]:5"


def test_port_in_use_fails_with_status_1(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = AuthServerProcess(tmp_path / "data", port=port, startup_timeout=30)
        with pytest.raises(RuntimeError, match=r"rc=1"):
            process.start()
    assert "auth_server_failed" in process.log_text()
