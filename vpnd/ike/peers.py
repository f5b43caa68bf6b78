"""Rules that span IKE versions and connections (docs/internals.md, "Several connections
to one peer"). One place, used by both cores through the IkeManager:

- INITIAL_CONTACT (RFC 7296 2.4 / 3.16, RFC 2407 4.6.3.3) asserts that the sender holds no
  other IKE SA between the same two identities. We send it only when neither core has an
  IKE SA (any connection, any state short of dead) between that identity pair, and on
  receipt drop only older SAs between the same pair, in both versions.
- A peer that restarted without INITIAL_CONTACT (libreswan, openiked never send it) leaves
  our old IKE SA and CHILD_SAs behind: when a newer IKE SA with the same identity pair
  installs a CHILD_SA with the same selectors, the older duplicate goes, and its IKE SA too
  once it carries nothing (strongSwan's uniqueids, limited to same-selector duplicates).
- An operator's `down` is final: DPD restart, connect retries and expiry restarts never
  re-initiate an administratively down connection (until `up`, or a trapped packet for
  `start: trap`). The peer may still set it up again: we answer as a responder, as
  strongSwan after `swanctl --terminate` and Cisco after `clear crypto sa` do.

The cores stay sans-IO: they ask this object questions and hand it SAs to drop; actions
for the core that is not running right now are collected here and the manager passes them
on after the call that caused them.
"""

from __future__ import annotations

import contextlib

import ipaddress
from dataclasses import dataclass

# Two SAs between the same ends set up further apart than this are not both ends starting
# at once (RFC 7296 2.8's duplicates, settled by a tie-break) but a peer that restarted or
# rekeyed: the newer one wins. IKEv2's drop_duplicate uses the same window.
SIMULTANEOUS_WINDOW = 30.0

# Identity as compared here: (ID type, normalised data). IKEv1 and IKEv2 share the type
# numbers of the kinds we use (1 IPv4, 2 FQDN, 3 e-mail, 5 IPv6, 9 DER DN, 11 key id).
IdKey = tuple[int, object]
ID_IPV4, ID_FQDN, ID_EMAIL, ID_IPV6, ID_DN = 1, 2, 3, 5, 9


def id_key(id_type: int, data: bytes) -> IdKey:
    if id_type in (ID_FQDN, ID_EMAIL):
        return id_type, bytes(data).lower().rstrip(b".")
    if id_type == ID_DN:
        try:
            from vpnd.crypto.auth import parse_der_name

            return id_type, tuple((a.oid.dotted_string, a.value) for a in parse_der_name(bytes(data)))
        except Exception:  # not a DER name we read: compare the bytes
            return id_type, bytes(data)
    return id_type, bytes(data)


def config_id_key(identity, fallback_ip: str | None) -> IdKey | None:
    """A configured identity (config.Identity); None/absent -> the address, as both cores
    send it by default. `%any` (kind any) -> None: any identity."""
    if identity is None:
        if not fallback_ip or fallback_ip == "%any":
            return None
        try:
            ip = ipaddress.ip_address(fallback_ip)
        except ValueError:
            return None
        return (ID_IPV4 if ip.version == 4 else ID_IPV6), ip.packed
    if identity.kind == "any":
        return None
    from vpnd.ike.v2.sa import id_payload_body

    try:
        return id_key(*id_payload_body(identity, None))
    except ValueError:
        return None


@dataclass
class SaView:
    """What the rules need of one IKE SA of either core."""

    version: int
    sa: object
    conn: object
    remote_ip: str
    local_key: IdKey | None  # None: not known (yet)
    remote_key: IdKey | None  # authenticated peer identity; None before authentication
    alive: bool  # not dead, failed or deleted
    established: bool
    created: float
    established_at: float | None
    order: tuple | None = None  # (created_seq, established_seq) where the core has them

    def pair(self):
        return self.local_key, self.remote_key


# ------------------------------------------------------------------------- per-core views


def _v2_views(e) -> list[SaView]:
    out = []
    for sa in list(e.sas.values()):
        local = getattr(sa, "local_id_key", None)
        if local is None:
            local = _v2_local_key(e, sa)
        raw = sa.peer_id_raw
        out.append(SaView(2, sa, sa.conn, sa.remote[0], local, id_key(*raw) if raw else None,
                          sa.state not in ("DEAD", "FAILED"), sa.established_at is not None
                          and sa.state in ("ESTABLISHED", "REKEYING"),
                          sa.created_at, sa.established_at, (sa.created_seq, sa.established_seq)))
    return out


def _v2_local_key(e, sa) -> IdKey | None:
    conn = sa.conn
    if conn.local_id is not None:
        return config_id_key(conn.local_id, None)
    if conn.auth is not None and conn.auth.method == "cert":
        try:
            creds = e.credentials(conn)
        except Exception:
            return None
        if creds is not None and creds.cert is not None:
            return id_key(ID_DN, creds.cert.subject.public_bytes())
        return None
    return config_id_key(None, sa.local[0])


