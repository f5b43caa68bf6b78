"""Manual keying as an engine behind the IkeManager façade, like the IKEv1 and IKEv2 cores.

A manual connection (`manual:`, the seed's `crypto map ... ipsec-manual`, strongSwan's
`authby=never` with static keys) negotiates nothing: it stands for one fixed SA pair, built
from the config, that is installed at start, by `up` and when a reload adds or changes it,
and removed by `down` or when a reload removes or changes it. Sans-IO: it returns the same
InstallChildSA / DeleteChildSA actions as the IKE cores; the SA table installs them.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from vpnd.ike.actions import ChildKeys, DeleteChildSA, Event, InstallChildSA, IPCompParams


def install_action(conn, child_id: int, natt_port: int = 4500, local: str | None = None) -> InstallChildSA:
    """The InstallChildSA that a manual connection stands for (the seed's ipsec-manual map).
    local: the outer source address when the connection sets none (the caller's routing)."""
    from vpnd.proposals import describe_child
    manual = conn.manual
    peer = str(conn.peer)
    local = str(conn.local) if conn.local else (local or "0.0.0.0")

    def keys(d):
        out = []
        if d.esp is not None:
            e = d.esp
            out.append(ChildKeys(spi=e.spi, protocol="esp", encryption=e.encryption,
                                 integrity=e.integrity, enc_key=e.enc_key.value,
                                 auth_key=e.auth_key.value))
        if d.ah is not None:
            out.append(ChildKeys(spi=d.ah.spi, protocol="ah", encryption=None,
                                 integrity=d.ah.integrity, auth_key=d.ah.key.value))
        return tuple(out)

    inbound, outbound = keys(manual.inbound), keys(manual.outbound)
    ipcomp = None
    if conn.comp and manual.inbound.ipcomp_cpi and manual.outbound.ipcomp_cpi:
        ipcomp = IPCompParams(conn.comp, manual.inbound.ipcomp_cpi, manual.outbound.ipcomp_cpi)
    ref = manual.outbound if (manual.outbound.esp or manual.outbound.ah) else manual.inbound
    if ref.esp is not None:
        proposal = describe_child(ref.esp.encryption, ref.esp.integrity, None, manual.esn,
                                  ah_integrity=ref.ah.integrity if ref.ah else None)
    else:
        proposal = "AH:" + describe_child(None, ref.ah.integrity if ref.ah else None, None, manual.esn)
    nets = lambda v: tuple(ipaddress.ip_network(str(n), strict=False) for n in (v or ()))  # noqa: E731
    return InstallChildSA(
        connection=conn.name, child_id=child_id, ike_id=0, mode=conn.mode or "tunnel",
        local=(local, natt_port), remote=(peer, natt_port), udp_encap=bool(conn.encap),
        esn=bool(manual.esn), replay_window=int(conn.replay_window),
        local_ts=nets(conn.local_ts), remote_ts=nets(conn.remote_ts),
        inbound=inbound, outbound=outbound, proposal=proposal, ipcomp=ipcomp)


def sa_relevant(conn):
    """A manual connection as far as its SAs go: an access_group change is applied to the
    running SAs (DataPlane.set_filter); reinstalling them would restart the sequence
    numbers the peer's replay window has already seen."""
    return dataclasses.replace(conn, access_group=None)


class ManualEngine:
    """The manual connections of a config (whose `local` the daemon filled in from the
    routing table where it is not set). new_id: the manager's child id counter (ids are
    unique across engines)."""

    def __init__(self, config, *, now: float, new_id):
        self.config = config
        self.new_id = new_id
        self.installed: dict[str, tuple] = {}  # name -> (Connection, InstallChildSA, since)
        self.down: set[str] = set()  # taken down with vpnctl down (until up or removed)
        self.peers = None  # set by the IkeManager like the other engines; unused here

    def _conns(self) -> dict:
        return {c.name: c for c in self.config.connections if c.manual is not None}

    def handles(self, name: str) -> bool:
        return name in self._conns()

    def _install(self, conn, now: float) -> list:
        try:
            act = install_action(conn, self.new_id())
        except Exception as e:  # a config the checker let through: say so, keep running
            return [Event("error", conn.name, f"{conn.name}: cannot build manual SA: {type(e).__name__}: {e}")]
        self.installed[conn.name] = (conn, act, now)  # frozen: a changed connection compares unequal
        return [act]

    def _remove(self, name: str) -> list:
        have = self.installed.pop(name, None)
        return [DeleteChildSA(have[1].child_id)] if have is not None else []

    def start(self, now: float) -> list:
        """Every manual connection's SA pair, at start."""
        out: list = []
        for name, c in self._conns().items():
            if name not in self.installed and name not in self.down:
                out += self._install(c, now)
        return out

    def install_failed(self, child_id: int) -> None:
        """The SA table refused the keys (logged there): not installed, `up` tries again."""
        for name, (_, act, _) in list(self.installed.items()):
            if act.child_id == child_id:
                del self.installed[name]

    def has(self, name: str) -> bool:
        return name in self.installed

    # -- the engine façade (ike/manager.py) ------------------------------------------------

    def initiate(self, name: str, now: float) -> list:
        conn = self._conns().get(name)
        if conn is None:
            return [Event("error", name, f"{name}: no manual connection of that name")]
        self.down.discard(name)
        return [] if name in self.installed else self._install(conn, now)

    def terminate(self, name: str, now: float) -> list:
        if name not in self._conns():
            return []
        self.down.add(name)
        return self._remove(name)

    def rekey(self, name: str, now: float, *, ike: bool = False) -> list:
        return [Event("error", name, f"{name}: manual keying has no rekey "
                      "(change the keys in the config and reload)")]

    def acquire(self, name: str, packet: bytes, now: float) -> list:
        return []  # a manual connection's guard drops (its SA is there or it is down)

    def child_expiring(self, child_id: int, hard: bool, now: float) -> list:
        return []  # manual SAs carry no lifetime (nothing to renegotiate)

    def child_activity(self, child_id: int, last_in: float, last_out: float) -> None:
        pass

    def unknown_spi(self, spi: int, remote, now: float) -> list:
        return []  # no IKE SA to send INVALID_SPI on

    def next_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> list:
        return []

    def reload(self, config, now: float, credentials=None) -> list:
        """Removed or changed connections go first, then new or changed ones come."""
        self.config = config
        conns = self._conns()
        out: list = []
        for name, (conn, act, since) in list(self.installed.items()):
            new = conns.get(name)
            if new is None or sa_relevant(new) != sa_relevant(conn):
                out += self._remove(name)
            else:  # the same SAs; the connection as it is now (its access_group)
                self.installed[name] = (new, act, since)
        self.down &= set(conns)
        for name, c in conns.items():
            if name not in self.installed and name not in self.down:
                out += self._install(c, now)
        return out

    # -- status ----------------------------------------------------------------------------

    def connection_status(self, name: str) -> dict:
        n = 1 if name in self.installed else 0
        return {"state": "up" if n else "down", "ike_sas": 0, "child_sas": n,
                "keying": "manual", "last_error": None}

    def status_ike_sas(self, now: float) -> list[dict]:
        """Manual SAs have no IKE SA: a pseudo entry each in the contract's shape, state
        MANUAL (the daemon adds the data plane's counters by child_id)."""
        out = []
        for name, (conn, act, since) in self.installed.items():
            port = 4500 if act.udp_encap else 0
            protos = [k.protocol for k in act.inbound]
            ch = {"name": act.connection, "state": "INSTALLED", "mode": act.mode,
                  "protocol": "+".join(protos) if protos else "esp", "udp_encap": act.udp_encap,
                  "spi_in": "/".join(f"{k.spi:08x}" for k in act.inbound),
                  "spi_out": "/".join(f"{k.spi:08x}" for k in act.outbound),
                  "proposal": act.proposal,
                  "local_ts": [str(n) for n in act.local_ts],
                  "remote_ts": [str(n) for n in act.remote_ts], "rekey_in_s": 0,
                  "child_id": act.child_id, "installed_s": int(now - since)}
            out.append({"connection": act.connection, "version": conn.version, "state": "MANUAL",
                        "keying": "manual",
                        "local": f"{act.local[0]}:{port}", "remote": f"{act.remote[0]}:{port}",
                        "nat_detected": False, "initiator": False, "spi_i": "0" * 16,
                        "spi_r": "0" * 16, "proposal": "manual keying",
                        "established_s": int(now - since), "rekey_in_s": 0, "child_sas": [ch]})
        return out
