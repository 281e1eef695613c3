"""The served page under rude clients: HEAD, idle connections, a full house, connection resets."""

import http.client
import json
import socket
import struct
import time

import numpy as np
import pytest

from edge.serve import Broadcast, Server, lan_address


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


@pytest.mark.parametrize("path", ["/", "/stats.json", "/stream.mjpg", "/frame.jpg?after=0"])
def test_head_answers_like_get_without_a_body(server, path):
    status, headers, body = request(server, "HEAD", path)
    get_status, get_headers, get_body = request(server, "GET", path)
    assert status == get_status == 200 and body == b"" and get_body
    assert headers["Content-Type"] == get_headers["Content-Type"]
    if path != "/stream.mjpg":
        assert int(headers["Content-Length"]) == len(get_body)


def test_each_frame_comes_with_its_own_figures_then_204_then_503_at_the_end(server):
    status, headers, body = request(server, "GET", "/frame.jpg?after=0")
    assert status == 200 and headers["X-Frame"] == "1" and json.loads(headers["X-Stats"]) == {"frames": 1}
    assert body[:2] == b"\xff\xd8"
    server.broadcast.publish(np.zeros((24, 32, 3), np.uint8), {"frames": 2, "top": [{"label": "ü\n"}]})
    status, headers, _ = request(server, "GET", "/frame.jpg?after=1")
    assert headers["X-Frame"] == "2" and json.loads(headers["X-Stats"])["top"][0]["label"] == "ü\n"
    start = time.monotonic()
    assert request(server, "GET", "/frame.jpg?after=2")[0] == 204, "nothing newer within the wait"
    assert 0.5 < time.monotonic() - start < 60, "the server's one-second wait, then an answer"
    assert request(server, "GET", "/frame.jpg?after=junk")[0] == 400, "not a frame number"
    server.broadcast.close()
    assert request(server, "GET", "/frame.jpg?after=2")[0] == 503


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


def test_bound_to_all_interfaces_it_names_the_lan_address_to_open(server):
    assert server.lan_url is None, "bound to loopback: nothing to open from elsewhere"
    everywhere = Server(("0.0.0.0", 0), Broadcast(), "test")
    try:
        lan, port = lan_address(), everywhere.httpd.server_address[1]
        assert everywhere.lan_url == (f"http://{lan}:{port}/" if lan else None)
        if lan:
            assert socket.inet_aton(lan) and not lan.startswith("0."), lan
            assert request_url(everywhere.lan_url + "stats.json") == 200, "reachable at that address"
    finally:
        everywhere.close()


def request_url(url: str) -> int:
    host, port = url.split("/")[2].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("GET", "/" + url.split("/", 3)[3])
    status = connection.getresponse().status
    connection.close()
    return status
