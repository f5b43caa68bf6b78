"""`updown:` per connection: a script run when a CHILD_SA comes up or goes down.

The environment is strongSwan's updown interface (its `_updown` script reads the same
variables) where it applies: PLUTO_VERB up-client / down-client (up-host / down-host for
transport mode, with a -v6 suffix for IPv6 like strongSwan), PLUTO_CONNECTION, PLUTO_ME,
PLUTO_PEER, PLUTO_MY_ID, PLUTO_PEER_ID, PLUTO_MY_CLIENT / PLUTO_PEER_CLIENT (one pair of
traffic selectors per run, as strongSwan does), PLUTO_UNIQUEID (the IKE SA), PLUTO_REQID
(the CHILD_SA's id), PLUTO_PROTO, PLUTO_UDP_ENC, PLUTO_IPCOMP, PLUTO_INTERFACE (vpnd's
TUN). A rekey runs nothing (strongSwan does the same): only the first SA of a selector pair
up and the last one down.

Scripts run as asyncio subprocesses (the daemon never waits for them), one after another per
connection, each killed with its process group after `updown_timeout` seconds. Their output
lines are logged with the connection's name. No key or PSK is ever in the environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from vpnd import logfmt
from vpnd.textsafe import safe

log = logging.getLogger("vpnd.updown")


def _ctx(name: str, env: dict) -> dict:
    """The log line's `site-b[3] site-b{7}` (vpnd/logfmt.py)."""
    ike, child = env.get("PLUTO_UNIQUEID", ""), env.get("PLUTO_REQID", "")
    return logfmt.ctx(name, int(ike) if ike.isdigit() and ike != "0" else None,
                      int(child) if child.isdigit() else None)

DEFAULT_TIMEOUT = 10.0
MAX_PENDING = 16  # queued runs per connection; more are dropped (with a log line)
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def check_script(checker, v, path: str) -> str:
    """Config converter (vpnd/config.py): an executable regular file; its absolute path."""
    from pathlib import Path
    s = checker.string(v, path)
    p = Path(s).expanduser()
    if not p.is_absolute():
        p = Path(checker.base_dir) / p
    if not p.is_file():
        checker.fail(path, f"'{s}' does not exist or is not a regular file")
    if not os.access(p, os.X_OK):
        checker.fail(path, f"'{s}' is not executable (chmod +x)")
    return str(p)


