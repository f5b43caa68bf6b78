"""The control socket protocol: request validation, the server's answers, socket permissions."""

import asyncio
import json
import os
import socket
import stat
import threading
import time

import pytest

from vpnd import control
from vpnd.control import (ControlClientError, ControlServer, ProtocolError, parse_request,
                          request)
from vpnd.daemon import CommandError


# -- parse_request ---------------------------------------------------------------------------

@pytest.mark.parametrize("line,expected", [
    (b'{"command": "status"}', {"command": "status"}),
    (b'{"command": "reload"}\n', {"command": "reload"}),
    (b'{"command": "up", "name": "site-b"}', {"command": "up", "name": "site-b"}),
    (b'{"command": "down", "name": "x", "timeout": 5}', {"command": "down", "name": "x", "timeout": 5.0}),
    (b'{"command": "rekey", "name": "x"}', {"command": "rekey", "name": "x", "ike": False}),
    (b'{"command": "rekey", "name": "x", "ike": true}', {"command": "rekey", "name": "x", "ike": True}),
])
def test_valid_requests(line, expected):
    assert parse_request(line) == expected


@pytest.mark.parametrize("line,reason", [
    (b"not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"command": "shutdown"}', "unknown command 'shutdown'"),
    (b'{}', "unknown command None"),
    (b'{"command": "up"}', "up needs a connection name"),
    (b'{"command": "down", "name": ""}', "needs a connection name"),
    (b'{"command": "up", "name": 7}', "needs a connection name"),
    (b'{"command": "rekey", "name": "x", "ike": "yes"}', "'ike' must be true or false"),
    (b'{"command": "up", "name": "x", "timeout": 0}', "timeout"),
    (b'{"command": "up", "name": "x", "timeout": true}', "timeout"),
    (b'{"command": "up", "name": "x", "timeout": 9999}', "timeout"),
])
def test_invalid_requests(line, reason):
    with pytest.raises(ProtocolError, match=None) as e:
        parse_request(line)
    assert reason in str(e.value)


# -- server ----------------------------------------------------------------------------------

class Handler:
    """Records calls; answers like the daemon would."""

    def __init__(self):
        self.calls = []

    def status(self):
        self.calls.append(("status",))
        return {"connections": [{"name": "site-b", "state": "up"}], "ike_sas": []}

    async def cmd_up(self, name, timeout=30.0):
        self.calls.append(("up", name, timeout))
        if name == "nope":
            raise CommandError("no connection named 'nope'")
        await asyncio.sleep(0.01)
        return {"connection": name, "state": "up"}

    async def cmd_down(self, name, timeout=15.0):
        self.calls.append(("down", name, timeout))
        return {"connection": name, "state": "down"}

    async def cmd_rekey(self, name, ike=False, timeout=30.0):
        self.calls.append(("rekey", name, ike))
        raise RuntimeError("bug with a secret key deadbeef")

    async def cmd_reload(self):
        self.calls.append(("reload",))
        return {"reloaded": True}


class Server:
    """A ControlServer on its own event loop thread, for blocking clients in the test."""

    def __init__(self, path, group=None, handler=None):
        self.handler = handler or Handler()
        self.loop = asyncio.new_event_loop()
        self.loop_errors = []  # anything that reached the event loop as an exception
        self.loop.set_exception_handler(lambda loop, ctx: self.loop_errors.append(ctx))
        self.srv = ControlServer(str(path), self.handler, group=group)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.srv.start(), self.loop).result(5)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.srv.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "sub" / "dir" / "vpnd.sock")
    yield s
    s.close()


