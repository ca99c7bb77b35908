"""An oversized body always gets its 413, never a connection reset, from a real uvicorn process.

The client sends the whole body before reading the answer (as most HTTP clients do); a server
that answered and closed before reading it would reset the connection under the client's feet.
"""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.integration.conftest import free_port, stack_env, wait_http

pytestmark = pytest.mark.integration

FIVE_MB = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("body-limit")
    env = stack_env(f"sqlite:///{data_dir / 'groklab.db'}", "filesystem://", data_dir,
                    GROKLAB_REAPER_INTERVAL_S="0")
    port = free_port()
    log = open(data_dir / "api.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "api", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", procs=(proc,))
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def post_raw(address: tuple[str, int], body: bytes, chunked: bool, close: bool) -> bytes:
    """POST `body` over a fresh socket, all of it, then read the whole answer."""
    with socket.create_connection(address, timeout=30) as sock:
        head = "POST /api/v1/experiments HTTP/1.1\r\nHost: test\r\n"
        head += "Content-Type: application/json\r\n"
        if close:
            head += "Connection: close\r\n"
        if chunked:
            sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
            for start in range(0, len(body), 65536):
                piece = body[start:start + 65536]
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        else:
            sock.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_thirty_oversized_posts_each_get_a_413_and_no_reset(api_url):
    body = b'{"name": "' + b"x" * FIVE_MB + b'"}'
    statuses = []
    for i in range(30):
        try:
            answer = post_raw(api_url, body, chunked=i % 3 == 2, close=i % 2 == 0)
        except (ConnectionResetError, BrokenPipeError) as exc:
            statuses.append(type(exc).__name__)
            continue
        statuses.append(answer.split(b"\r\n", 1)[0].decode())
        assert b"GROKLAB_MAX_BODY_BYTES" in answer
    resets = [s for s in statuses if "413" not in s]
    assert not resets, f"{len(resets)} of 30 got no 413: {resets}"
