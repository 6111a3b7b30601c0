"""The tests fail if anything tries the network: check the guard itself, here and in subprocesses."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def test_outbound_connection_is_blocked() -> None:
    with pytest.raises(OSError, match="network access blocked"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)


def test_name_lookup_is_blocked() -> None:
    with pytest.raises(OSError, match="network access blocked"):
        socket.getaddrinfo("huggingface.co", 443)


def test_loopback_is_allowed() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with socket.create_connection(server.getsockname(), timeout=1):
        pass
    server.close()


def test_subprocesses_are_guarded_too() -> None:
    code = "import socket; socket.create_connection(('192.0.2.1', 443), timeout=1)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "network access blocked" in result.stderr
