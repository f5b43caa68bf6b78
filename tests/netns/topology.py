"""Two-site test topology in network namespaces, shared by every netns test and bench/.

    hosta ── gwa ══ WAN ══ gwb ── hostb            (nat=False)
    hosta ── gwa ══ nat (masquerade) ══ gwb ── hostb  (nat=True)

Addresses (the same as conf/demo/site-a.yaml and site-b.yaml):

    hosta  eth0 10.1.0.10/16, default via 10.1.0.1
    gwa    lan  10.1.0.1/16
           wan  10.200.0.1/24                      (nat=False)
           wan  192.168.77.1/24, 10.200.0.0/24 via 192.168.77.254   (nat=True)
    nat    inside 192.168.77.254/24, outside 10.200.0.254/24, masquerades 192.168.77.0/24
    gwb    wan  10.200.0.2/24;  lan 10.2.0.1/16
    hostb  eth0 10.2.0.10/16, default via 10.2.0.1

Gateways forward (ip_forward=1) but have no default route, so a packet for the remote
LAN that no tunnel claims is unreachable instead of leaking in clear over the WAN.
With nat=True gwb sees gwa as 10.200.0.254 (`topo.gwa_public`).

Every namespace is named PREFIX-ROLE-SUFFIX (suffix unique per Topology). Teardown kills
what this module started (by PID) and whatever still runs inside the namespaces, then
deletes them; it runs from __exit__, so also when the test fails. A test process that is
killed outright (SIGKILL, a stopped CI job) runs no teardown: each topology records its
owner in OWNERS, and the next topology built on the machine removes what a dead owner
left (its namespaces, the processes inside them, its scratch directory).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

WAN_A = "10.200.0.1"
WAN_B = "10.200.0.2"
NAT_INSIDE_A = "192.168.77.1"
NAT_INSIDE_GW = "192.168.77.254"
NAT_OUTSIDE = "10.200.0.254"
LAN_A, LAN_B = "10.1.0.0/16", "10.2.0.0/16"
GW_LAN_A, GW_LAN_B = "10.1.0.1", "10.2.0.1"
HOST_A, HOST_B = "10.1.0.10", "10.2.0.10"
WAN6_A, WAN6_B = "fd00:200::1", "fd00:200::2"


class TopologyError(RuntimeError):
    pass


OWNERS = Path("/run/vpnd-test-netns")   # one JSON file per live topology: who owns what


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): a recycled PID differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _teardown(names, workdir: Path | None) -> None:
    """Kill whatever runs in the namespaces (TERM, then KILL), delete them and the dir."""
    for name in names:
        r = _sh(["ip", "netns", "pids", name], check=False)
        pids = [int(x) for x in r.stdout.split()]
        for pid in pids:
            _kill_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.05)
        for pid in pids:
            _kill_pid(pid, signal.SIGKILL)
    for name in names:
        _sh(["ip", "netns", "del", name], check=False)
    if workdir is not None and os.environ.get("KEEP_NETNS_WORKDIR") != "1":
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)


def reap_orphans() -> list[str]:
    """Remove the topologies whose owning process is gone; returns their namespaces."""
    reaped: list[str] = []
    try:
        entries = list(OWNERS.glob("*.json"))
    except OSError:
        return reaped
    for f in entries:
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if _start_time(rec.get("pid", 0)) == rec.get("start"):
            continue                                   # its owner still runs
        claim = f.with_suffix(".reaping")
        try:
            f.rename(claim)                            # one reaper per record (xdist workers)
        except OSError:
            continue
        _teardown(rec.get("ns", []), Path(rec["workdir"]) if rec.get("workdir") else None)
        claim.unlink(missing_ok=True)
        reaped += rec.get("ns", [])
    return reaped


def _sh(argv: list[str], *, check: bool = True, timeout: float = 30, input: bytes | None = None
        ) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise TopologyError(f"{shlex.join(argv)} -> {p.returncode}: "
                            f"{p.stderr.decode(errors='replace').strip()}")
    return p


@dataclass
class Capture:
    """A running tcpdump writing a pcap; stop() (or leaving the with-block) finishes the file."""
    proc: subprocess.Popen
    path: Path
    topo: "Topology"

    def stop(self, settle: float = 0.15, max_wait: float = 2.0) -> Path:
        """Stop once the pcap has stopped growing for `settle` seconds: packets that
        already crossed the link may still sit in tcpdump's socket buffer, and SIGINT
        ends its loop without reading them (seen under load: a reply missing)."""
        if self.proc.poll() is None:
            deadline = time.monotonic() + max_wait
            size, still_since = -1, time.monotonic()
            while time.monotonic() < deadline:
                now_size = self.path.stat().st_size if self.path.exists() else 0
                if now_size != size:
                    size, still_since = now_size, time.monotonic()
                elif time.monotonic() - still_since >= settle:
                    break
                time.sleep(0.03)
            # SIGINT makes tcpdump flush and close the file properly.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.path

    def wait_for(self, text: str, bpf: str = "", timeout: float = 30) -> str:
        """Poll the pcap while it is written (tcpdump -U) until `tcpdump -r -v` shows a line
        containing `text` (case-insensitive); returns that output. Waits on the wire instead
        of sleeping for a periodic packet."""
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(["tcpdump", "-r", str(self.path), "-n", "-v", *shlex.split(bpf)],
                                 capture_output=True, timeout=30).stdout.decode(errors="replace")
            if text.lower() in out.lower():
                return out
            if time.monotonic() > deadline:
                raise TopologyError(f"no {text!r} in {self.path.name} within {timeout}s: {out[-2000:]}")
            time.sleep(0.3)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@dataclass
class Topology:
    prefix: str = "hns"
    nat: bool = False
    wan6: bool = False                   # also IPv6 on the WAN: gwa fd00:200::1, gwb fd00:200::2
    workdir: Path | None = None          # per-topology scratch dir (captures, configs, logs)
    procs: list[subprocess.Popen] = field(default_factory=list)
    ns: dict[str, str] = field(default_factory=dict)
    _tmp_owned: bool = False

    # ---- addresses ---------------------------------------------------------------
    gwa_wan = property(lambda self: NAT_INSIDE_A if self.nat else WAN_A)
    gwb_wan = property(lambda self: WAN_B)
    gwa_public = property(lambda self: NAT_OUTSIDE if self.nat else WAN_A)  # gwa as gwb sees it
    gwa_wan6 = WAN6_A
    gwb_wan6 = WAN6_B
    hosta_ip = HOST_A
    hostb_ip = HOST_B
    lan_a = LAN_A
    lan_b = LAN_B

    @property
    def hosta(self): return self.ns["hosta"]

    @property
    def hostb(self): return self.ns["hostb"]

    @property
    def gwa(self): return self.ns["gwa"]

    @property
    def gwb(self): return self.ns["gwb"]

    @property
    def natns(self): return self.ns.get("nat")

    # ---- life cycle --------------------------------------------------------------
    def __enter__(self) -> "Topology":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def build(self) -> None:
        if os.geteuid() != 0:
            raise TopologyError("network namespaces need root")
        reap_orphans()
        suffix = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        roles = ["hosta", "gwa", "gwb", "hostb"] + (["nat"] if self.nat else [])
        if self.workdir is None:
            import tempfile
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-{suffix}-"))
            self._tmp_owned = True
        self._owner = OWNERS / f"{self.prefix}-{suffix}.json"
        for role in roles:
            name = f"{self.prefix}-{role}-{suffix}"
            self.ns[role] = name          # recorded at once so close() removes it on failure
            self._record_owner()          # before the namespace exists: a kill now leaves nothing
            _sh(["ip", "netns", "add", name])
            self.ip(role, "link set lo up")
            # No IPv6: keeps router solicitations and ND out of the captures.
            self.run(role, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"])
        # veth pairs are created inside their namespaces, so names never clash with the host.
        self._veth("hosta", "eth0", "gwa", "lan")
        self._veth("hostb", "eth0", "gwb", "lan")
        if self.nat:
            self._veth("gwa", "wan", "nat", "inside")
            self._veth("nat", "outside", "gwb", "wan")
        else:
            self._veth("gwa", "wan", "gwb", "wan")
        self._addr("hosta", "eth0", f"{HOST_A}/16")
        self._addr("gwa", "lan", f"{GW_LAN_A}/16")
        self._addr("hostb", "eth0", f"{HOST_B}/16")
        self._addr("gwb", "lan", f"{GW_LAN_B}/16")
        self._addr("gwb", "wan", f"{WAN_B}/24")
        if self.nat:
            self._addr("gwa", "wan", f"{NAT_INSIDE_A}/24")
            self._addr("nat", "inside", f"{NAT_INSIDE_GW}/24")
            self._addr("nat", "outside", f"{NAT_OUTSIDE}/24")
            self.ip("gwa", f"route add 10.200.0.0/24 via {NAT_INSIDE_GW}")
            self.run("nat", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            rules = ("table ip nat {\n chain postrouting {\n"
                     "  type nat hook postrouting priority srcnat;\n"
                     f'  ip saddr 192.168.77.0/24 oifname "outside" masquerade\n }}\n}}\n')
            self.run("nat", ["nft", "-f", "-"], input=rules.encode())
        else:
            self._addr("gwa", "wan", f"{WAN_A}/24")
        if self.wan6:
            if self.nat:
                raise TopologyError("wan6 needs nat=False")
            self.enable_ipv6("gwa")
            self.enable_ipv6("gwb")
            self.ip("gwa", f"addr add {WAN6_A}/64 dev wan nodad")
            self.ip("gwb", f"addr add {WAN6_B}/64 dev wan nodad")
        self.ip("hosta", f"route add default via {GW_LAN_A}")
        self.ip("hostb", f"route add default via {GW_LAN_B}")
        for gw in ("gwa", "gwb"):
            self.run(gw, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # veth needs a moment after "up" before it carries traffic: poll, don't sleep.
        self.wait_ping("hosta", GW_LAN_A)
        self.wait_ping("hostb", GW_LAN_B)
        self.wait_ping("gwa", WAN_B)
        if self.wan6:
            self.wait_ping("gwa", WAN6_B)

    def enable_ipv6(self, role: str) -> None:
        """IPv6 on in a namespace (build() turns it off everywhere), without router
        solicitations or duplicate address detection (addresses usable at once)."""
        self.run(role, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
                        "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.router_solicitations=0",
                        "net.ipv6.conf.default.router_solicitations=0",
                        "net.ipv6.conf.all.forwarding=1"])
        for dev in self.ip(role, "-o link show").stdout.decode().split("\n"):
            name = dev.split(":")[1].strip().split("@")[0] if ":" in dev else ""
            if name and name != "lo":
                self.run(role, ["sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=0"], check=False)

    def plain_routes(self) -> None:
        """Route the LANs over the WAN in clear (the forwarding baseline; no tunnel)."""
        if self.nat:
            raise TopologyError("plain routes need nat=False (the NAT hides gwa)")
        self.ip("gwa", f"route add {LAN_B} via {WAN_B}")
        self.ip("gwb", f"route add {LAN_A} via {WAN_A}")

    def _veth(self, ra: str, ia: str, rb: str, ib: str) -> None:
        _sh(["ip", "-n", self.ns[ra], "link", "add", ia, "type", "veth",
             "peer", "name", ib, "netns", self.ns[rb]])
        self.ip(ra, f"link set {ia} up")
        self.ip(rb, f"link set {ib} up")

    def _addr(self, role: str, dev: str, cidr: str) -> None:
        self.ip(role, f"addr add {cidr} dev {dev}")

    def _record_owner(self) -> None:
        OWNERS.mkdir(mode=0o700, exist_ok=True)
        tmp = self._owner.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid()),
                                   "ns": list(self.ns.values()),
                                   "workdir": str(self.workdir) if self._tmp_owned else None}))
        tmp.rename(self._owner)

    def close(self) -> None:
        """Kill what we started and what runs in our namespaces, delete the namespaces."""
        for p in self.procs:
            _terminate(p)
        self.procs.clear()
        _teardown(list(self.ns.values()), self.workdir if self._tmp_owned else None)
        self.ns.clear()
        owner = getattr(self, "_owner", None)
        if owner is not None:
            owner.unlink(missing_ok=True)

    # ---- running things ----------------------------------------------------------
    def _nsname(self, role_or_ns: str) -> str:
        return self.ns.get(role_or_ns, role_or_ns)

    def argv(self, role: str, cmd: list[str] | str) -> list[str]:
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        return ["ip", "netns", "exec", self._nsname(role), *cmd]

    def run(self, role: str, cmd: list[str] | str, *, check: bool = True, timeout: float = 60,
            input: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a command to completion in a namespace; output captured (bytes)."""
        argv = self.argv(role, cmd)
        p = subprocess.run(argv, capture_output=True, timeout=timeout, input=input,
                           env=None if env is None else {**os.environ, **env})
        if check and p.returncode != 0:
            raise TopologyError(f"[{role}] {shlex.join(argv[4:])} -> {p.returncode}: "
                                f"{(p.stderr or p.stdout).decode(errors='replace').strip()}")
        return p

    def ip(self, role: str, args: str) -> subprocess.CompletedProcess:
        return _sh(["ip", "-n", self._nsname(role), *shlex.split(args)])

    def popen(self, role: str, cmd: list[str] | str, *, env: dict | None = None, **kw
              ) -> subprocess.Popen:
        """Start a background process in a namespace; it is killed (by PID) at teardown.

        `ip netns exec` execs the command, so the Popen's pid is the command's own.
        """
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(self.argv(role, cmd), start_new_session=True,
                             env=None if env is None else {**os.environ, **env}, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> int:
        """Stop one process started with popen(); returns its exit code."""
        _terminate(p, sig, timeout)
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    # ---- traffic -----------------------------------------------------------------
    def ping(self, role: str, dst: str, *, count: int = 1, size: int | None = None,
             df: bool = False, timeout: float = 1, interval: float | None = None,
             pattern: str | None = None) -> subprocess.CompletedProcess:
        """ping from a namespace; .returncode 0 = every reply came (well, at least one: -c semantics)."""
        cmd = ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout)]
        if ":" in dst:
            cmd.insert(1, "-6")
        if size is not None:
            cmd += ["-s", str(size)]
        if df:
            cmd += ["-M", "do"]
        if interval is not None:
            cmd += ["-i", str(interval)]
        if pattern is not None:
            cmd += ["-p", pattern]
        cmd.append(dst)
        return self.run(role, cmd, check=False, timeout=count * (interval or 1) + timeout + 10)

    def ping_counts(self, role: str, dst: str, *, count: int, interval: float,
                    timeout: float = 60) -> tuple[int, int, str]:
        """`count` quiet pings every `interval` s; returns (transmitted, received, ping's output)."""
        out = self.run(role, ["ping", "-n", "-q", "-i", str(interval), "-c", str(count), "-W", "1", dst],
                       check=False, timeout=timeout).stdout.decode()
        m = re.search(r"(\d+) packets transmitted, (\d+) (packets )?received", out)
        if not m:
            raise TopologyError(f"[{role}] no ping statistics in: {out!r}")
        return int(m.group(1)), int(m.group(2)), out

    def wait_ping(self, role: str, dst: str, timeout: float = 10) -> float:
        """Poll a 1-packet ping until it answers; returns the seconds it took."""
        t0 = time.monotonic()
        while True:
            if self.ping(role, dst, timeout=0.2).returncode == 0:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TopologyError(f"[{role}] no ping reply from {dst} within {timeout}s")

    def tcp_transfer(self, client: str, server: str, server_ip: str, *, mbytes: float = 10,
                     port: int = 5201, timeout: float = 120) -> dict:
        """Send `mbytes` MB client->server and the same back, each side hashing with sha256.

        Returns {"up_ok", "down_ok", "seconds", "bytes"}; raises TopologyError when a
        side fails or a hash differs.
        """
        n = int(mbytes * 1_000_000)
        srv = self.popen(server, [sys.executable, "-c", _TCP_SERVER, str(port), str(timeout)])
        try:
            line = srv.stdout.readline()      # "ready" once listening
            if line.strip() != b"ready":
                raise TopologyError(f"tcp server did not start: {line!r} "
                                    f"{srv.stderr.read().decode(errors='replace')}")
            c = self.run(client, [sys.executable, "-c", _TCP_CLIENT, server_ip, str(port), str(n),
                                  str(timeout)], check=False, timeout=timeout + 10)
            out, err = srv.communicate(timeout=timeout + 10)
        finally:
            self.stop(srv)
        if c.returncode != 0:
            raise TopologyError(f"tcp client failed: {c.stderr.decode(errors='replace')[-800:]}")
        res = json.loads(c.stdout)
        if not (res["up_ok"] and res["down_ok"]):
            raise TopologyError(f"tcp transfer checksum mismatch: {res}")
        return res

    def check_traffic(self, mbytes: float = 2) -> None:
        """The tunnel carries both ways between hosta and hostb: ping each way, then a
        checksummed TCP transfer each way (the interop tests' closing check)."""
        self.wait_ping("hosta", self.hostb_ip, timeout=10)
        assert self.ping("hostb", self.hosta_ip, count=3, interval=0.2).returncode == 0
        self.tcp_transfer("hosta", "hostb", self.hostb_ip, mbytes=mbytes)
        self.tcp_transfer("hostb", "hosta", self.hosta_ip, mbytes=mbytes, port=5202)

    def capture(self, role: str, iface: str, name: str, bpf: str = "") -> Capture:
        """Start tcpdump -w in a namespace; returns once tcpdump listens."""
        path = Path(self.workdir) / name
        cmd = ["tcpdump", "-i", iface, "-U", "--immediate-mode", "-n", "-s", "0", "-Z", "root", "-w", str(path)]
        if bpf:
            cmd += shlex.split(bpf)
        p = self.popen(role, cmd, stdout=subprocess.DEVNULL)
        line = p.stderr.readline()    # "tcpdump: listening on ..." once the socket is bound
        if b"listening on" not in line:
            p.kill()
            raise TopologyError(f"tcpdump did not start in {role}: {line!r}")
        return Capture(p, path, self)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours still "exists"; reap it if it is our child
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _kill_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _terminate(p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> None:
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for s in (p.stdout, p.stderr, p.stdin):
        if s:
            s.close()


# Small scripts run with `python3 -c` inside namespaces. The client streams N random bytes,
# the server hashes them and returns the digest, then streams N bytes back with its digest.
# Both start with _TCP_COMMON: reading exactly k bytes, and hashing a stream each way.
_TCP_COMMON = r"""
import hashlib, json, os, socket, sys, time
def recvn(s, k):
    b = bytearray()
    while len(b) < k:
        c = s.recv(min(k - len(b), 1 << 16))
        if not c: raise EOFError("peer closed")
        b += c
    return bytes(b)
def recv_hashed(s, n):
    h = hashlib.sha256(); left = n
    while left:
        c = s.recv(min(left, 1 << 16))
        if not c: raise EOFError("peer closed")
        h.update(c); left -= len(c)
    return h.digest()
def send_random(s, n):
    h = hashlib.sha256(); left = n
    while left:
        c = os.urandom(min(left, 1 << 16)); h.update(c); s.sendall(c); left -= len(c)
    return h.digest()
"""

_TCP_SERVER = _TCP_COMMON + r"""
port, timeout = int(sys.argv[1]), float(sys.argv[2])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port)); ls.listen(1); ls.settimeout(timeout)
print("ready", flush=True)
s, _ = ls.accept(); s.settimeout(timeout)
n = int.from_bytes(recvn(s, 8), "big")
s.sendall(recv_hashed(s, n))
s.sendall(send_random(s, n)); s.shutdown(socket.SHUT_WR); s.recv(1)
print(json.dumps({"received": n}), flush=True)
"""

_TCP_CLIENT = _TCP_COMMON + r"""
ip, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
t0 = time.monotonic()
s = socket.create_connection((ip, port), timeout=timeout)
s.sendall(n.to_bytes(8, "big"))
sent = send_random(s, n)
up_ok = recvn(s, 32) == sent
got = recv_hashed(s, n)
down_ok = recvn(s, 32) == got
s.close()
print(json.dumps({"up_ok": up_ok, "down_ok": down_ok, "bytes": n,
                  "seconds": round(time.monotonic() - t0, 3)}))
"""
