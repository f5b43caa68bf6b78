"""Hostile control-socket clients: each gets a one-line error or is closed, and nothing
reaches the event loop as an exception (the loop's exception handler stays silent)."""

import asyncio
import json
import socket
import threading
import time

import pytest

from vpnd import control
from vpnd.control import ControlServer, request
from vpnd.daemon import CommandError


class SlowHandler:
    """cmd_up waits like the daemon does for a CHILD_SA; the rest answers at once."""

    def __init__(self):
        self.finished = []

    def status(self):
        return {"connections": [], "ike_sas": []}

    async def cmd_up(self, name, timeout=30.0):
        await asyncio.sleep(0.3)
        self.finished.append(name)
        return {"connection": name, "state": "up"}

    async def cmd_down(self, name, timeout=15.0):
        raise CommandError(f"no connection named {name!r}")

    async def cmd_rekey(self, name, ike=False, timeout=30.0):
        return {}

    async def cmd_reload(self):
        return {"reloaded": True}


class LoopServer:
    def __init__(self, path):
        self.handler = SlowHandler()
        self.loop = asyncio.new_event_loop()
        self.loop_errors = []
        self.loop.set_exception_handler(lambda loop, ctx: self.loop_errors.append(ctx))
        self.srv = ControlServer(str(path), self.handler)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.srv.start(), self.loop).result(5)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.srv.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def srv(tmp_path):
    s = LoopServer(tmp_path / "vpnd.sock")
    yield s
    s.close()
    assert s.loop_errors == []


def connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def read_lines(s, n):
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [json.loads(x) for x in buf.splitlines()]


@pytest.mark.parametrize("line", [
    b"[" * 60000,                    # deeper than the JSON parser's recursion limit
    b'{"a":' * 10000 + b"1" + b"}" * 10000,
    b'{"command": "status", "command": ',
    b'{"command": ["status"]}',
    b'{"command": "up", "name": {"x": 1}}',
    b'{"command": "rekey", "name": "x", "timeout": "1"}',
    b"\x00\x01\x02\xff",
])
def test_malformed_request_gets_one_error_line_and_connection_stays_usable(srv, line):
    with connect(srv.srv.path) as s:
        s.sendall(line + b'\n{"command": "status"}\n')
        first, second = read_lines(s, 2)
    assert first["ok"] is False and isinstance(first["error"], str) and "\n" not in first["error"]
    assert second == {"ok": True, "result": {"connections": [], "ike_sas": []}}


def test_client_disconnecting_while_waiting_for_up(srv):
    with connect(srv.srv.path) as s:
        s.sendall(b'{"command": "up", "name": "site-b"}\n')
    time.sleep(0.6)  # the command completes; its answer goes nowhere
    assert srv.handler.finished == ["site-b"]
    assert request(srv.srv.path, {"command": "status"}, timeout=5)["ok"]


def test_half_open_clients_are_bounded(srv):
    idle = [connect(srv.srv.path) for _ in range(control.MAX_CLIENTS)]
    try:
        time.sleep(0.2)
        with connect(srv.srv.path) as extra:
            extra.sendall(b'{"command": "status"}\n')
            assert read_lines(extra, 1) == [{"ok": False, "error": "too many control connections"}]
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while True:  # the server notices the closed idle clients and serves again
        try:
            if request(srv.srv.path, {"command": "status"}, timeout=5)["ok"]:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_idle_client_is_closed(srv, monkeypatch):
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.2)
    with connect(srv.srv.path) as s:
        s.sendall(b'{"command": "sta')  # never finishes its line
        assert s.recv(100) == b""  # closed by the server, no answer


def test_unknown_command_and_command_error_are_one_line(srv):
    with connect(srv.srv.path) as s:
        s.sendall(b'{"command": "shutdown"}\n{"command": "down", "name": "nope"}\n')
        a, b = read_lines(s, 2)
    assert a["ok"] is False and "unknown command 'shutdown'" in a["error"]
    assert b == {"ok": False, "error": "no connection named 'nope'"}
