"""The control socket: JSON lines over a unix stream socket.

Request, one line:  {"command": "status"} | {"command": "up", "name": "site-b"} |
                    {"command": "down", "name": ...} | {"command": "rekey", "name": ..., "ike": false} |
                    {"command": "reload"} | {"command": "monitor"} (a stream: vpnd/monitor.py) |
                    {"command": "conns"} | {"command": "down", "peer": ADDR} | {..., "all": true}
Response, one line: {"ok": true, "result": {...}} | {"ok": false, "error": "reason"}

A client may send several requests on one connection; each gets one response, in order.
The socket file is mode 0600 (root only), or 0660 with the group `daemon.control_group`.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import socket
import stat

from vpnd import logfmt
from vpnd.net import unixsock
from vpnd.textsafe import safe

log = logging.getLogger("vpnd.control")

MAX_REQUEST = 64 * 1024  # bytes of one request line (the StreamReader's limit)
# Connections held at once. At the cap a new connection evicts the client that has waited
# longest without a complete request, so idle clients can never lock vpnctl out; only
# clients whose commands are running count for good, and those sent valid commands.
MAX_CLIENTS = 64
IDLE_TIMEOUT = 5.0  # seconds a connection may sit without a complete request line
COMMANDS = ("status", "up", "down", "rekey", "reload", "keys", "monitor", "conns")


class CommandError(Exception):
    """A command the daemon cannot carry out; its message is the answer's `error` (one line,
    no secrets). Defined here, with the protocol, so the daemon imports the control server
    and never the other way round."""


class ProtocolError(Exception):
    """A request that is not a valid command (message is the reason sent back)."""


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def parse_request(line: bytes) -> dict:
    """Validate one request line; returns {"command": ..., "name"?: str, "ike"?: bool}."""
    try:
        req = json.loads(line, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        # {"command":"status","command":"reload"} must not quietly run the last one
        raise ProtocolError(f"duplicate key {str(e)[:40]!r} in request") from None
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("request is not valid JSON") from None
    except RecursionError:  # "[[[[..." within MAX_REQUEST nests deeper than the parser goes
        raise ProtocolError("request is nested too deeply") from None
    if not isinstance(req, dict):
        raise ProtocolError("request must be a JSON object")
    cmd = req.get("command")
    if cmd not in COMMANDS:
        raise ProtocolError(f"unknown command {cmd!r} (one of: {', '.join(COMMANDS)})")
    out = {"command": cmd}
    if cmd == "down" and ("peer" in req or "all" in req):  # by peer, or all (vpnd/conns.py)
        out.update(_parse_bulk_down(req))
    elif cmd in ("up", "down", "rekey"):
        name = req.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{cmd} needs a connection name")
        out["name"] = name
    if cmd == "rekey":
        ike = req.get("ike", False)
        if not isinstance(ike, bool):
            raise ProtocolError("rekey: 'ike' must be true or false")
        out["ike"] = ike
    timeout = req.get("timeout")
    if timeout is not None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 600:
            raise ProtocolError("timeout must be a number of seconds in (0, 600]")
        out["timeout"] = float(timeout)
    return out


def _parse_bulk_down(req: dict) -> dict:
    """`down` by `peer` (an IP address) or `all` (true), instead of a name."""
    import ipaddress
    peer, every = req.get("peer"), req.get("all", False)
    if "name" in req:
        raise ProtocolError("down takes a connection name, or peer, or all; not both")
    if not isinstance(every, bool):
        raise ProtocolError("down: 'all' must be true or false")
    if (peer is None) == (not every):
        raise ProtocolError("down needs a connection name, a peer address or all")
    if peer is None:
        return {"all": True}
    if not isinstance(peer, str):
        raise ProtocolError("down: peer must be an IP address (a string)")
    try:
        return {"all": False, "peer": str(ipaddress.ip_address(peer))}
    except (TypeError, ValueError):
        raise ProtocolError(f"down: peer {str(peer)[:60]!r} is not an IP address") from None


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


_CHANGES = ("up", "down", "rekey", "reload")  # logged at info; status, conns at debug


def _log_request(req: dict) -> None:
    """`vpnctl up site-b` as the daemon saw it (strongSwan logs its vici commands too)."""
    cmd = req["command"]
    what = req.get("name") or (f"--peer {req['peer']}" if req.get("peer") else
                               "--all" if req.get("all") else "")
    if cmd == "rekey" and req.get("ike"):
        what += " --ike"
    level = logging.INFO if cmd in _CHANGES else logging.DEBUG
    if cmd == "keys":
        return  # keyexport.py says it, as a warning
    log.log(level, "vpnctl %s%s", cmd, f" {safe(what)}" if what else "", extra=logfmt.ctx(req.get("name")))


async def dispatch(handler, req: dict) -> dict:
    """Run one validated request against the daemon (`handler`): a response object."""
    cmd = req["command"]
    kw = {"timeout": req["timeout"]} if "timeout" in req else {}
    _log_request(req)
    try:
        if cmd == "status":
            result = handler.status()
        elif cmd == "up":
            result = await handler.cmd_up(req["name"], **kw)
        elif cmd == "down" and "name" not in req:
            result = await handler.cmd_down_many(req, **kw)
        elif cmd == "down":
            result = await handler.cmd_down(req["name"], **kw)
        elif cmd == "conns":
            result = handler.cmd_conns()
        elif cmd == "rekey":
            result = await handler.cmd_rekey(req["name"], ike=req["ike"], **kw)
        elif cmd == "keys":  # SA keys for Wireshark, only with daemon.allow_key_export
            result = handler.export_keys()
        else:
            result = await handler.cmd_reload()
    except CommandError as e:
        log.log(logging.INFO if cmd in _CHANGES else logging.DEBUG, "vpnctl %s: %s", cmd, safe(str(e)),
                extra=logfmt.ctx(req.get("name")))
        return {"ok": False, "error": str(e)}
    except Exception as e:  # a bug must not take the daemon down; say so to the client
        log.exception("control command %s failed", cmd)
        return {"ok": False, "error": f"internal error: {type(e).__name__}"}
    return {"ok": True, "result": result}


class ControlServer:
    def __init__(self, path: str, handler, group: str | int | None = None):
        self.path = str(path)
        self.handler = handler
        self.group = group
        self.server: asyncio.AbstractServer | None = None
        # task -> loop time since when it waits for a request line (None: a command runs)
        self._clients: dict[asyncio.Task, float | None] = {}

    async def start(self) -> None:
        directory = os.path.dirname(self.path) or "."
        self._made_dir = None if os.path.isdir(directory) else directory
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except FileExistsError:
            raise OSError(f"{directory} is not a directory") from None
        unixsock.clear_stale(self.path, "daemon.control_socket")
        gid = None
        if self.group not in (None, ""):
            try:
                gid = int(self.group) if str(self.group).isdigit() else grp.getgrnam(str(self.group)).gr_gid
            except KeyError:
                raise OSError(f"control_group {self.group!r} does not exist") from None
        # create the socket with no access at all, then open it up: no window where others connect
        old = os.umask(0o177 if gid is None else 0o117)
        try:
            self.server = await asyncio.start_unix_server(self._client, path=self.path,
                                                          limit=MAX_REQUEST)
        finally:
            os.umask(old)
        if gid is not None:
            os.chown(self.path, -1, gid)
            os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP)
        else:
            os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)

    def hand_over(self, uid: int) -> None:
        """Before vpnd drops root (net/privileges.py): the socket, and the directory if we
        made it, belong to `uid`, so that it can still remove the socket at exit."""
        os.chown(self.path, uid, -1)
        if self._made_dir:
            os.chown(self._made_dir, uid, -1)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self._clients):
                t.cancel()
            try:
                await self.server.wait_closed()
            except Exception:
                pass
            self.server = None
        try:
            if os.path.exists(self.path):
                os.unlink(self.path)
        except OSError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if len(self._clients) >= MAX_CLIENTS and not self._evict_idle():
            # every slot runs a command: file descriptors stay bounded
            writer.write(encode({"ok": False, "error": "too many control connections"}))
            writer.close()
            return
        self._clients[task] = loop.time()
        try:
            while True:
                self._clients[task] = loop.time()
                try:
                    # the whole line within IDLE_TIMEOUT: a byte at a time does not keep it open
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(encode({"ok": False, "error": "request too long"}))
                    break
                except asyncio.TimeoutError:
                    break  # an idle connection is closed; vpnctl sends at once
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    req = parse_request(line)
                except ProtocolError as e:
                    resp = {"ok": False, "error": str(e)}
                else:
                    self._clients[task] = None
                    if req["command"] == "monitor":  # a stream until either side closes
                        from vpnd import monitor
                        await monitor.serve(self.handler, reader, writer)
                        break
                    resp = await dispatch(self.handler, req)
                    # a client that does not read its answer is idle, hence evictable
                    self._clients[task] = loop.time()
                writer.write(encode(resp))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # nothing a client sends may reach the event loop as an exception
            log.exception("control connection failed")
        finally:
            self._clients.pop(task, None)
            try:
                writer.close()
            except Exception:
                pass


    def _evict_idle(self) -> bool:
        """Close the client idle the longest; False when every client runs a command."""
        idle = [(since, t) for t, since in self._clients.items() if since is not None]
        if not idle:
            return False
        _, oldest = min(idle, key=lambda x: x[0])
        self._clients.pop(oldest, None)
        oldest.cancel()
        return True


_socket_answers = unixsock.answers  # the name tests and older callers use


# -- client side (vpnctl) ------------------------------------------------------------------

class ControlClientError(Exception):
    pass


def request(path: str, req: dict, timeout: float = 60.0) -> dict:
    """Send one request, return the response object; ControlClientError when unreachable."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlClientError(f"cannot connect to {path}: no such socket (is vpnd running?)") from None
        except PermissionError:
            raise ControlClientError(f"cannot connect to {path}: permission denied") from None
        except OSError as e:
            raise ControlClientError(f"cannot connect to {path}: {e.strerror or e}") from None
        s.sendall(encode(req))
        buf = bytearray()
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise ControlClientError(f"no answer from {path} within {timeout:g}s") from None
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    if not buf:
        raise ControlClientError(f"{path}: connection closed without an answer")
    try:
        resp = json.loads(buf)
    except ValueError:
        raise ControlClientError(f"{path}: invalid answer") from None
    if not isinstance(resp, dict) or "ok" not in resp:
        raise ControlClientError(f"{path}: invalid answer")
    return resp


def vpnctl_request(args, req: dict, timeout: float) -> tuple[int, object]:
    """One request as vpnctl makes it: the socket from --socket or the defaults, errors on
    stderr, vpnctl's exit codes: (0, result), (1, None) the daemon refused or the command
    failed, (3, None) the daemon cannot be reached."""
    import sys

    from vpnd.defaults import default_socket
    path = getattr(args, "socket", None) or default_socket()
    try:
        resp = request(path, req, timeout=timeout)
    except ControlClientError as e:
        print(f"vpnctl: {e}", file=sys.stderr)
        return 3, None
    if not resp.get("ok"):
        print(f"vpnctl: {req['command']} failed: {resp.get('error', 'unknown error')}", file=sys.stderr)
        return 1, None
    return 0, resp.get("result")