def check_timeout(checker, v, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 3600:
        checker.fail(path, f"expected seconds in (0, 3600], got {v!r}"[:120])
    return float(v)


def _id(ident, fallback: str) -> str:
    if ident is None:
        return fallback
    text = str(ident)
    return fallback if text in ("%any", "*", "") else text


def environment(verb: str, conn, act, tun: str, local_net, remote_net) -> dict:
    """The variables of one run (strongSwan's names; see the module docstring)."""
    v6 = local_net.version == 6 if local_net is not None else ":" in act.local[0]
    suffix = "-v6" if v6 else ""
    host = act.mode == "transport"
    env = {
        "PATH": _PATH,
        "PLUTO_VERSION": "1.1",
        "PLUTO_VERB": f"{verb}-{'host' if host else 'client'}{suffix}",
        "PLUTO_CONNECTION": act.connection,
        "PLUTO_INTERFACE": tun,
        "PLUTO_REQID": str(act.child_id),
        "PLUTO_UNIQUEID": str(act.ike_id),
        "PLUTO_PROTO": act.inbound[0].protocol if act.inbound else "esp",
        "PLUTO_ME": act.local[0],
        "PLUTO_PEER": act.remote[0],
        "PLUTO_MY_ID": _id(getattr(conn, "local_id", None), act.local[0]),
        "PLUTO_PEER_ID": _id(getattr(conn, "remote_id", None), act.remote[0]),
        "PLUTO_MY_PROTOCOL": "0", "PLUTO_PEER_PROTOCOL": "0",
        "PLUTO_MY_PORT": "0", "PLUTO_PEER_PORT": "0",
        "VPND_MODE": act.mode,
    }
    for side, net in (("MY", local_net), ("PEER", remote_net)):
        if net is None:  # transport mode without selectors: the hosts themselves
            addr = act.local[0] if side == "MY" else act.remote[0]
            import ipaddress
            net = ipaddress.ip_network(addr)
        env[f"PLUTO_{side}_CLIENT"] = str(net)
        env[f"PLUTO_{side}_CLIENT_NET"] = str(net.network_address)
        env[f"PLUTO_{side}_CLIENT_MASK"] = str(net.netmask)
    if act.udp_encap:
        env["PLUTO_UDP_ENC"] = str(act.remote[1])
    if act.ipcomp is not None:
        env["PLUTO_IPCOMP"] = "1"
    return env


class Updown:
    """Runs the scripts of the daemon's connections; one queue (task) per connection."""

    def __init__(self):
        self._queues: dict[str, list] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._procs: set = set()
        self.runs = 0
        self.timeouts = 0

    def child_event(self, verb: str, conn, act, tun: str) -> None:
        """Queue the runs of one CHILD_SA up or down (never blocks)."""
        script = getattr(conn, "updown", None) if conn is not None else None
        if not script:
            return
        timeout = getattr(conn, "updown_timeout", None) or DEFAULT_TIMEOUT
        locs = list(act.local_ts) or [None]
        rems = list(act.remote_ts) or [None]
        q = self._queues.setdefault(act.connection, [])
        for ln in locs:
            for rn in rems:
                if len(q) >= MAX_PENDING:
                    log.warning("%s: updown: %d runs pending, dropping %s", act.connection,
                                len(q), verb)
                    return
                q.append((script, timeout, environment(verb, conn, act, tun, ln, rn)))
        t = self._tasks.get(act.connection)
        if t is None or t.done():
            self._tasks[act.connection] = asyncio.get_running_loop().create_task(
                self._drain(act.connection))

    async def _drain(self, name: str) -> None:
        q = self._queues.get(name)
        while q:
            script, timeout, env = q.pop(0)
            try:
                await self._run(name, script, timeout, env)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a failed script never reaches the event loop
                log.error("%s: updown %s failed: %s", name, env["PLUTO_VERB"], safe(str(e)), extra=_ctx(name, env))

    async def _run(self, name: str, script: str, timeout: float, env: dict) -> None:
        verb = env["PLUTO_VERB"]
        self.runs += 1
        proc = await asyncio.create_subprocess_exec(
            script, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True, close_fds=True)
        self._procs.add(proc)

        async def output():
            while True:
                line = await proc.stdout.readline()
                if not line:
                    return
                log.info("%s: updown %s: %s", name, verb, safe(line.decode("utf-8", "replace").rstrip("\n")),
                         extra=_ctx(name, env))

        reader = asyncio.ensure_future(output())
        try:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                _kill(proc)
                await proc.wait()
                log.warning("%s: updown %s killed after %g s (updown_timeout)", name, verb, timeout,
                            extra=_ctx(name, env))
                self.timeouts += 1  # counted once killed and reported (tests wait on it)
            else:
                if proc.returncode != 0:
                    log.warning("%s: updown %s exited with %d", name, verb, proc.returncode, extra=_ctx(name, env))
            try:
                await asyncio.wait_for(reader, 1.0)  # what it printed before it ended
            except asyncio.TimeoutError:
                pass  # a child it left behind holds the pipe: its output is not ours to wait for
        finally:
            reader.cancel()
            if proc.returncode is None:
                _kill(proc)
            self._procs.discard(proc)

    def close(self) -> None:
        """At shutdown: running scripts are killed, pending ones dropped."""
        for t in self._tasks.values():
            t.cancel()
        for p in list(self._procs):
            _kill(p)
        self._queues.clear()


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the script's children too
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def is_rekey(children: dict, child) -> bool:
    """Another SA of the same connection with the same selectors is (still) installed."""
    a = child.action
    return any(c is not child and c.connection == a.connection and
               (c.action.local_ts, c.action.remote_ts) == (a.local_ts, a.remote_ts)
               for c in children.values())
