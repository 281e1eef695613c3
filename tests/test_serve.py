"""The served page under rude clients: HEAD, idle connections, a full house, connection resets."""
import http.client
import socket
import struct
import time

import numpy as np
import pytest

from edge.serve import Broadcast, Server


@pytest.fixture
def server():
    broadcast = Broadcast()
    broadcast.publish(np.zeros((24, 32, 3), np.uint8), {"frames": 1})
    server = Server(("127.0.0.1", 0), broadcast, "test", timeout=0.5, max_clients=3)
    yield server
    server.close()


def address(server) -> tuple[str, int]:
    return server.httpd.server_address[:2]


def request(server, method: str, path: str) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection(*address(server), timeout=5)
    connection.request(method, path)
    response = connection.getresponse()
    body = response.read() if path != "/stream.mjpg" or method == "HEAD" else response.read(64)
    connection.close()
    return response.status, dict(response.getheaders()), body


@pytest.mark.parametrize("path", ["/", "/stats.json", "/stream.mjpg"])
def test_head_answers_like_get_without_a_body(server, path):
    status, headers, body = request(server, "HEAD", path)
    get_status, get_headers, get_body = request(server, "GET", path)
    assert status == get_status == 200 and body == b"" and get_body
    assert headers["Content-Type"] == get_headers["Content-Type"]
    if path != "/stream.mjpg":
        assert int(headers["Content-Length"]) == len(get_body)


def test_idle_clients_time_out_and_a_full_house_gets_503(server):
    idle = [socket.create_connection(address(server)) for _ in range(3)]
    time.sleep(0.1)
    status, headers, _ = request(server, "GET", "/stats.json")
    assert status == 503 and headers["Retry-After"] == "5", "a fourth client while three are connected"
    for sock in idle:
        sock.settimeout(3)
        assert sock.recv(1) == b"", "the server hung up on an idle client"
        sock.close()
    assert request(server, "GET", "/stats.json")[0] == 200, "their threads are free again"


def test_a_client_that_resets_leaves_no_traceback(server, capfd):
    for _ in range(5):
        sock = socket.create_connection(address(server))
        sock.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        sock.recv(16)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        sock.close()
    sock = socket.create_connection(address(server))
    sock.sendall(b"GET / HT")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    deadline = time.monotonic() + 5
    while request(server, "GET", "/")[0] != 200:
        assert time.monotonic() < deadline, "the reset clients' slots were never freed"
        time.sleep(0.2)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err
