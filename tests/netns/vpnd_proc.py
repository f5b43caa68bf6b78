"""Running real vpnd daemons in the namespaces of a Topology, with manual-key configs.

`manual_pair(topo, alg, encap)` writes matching configs for gwa and gwb (gwa's outbound
keys are gwb's inbound keys and vice versa) and `Vpnd(...).start()` runs `python -m
vpnd.cli --config FILE` in a gateway namespace and waits until its control socket answers.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal as _signal
import subprocess
import sys
import time
from pathlib import Path

from vpnd.control import ControlClientError, request
from vpnd.crypto.ciphers import cipher_key_size, integrity_key_size

from .topology import GW_LAN_A, GW_LAN_B, LAN_A, LAN_B, WAN_A, WAN_B

REPO = Path(__file__).resolve().parents[2]

# The algorithm set of the data plane issue: (esp proposal or None, ah proposal or None).
ALGORITHMS = {
    "aes128gcm16": ("aes128gcm16", None),
    "aes256gcm16": ("aes256gcm16", None),
    "aes128-sha1": ("aes128-sha1", None),
    "aes256-sha256": ("aes256-sha256", None),
    "aes256-sha384": ("aes256-sha384", None),
    "aes256-sha512": ("aes256-sha512", None),
    "chacha20poly1305": ("chacha20poly1305", None),
    "3des-sha1": ("3des-sha1", None),
    "null-sha256": ("null-sha256", None),
    "ah-sha1": (None, "sha1"),
    "ah-sha256": (None, "sha256"),
    "esp+ah": ("aes128-sha256", "sha1"),
}


# Compressed protocol timers (daemon.timers, README) for the tests that wait on one: the
# same rules, shorter waits (tests/README.md, rule 7). A daemon_extra line.
FAST_TIMERS = ("timers: {retransmit_base: 0.5, half_open: 10, connect_retry: 2, replaced_grace: 2, "
               "outbound_fallback: 2, inbound_only_wait: 10}")


def wait_until(cond, timeout: float, what: str, interval: float = 0.1):
    """Poll cond() until it returns something true (returned); AssertionError naming `what`
    after `timeout` seconds. For waits on status and logs instead of fixed sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


def _esp_keys(esp: str, spi: int) -> dict:
    enc, _, integ = esp.partition("-")
    out = {"spi": hex(spi)}
    n = cipher_key_size(enc)
    if n:
        out["enc_key"] = secrets.token_hex(n)
    if integ:
        out["auth_key"] = secrets.token_hex(integrity_key_size(integ))
    return out


def _yaml_map(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {_yaml_map(v) if isinstance(v, dict) else repr(v) if isinstance(v, str) else v}"
                           for k, v in d.items()) + "}"


def manual_pair(topo, alg: str = "aes128gcm16", *, encap: bool = False, name: str = "tunnel",
                extra_daemon: str = "", extra_conn: str = "", log_level: str = "info",
                transport: bool = False) -> tuple[str, str]:
    """Config texts (gwa, gwb) for one manual-keyed tunnel LAN_A <-> LAN_B, or with
    transport=True a transport-mode SA pair between the gateways' WAN addresses."""
    esp, ah = ALGORITHMS[alg]
    a2b = {}
    b2a = {}
    base = secrets.randbelow(0x10000) * 0x10 + 0x1000
    if esp:
        a2b["esp"] = _esp_keys(esp, base + 1)
        b2a["esp"] = _esp_keys(esp, base + 2)
    if ah:
        a2b["ah"] = {"spi": hex(base + 3), "key": secrets.token_hex(integrity_key_size(ah))}
        b2a["ah"] = {"spi": hex(base + 4), "key": secrets.token_hex(integrity_key_size(ah))}

    def side(role, local, peer, lts, rts, inbound, outbound):
        sock = Path(topo.workdir) / f"{role}.sock"
        lines = [
            "daemon:",
            "  tun: vpnd0",
            f"  control_socket: {sock}",
            f"  log_level: {log_level}",
        ]
        lines += [f"  {x}" for x in extra_daemon.splitlines() if x.strip()]
        lines += [
            "connections:",
            f"  {name}:",
            f"    local: {local}",
            f"    peer: {peer}",
        ]
        if esp:
            lines.append(f"    esp: {esp}")
        if ah:
            lines.append(f"    ah: {ah}")
        if transport:
            lts, rts = f"{local}/32", f"{peer}/32"
            lines.append("    mode: transport")
        lines += [
            f"    local_ts: [{lts}]",
            f"    remote_ts: [{rts}]",
            f"    encap: {'true' if encap else 'false'}",
        ]
        lines += [f"    {x}" for x in extra_conn.splitlines() if x.strip()]
        lines += [
            "    manual:",
            f"      inbound: {_yaml_map(inbound)}",
            f"      outbound: {_yaml_map(outbound)}",
        ]
        return "\n".join(lines) + "\n"

    return (side("gwa", topo.gwa_wan, WAN_B, LAN_A, LAN_B, b2a, a2b),
            side("gwb", WAN_B, topo.gwa_public, LAN_B, LAN_A, a2b, b2a))


