"""CHILD_SA negotiation (RFC 7296 1.3, 2.9, 2.17) inside IKE_AUTH and CREATE_CHILD_SA: new
children, child rekeying with REKEY_SA and PFS, IKE SA rekeying (2.18), and simultaneous
rekey collisions resolved by the nonce rule (2.8.1, 2.8.2)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from vpnd.crypto.dh import InvalidPublicValue, KeyExchange
from vpnd.ike import ipcomp
from vpnd.ike.actions import IPCompParams
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2 import negotiate
from vpnd.ike.v2.keys import child_keymat, derive_ike_keys, rekey_skeyseed
from vpnd.ike.v2.payloads import KE, SA, Nonce, Notify, TrafficSelector, TSi, TSr, notify
from vpnd.ike.v2.sa import ChildSa, IkeSa, is_subset, narrow, ts_from_config


def packet_selectors(packet: bytes):
    """(source host, destination host) selectors of an IP packet (for trap, 2.9's first TS)."""
    try:
        v = packet[0] >> 4
        if v == 4 and len(packet) >= 20:
            s, d = ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20])
        elif v == 6 and len(packet) >= 40:
            s, d = ipaddress.IPv6Address(packet[8:24]), ipaddress.IPv6Address(packet[24:40])
        else:
            return None
    except (IndexError, ValueError):
        return None
    return TrafficSelector(s, s), TrafficSelector(d, d)


@dataclass
class ChildRequest:
    """What we asked for, to check the answer against."""

    spi_in: int
    offered: list
    ts_i: list
    ts_r: list
    transport: bool
    kex: KeyExchange | None = None
    ni: bytes = b""
    rekey: ChildSa | None = None
    extra: dict = field(default_factory=dict)
    cpi_in: int | None = None  # IPCOMP_SUPPORTED sent with this CPI (2.22)


def _proposal_protocol(conn) -> str:
    return "esp" if conn.esp else "ah"


def bundle_error(conn) -> str | None:
    """IKEv2 negotiates one protocol per CHILD_SA (RFC 7296 3.3: no SA bundles, unlike
    IKEv1): an ESP+AH transform set must be refused, never cut to its ESP half. `vpnd
    --check` refuses it for version 2; this guards every other way into the core."""
    if any(p.ah_integrity for p in conn.esp):
        return (f"connection {conn.name}: ESP+AH bundles cannot be negotiated with IKEv2 (RFC 7296 "
                f"has no SA bundles); use esp: alone, or ah: alone without esp:, or version: 1")
    return None


def child_request(e, sa: IkeSa, conn, *, ts_hint=None, in_auth=False, rekey: ChildSa | None = None,
                  group: str | None = None) -> tuple[list, ChildRequest]:
    proto = _proposal_protocol(conn)
    spi_in = e.new_child_spi()
    spi = struct.pack("!I", spi_in)
    pfs_groups = [g for p in conn.child_proposals for g in p.dh]
    kex = None
    if not in_auth and pfs_groups:
        kex = KeyExchange(group or pfs_groups[0])
    offered = negotiate.to_sa(conn.child_proposals, proto, spi, with_dh=not in_auth,
                              only_dh=kex.group if kex else None)
    if rekey is not None:
        ts_i, ts_r = list(rekey.local_ts), list(rekey.remote_ts)
    else:
        ts_i = ts_from_config(conn.local_ts, sa.local[0])
        ts_r = ts_from_config(conn.remote_ts, sa.remote[0])
        if ts_hint is not None:
            src, dst = ts_hint
            if conn.per_host:
                ts_i, ts_r = [src], [dst]
            else:  # 2.9: the packet's own selectors first, so the responder can narrow to them
                ts_i, ts_r = [src] + ts_i, [dst] + ts_r
    transport = conn.mode == "transport"
    req = ChildRequest(spi_in, offered, ts_i, ts_r, transport, kex, rekey=rekey)
    req.conn = conn  # the connection the child is for (the IKE SA may be another's)
    out: list = []
    if rekey is not None:
        out.append(Notify(c.N_REKEY_SA, b"", c.PROTO_IDS[rekey.protocol], struct.pack("!I", rekey.spi_in)))
    if transport:
        out.append(Notify(c.N_USE_TRANSPORT_MODE))
    tid = ipcomp.transform_id(conn)
    if tid is not None:  # 2.22: the CPI we receive with and the one transform we accept
        req.cpi_in = ipcomp.new_cpi(e.rng)
        out.append(Notify(c.N_IPCOMP_SUPPORTED, ipcomp.encode_v2(req.cpi_in, tid)))
    out.append(SA(offered))
    if not in_auth:
        req.ni = e.rng(32)
        out.append(Nonce(req.ni))
        if kex is not None:
            out.append(KE(kex.group_id, kex.public))
    out += [TSi(ts_i), TSr(ts_r)]
    return out, req