def _v1_views(core) -> list[SaView]:
    out = []
    for sa in list(core.sas.values()):
        mine = sa.id_i if sa.initiator else sa.id_r
        local = id_key(mine[0], mine[4:]) if len(mine) >= 4 else None
        peer = sa.peer_id
        remote = id_key(peer.id_type, peer.data) if peer is not None else None
        out.append(SaView(1, sa, sa.conn, sa.remote[0], local, remote, sa.state != "DELETED",
                          sa.is_established and not sa.replaced, sa.created, sa.established))
    return out


def _before(old: SaView, new: SaView) -> bool:
    """`old` was up before `new` began: it is state the peer had lost, not one it is setting
    up at the same time (both ends initiating at once)."""
    if old.established_at is None:
        return False
    if old.version == new.version == 2 and old.order and new.order and old.order[1] is not None:
        return old.order[1] < new.order[0]  # event order, immune to equal clock readings
    return old.established_at <= new.created


class PeerRules:
    def __init__(self):
        self.v1 = None
        self.v2 = None
        self.admin_down: set[str] = set()
        self._out: list = []
        self._running: int | None = None  # version of the core in a call right now

    def take(self) -> list:
        out, self._out = self._out, []
        return out

    def views(self) -> list[SaView]:
        out: list[SaView] = []
        if self.v2 is not None:
            out += _v2_views(self.v2)
        if self.v1 is not None:
            out += _v1_views(self.v1)
        return out

    def view_of(self, version: int, sa) -> SaView | None:
        return next((v for v in self.views() if v.version == version and v.sa is sa), None)

    # ------------------------------------------------------------------ admin down (7.2)

    def set_down(self, name: str) -> None:
        self.admin_down.add(name)

    def set_up(self, name: str) -> None:
        self.admin_down.discard(name)

    def may_reinitiate(self, name: str) -> bool:
        """May a core start `name` on its own (DPD restart, retry, expiry, rekey fallback)?"""
        return name not in self.admin_down

    # ------------------------------------------------------------------ INITIAL_CONTACT (7.1)

    def may_send_initial_contact(self, version: int, sa, conn, local_key: IdKey | None = None) -> bool:
        """Only if we hold no other IKE SA with this identity pair (2.4), in any version and
        for any connection. The peer's identity is the configured one (not yet
        authenticated); an SA whose peer is not authenticated yet counts when it goes to the
        same address (it may be the peer's own attempt, arriving at the same time)."""
        me = self.view_of(version, sa)
        if local_key is None and me is not None:
            local_key = me.local_key
        remote_ip = me.remote_ip if me is not None else conn.peer
        want = config_id_key(conn.remote_id, remote_ip)
        for v in self.views():
            if v.sa is sa or not v.alive:
                continue
            if v.remote_key is None or want is None:
                if v.remote_ip == remote_ip:
                    return False
                continue
            if v.remote_key == want and (local_key is None or v.local_key is None or v.local_key == local_key):
                return False
        return True

    def initial_contact(self, version: int, sa, now: float) -> None:
        """The peer sent INITIAL_CONTACT on `sa` (authenticated): drop the SAs of the other
        version between the same identity pair that were up before `sa` began. The core
        that received it drops its own with `same_version_victims`."""
        me = self.view_of(version, sa)
        if me is None or me.remote_key is None:
            return
        for v in self.views():
            if v.version != version and v.alive and v.sa is not sa and self._same_pair(v, me) and _before(v, me):
                self._drop(v, now, "peer sent INITIAL_CONTACT")

    def same_version_victims(self, version: int, sa) -> list:
        """SAs of the same core that INITIAL_CONTACT on `sa` removes (the rule above)."""
        me = self.view_of(version, sa)
        if me is None or me.remote_key is None:
            return []
        return [v.sa for v in self.views() if v.version == version and v.alive and v.sa is not sa
                and self._same_pair(v, me) and _before(v, me)]

    @staticmethod
    def _same_pair(a: SaView, b: SaView) -> bool:
        if a.remote_key is None or a.remote_key != b.remote_key:
            return False
        return a.local_key is None or b.local_key is None or a.local_key == b.local_key

    # ------------------------------------------------------------------ duplicates (7.12)

    def child_installed(self, version: int, sa, local_ts, remote_ts, now: float) -> None:
        """A CHILD_SA with these selectors (sets of networks) came up on `sa`: children with
        the same selectors on older IKE SAs between the same identity pair are leftovers of a
        peer that restarted without INITIAL_CONTACT; they go, and their IKE SA once empty.
        IKEv1 pairs under one ISAKMP SA are not touched here: IKEv1 Quick Mode already takes
        a same-selector pair as the successor of the older one (quick.py)."""
        me = self.view_of(version, sa)
        if me is None or me.remote_key is None:
            return
        sel = (frozenset(local_ts), frozenset(remote_ts))
        for v in self.views():
            if v.sa is sa or not v.established or not self._same_pair(v, me) or not _before(v, me):
                continue
            if v.version == version == 2 and v.sa.initiator != sa.initiator \
                    and abs(v.created - me.created) <= SIMULTANEOUS_WINDOW:
                # both ends initiating at once (one end's IKE_SA_INIT late): IKEv2's
                # drop_duplicate settles that pair the same way at both ends
                continue
            if v.version == 2:
                self._drop_v2_duplicates(v, sel, now)
            elif version == 2:
                self._drop_v1_duplicates(v, sel, now)

    def _drop_v2_duplicates(self, v: SaView, sel, now: float) -> None:
        e, old = self.v2, v.sa
        if old.rekeyed_to is not None:
            return
        dups = [ch for ch in old.children.values() if ch.state in ("INSTALLED", "REKEYING")
                and (frozenset(n for t in ch.local_ts for n in t.networks()),
                     frozenset(n for t in ch.remote_ts for n in t.networks())) == sel]
        if not dups:
            return
        with self._in(2):
            for ch in dups:
                e.remove_child(old, ch, "duplicate: the peer set up the same selectors on a newer IKE SA")
            if not any(ch.state != "DELETING" for ch in old.children.values()):
                e.event("ike_duplicate", old.conn.name,
                        f"IKE_SA {old.conn.name}[{old.ike_id}] has no CHILD_SA left after the peer set up "
                        "its selectors again on a newer IKE SA (restarted without INITIAL_CONTACT): deleting it")
                e.kill_ike(old, now, "superseded by a newer IKE SA of the same peer")

    def _drop_v1_duplicates(self, v: SaView, sel, now: float) -> None:
        core, old = self.v1, v.sa
        dups = [c for c in core.children.values() if c.ike_id == old.ike_id and c.state == "INSTALLED"
                and (frozenset([c.local_ts]), frozenset([c.remote_ts])) == sel]
        if not dups:
            return
        with self._in(1, now):
            for c in dups:
                core._delete_child(c, now, reason="duplicate: the peer set up the same selectors again",
                                   notify_peer=False)
            if not any(c.ike_id == old.ike_id for c in core.children.values()):
                core._drop_isakmp(old, now, reason="superseded by a newer IKE SA of the same peer",
                                  notify_peer=False)

    # ------------------------------------------------------------------ dropping

    def _drop(self, v: SaView, now: float, reason: str) -> None:
        if v.version == 2:
            with self._in(2):
                self.v2.kill_ike(v.sa, now, reason)
        else:
            core = self.v1
            with self._in(1, now):
                core._drop_isakmp(v.sa, now, reason=reason, notify_peer=False)
                for c in list(core.children.values()):
                    if c.ike_id == v.sa.ike_id and c.installed <= (v.established_at or now):
                        core._delete_child(c, now, reason=reason, notify_peer=False)

    @contextlib.contextmanager
    def _in(self, version: int, now: float = 0.0):
        """Run against core `version`: when that core is the caller, its actions stay in its
        own output; otherwise they are collected here for the manager."""
        foreign = self._running != version
        if foreign and version == 1:
            saved, saved_now = self.v1._out, self.v1._now
            self.v1._out, self.v1._now = [], now
        try:
            yield
        finally:
            if foreign:
                if version == 2:
                    self._out += self.v2.take()
                else:
                    self._out += self.v1._out
                    self.v1._out, self.v1._now = saved, saved_now

    @contextlib.contextmanager
    def running(self, version: int | None):
        """Context for the manager: which core a call is in (entered for every datagram, so
        no per-call class: a class statement per packet cost 0.2 ms)."""
        prev, self._running = self._running, version
        try:
            yield
        finally:
            self._running = prev


# ------------------------------------------------------------------------- one IKE SA per peer


def ike_key(conn) -> tuple | None:
    """What must agree for two connections to share one IKE SA: the peer, our address, the
    IKE proposals, lifetime, credentials, identities and liveness settings (the CHILD_SA
    settings -- selectors, ESP proposals, mode, start, child lifetime -- may differ). Cisco
    keeps one ISAKMP SA per peer; strongSwan reuses an IKE SA whose settings are equal."""
    if conn.manual is not None or conn.peer == "%any":
        return None
    return (conn.version, conn.aggressive, conn.local, conn.peer, conn.psk, conn.psk_file, conn.auth,
            conn.local_id, conn.remote_id, conn.ike, conn.lifetime.ike, conn.dpd, conn.nat_keepalive,
            conn.encap, conn.allow_legacy)


def shares_ike_sa(a, b) -> bool:
    if a is None or b is None:
        return False
    if a.name == b.name:
        return True
    ka = ike_key(a)
    return ka is not None and ka == ike_key(b)
