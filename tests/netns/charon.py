"""strongSwan's charon as a test peer inside a Topology namespace.

Set up as ../../shared/notes/strongswan-in-netns.md found it working on these machines:
- the kernel has no ESP, so charon uses its userspace ESP (kernel-libipsec), loaded before
  kernel-netlink so that it wins the IPsec backend (kernel-netlink keeps routes/addresses);
- one strongswan.conf per instance via STRONGSWAN_CONF;
- a private mount namespace with DIR bound on /run, so charon.pid, charon.vici and the
  filelog of each instance land in its own DIR;
- swanctl --load-all --file with a generated swanctl.conf, SWANCTL_DIR pointing at the
  instance's swanctl/ directory (x509/, x509ca/, private/ ... for certificate tests).

    ch = Charon(topo, "gwb")
    ch.start()
    ch.load(swanctl_conf(connections={"site-a": psk_connection(...)}, secrets={...}))
    ch.initiate("site-a")
    text = ch.list_sas()
    ch.stop()                      # also done by Topology teardown (via its process list)

Known behaviour of 5.9.8's kernel-libipsec: ESP always goes in UDP 4500 (as if behind a
NAT), its TUN `ipsec0` has MTU 1400, routes go to table 220 (install_routes = yes).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from .topology import Topology, TopologyError

CHARON = "/usr/lib/ipsec/charon"
PLUGINS = ("random nonce openssl kdf curve25519 x509 pem pkcs1 pkcs8 pubkey revocation "
           "constraints kernel-libipsec kernel-netlink socket-default vici")


class CharonError(TopologyError):
    """A charon step failed; the message ends with the tail of charon's log."""


def strongswan_conf(*, debug: int = 1, extra: str = "") -> str:
    # /run is this instance's DIR (bind mount), so every /run path below is per instance.
    return f"""\
charon {{
    load_modular = no
    load = {PLUGINS}
    install_routes = yes
    # the test owns the namespace: no DNS, no resolvconf, no syslog
    syslog {{
    }}
    filelog {{
        log {{
            path = /run/charon.log
            time_format = %H:%M:%S
            ike_name = yes
            append = no
            default = {debug}
            flush_line = yes
        }}
    }}
    plugins {{
        vici {{
            socket = unix:///run/charon.vici
        }}
    }}
{extra}
}}
swanctl {{
    load = pem pkcs1 pkcs8 x509 revocation constraints pubkey openssl random
}}
"""


def _render(obj: dict, indent: int = 0) -> str:
    """dict -> swanctl.conf syntax (nested sections, lists joined by commas)."""
    pad = "    " * indent
    out = []
    for k, v in obj.items():
        if isinstance(v, dict):
            out.append(f"{pad}{k} {{\n{_render(v, indent + 1)}{pad}}}\n")
        else:
            if isinstance(v, (list, tuple)):
                v = ",".join(str(x) for x in v)
            elif isinstance(v, bool):
                v = "yes" if v else "no"
            out.append(f"{pad}{k} = {v}\n")
    return "".join(out)


def swanctl_conf(connections: dict, secrets: dict | None = None) -> str:
    return _render({"connections": connections, "secrets": secrets or {}})


def psk_connection(*, local: str, remote: str, local_ts, remote_ts, ike: str, esp: str,
                   version: int = 2, child: str | None = None, mode: str = "tunnel",
                   local_id: str | None = None, remote_id: str | None = None,
                   start_action: str = "none", aggressive: bool = False,
                   esp_extra: dict | None = None, **conn_extra) -> dict:
    """One swanctl connection with PSK auth and one CHILD_SA (named `child`, default: the
    connection's name chosen by the caller's dict key; pass it to keep them equal)."""
    children = {child or "child": {"local_ts": local_ts, "remote_ts": remote_ts,
                                   "esp_proposals": esp, "mode": mode,
                                   "start_action": start_action, **(esp_extra or {})}}
    conn = {"version": version, "local_addrs": local, "remote_addrs": remote,
            "proposals": ike,
            "local": {"auth": "psk", "id": local_id or local},
            "remote": {"auth": "psk", "id": remote_id or remote},
            "children": children, **conn_extra}
    if aggressive:
        conn["aggressive"] = True
    return conn


def psk_secret(psk: str, *ids: str) -> dict:
    """One entry of swanctl's `secrets` section; its key there must start with "ike-"
    (e.g. {"ike-site": psk_secret(...)}), or swanctl ignores it silently."""
    d = {"secret": f'"{psk}"'}
    for i, ident in enumerate(ids, 1):
        d[f"id-{i}"] = ident
    return d


@contextlib.contextmanager
def ike_closed(topo: Topology, role: str):
    """Drop IKE (UDP 500/4500) arriving in `role` while the block runs: a charon started
    there answers only once its connections are loaded (before that it would answer an
    early IKE_SA_INIT, e.g. a restarted connection's retransmission, with
    NO_PROPOSAL_CHOSEN)."""
    rules = ("table inet ikeclosed {\n chain i {\n  type filter hook input priority 0;\n"
             "  udp dport { 500, 4500 } drop\n }\n}\n")
    topo.run(role, ["nft", "-f", "-"], input=rules.encode())
    try:
        yield
    finally:
        topo.run(role, ["nft", "delete", "table", "inet", "ikeclosed"], check=False)