def _holder(sa: IkeSa, child: ChildSa | None) -> int | None:
    """The child that carries `child`'s outbound traffic now (it may have been rekeyed; a
    successor that does not send yet, see ChildSa.out_pending, does not count)."""
    seen = set()
    while child is not None and child.rekeyed_by is not None and child.rekeyed_by in sa.children \
            and sa.children[child.rekeyed_by].has_outbound and child.child_id not in seen:
        seen.add(child.child_id)
        child = sa.children[child.rekeyed_by]
    return child.child_id if child is not None else None


def child_accept(e, sa: IkeSa, req: ChildRequest, payloads: list, ni: bytes, nr: bytes, now: float,
                 *, install_outbound: bool = True) -> ChildSa | None:
    """Initiator: check the responder's answer and install the CHILD_SA."""
    conn = getattr(req, "conn", None) or sa.conn
    err = next((p for p in payloads if isinstance(p, Notify) and p.is_error), None)
    if err is not None:
        name = c.NOTIFY_NAMES.get(err.type, str(err.type))
        kind = {c.N_NO_PROPOSAL_CHOSEN: "no_proposal", c.N_TS_UNACCEPTABLE: "ts_unacceptable"}.get(err.type, "failed")
        msg = f"CHILD_SA {conn.name} not established: peer answered {name}"
        if err.type == c.N_NO_PROPOSAL_CHOSEN:
            msg += f" to our proposals {negotiate.describe_offer(req.offered)}"
        elif err.type == c.N_TS_UNACCEPTABLE:
            msg += f" to TS {' '.join(map(str, req.ts_i))} === {' '.join(map(str, req.ts_r))}"
        e.event(kind, conn.name, msg)
        return None
    sa_p = next((p for p in payloads if isinstance(p, SA)), None)
    tsi = next((p for p in payloads if isinstance(p, TSi)), None)
    tsr = next((p for p in payloads if isinstance(p, TSr)), None)
    if sa_p is None or tsi is None or tsr is None:
        e.event("failed", conn.name, "CHILD_SA answer lacks SA or TS payloads")
        return None
    acc = negotiate.accept_response(req.offered, sa_p.proposals)
    if acc is None or len(acc[0].spi) != 4:
        e.event("failed", conn.name, "CHILD_SA answer does not match our proposals")
        return None
    prop, ch = acc
    shared = b""
    if ch.dh:
        ke = next((p for p in payloads if isinstance(p, KE)), None)
        if req.kex is None or ke is None or ke.group != c.DH_IDS[ch.dh] or req.kex.group != ch.dh:
            e.event("failed", conn.name, "CHILD_SA answer: KE payload missing or of the wrong group")
            return None
        try:
            shared = req.kex.shared(ke.data)
        except InvalidPublicValue as x:
            e.event("failed", conn.name, f"CHILD_SA answer: {x}")
            return None
    if not is_subset(tsi.selectors, req.ts_i) or not is_subset(tsr.selectors, req.ts_r):
        e.event("ts_unacceptable", conn.name, "CHILD_SA answer widened our traffic selectors")
        return None
    transport = req.transport and notify(payloads, c.N_USE_TRANSPORT_MODE) is not None
    keymat = child_keymat(sa.keys, ni, nr, ch.encryption if ch.protocol == "esp" else "null",
                          ch.integrity, shared)
    child = ChildSa(e.new_id(), conn.name, ch.protocol, "transport" if transport else "tunnel",
                    req.spi_in, struct.unpack("!I", prop.spi)[0], ch, list(tsi.selectors),
                    list(tsr.selectors), initiator=True, ni=ni, nr=nr)
    child.ipcomp = _ipcomp_answer(conn, req, payloads)
    replaces = _holder(sa, req.rekey) if req.rekey is not None else None
    e.install_child(sa, child, keymat, now, replaces=replaces if install_outbound else None,
                    outbound=install_outbound)
    if req.rekey is not None and install_outbound:
        req.rekey.rekeyed_by = child.child_id
    return child