def ike_config(topo, role: str, *, version: int, psk: str, local: str, peer: str, lts: str, rts: str,
               ike: str, esp: str, start: str, extra: str = "", auth: str | None = None,
               name: str = "site", aggressive: bool | None = None, daemon_extra: str = "") -> str:
    """Config text of one IKE-keyed connection `name` for the vpnd in `role` (debug log),
    PSK-authenticated unless `auth` gives other `auth:` lines; `extra` / `daemon_extra`:
    more lines of the connection / the daemon section. The aggressive: line only when
    `aggressive` is given (IKEv1)."""
    sock = Path(topo.workdir) / f"{role}.sock"
    lines = ["daemon:", "  tun: vpnd0", f"  control_socket: {sock}", "  log_level: debug"]
    lines += [f"  {x}" for x in daemon_extra.splitlines() if x.strip()]
    lines += ["connections:", f"  {name}:", f"    version: {version}"]
    if aggressive is not None:
        lines.append(f"    aggressive: {'true' if aggressive else 'false'}")
    lines += [
        f"    local: {local}",
        f"    peer: {peer}",
        auth or f"    psk: \"{psk}\"",
        f"    ike: {ike}",
        f"    esp: {esp}",
        f"    local_ts: [{lts}]",
        f"    remote_ts: [{rts}]",
        f"    start: {start}",
    ]
    lines += [f"    {x}" for x in extra.splitlines() if x.strip()]
    return "\n".join(lines) + "\n"


class Vpnd:
    """One vpnd in a gateway namespace; stderr goes to a log file in the topology's workdir."""

    def __init__(self, topo, role: str, config_text: str):
        self.topo = topo
        self.role = role
        self.config = Path(topo.workdir) / f"{role}.yaml"
        self.write_config(config_text)
        self.sock = str(Path(topo.workdir) / f"{role}.sock")
        self.logpath = Path(topo.workdir) / f"{role}.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self, text: str) -> None:
        # 0600 as installed (README): a config holding keys readable by others is warned
        # about on stderr, which would be a second line next to a start-up error
        self.config.touch(mode=0o600)
        os.chmod(self.config, 0o600)
        self.config.write_text(text)

    def argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "vpnd.cli", "--config", str(self.config), *extra]

    @staticmethod
    def env() -> dict:
        return {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def start(self, wait: bool = True, timeout: float = 20, env: dict | None = None) -> "Vpnd":
        self._log = open(self.logpath, "ab")
        self.proc = self.topo.popen(self.role, self.argv(), env={**self.env(), **(env or {})},
                                    stdout=subprocess.DEVNULL, stderr=self._log)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"vpnd in {self.role} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if request(self.sock, {"command": "status"}, timeout=2).get("ok"):
                    return
            except ControlClientError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"vpnd in {self.role} not ready within {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def ctl(self, command: str, **kw) -> dict:
        return request(self.sock, {"command": command, **kw}, timeout=60)

    def status(self) -> dict:
        resp = self.ctl("status")
        assert resp["ok"], resp
        return resp["result"]

    def child(self, name: str = "tunnel") -> dict:
        for sa in self.status()["ike_sas"]:
            for ch in sa["child_sas"]:
                if ch["name"] == name:
                    return ch
        raise AssertionError(f"no child SA {name} in {self.role}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = _signal.SIGTERM, timeout: float = 10) -> int:
        rc = self.topo.stop(self.proc, sig, timeout)
        self._log.close()
        return rc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.logpath.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def run_once(self, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run vpnd in the namespace to completion (start-up failures, --check)."""
        return self.topo.run(self.role, self.argv(*extra), check=False, timeout=timeout, env=self.env())


@contextlib.contextmanager
def vpnd_starter(request):
    """Body of a `vpnds` fixture: yields make(topo, role, config_text) -> a started Vpnd;
    afterwards each one is stopped, its log attached to the report of a failed test."""
    started: list[Vpnd] = []

    def make(topo, role, text):
        v = Vpnd(topo, role, text)
        started.append(v)
        return v.start()

    yield make
    rep = getattr(request.node, "rep_call", None)
    for v in started:
        if rep is not None and rep.failed:
            rep.sections.append((f"vpnd log ({v.role})", v.log()))
        if v.alive():
            v.stop()


def start_manual_pair(topo, started: list, alg: str = "aes128gcm16", **kw) -> tuple[Vpnd, Vpnd]:
    """The daemons of manual_pair(topo, alg, **kw) in gwa and gwb, started (gwa first); both
    are appended to `started` first, so that the caller's teardown stops them even when a
    start fails."""
    ca, cb = manual_pair(topo, alg, **kw)
    a, b = Vpnd(topo, "gwa", ca), Vpnd(topo, "gwb", cb)
    started.extend([a, b])
    a.start()
    b.start()
    return a, b


def gw_links(topo, role: str) -> str:
    return topo.run(role, ["ip", "-o", "link", "show"]).stdout.decode()


def gw_routes(topo, role: str) -> str:
    return topo.run(role, ["ip", "route", "show"]).stdout.decode()


__all__ = ["ALGORITHMS", "FAST_TIMERS", "Vpnd", "manual_pair", "wait_until", "gw_links", "gw_routes", "GW_LAN_A", "GW_LAN_B",
           "WAN_A"]
