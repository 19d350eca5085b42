"""Acceptance 1: ``server.main`` started as a process, the ``demo`` client against it.

The server runs with ``--grpc-port 0 --ws-port 0 --data-dir <tmp>``; the client registers
a user over gRPC, connects over WebSocket and prints the run's events, which must show the
whole flow in order. SIGTERM then stops the server cleanly.
"""

from __future__ import annotations

from pathlib import Path

from server.testing import ServerProcess, run_client

FLOW = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")


def assert_flow(output: str) -> None:
    """The event types appear in the order of a complete run with tool calls."""
    lines = [line.split() for line in output.splitlines() if line.startswith("seq")]
    kinds = [parts[2] for parts in lines]
    positions = [kinds.index(kind) for kind in FLOW]
    assert positions == sorted(positions), kinds
    assert kinds[-1] == "agent_completed", kinds
    seqs = [int(parts[1]) for parts in lines]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


def test_demo_against_the_embedded_server(tmp_path: Path) -> None:
    server = ServerProcess(
        ["--grpc-port", "0", "--ws-port", "0", "--data-dir", str(tmp_path / "data")],
        log_path=tmp_path / "server.log",
    )
    with server:
        assert server.grpc.startswith("127.0.0.1:")
        assert server.ws.startswith("ws://127.0.0.1:") and server.ws.endswith("/ws")
        first = run_client(["--grpc", server.grpc, "--ws", server.ws, "demo"])
        assert first.returncode == 0, first.stdout + first.stderr + server.log()
        assert "registered demo@example.com" in first.stdout
        assert_flow(first.stdout)
        # A second demo logs the same user in, this time with the Authorization header.
        second = run_client(["--grpc", server.grpc, "--ws", server.ws, "demo", "--auth-header"])
        assert second.returncode == 0, second.stdout + second.stderr
        assert "exists; logging in" in second.stdout
        assert_flow(second.stdout)
    assert server.stop() == 0
    log = server.log()
    assert '"event": "server_stopped"' in log
    assert (tmp_path / "data" / "data.db").exists()
    assert (tmp_path / "data" / "auth" / "keys").is_dir()