def child_respond(e, sa: IkeSa, conn, payloads: list, ni: bytes, now: float, *, in_auth: bool,
                  nr: bytes | None = None, rekey: ChildSa | None = None):
    """Responder: choose a proposal, narrow the selectors. Returns (payloads, child, keymat);
    child is None when the answer is an error notify."""
    sa_p = next((p for p in payloads if isinstance(p, SA)), None)
    tsi = next((p for p in payloads if isinstance(p, TSi)), None)
    tsr = next((p for p in payloads if isinstance(p, TSr)), None)
    if sa_p is None or tsi is None or tsr is None:
        # (an IKE_AUTH without all three is childless, RFC 6023, and never gets here)
        return [Notify(c.N_INVALID_SYNTAX)], None, None
    err = bundle_error(conn)
    if err is not None:
        e.event("error", conn.name, f"CHILD_SA refused: {err}")
        return [Notify(c.N_NO_PROPOSAL_CHOSEN)], None, None
    proto = _proposal_protocol(conn)
    ours = negotiate.to_sa(conn.child_proposals, proto, b"", with_dh=not in_auth)
    ke = next((p for p in payloads if isinstance(p, KE)), None)
    res = negotiate.select(ours, sa_p.proposals, ke_group=c.DH_NAMES.get(ke.group) if ke else None)
    if res is None:
        e.event("no_proposal", conn.name,
                f"CHILD_SA {conn.name}: no acceptable proposal; received "
                f"{negotiate.describe_offer(sa_p.proposals)}; configured {negotiate.describe_offer(ours)}",
                received=negotiate.describe_offer(sa_p.proposals), configured=negotiate.describe_offer(ours))
        return [Notify(c.N_NO_PROPOSAL_CHOSEN)], None, None
    peer_prop, ch = res
    if len(peer_prop.spi) != 4:
        return [Notify(c.N_INVALID_SYNTAX)], None, None
    shared = b""
    kex = None
    if ch.dh:
        if ke is None or ke.group != c.DH_IDS[ch.dh]:
            return [Notify(c.N_INVALID_KE_PAYLOAD, struct.pack("!H", c.DH_IDS[ch.dh]))], None, None
        kex = KeyExchange(ch.dh)
        try:
            shared = kex.shared(ke.data)
        except InvalidPublicValue:
            return [Notify(c.N_INVALID_SYNTAX)], None, None
    if rekey is not None:
        allow_l, allow_r = list(rekey.local_ts), list(rekey.remote_ts)
    else:
        allow_l = ts_from_config(conn.local_ts, sa.local[0])
        allow_r = ts_from_config(conn.remote_ts, sa.remote[0])
    offered_i, offered_r = list(tsi.selectors), list(tsr.selectors)
    if conn.per_host and rekey is None:
        # one SA per host pair: narrow to the packet's selectors the initiator put first
        offered_i, offered_r = offered_i[:1], offered_r[:1]
    got_i = narrow(offered_i, allow_r)
    got_r = narrow(offered_r, allow_l)
    if conn.per_host and rekey is None:
        got_i, got_r = got_i[:1], got_r[:1]
    if not got_i or not got_r:
        e.event("ts_unacceptable", conn.name,
                f"CHILD_SA {conn.name}: traffic selectors {' '.join(map(str, offered_i))} === "
                f"{' '.join(map(str, offered_r))} unacceptable (configured "
                f"{' '.join(map(str, allow_r))} === {' '.join(map(str, allow_l))})")
        return [Notify(c.N_TS_UNACCEPTABLE)], None, None
    transport = conn.mode == "transport" and notify(payloads, c.N_USE_TRANSPORT_MODE) is not None
    spi_in = e.new_child_spi()
    if nr is None:
        nr = e.rng(32)
    out: list = [SA([negotiate.encode_chosen(ch, peer_prop.num, struct.pack("!I", spi_in))])]
    if not in_auth:
        out.append(Nonce(nr))
        if kex is not None:
            out.append(KE(kex.group_id, kex.public))
    out += [TSi(got_i), TSr(got_r)]
    if transport:
        out.append(Notify(c.N_USE_TRANSPORT_MODE))
    keymat = child_keymat(sa.keys, ni, nr, ch.encryption if ch.protocol == "esp" else "null",
                          ch.integrity, shared)
    child = ChildSa(e.new_id(), conn.name, ch.protocol, "transport" if transport else "tunnel", spi_in,
                    struct.unpack("!I", peer_prop.spi)[0], ch, got_r, got_i, initiator=False, ni=ni, nr=nr)
    child.ipcomp = _ipcomp_choose(e, conn, payloads, out)
    return out, child, keymat


