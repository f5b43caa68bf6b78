"""The control socket: JSON lines over a unix stream socket.

Request, one line:  {"command": "status"} | {"command": "up", "name": "site-b"} |
                    {"command": "down", "name": ...} | {"command": "rekey", "name": ..., "ike": false} |
                    {"command": "reload"}
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

log = logging.getLogger("vpnd.control")

MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 32      # connections served at once; more are answered with an error and closed
IDLE_TIMEOUT = 120.0  # seconds a connection may sit without sending a complete request
COMMANDS = ("status", "up", "down", "rekey", "reload")


class ProtocolError(Exception):
    """A request that is not a valid command (message is the reason sent back)."""


def parse_request(line: bytes) -> dict:
    """Validate one request line; returns {"command": ..., "name"?: str, "ike"?: bool}."""
    try:
        req = json.loads(line)
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
    if cmd in ("up", "down", "rekey"):
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


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


async def dispatch(handler, req: dict) -> dict:
    """Run one validated request against the daemon (`handler`): a response object."""
    from vpnd.daemon import CommandError
    cmd = req["command"]
    kw = {"timeout": req["timeout"]} if "timeout" in req else {}
    try:
        if cmd == "status":
            result = handler.status()
        elif cmd == "up":
            result = await handler.cmd_up(req["name"], **kw)
        elif cmd == "down":
            result = await handler.cmd_down(req["name"], **kw)
        elif cmd == "rekey":
            result = await handler.cmd_rekey(req["name"], ike=req["ike"], **kw)
        else:
            result = await handler.cmd_reload()
    except CommandError as e:
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
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except FileExistsError:
            raise OSError(f"{directory} is not a directory") from None
        if os.path.exists(self.path) or os.path.islink(self.path):
            if _socket_answers(self.path):
                raise OSError(f"another daemon answers on {self.path}")
            os.unlink(self.path)  # stale socket of a daemon that died
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
        if len(self._clients) >= MAX_CLIENTS:
            # half-open or stuck clients must not pile up file descriptors without bound
            writer.write(encode({"ok": False, "error": "too many control connections"}))
            writer.close()
            return
        self._clients.add(task)
        try:
            while True:
                try:
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
                    resp = await dispatch(self.handler, req)
                writer.write(encode(resp))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # nothing a client sends may reach the event loop as an exception
            log.exception("control connection failed")
        finally:
            self._clients.discard(task)
            try:
                writer.close()
            except Exception:
                pass


def _socket_answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


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