def test_socket_directory_created_and_mode_0600(server):
    st = os.stat(server.srv.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_group_mode_0660(tmp_path):
    gid = os.getgid()
    s = Server(tmp_path / "g.sock", group=gid)
    try:
        st = os.stat(s.srv.path)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == gid
    finally:
        s.close()


def test_unknown_group_refused(tmp_path):
    loop = asyncio.new_event_loop()
    try:
        srv = ControlServer(str(tmp_path / "x.sock"), Handler(), group="no-such-group-vpnd")
        with pytest.raises(OSError, match="does not exist"):
            loop.run_until_complete(srv.start())
    finally:
        loop.close()


def test_status_roundtrip(server):
    resp = request(server.srv.path, {"command": "status"})
    assert resp == {"ok": True, "result": {"connections": [{"name": "site-b", "state": "up"}],
                                           "ike_sas": []}}


def test_up_passes_name_and_timeout(server):
    resp = request(server.srv.path, {"command": "up", "name": "site-b", "timeout": 3})
    assert resp == {"ok": True, "result": {"connection": "site-b", "state": "up"}}
    assert ("up", "site-b", 3.0) in server.handler.calls


def test_command_error_is_reason(server):
    resp = request(server.srv.path, {"command": "up", "name": "nope"})
    assert resp == {"ok": False, "error": "no connection named 'nope'"}


def test_internal_error_does_not_leak_message(server):
    resp = request(server.srv.path, {"command": "rekey", "name": "x"})
    assert resp["ok"] is False
    assert resp["error"] == "internal error: RuntimeError"
    assert "deadbeef" not in json.dumps(resp)
    # and the server still answers
    assert request(server.srv.path, {"command": "reload"})["ok"] is True


def test_several_requests_on_one_connection_and_garbage(server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(server.srv.path)
        s.sendall(b'garbage\n\n{"command": "down", "name": "a"}\n{"command": "status"}\n')
        buf = b""
        while buf.count(b"\n") < 3:
            buf += s.recv(65536)
    lines = [json.loads(x) for x in buf.splitlines()]
    assert lines[0] == {"ok": False, "error": "request is not valid JSON"}
    assert lines[1] == {"ok": True, "result": {"connection": "a", "state": "down"}}
    assert lines[2]["ok"] is True and "connections" in lines[2]["result"]


def test_oversized_request_answered(server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(server.srv.path)
        try:
            s.sendall(b"x" * (200 * 1024))
        except OSError:
            pass
        buf = s.recv(65536)
    assert json.loads(buf.splitlines()[0]) == {"ok": False, "error": "request too long"}


def test_stale_socket_replaced_and_live_one_refused(tmp_path):
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # file stays, nobody listens
    s = Server(path)
    try:
        assert request(str(path), {"command": "status"})["ok"]
        loop = asyncio.new_event_loop()
        try:
            with pytest.raises(OSError, match="another daemon"):
                loop.run_until_complete(ControlServer(str(path), Handler()).start())
        finally:
            loop.close()
    finally:
        s.close()
    assert not path.exists()  # close() removes the socket file


def test_client_errors(tmp_path):
    with pytest.raises(ControlClientError, match="no such socket"):
        request(str(tmp_path / "missing.sock"), {"command": "status"})
    # a server that closes without answering
    path = str(tmp_path / "mute.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1)

    def mute():
        c, _ = ls.accept()
        c.recv(100)
        c.close()
    t = threading.Thread(target=mute)
    t.start()
    try:
        with pytest.raises(ControlClientError, match="without an answer"):
            request(path, {"command": "status"}, timeout=5)
    finally:
        t.join(5)
        ls.close()


# -- hostile clients: a one-line error or a closed connection, never an exception in the loop

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


@pytest.fixture
def srv(tmp_path):
    """A server whose `up` waits like the daemon; checks that nothing reached the loop."""
    s = Server(tmp_path / "vpnd.sock", handler=SlowHandler())
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


def test_idle_clients_cannot_lock_vpnctl_out(srv):
    # issue 8.9: MAX_CLIENTS idle connections used to refuse vpnctl for IDLE_TIMEOUT (120 s),
    # renewable; now a new connection evicts the longest-idle one.
    idle = [connect(srv.srv.path) for _ in range(control.MAX_CLIENTS + 5)]
    try:
        time.sleep(0.2)
        assert request(srv.srv.path, {"command": "status"}, timeout=5)["ok"]
        assert len(srv.srv._clients) <= control.MAX_CLIENTS
        assert idle[0].recv(100) == b""  # the oldest idle one was closed
    finally:
        for s in idle:
            s.close()


def test_busy_clients_are_bounded(srv, monkeypatch):
    monkeypatch.setattr(control, "MAX_CLIENTS", 3)
    busy = [connect(srv.srv.path) for _ in range(3)]
    try:
        for s in busy:
            s.sendall(b'{"command": "up", "name": "a"}\n')
        deadline = time.monotonic() + 5
        while sum(v is None for v in list(srv.srv._clients.values())) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with connect(srv.srv.path) as extra:
            try:  # the server may answer and close before our request is written
                extra.sendall(b'{"command": "status"}\n')
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert read_lines(extra, 1) == [{"ok": False, "error": "too many control connections"}]
        for s in busy:
            assert read_lines(s, 1)[0]["ok"] is True
    finally:
        for s in busy:
            s.close()


def test_idle_timeout_is_short():
    # issue 8.9: an idle connection may hold its slot seconds, not minutes
    assert control.IDLE_TIMEOUT <= 10


def test_slow_line_is_cut_at_the_idle_timeout(srv, monkeypatch):
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.3)
    with connect(srv.srv.path) as s:
        t0 = time.monotonic()
        closed = False
        for _ in range(40):  # a byte every 50 ms never completes the line in time
            try:
                s.sendall(b" ")
            except OSError:
                closed = True
                break
            s.settimeout(0.05)
            try:
                if s.recv(100) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
        assert closed and time.monotonic() - t0 < 2.0


def test_duplicate_keys_refused():
    # issue 8.9: the last "command" used to win
    with pytest.raises(ProtocolError, match="duplicate key 'command'"):
        parse_request(b'{"command":"status","command":"reload"}')
    with pytest.raises(ProtocolError, match="duplicate key 'name'"):
        parse_request(b'{"command":"up","name":"a","name":"b"}')


def test_regular_file_at_socket_path_is_not_deleted(tmp_path):
    # issue 8.7: a regular file at control_socket was unlinked at start
    path = tmp_path / "important.conf"
    path.write_text("keep me\n")
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(OSError, match="exists and is not a socket"):
            loop.run_until_complete(ControlServer(str(path), Handler()).start())
    finally:
        loop.close()
    assert path.read_text() == "keep me\n"
    link = tmp_path / "link.sock"
    link.symlink_to(path)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(OSError, match="not a socket"):
            loop.run_until_complete(ControlServer(str(link), Handler()).start())
    finally:
        loop.close()
    assert link.is_symlink() and path.exists()


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