def _ipcomp_choose(e, conn, payloads: list, out: list):
    """Responder (2.22): of the initiator's IPCOMP_SUPPORTED notifies take the one with our
    transform, answer with our CPI; none offered or none of ours = no IPComp."""
    if ipcomp.transform_id(conn) is None:
        return None
    for p in payloads:
        if isinstance(p, Notify) and p.type == c.N_IPCOMP_SUPPORTED:
            got = ipcomp.decode_v2(p.data)
            if got is not None and ipcomp.acceptable(conn, got[1]):
                cpi_in = ipcomp.new_cpi(e.rng)
                out.append(Notify(c.N_IPCOMP_SUPPORTED, ipcomp.encode_v2(cpi_in, got[1])))
                return IPCompParams(ipcomp.algorithm(got[1]), cpi_in, got[0])
    return None


def _ipcomp_answer(conn, req: ChildRequest, payloads: list):
    """Initiator: the responder's IPCOMP_SUPPORTED, if it agreed to ours; else none (2.22:
    a responder that does not compress just leaves it out)."""
    if req.cpi_in is None:
        return None
    p = notify(payloads, c.N_IPCOMP_SUPPORTED)
    got = ipcomp.decode_v2(p.data) if p is not None else None
    if got is None or not ipcomp.acceptable(conn, got[1]):   # not what we offered: ignored
        return None
    return IPCompParams(ipcomp.algorithm(got[1]), req.cpi_in, got[0])


def _conn_for_new_child(e, sa: IkeSa, payloads: list):
    """A new CHILD_SA on an IKE SA is for the IKE SA's connection, or for another connection
    to the same peer with the same IKE settings and credentials whose selectors fit (one IKE
    SA per peer, ike/peers.py): the first whose traffic selectors fit."""
    from vpnd.ike.peers import shares_ike_sa

    cands = [sa.conn] + [x for x in e.connections() if x.name != sa.conn.name and shares_ike_sa(sa.conn, x)
                         and x.peer == sa.remote[0]]
    for conn in cands:
        if ts_fits(sa, conn, payloads):
            return conn
    return sa.conn


def ts_fits(sa: IkeSa, conn, payloads: list) -> bool:
    """Would `conn` accept the initiator's traffic selectors (after narrowing)?"""
    tsi = next((p for p in payloads if isinstance(p, TSi)), None)
    tsr = next((p for p in payloads if isinstance(p, TSr)), None)
    if tsi is None or tsr is None:
        return True
    return bool(narrow(list(tsi.selectors), ts_from_config(conn.remote_ts, sa.remote[0]))) and \
        bool(narrow(list(tsr.selectors), ts_from_config(conn.local_ts, sa.local[0])))


# --------------------------------------------------------------------------- CREATE_CHILD_SA


