"""Carries out the SA table's ops (vpnd/sadb.py) on the data plane (esp.DataPlane, the
façade a multi-process data plane also implements) and the kernel's routes (net.routes).

The one place that turns negotiated keys (ChildKeys) into esp.SA objects. It keeps the SA
objects of each child for the data plane's counters (status) and activity (idle, DPD);
the table itself holds plain data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vpnd import sadb
from vpnd.ike.actions import ChildKeys, InstallChildSA


def make_sa(keys: ChildKeys, act: InstallChildSA):
    """One esp.SA; its tag is the child id, so data plane events name their child."""
    from vpnd import esp
    encap = (act.local[1], act.remote[1]) if act.udp_encap and keys.protocol == "esp" else None
    lifetime = esp.Lifetime(soft_bytes=act.soft_kilobytes * 1024,
                            hard_bytes=act.hard_kilobytes * 1024)
    return esp.SA(keys.spi, protocol=keys.protocol, mode=act.mode,
                  encryption=keys.encryption, integrity=keys.integrity,
                  enc_key=keys.enc_key, auth_key=keys.auth_key, esn=act.esn,
                  replay_window=act.replay_window, local=act.local[0], remote=act.remote[0],
                  encap=encap, lifetime=lifetime, tag=act.child_id, conn=act.connection)


def attach_ipcomp(sas: list, act: InstallChildSA, inbound: bool) -> None:
    """IPComp (RFC 3173) rides on the innermost SA of a bundle (ESP, or AH alone): the data
    plane compresses before and decompresses after it."""
    if act.ipcomp is None or not sas:
        return
    from vpnd.esp.ipcomp import IPComp
    p = act.ipcomp
    sas[0].ipcomp = IPComp(p.cpi_in if inbound else p.cpi_out, p.algorithm)


def build(act: InstallChildSA, inbound: bool) -> list:
    sas = [make_sa(k, act) for k in (act.inbound if inbound else act.outbound)]
    attach_ipcomp(sas, act, inbound)
    return sas


def check(act: InstallChildSA) -> None:
    """The SA table's check: ValueError when the data plane cannot take these keys."""
    build(act, True)
    build(act, False)


@dataclass
class ChildSAs:
    """The data plane's SA objects of one child (counters, last_in/last_out)."""
    inbound: list = field(default_factory=list)
    outbound: list = field(default_factory=list)


class Driver:
    """dp: esp.DataPlane (or the same façade); routes: net.routes.RouteManager or None;
    send_queued(packets): encapsulates and sends packets that waited for an SA."""

    def __init__(self, dp=None, routes=None, send_queued=None):
        self.dp = dp
        self.routes = routes
        self.send_queued = send_queued
        self.sas: dict[int, ChildSAs] = {}  # child id -> its SA objects

    def run(self, ops) -> list:
        """Carry out the data-plane and route ops in order; return the table's notes. The
        data plane refusing a child's SAs (ValueError: say transport mode over IPv6) ends
        the batch with an InstallFailed note: the caller takes the child out of the table."""
        notes = []
        for op in ops:
            if isinstance(op, sadb.NOTES):
                if isinstance(op, sadb.ChildRemoved):
                    self.sas.pop(op.child.child_id, None)
                notes.append(op)
                continue
            try:
                self.do(op)
            except ValueError as e:
                if not isinstance(op, (sadb.AddInbound, sadb.AddOutbound)):
                    raise
                notes.append(sadb.InstallFailed(op.action.connection, op.action.child_id, str(e)))
                break
        return notes

    def do(self, op) -> None:
        dp, t = self.dp, type(op)
        if t is sadb.AddInbound:
            sas = build(op.action, True)
            self.sas.setdefault(op.action.child_id, ChildSAs()).inbound = sas
            if sas and dp is not None:
                dp.add_inbound(sas, local_ts=op.local_ts, remote_ts=op.remote_ts)
        elif t is sadb.AddOutbound:
            sas = build(op.action, False)
            self.sas.setdefault(op.action.child_id, ChildSAs()).outbound = sas
            if dp is not None:
                dp.add_outbound(op.policy_id, op.action.local_ts, op.action.remote_ts, sas)
        elif t is sadb.RemoveInbound:
            if dp is not None:
                dp.remove_inbound(op.protocol, op.spi)
        elif t is sadb.RemoveOutbound:
            if dp is not None:
                dp.remove_outbound(op.policy_id)
        elif t is sadb.AddTrap:
            if dp is not None:
                dp.add_outbound(op.policy_id, op.local_ts, op.remote_ts, [])
        elif t is sadb.AddBlock:
            if dp is not None:
                dp.add_block(op.policy_id, op.local_ts, op.remote_ts)
        elif t is sadb.MoveOutbound:
            if dp is not None:
                dp.move_outbound(op.policy_id, op.local, op.remote, op.encap)
        elif t is sadb.Readdress:
            objs = self.sas.get(op.child_id)
            for sa in (objs.outbound if op.outbound else objs.inbound) if objs else ():
                sa.set_addresses(op.local, op.remote, op.encap if sa.protocol == "esp" else None)
        elif t is sadb.SendQueued:
            if self.send_queued is not None:
                self.send_queued(op.packets)
        elif self.routes is None:
            return
        elif t is sadb.AddRoute:
            self.routes.add(op.network, op.opts)
        elif t is sadb.RemoveRoute:
            self.routes.remove(op.network, op.opts)
        elif t is sadb.Steer:
            self.routes.steer(op.peer, op.local, op.opts)
        elif t is sadb.Unsteer:
            self.routes.unsteer(op.peer)
        else:
            raise TypeError(f"unknown SA table op {t.__name__}")
