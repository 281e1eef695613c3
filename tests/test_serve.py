"""The served page under rude clients: HEAD, idle connections, a full house, connection resets."""

import http.client
import json
import socket
import struct
import time

import numpy as np
import pytest

from edge.serve import Broadcast, Server, after_frame, lan_address, parse_address


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


def test_idle_connections_hold_no_client_slot_and_are_hung_up_on(server):
    """Connections that never send a byte (a scanner, or someone holding the page hostage by renewing them)
    wait without a client slot: a real client is served while many of them are open, and each is hung up
    once its request line is overdue."""
    idle = [socket.create_connection(address(server)) for _ in range(30)]  # ten times the 3 client slots
    time.sleep(0.1)
    assert request(server, "GET", "/stats.json")[0] == 200
    start = time.monotonic()
    for sock in idle:
        sock.settimeout(10)
        assert sock.recv(1) == b"", "the server hung up on an idle client"
        sock.close()
    assert time.monotonic() - start < 8, "within the request line's 2 s (and the 0.5 s idle timeout)"


def test_a_full_house_gets_503_and_a_full_waiting_room_too():
    """Clients being answered take the slots (three streams here); past the waiting room's bound, a new
    connection is refused at once: threads stay bounded whatever the number of connections."""
    broadcast = Broadcast()
    broadcast.publish(np.zeros((24, 32, 3), np.uint8), {"frames": 1})
    server = Server(("127.0.0.1", 0), broadcast, "test", timeout=5, max_clients=3, max_waiting=4)
    try:
        streams = []
        for _ in range(3):
            sock = socket.create_connection(address(server), timeout=5)
            sock.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.0 200"
            streams.append(sock)
        status, headers, _ = request(server, "GET", "/stats.json")
        assert status == 503 and headers["Retry-After"] == "5", "a fourth client while three are answered"
        waiting = [socket.create_connection(address(server)) for _ in range(4)]
        time.sleep(0.2)
        extra = socket.create_connection(address(server), timeout=5)
        assert extra.recv(12) == b"HTTP/1.0 503", "the fifth connection with nothing sent yet is refused"
        for sock in [*streams, *waiting, extra]:
            sock.close()
        deadline = time.monotonic() + 10
        while request(server, "GET", "/stats.json")[0] != 200:
            assert time.monotonic() < deadline, "the slots come back"
            time.sleep(0.1)
    finally:
        server.close()


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


@pytest.fixture
def slow_server():
    broadcast = Broadcast()
    broadcast.publish(np.zeros((24, 32, 3), np.uint8), {"frames": 1})
    server = Server(("127.0.0.1", 0), broadcast, "test", timeout=2.0, max_clients=3, header_time=1.0)
    yield server
    server.close()


def get(server, path: str) -> int:
    sock = socket.create_connection(server.httpd.server_address[:2], timeout=5)
    sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    status = sock.recv(64).split(b" ")[1]
    sock.close()
    return int(status)


def test_clients_sending_a_header_line_at_a_time_hold_no_slot_and_are_cut_off(slow_server):
    """Each slow client sends a header line every 0.4 s, inside the 2 s idle timeout, for ever: it waits
    without a client slot (a real client is served meanwhile), and the 1 s total for the headers ends it."""
    slow = [socket.create_connection(slow_server.httpd.server_address[:2]) for _ in range(3)]
    for sock in slow:
        sock.sendall(b"GET / HTTP/1.0\r\n")
    assert get(slow_server, "/") == 200, "three slow clients, as many as the slots, lock nobody out"
    cut = set()
    start = time.monotonic()
    while len(cut) < 3 and time.monotonic() - start < 10:
        for i, sock in enumerate(slow):
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                cut.add(i)
        time.sleep(0.4)
    assert cut == {0, 1, 2}, "the server hung up on every slow client"
    assert get(slow_server, "/") == 200


def test_a_malformed_query_gets_400_and_no_log_line(capfd):
    assert [after_frame(q) for q in ("", "after=7", "after=²", "after=-1", "after=1e3", "after=" + "9" * 40)] == [
        0,
        7,
        None,
        None,
        None,
        None,
    ]
    broadcast = Broadcast()
    broadcast.publish(np.zeros((24, 32, 3), np.uint8), {"frames": 1})
    # More slots than requests: a handler thread still closing its connection on a loaded machine
    # must not turn the next request into a 503.
    server = Server(("127.0.0.1", 0), broadcast, "test", timeout=2.0, max_clients=16)
    try:
        for _ in range(5):
            assert get(server, "/frame.jpg?after=%C2%B2") == 400
        assert get(server, "/frame.jpg?after=0") == 200
    finally:
        server.close()
    assert capfd.readouterr().err == ""


def test_an_ipv6_address_is_served_in_brackets():
    assert parse_address("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("8080²")
    if not socket.has_ipv6:
        pytest.skip("this kernel has no IPv6")
    try:
        server = Server(("::1", 0), Broadcast(), "test")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        assert server.url.startswith("http://[::1]:")
    finally:
        server.close()