class CreateChildTask:
    """Initiator of CREATE_CHILD_SA for a new child or a child rekey."""

    exchange = c.CREATE_CHILD_SA

    def __init__(self, conn, *, rekey: ChildSa | None = None, ts_hint=None, group: str | None = None,
                 tries: int = 0):
        self.conn = conn
        self.rekey = rekey
        self.ts_hint = ts_hint
        self.group = group
        self.tries = tries
        self.req: ChildRequest | None = None

    def ready(self, e, sa: IkeSa) -> bool:
        if self.rekey is not None:
            return self.rekey.child_id in sa.children and self.rekey.state == "INSTALLED"
        return sa.state == "ESTABLISHED"

    def build(self, e, sa: IkeSa, now: float) -> list:
        if self.rekey is not None:
            self.rekey.state = "REKEYING"
            self.rekey.collision = None
        payloads, self.req = child_request(e, sa, self.conn, ts_hint=self.ts_hint, rekey=self.rekey,
                                           group=self.group)
        return payloads

    def _restore(self, sa: IkeSa, now: float, retry_in: float | None = None) -> None:
        if self.rekey is not None and self.rekey.child_id in sa.children and self.rekey.state == "REKEYING":
            self.rekey.state = "INSTALLED"
            if retry_in is not None:
                self.rekey.rekey_at = now + retry_in

    def on_response(self, e, sa: IkeSa, payloads: list, now: float) -> None:
        conn = self.conn
        ike = notify(payloads, c.N_INVALID_KE_PAYLOAD)
        if ike is not None and len(ike.data) >= 2 and self.tries < 2:
            g = c.DH_NAMES.get(struct.unpack("!H", ike.data[:2])[0])
            if g in {x for p in conn.child_proposals for x in p.dh}:
                self._restore(sa, now)
                sa.queue.appendleft(CreateChildTask(conn, rekey=self.rekey, ts_hint=self.ts_hint, group=g,
                                                    tries=self.tries + 1))
                return
        if notify(payloads, c.N_TEMPORARY_FAILURE) is not None:
            # 2.25: the peer is busy (e.g. rekeying too); try again a little later
            self._restore(sa, now, retry_in=1.0 + 2.0 * e.rand.random())
            return
        if self.rekey is not None and notify(payloads, c.N_CHILD_SA_NOT_FOUND) is not None:
            if self.rekey.rekeyed_by in sa.children:
                e.event("rekey_collision", conn.name,
                        f"CHILD_SA {conn.name}{{{self.rekey.child_id}}} was rekeyed by the peer meanwhile; "
                        f"its successor {{{self.rekey.rekeyed_by}}} carries on")
                return
            e.remove_child(sa, self.rekey, "peer does not know it any more")
            e.queue(sa, CreateChildTask(conn), now)
            return
        old = self.rekey
        # 2.25: the peer deleted (or rekeyed and deleted) the child while our rekey was in
        # flight: a new SA from our exchange would be redundant; take it and delete it
        orphan = old is not None and old.child_id not in sa.children
        collision = getattr(old, "collision", None) if old is not None else None
        lost = False
        if collision is not None:
            nr = next((p.data for p in payloads if isinstance(p, Nonce)), b"")
            lowest = min(self.req.ni, nr, collision["ni"], collision["nr"])
            lost = lowest in (self.req.ni, nr)
        nonce = next((p for p in payloads if isinstance(p, Nonce)), None)
        if nonce is None and not any(isinstance(p, Notify) and p.is_error for p in payloads):
            e.event("failed", conn.name, "CREATE_CHILD_SA answer without nonce")
            self._restore(sa, now, retry_in=10.0)
            return
        child = child_accept(e, sa, self.req, payloads, self.req.ni, nonce.data if nonce else b"", now,
                             install_outbound=not (lost or orphan))
        if child is None:
            self._restore(sa, now, retry_in=30.0 if old is not None else None)
            return
        if old is None:
            return
        if orphan:
            e.event("rekey_collision", conn.name,
                    f"CHILD_SA {conn.name}{{{old.child_id}}} went away during our rekey; deleting the redundant SA")
            child.state = "DELETING"
            e.queue_delete_child(sa, child, now)
            return
        if lost:
            # 2.8.1: our new SA has the lowest nonce: we delete it; the peer deletes the old one
            e.event("rekey_collision", conn.name,
                    f"CHILD_SA rekey collision on {conn.name}{{{old.child_id}}}: the peer's SA wins")
            child.state = "DELETING"
            old.state = "REKEYED"
            e.queue_delete_child(sa, child, now)
            return
        if collision is not None:
            e.event("rekey_collision", conn.name,
                    f"CHILD_SA rekey collision on {conn.name}{{{old.child_id}}}: our SA wins")
            red = sa.children.get(collision["child"])
            if red is not None:
                red.state = "REKEYED"  # the peer deletes its redundant SA
                red.out_pending = red.out_at = None  # and we never send on it
        old.state = "DELETING"
        e.queue_delete_child(sa, old, now)


