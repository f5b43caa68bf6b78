"""vpnctl monitor's fan-out (vpnd/monitor.py): bounded queues, slow subscribers dropped,
the stream over a real control socket, and vpnctl's table / --json output."""
from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest

from vpnd.control import ControlServer
from vpnd.ike.actions import Event
from vpnd.monitor import Monitor, MonitorFull, packet_addresses


def test_slow_subscriber_is_dropped_fast_one_gets_everything():
    async def go():
        mon = Monitor(queue_limit=4)
        fast, slow = mon.subscribe(), mon.subscribe()
        got = []
        for i in range(10):
            mon.publish("child_up", "site", f"event {i}")  # never blocks
            got += await fast.get()
        assert [e["message"] for e in got] == [f"event {i}" for i in range(10)]
        assert slow.dropped and slow not in mon.subscribers and mon.dropped == 1
        assert await slow.get() is None
        assert fast in mon.subscribers
    asyncio.run(go())


def test_max_subscribers_and_unsubscribe():
    async def go():
        mon = Monitor(max_subscribers=2)
        a = mon.subscribe()
        mon.subscribe()
        with pytest.raises(MonitorFull):
            mon.subscribe()
        a.close()
        mon.subscribe()
    asyncio.run(go())


def test_event_fields_and_reason():
    async def go():
        mon = Monitor()
        s = mon.subscribe()
        ev = Event("child_down", "site", "CHILD_SA site{3} deleted (deleted by peer)",
                   {"child_id": 3, "secret_thing": b"\x01" * 16})
        mon.publish_event(ev)
        (e,) = await s.get()
        assert e["event"] == "child_down" and e["reason"] == "deleted by peer"
        assert e["child_id"] == 3 and "secret_thing" not in e
    asyncio.run(go())


def test_packet_addresses():
    pkt = bytes([0x45, 0, 0, 28]) + bytes(8) + bytes([10, 1, 0, 5, 10, 2, 0, 7]) + bytes(8)
    assert packet_addresses(pkt) == ("10.1.0.5", "10.2.0.7")
    assert packet_addresses(b"") == ("?", "?")


class _Handler:
    def __init__(self):
        self.monitor = Monitor(queue_limit=8)

    def status(self):
        return {}


def test_stream_over_control_socket_and_slow_client_dropped(tmp_path):
    path = str(tmp_path / "c.sock")

    async def go():
        h = _Handler()
        srv = ControlServer(path, h)
        await srv.start()
        loop = asyncio.get_running_loop()
        # a client that reads
        r, w = await asyncio.open_unix_connection(path)
        w.write(b'{"command":"monitor"}\n')
        assert json.loads(await r.readline()) == {"ok": True, "result": {"monitoring": True}}
        # a client that never reads, with a tiny receive buffer
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        slow.setblocking(False)
        await loop.sock_connect(slow, path)
        await loop.sock_sendall(slow, b'{"command":"monitor"}\n')
        for _ in range(200):
            if len(h.monitor.subscribers) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(h.monitor.subscribers) == 2
        big = "x" * 2000
        for i in range(400):
            h.monitor.publish("child_up", "site", f"{i} {big}")
            line = json.loads(await asyncio.wait_for(r.readline(), 10))
            assert line["event"]["message"].startswith(f"{i} ")
        assert len(h.monitor.subscribers) == 1 and h.monitor.dropped == 1
        w.close()
        for _ in range(200):  # the reading client closed: its subscription goes
            if not h.monitor.subscribers:
                break
            await asyncio.sleep(0.01)
        assert not h.monitor.subscribers
        # the daemon still answers other commands
        r2, w2 = await asyncio.open_unix_connection(path)
        w2.write(b'{"command":"status"}\n')
        assert json.loads(await r2.readline())["ok"]
        w2.close()
        slow.close()
        await srv.close()
    asyncio.run(go())


def test_vpnctl_monitor_prints_table_and_json(tmp_path, capsys):
    from vpnd.cli import vpnctl_main
    path = str(tmp_path / "c.sock")
    ready = threading.Event()
    stop = {}

    def server():
        async def go():
            h = _Handler()
            srv = ControlServer(path, h)
            await srv.start()
            stop["loop"] = asyncio.get_running_loop()
            stop["fut"] = stop["loop"].create_future()
            ready.set()
            while not h.monitor.subscribers:
                await asyncio.sleep(0.01)
            h.monitor.publish("ike_up", "site", "IKE_SA site[1] established", ike_id=1)
            h.monitor.publish("child_down", "site", "CHILD_SA site{2} deleted (deleted by peer)")
            await asyncio.sleep(0.2)
            await srv.close()  # ends the stream: vpnctl returns
        asyncio.run(go())

    for args, check in ((["monitor"], "table"), (["monitor", "--json"], "json")):
        ready.clear()
        t = threading.Thread(target=server)
        t.start()
        ready.wait(5)
        rc = vpnctl_main(["--socket", path] + args)
        t.join(10)
        out = capsys.readouterr().out.splitlines()
        assert rc == 1  # the daemon went away
        if check == "table":
            assert out[0].split()[:3] == ["time", "event", "connection"]
            assert "ike_up" in out[1] and "site" in out[1] and "IKE_SA site[1] established" in out[1]
            assert "child_down" in out[2]
        else:
            evs = [json.loads(x) for x in out]
            assert [e["event"] for e in evs] == ["ike_up", "child_down"]
            assert evs[1]["reason"] == "deleted by peer" and evs[0]["ike_id"] == 1
