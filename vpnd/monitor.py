"""`vpnctl monitor`: a live stream of the daemon's events over the control socket.

The daemon publishes each IKE core Event (and the data plane's trap acquires) here; every
subscriber (one `monitor` request on the control socket) has a bounded queue. publish()
never waits: a subscriber whose queue is full (it does not read) is dropped and its
connection aborted, so a slow client can never hold up the daemon. At most MAX_SUBSCRIBERS
at once.

Wire format after {"command": "monitor"}: one answer line {"ok": true, "result":
{"monitoring": true}}, then one line {"event": {...}} per event until either side closes.
An event: time (unix seconds), event (kind), connection, message, and, where the core's
Event has them, ike_id, child_id, proposal, received / configured (both sides' proposals),
reason (of a down). Messages are the log lines: never keys or PSKs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import sys
import time
from collections import deque

MAX_SUBSCRIBERS = 8
QUEUE_LIMIT = 256  # events held for one subscriber before it counts as too slow

# Event data the monitor passes on (the cores' Event.data; anything else stays inside)
DATA_KEYS = ("ike_id", "child_id", "proposal", "received", "configured", "ours", "nat",
             "udp_encap", "src", "dst", "old_child_id")
_REASON = re.compile(r"\(([^()]*)\)\s*$")


class MonitorFull(Exception):
    pass


class Subscriber:
    def __init__(self, monitor: "Monitor", limit: int, on_drop=None):
        self.monitor = monitor
        self.queue: deque = deque()
        self.limit = limit
        self.wake = asyncio.Event()
        self.dropped = False
        self.on_drop = on_drop

    def _offer(self, item: dict) -> bool:
        if len(self.queue) >= self.limit:
            return False
        self.queue.append(item)
        self.wake.set()
        return True

    def _drop(self) -> None:
        self.dropped = True
        self.queue.clear()
        self.wake.set()
        if self.on_drop is not None:
            try:
                self.on_drop()
            except Exception:
                pass

    def close(self) -> None:
        self.monitor.unsubscribe(self)

    async def get(self) -> list[dict] | None:
        """Everything queued (waits for at least one event); None once dropped."""
        while not self.queue and not self.dropped:
            self.wake.clear()
            await self.wake.wait()
        if self.dropped:
            return None
        items = list(self.queue)
        self.queue.clear()
        return items


class Monitor:
    def __init__(self, max_subscribers: int = MAX_SUBSCRIBERS, queue_limit: int = QUEUE_LIMIT):
        self.max_subscribers = max_subscribers
        self.queue_limit = queue_limit
        self.subscribers: list[Subscriber] = []
        self.dropped = 0  # subscribers dropped for being too slow, since start

    def subscribe(self, on_drop=None) -> Subscriber:
        if len(self.subscribers) >= self.max_subscribers:
            raise MonitorFull(f"too many monitors (at most {self.max_subscribers})")
        sub = Subscriber(self, self.queue_limit, on_drop)
        self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        try:
            self.subscribers.remove(sub)
        except ValueError:
            pass

    def publish(self, kind: str, connection: str | None, message: str, **data) -> None:
        """Never blocks, never raises: a subscriber that cannot take the event is dropped."""
        if not self.subscribers:
            return
        item = {"time": round(time.time(), 3), "event": kind, "connection": connection,
                "message": message}
        for k in DATA_KEYS:
            v = data.get(k)
            if v is not None:
                item[k] = v if isinstance(v, (bool, int, float)) else str(v)
        if kind.endswith("_down") or kind == "ike_deleted":
            m = _REASON.search(message or "")
            if m:
                item["reason"] = m.group(1)
        for sub in list(self.subscribers):
            if not sub._offer(item):
                self.unsubscribe(sub)
                self.dropped += 1
                sub._drop()

    def publish_event(self, ev, kind: str | None = None, **extra) -> None:
        """An IKE core Event (vpnd/ike/actions.py)."""
        data = dict(getattr(ev, "data", None) or {})
        data.update(extra)
        self.publish(kind or ev.kind, ev.connection, ev.message, **data)

    def on_core_event(self, ev, children: dict) -> None:
        """The daemon's hook for each core Event. A child_up whose connection already has a
        child with the same selectors installed is a rekey (make-before-break: the new SA is
        in before the old one goes), published as child_rekeyed."""
        if not self.subscribers:
            return
        kind = None
        data = getattr(ev, "data", None) or {}
        if ev.kind == "child_up":
            new = children.get(data.get("child_id"))
            if new is not None:
                a = new.action
                for c in children.values():
                    if c is not new and c.connection == a.connection and \
                            (c.action.local_ts, c.action.remote_ts) == (a.local_ts, a.remote_ts):
                        kind = "child_rekeyed"
                        break
        self.publish_event(ev, kind)

    def publish_acquire(self, name: str, packet: bytes) -> None:
        src, dst = packet_addresses(packet)
        self.publish("acquire", name, f"{name}: traffic {src} -> {dst} hit the trap, initiating",
                     src=src, dst=dst)


def packet_addresses(packet: bytes) -> tuple[str, str]:
    try:
        if packet[0] >> 4 == 4:
            return str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20]))
        if packet[0] >> 4 == 6:
            return str(ipaddress.IPv6Address(packet[8:24])), str(ipaddress.IPv6Address(packet[24:40]))
    except (IndexError, ValueError):
        pass
    return "?", "?"


# -- server side: one `monitor` request on the control socket --------------------------------

def _encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


async def serve(handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Stream events to one control client until it closes or is dropped."""
    mon = getattr(handler, "monitor", None)
    if mon is None:
        writer.write(_encode({"ok": False, "error": "monitor is not available"}))
        await writer.drain()
        return
    try:
        sub = mon.subscribe(on_drop=lambda: writer.transport.abort())
    except MonitorFull as e:
        writer.write(_encode({"ok": False, "error": str(e)}))
        await writer.drain()
        return
    eof = asyncio.ensure_future(reader.read(1024))
    try:
        writer.write(_encode({"ok": True, "result": {"monitoring": True}}))
        await writer.drain()
        while True:
            get = asyncio.ensure_future(sub.get())
            done, _ = await asyncio.wait({get, eof}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                if not eof.result():  # the client closed (Ctrl-C)
                    return
                eof = asyncio.ensure_future(reader.read(1024))  # stray input: ignored
                continue
            items = get.result()
            if items is None:  # dropped: the connection is aborted already
                return
            writer.write(b"".join(_encode({"event": i}) for i in items))
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        eof.cancel()
        sub.close()


# -- client side: vpnctl monitor ------------------------------------------------------------

def register(sub) -> None:
    m = sub.add_parser("monitor", help="stream the daemon's events live (Ctrl-C ends)")
    m.add_argument("--json", action="store_true", help="one JSON object per event")


def format_event(e: dict) -> str:
    t = time.strftime("%H:%M:%S", time.localtime(e.get("time", 0)))
    return f"{t}  {e.get('event', '?'):<16} {e.get('connection') or '-':<14} {e.get('message', '')}"


def main(args, parser) -> int:
    from vpnd.defaults import default_socket
    path = getattr(args, "socket", None) or default_socket()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        print(f"vpnctl: cannot connect to {path}: {e.strerror or e} (is vpnd running?)", file=sys.stderr)
        s.close()
        return 3
    try:
        s.sendall(_encode({"command": "monitor"}))
        f = s.makefile("rb")
        first = True
        for line in f:
            try:
                msg = json.loads(line)
            except ValueError:
                print("vpnctl: invalid answer", file=sys.stderr)
                return 3
            if first:
                first = False
                if not msg.get("ok"):
                    print(f"vpnctl: monitor failed: {msg.get('error', 'unknown error')}", file=sys.stderr)
                    return 1
                if not args.json:
                    print(f"{'time':<9} {'event':<16} {'connection':<14} message", flush=True)
                continue
            ev = msg.get("event")
            if not isinstance(ev, dict):
                continue
            print(json.dumps(ev) if args.json else format_event(ev), flush=True)
        print("vpnctl: the daemon closed the monitor", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"vpnctl: monitor: {e.strerror or e}", file=sys.stderr)
        return 3
    finally:
        s.close()