class RekeyIkeTask:
    """Initiator of an IKE SA rekey (2.18)."""

    exchange = c.CREATE_CHILD_SA

    def __init__(self, group: str | None = None, tries: int = 0):
        self.group = group
        self.tries = tries

    def ready(self, e, sa: IkeSa) -> bool:
        return sa.state == "ESTABLISHED"

    def build(self, e, sa: IkeSa, now: float) -> list:
        sa.state = "REKEYING"
        sa.ike_collision = None
        self.spi = e.new_spi()
        e.by_spi[self.spi] = sa  # reserve
        self.kex = KeyExchange(self.group or sa.chosen.dh)
        self.ni = e.rng(32)
        self.offered = negotiate.to_sa(sa.conn.ike, "ike", self.spi, only_dh=self.kex.group)
        return [SA(self.offered), Nonce(self.ni), KE(self.kex.group_id, self.kex.public)]

    def abort(self, e, sa: IkeSa) -> None:
        self._undo(e, sa)

    def _undo(self, e, sa: IkeSa) -> None:
        if e.by_spi.get(self.spi) is sa:
            del e.by_spi[self.spi]
        if sa.state == "REKEYING":
            sa.state = "ESTABLISHED"

    def on_response(self, e, sa: IkeSa, payloads: list, now: float) -> None:
        self._undo(e, sa)
        conn = sa.conn
        ike = notify(payloads, c.N_INVALID_KE_PAYLOAD)
        if ike is not None and len(ike.data) >= 2 and self.tries < 2:
            g = c.DH_NAMES.get(struct.unpack("!H", ike.data[:2])[0])
            if g in {x for p in conn.ike for x in p.dh}:
                sa.queue.appendleft(RekeyIkeTask(g, self.tries + 1))
                return
        if any(isinstance(p, Notify) and p.is_error for p in payloads):
            n = next(p for p in payloads if isinstance(p, Notify) and p.is_error)
            e.event("rekey_failed", conn.name,
                    f"IKE_SA rekey refused: {c.NOTIFY_NAMES.get(n.type, n.type)}; retrying later")
            sa.rekey_at = now + (2.0 + 3.0 * e.rand.random() if n.type == c.N_TEMPORARY_FAILURE else 30.0)
            return
        sa_p = next((p for p in payloads if isinstance(p, SA)), None)
        ke = next((p for p in payloads if isinstance(p, KE)), None)
        nonce = next((p for p in payloads if isinstance(p, Nonce)), None)
        acc = negotiate.accept_response(self.offered, sa_p.proposals) if sa_p else None
        if acc is None or ke is None or nonce is None or len(acc[0].spi) != 8 or ke.group != self.kex.group_id \
                or acc[1].dh != self.kex.group:
            e.event("rekey_failed", conn.name, "IKE_SA rekey answer does not match our proposal")
            sa.rekey_at = now + 30.0
            return
        try:
            shared = self.kex.shared(ke.data)
        except InvalidPublicValue:
            sa.rekey_at = now + 30.0
            return
        new = make_rekeyed(e, sa, acc[1], initiator=True, spi_i=self.spi, spi_r=acc[0].spi,
                           ni=self.ni, nr=nonce.data, shared=shared, now=now)
        collision = getattr(sa, "ike_collision", None)
        if collision is not None:
            lowest = min(self.ni, nonce.data, collision["ni"], collision["nr"])
            other = collision["sa"]
            if lowest in (self.ni, nonce.data):
                # 2.8.2: ours has the lowest nonce: delete ours; the peer deletes the old SA
                e.event("rekey_collision", conn.name, "IKE_SA rekey collision: the peer's new SA wins")
                new.state = "DELETING"
                e.queue_delete_ike(new, now)
                sa.state = "REKEYED"
                sa.rekeyed_to = other.ike_id
                sa.rekey_at = None
                e.event("ike_rekeyed", conn.name, f"IKE_SA {conn.name}[{sa.ike_id}] rekeyed to [{other.ike_id}]")
                return
            e.event("rekey_collision", conn.name, "IKE_SA rekey collision: our new SA wins")
            if other.ike_id in e.sas:
                new.children.update(other.children)
                other.children.clear()
                other.state = "REKEYED"  # the peer deletes it
        new.children.update(sa.children)
        sa.children.clear()
        finish_ike_rekey(e, sa, new, now)