class Charon:
    def __init__(self, topo: Topology, role: str, *, debug: int = 1, extra_conf: str = ""):
        self.topo, self.role = topo, role
        self.dir = Path(topo.workdir) / f"charon-{role}"
        self.swanctl_dir = self.dir / "swanctl"
        self.conf = self.dir / "strongswan.conf"
        self.debug, self.extra_conf = debug, extra_conf
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"unix://{self.dir}/charon.vici"

    @property
    def log_path(self) -> Path:
        return self.dir / "charon.log"

    def log(self) -> str:
        parts = []
        for p in (self.log_path, self.dir / "charon.stderr"):
            try:
                parts.append(p.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def _fail(self, msg: str) -> CharonError:
        tail = "\n".join(self.log().splitlines()[-60:])
        return CharonError(f"charon[{self.role}]: {msg}\n--- charon log (tail) ---\n{tail}")

    def start(self, timeout: float = 10) -> "Charon":
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("x509", "x509ca", "private", "rsa", "ecdsa", "pkcs8", "pubkey"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(strongswan_conf(debug=self.debug, extra=self.extra_conf))
        for stale in ("charon.vici", "charon.pid", "charon.log"):
            (self.dir / stale).unlink(missing_ok=True)
        stderr = open(self.dir / "charon.stderr", "wb")
        # unshare execs sh, sh execs charon: the Popen pid is charon's.
        self.proc = self.topo.popen(
            self.role,
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount --bind {self.dir} /run && exec {CHARON}"],
            env={"STRONGSWAN_CONF": str(self.conf)},
            stdout=stderr, stderr=stderr, stdin=subprocess.DEVNULL)
        stderr.close()
        vici = self.dir / "charon.vici"
        deadline = time.monotonic() + timeout
        # The socket file appears at bind(), before listen(): a connect in between is
        # refused (swanctl exits 111), so wait until a vici request really succeeds.
        while not vici.exists() or self.swanctl("--stats", check=False, rc=True) != 0:
            if self.proc.poll() is not None:
                raise self._fail(f"exited with {self.proc.returncode} during start-up")
            if time.monotonic() > deadline:
                raise self._fail(f"vici not answering after {timeout}s")
            time.sleep(0.02)
        return self

    def swanctl(self, *args: str, timeout: float = 30, check: bool = True, rc: bool = False):
        """Run swanctl against this charon; returns its output (or exit code with rc=True)."""
        argv = ["swanctl", *args, "--uri", self.uri]
        p = self.topo.run(self.role, argv, check=False, timeout=timeout,
                          env={"STRONGSWAN_CONF": str(self.conf),
                               "SWANCTL_DIR": str(self.swanctl_dir)})
        if rc:
            return p.returncode
        out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
        if check and p.returncode != 0:
            raise self._fail(f"swanctl {' '.join(args)} -> {p.returncode}:\n{out}")
        return out

    def load(self, swanctl_text: str) -> str:
        path = self.swanctl_dir / "swanctl.conf"
        path.write_text(swanctl_text)
        os.chmod(path, 0o600)
        return self.swanctl("--load-all", "--noprompt", "--file", str(path))

    def load_psk(self, psk: str, *, name: str = "site", **conn) -> str:
        """Load one psk_connection(**conn) as connection `name`, its CHILD_SA of the same
        name, and the PSK as secret "ike-`name`"."""
        return self.load(swanctl_conf({name: psk_connection(child=name, **conn)},
                                      {f"ike-{name}": psk_secret(psk)}))

    def initiate(self, child: str, *, ike: str | None = None, timeout: float = 30) -> str:
        args = ["--initiate", "--child", child]
        if ike:
            args += ["--ike", ike]
        return self.swanctl(*args, "--timeout", str(int(timeout)), timeout=timeout + 5)

    def terminate(self, ike: str) -> str:
        return self.swanctl("--terminate", "--ike", ike, check=False)

    def list_sas(self, *, raw: bool = False) -> str:
        return self.swanctl("--list-sas", *(["--raw"] if raw else []))

    def wait_child(self, child: str, timeout: float = 15) -> str:
        """Poll --list-sas until CHILD_SA `child` is INSTALLED (e.g. on the responder)."""
        deadline = time.monotonic() + timeout
        while True:
            sas = self.list_sas()
            for line in sas.splitlines():
                s = line.strip()
                if s.startswith(f"{child}:") and "INSTALLED" in s:
                    return sas
            if time.monotonic() > deadline:
                raise self._fail(f"CHILD_SA {child} not INSTALLED within {timeout}s:\n{sas}")
            time.sleep(0.1)

    def pid(self) -> int | None:
        try:
            return int((self.dir / "charon.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return self.proc.pid if self.proc else None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop charon (SIGKILL = abrupt, for DPD tests) and clean what libipsec left."""
        if self.proc is not None:
            self.topo.stop(self.proc, sig, timeout=5)
            self.proc = None
        # The TUN goes with the process; routes of table 220 and its rule may remain.
        if self.role in self.topo.ns:
            self.topo.run(self.role, ["ip", "link", "del", "ipsec0"], check=False)
            self.topo.run(self.role, ["ip", "route", "flush", "table", "220"], check=False)
            self.topo.run(self.role, ["ip", "rule", "del", "table", "220"], check=False)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> "Charon":
        return self.start()

    def __exit__(self, *exc):
        self.stop()