def make_rekeyed(e, old: IkeSa, chosen, *, initiator: bool, spi_i: bytes, spi_r: bytes, ni: bytes,
                 nr: bytes, shared: bytes, now: float) -> IkeSa:
    new = IkeSa(ike_id=e.new_id(), conn=old.conn, initiator=initiator, spi_i=spi_i, spi_r=spi_r,
                local=old.local, remote=old.remote, created_at=now, last_recv=now)
    new.chosen = chosen
    seed = rekey_skeyseed(old.keys, shared, ni, nr)
    new.keys = derive_ike_keys(chosen.prf, chosen.encryption, chosen.integrity, seed, ni, nr, spi_i, spi_r)
    new.crypto_out = new.keys.crypto(initiator=initiator, outbound=True)
    new.crypto_in = new.keys.crypto(initiator=initiator, outbound=False)
    for attr in ("nat_local", "nat_remote", "natt", "udp_encap", "peer_id", "peer_hashes", "peer_certreq",
                 "childless", "mobike", "mobike_initiator", "peer_addrs", "told_addrs"):
        setattr(new, attr, getattr(old, attr))
    new.ni, new.nr = ni, nr
    e.register(new)
    e.ike_established(new, now)
    return new


def finish_ike_rekey(e, old: IkeSa, new: IkeSa, now: float) -> None:
    """Initiator of the surviving rekey: move on and delete the old SA (2.18)."""
    old.rekeyed_to = new.ike_id
    old.state = "REKEYED"
    old.rekey_at = None
    new.queue.extend(t for t in old.queue if not e.is_delete_ike(t))
    old.queue.clear()
    e.event("ike_rekeyed", old.conn.name, f"IKE_SA {old.conn.name}[{old.ike_id}] rekeyed to [{new.ike_id}]")
    e.queue_delete_ike(old, now)


def responder(e, sa: IkeSa, h, payloads: list, now: float) -> None:
    conn = sa.conn
    mid = h.message_id
    if sa.state not in ("ESTABLISHED", "REKEYING"):
        e.respond(sa, c.CREATE_CHILD_SA, mid, [Notify(c.N_TEMPORARY_FAILURE)], now)
        return
    sa_p = next((p for p in payloads if isinstance(p, SA)), None)
    nonce = next((p for p in payloads if isinstance(p, Nonce)), None)
    if sa_p is None or nonce is None:
        e.respond(sa, c.CREATE_CHILD_SA, mid, [Notify(c.N_INVALID_SYNTAX)], now)
        return
    if sa_p.proposals and sa_p.proposals[0].protocol == c.PROTO_IKE:
        _rekey_ike_responder(e, sa, h, payloads, sa_p, nonce, now)
        return
    rk = notify(payloads, c.N_REKEY_SA)
    old = None
    if rk is not None:
        if len(rk.spi) != 4:
            e.respond(sa, c.CREATE_CHILD_SA, mid, [Notify(c.N_INVALID_SYNTAX)], now)
            return
        old = e.find_child_by_out(sa, struct.unpack("!I", rk.spi)[0])
        if old is None:
            e.respond(sa, c.CREATE_CHILD_SA, mid,
                      [Notify(c.N_CHILD_SA_NOT_FOUND, b"", rk.protocol, rk.spi)], now)
            return
        if old.state in ("DELETING", "REKEYED"):
            e.respond(sa, c.CREATE_CHILD_SA, mid, [Notify(c.N_TEMPORARY_FAILURE)], now)
            return
    if sa.state == "REKEYING" and old is None:
        e.respond(sa, c.CREATE_CHILD_SA, mid, [Notify(c.N_TEMPORARY_FAILURE)], now)
        return
    if old is not None:
        conn = e.child_conn(sa, old)
    else:
        conn = _conn_for_new_child(e, sa, payloads)
    out, child, keymat = child_respond(e, sa, conn, payloads, nonce.data, now, in_auth=False, rekey=old)
    if child is None:
        e.respond(sa, c.CREATE_CHILD_SA, mid, out, now)
        return
    if old is not None:
        pending = sa.pending.task if sa.pending is not None else None
        if isinstance(pending, CreateChildTask) and pending.rekey is old:
            # simultaneous rekey (2.8.1): answer, decide with the nonces once ours completes
            old.collision = {"ni": nonce.data, "nr": child.nr, "child": child.child_id}
        else:
            # if we had queued our own rekey of it, the peer's wins the race
            for t in list(sa.queue):
                if isinstance(t, CreateChildTask) and t.rekey is old:
                    sa.queue.remove(t)
            old.state = "REKEYED"
            # the peer deletes the old SA; if it does not, its lifetime still ends it
    # make-before-break (2.8): the initiator installs the new SA only when our answer arrives,
    # so we keep sending on the old SA until its Delete shows the new one is in place
    e.install_child(sa, child, keymat, now, replaces=_holder(sa, old) if old is not None else None,
                    defer_outbound=old is not None)
    if old is not None:
        old.rekeyed_by = child.child_id
    e.respond(sa, c.CREATE_CHILD_SA, mid, out, now)


def _rekey_ike_responder(e, sa: IkeSa, h, payloads, sa_p, nonce, now: float) -> None:
    conn = sa.conn
    mid = h.message_id
    if any(ch.state == "REKEYING" for ch in sa.children.values()) and sa.pending is not None \
            and isinstance(sa.pending.task, CreateChildTask):
        # 2.25: a child exchange of ours is in flight; the peer retries later
        e.respond(sa, c.CREATE_CHILD_SA, mid, [Notify(c.N_TEMPORARY_FAILURE)], now)
        return
    ke = next((p for p in payloads if isinstance(p, KE)), None)
    res = negotiate.select(negotiate.to_sa(conn.ike, "ike", b""), sa_p.proposals,
                           ke_group=c.DH_NAMES.get(ke.group) if ke else None)
    if res is None:
        e.respond(sa, c.CREATE_CHILD_SA, mid, [Notify(c.N_NO_PROPOSAL_CHOSEN)], now)
        return
    peer_prop, ch = res
    if len(peer_prop.spi) != 8:
        e.respond(sa, c.CREATE_CHILD_SA, mid, [Notify(c.N_INVALID_SYNTAX)], now)
        return
    if ke is None or ke.group != c.DH_IDS[ch.dh]:
        e.respond(sa, c.CREATE_CHILD_SA, mid, [Notify(c.N_INVALID_KE_PAYLOAD, struct.pack("!H", c.DH_IDS[ch.dh]))], now)
        return
    kex = KeyExchange(ch.dh)
    try:
        shared = kex.shared(ke.data)
    except InvalidPublicValue:
        e.respond(sa, c.CREATE_CHILD_SA, mid, [Notify(c.N_INVALID_SYNTAX)], now)
        return
    nr = e.rng(32)
    spi_r = e.new_spi()
    new = make_rekeyed(e, sa, ch, initiator=False, spi_i=peer_prop.spi, spi_r=spi_r, ni=nonce.data, nr=nr,
                       shared=shared, now=now)
    pending = sa.pending.task if sa.pending is not None else None
    if isinstance(pending, RekeyIkeTask):
        sa.ike_collision = {"ni": nonce.data, "nr": nr, "sa": new}
    else:
        for t in list(sa.queue):
            if isinstance(t, RekeyIkeTask):
                sa.queue.remove(t)
        sa.state = "REKEYED"
        sa.rekeyed_to = new.ike_id
        sa.rekey_at = None
        new.queue.extend(sa.queue)
        sa.queue.clear()
    new.children.update(sa.children)
    sa.children.clear()
    e.respond(sa, c.CREATE_CHILD_SA, mid,
              [SA([negotiate.encode_chosen(ch, peer_prop.num, spi_r)]), Nonce(nr), KE(kex.group_id, kex.public)], now)
