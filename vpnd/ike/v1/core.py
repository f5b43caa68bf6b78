"""The sans-IO IKEv1 core: datagrams and the time in, actions out (docs/internals.md).

It owns the ISAKMP SAs, Quick Mode exchanges and IPsec SA pairs of every `version: 1`
connection; the exchanges themselves live in phase1.py, quick.py and info.py. ike/manager.py
hands it version-1 datagrams and the calls of the IkeManager façade.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import os
import struct
from collections import OrderedDict, deque

from vpnd.crypto.credentials import CredentialStore
from vpnd.ike import codec, limits, liveness
from vpnd.ike import trace
from vpnd.ike.actions import Event, SendDatagram, Trace, hostport
from vpnd.ike.peers import SIMULTANEOUS_WINDOW
from vpnd.ike.v1 import constants as C
from vpnd.ike.v1 import identity, keys
from vpnd.ike.v1 import payloads as P
from vpnd.ike.v1.info import InfoMixin
from vpnd.ike.v1.phase1 import Phase1Failed, Phase1Mixin, _digest
from vpnd.ike.v1.quick import QuickMixin
from vpnd.ike.v1.state import IsakmpSA, Retransmit, describe_transforms
from vpnd.textsafe import one_line

# Retransmission, the half-open timeout and the other protocol timers are config.daemon.timers
# (vpnd/configschema.py Timers), applied as vpnd/ike/liveness.py says for both versions.
# inbound_only_wait: a Quick Mode that holds an inbound-only SA (responder after message 2,
# waiting for HASH(3); initiator with the commit bit, waiting for CONNECTED) gives up after
# it, not after the whole retransmission schedule (issue 7.8: 252 s then): the peer
# retransmits its own message within that time if it is there at all.
MAX_ALTERNATES = 4  # other half-open responder SAs per initiator cookie (differing message 1s)
# Flood protection (issue 8.5). IKEv1 has no cookie exchange: a responder SA is
# "unverified" until the initiator's message 3 comes back with our responder cookie (only
# a source that receives our packets knows it, RFC 2408 2.5.3). Unverified SAs are cheap to
# forge from spoofed addresses, so they are bounded per source address and, for sources
# that are no configured peer, overall -- the oldest is evicted, nothing is refused -- and
# the sources that are a configured (non-%any) peer have a budget of their own that no
# flood from elsewhere can fill. Verified half-open SAs (past message 3) are capped too.
HALF_OPEN_PER_SOURCE = 8
HALF_OPEN_UNVERIFIED_MAX = 1000  # from sources that are no configured peer
HALF_OPEN_VERIFIED_MAX = 1000
# An Aggressive Mode message 1 costs a DH key pair at once (the g^xy of a PSK or rsa-encr
# exchange waits for message 3): from sources that are no configured peer, at most this
# many per second per source and overall; a configured peer's address has its own bucket.
AM_RESPONDER_RATE = 1.0
AM_RESPONDER_BURST = 3
AM_RESPONDER_OVERALL = 50.0
AM_MSG2_RESENDS = 3  # message 2 again on phase-2 messages that show message 3 lost


class Ikev1Core(Phase1Mixin, QuickMixin, InfoMixin):
    def __init__(self, config, *, now: float, rng=os.urandom, new_id=None, wallclock=None,
                 credentials: CredentialStore | None = None):
        self.rng = rng
        self._ids = itertools.count(1)
        self._new_id = new_id or (lambda: next(self._ids))
        self._wallclock = wallclock or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self.sas: dict[bytes, IsakmpSA] = {}  # by initiator cookie
        self.children: dict = {}
        self.qms: dict[int, dict] = {}  # ike_id -> {message ID: QuickMode}
        # debug lines per message (vpnd/ike/trace.py): off unless the daemon logs them
        self.trace = False
        self._ctx: IsakmpSA | None = None  # the SA the current input is about (log context)
        self._rx_mid = None  # (exchange, message ID) of the message being taken
        self._rx = None  # (local, remote, size) of the datagram being taken, until traced
        self._done_mids: dict[int, set] = {}
        self._lingering: list = []
        self._spis_in: set[int] = set()
        # certificates and keys, loaded once (the IkeManager shares one store with IKEv2)
        self.creds = credentials if credentials is not None else CredentialStore.from_config(config)
        self._had_contact: dict = {}
        self._restart_at: dict[str, float] = {}
        self._want_up: set[str] = set()  # DPD action restart: keep trying until it is back
        self.peers = None  # ike.peers.PeerRules, set by the IkeManager (rules across versions)
        self._alts: dict[bytes, IsakmpSA] = {}  # cky_i + cky_r -> another half-open responder SA
        self.invalid_spi_limit = limits.invalid_spi_limiter()  # per peer address (issue 8.3)
        self.error_answer_limit = limits.error_answer_limiter()  # unprotected notifies (8.2)
        self.unauth_log = limits.unauth_log()  # events from unauthenticated input (8.2)
        self.am_limit = limits.RateLimiter(AM_RESPONDER_RATE, AM_RESPONDER_BURST,
                                           overall=AM_RESPONDER_OVERALL)
        self.am_limit_peers = limits.RateLimiter(AM_RESPONDER_RATE, AM_RESPONDER_BURST, max_keys=256)
        # unverified responder SAs, oldest first (issue 8.5): key cky_i + cky_r
        self._unverified: OrderedDict[bytes, IsakmpSA] = OrderedDict()
        self._unverified_by_src: dict[str, deque] = {}
        self._unverified_any = 0  # of them from sources that are no configured peer
        self._out: list = []
        self._now = now
        self._last_raw = b""
        self.drops = 0
        self._last_drop_report = float("-inf")
        self.rekeyed_linger = 5.0
        self._apply_config(config)

    def _apply_config(self, config) -> None:
        self.config = config
        self.timers = config.daemon.timers
        d = config.daemon
        self.listen = d.listen  # ike/addresses.local_for reads it
        self.ike_port = d.ike_port
        self.natt_port = d.natt_port
        self.aggressive_allowed = getattr(d, "aggressive_mode", True)
        self.invalid_spi_recovery = getattr(d, "invalid_spi_recovery", True)
        self.v1_conns = [c for c in config.connections if c.version == 1 and c.manual is None]

    # ------------------------------------------------------------------ public API

    def receive_datagram(self, data: bytes, local, remote, now: float) -> list:
        self._begin(now)
        # its `received packet` line comes with its `parsed` one (a flood costs no line)
        self._rx = (tuple(local), tuple(remote), len(data)) if self.trace else None
        try:
            self._receive(bytes(data), tuple(local), tuple(remote), now)
        except (codec.CodecError, Phase1Failed) as e:
            self._drop_event(None, f"IKEv1 message from {remote[0]} dropped: {e}")
        except Exception as e:  # a bug must cost one message, not the daemon (architecture.md)
            # reported, but bounded: a packet that trips a bug may come in a flood (8.2)
            self._unauth_event("error", "internal_error", remote, f"IKEv1 message from {remote[0]} "
                               f"dropped: internal error {type(e).__name__}")
        return self._end()

    def initiate(self, name: str, now: float) -> list:
        self._begin(now)
        conn = self._conn(name)
        if conn is not None:
            self._initiate_conn(conn, now)
        return self._end()

    def terminate(self, name: str, now: float) -> list:
        self._begin(now)
        self._restart_at.pop(name, None)
        self._want_up.discard(name)
        conn = self._conn(name)
        if conn is not None:
            self._had_contact.pop(conn.peer, None)  # next contact says INITIAL-CONTACT again
        for c in list(self.children.values()):
            if c.conn.name == name:
                self._delete_child(c, now, reason="terminated")
        for sa in list(self.sas.values()):
            if sa.conn.name == name:
                others = [c for c in self.children.values() if c.ike_id == sa.ike_id and c.conn.name != name]
                if others and sa.is_established and not sa.replaced:
                    # it carries other connections' IPsec SAs: it stays, now theirs
                    sa.conn = others[0].conn
                    continue
                self._drop_isakmp(sa, now, reason="terminated")
        return self._end()

    def rekey(self, name: str, now: float, *, ike: bool = False) -> list:
        self._begin(now)
        conn = self._conn(name)
        if conn is not None:
            # a waiting `vpnctl rekey` ends on a failure event (ike.events.FAILURES), as IKEv2's does
            if ike:
                if self._established_for_conn(name) is None:
                    self._event("error", name, f"connection {name} has no established ISAKMP SA to rekey")
                elif conn.peer == "%any":
                    self._event("error", name, f"connection {name}: cannot rekey, the peer is %any")
                else:
                    self._rekey_isakmp(conn, now)
            else:
                children = [c for c in self.children.values() if c.conn.name == name and c.state == "INSTALLED"]
                if not children:
                    self._event("error", name, f"connection {name} has no IPsec SA to rekey")
                for c in children:
                    self._rekey_child(c, now)
        return self._end()

    def acquire(self, name: str, packet: bytes, now: float) -> list:
        self._begin(now)
        conn = self._conn(name)
        if conn is not None:
            hosts = _packet_hosts(packet) if conn.per_host else None
            if hosts is not None:
                src, dst = hosts
                if not any(c.conn.name == name and c.local_ts == src and c.remote_ts == dst
                           for c in self.children.values()):
                    self._start_child(conn, src, dst, now, per_host=True)
            elif not any(c.conn.name == name for c in self.children.values()):
                self._initiate_conn(conn, now)
        return self._end()

    def child_expiring(self, child_id: int, hard: bool, now: float) -> list:
        self._begin(now)
        c = self.children.get(child_id)
        if c is not None:
            if hard:
                self._delete_child(c, now, reason="volume limit reached")
            elif c.state == "INSTALLED":
                self._rekey_child(c, now)
        return self._end()

    def child_activity(self, child_id: int, last_in: float, last_out: float) -> None:
        c = self.children.get(child_id)
        if c is not None:
            c.last_in = max(c.last_in, last_in)
            c.last_out = max(c.last_out, last_out)

    def unknown_spi(self, spi: int, remote, now: float) -> list:
        self._begin(now)
        if self.invalid_spi_recovery:
            self._send_invalid_spi(spi, remote, now)
        return self._end()

    def reload(self, config, now: float, credentials: CredentialStore | None = None) -> list:
        self._begin(now)
        old = {c.name: c for c in self.v1_conns}
        self._apply_config(config)
        new = {c.name: c for c in self.v1_conns}
        self.creds = credentials if credentials is not None else CredentialStore.from_config(config)
        acc: list = []
        for name, c in old.items():
            if name not in new or new[name] != c:
                acc += self.terminate(name, now)  # changed or gone: down, then up as configured
        self._begin(now)
        for name, c in new.items():
            if (name not in old or old[name] != c) and c.start == "start":
                self._initiate_conn(c, now)
        return acc + self._end()

    def next_timer(self) -> float | None:
        times = []
        for sa in self.sas.values():
            for t in (sa.retx.due if sa.retx else None, sa.expire_at, sa.rekey_at, sa.dpd_due,
                      sa.keepalive_at, sa.pending_at):
                if t is not None:
                    times.append(t)
            if not sa.is_established and not _retransmitting(sa):
                times.append(liveness.half_open_due(sa.created, self.timers))
            for qm in self.qms.get(sa.ike_id, {}).values():
                if qm.retx and qm.retx.due is not None:
                    times.append(qm.retx.due)
                if _inbound_only(qm):
                    times.append(qm.started + self.timers.inbound_only_wait)
        for c in self.children.values():
            for t in (c.rekey_at if c.state == "INSTALLED" else None, c.expire_at, c.delete_at,
                      c.attach_at):
                if t is not None:
                    times.append(t)
            if c.conn.idle_time:
                times.append(max(c.last_in, c.last_out) + c.conn.idle_time)
        times += list(self._restart_at.values())
        times += [t for _, _, t in self._lingering]
        summary_at = self.unauth_log.next_due()
        if summary_at is not None:
            times.append(summary_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> list:
        self._begin(now)
        for name, t in list(self._restart_at.items()):
            if t <= now:
                del self._restart_at[name]
                conn = self._conn(name)
                if conn is not None and not any(s.conn.name == name and not s.is_established
                                                for s in self.sas.values()) \
                        and (self.peers is None or self.peers.may_reinitiate(name)):
                    self._initiate_conn(conn, now)
        self._lingering = [x for x in self._lingering if not self._linger_done(x, now)]
        for sa in list(self.sas.values()):
            if sa.cky_i not in self.sas:
                continue
            try:
                self._sa_timers(sa, now)
            except Exception as e:
                # never leave a due timer behind (the daemon would spin on it): drop the SA
                self._event("error", sa.conn.name, f"ISAKMP SA timer failed ({type(e).__name__}); SA dropped",
                            ike_id=sa.ike_id)
                self._drop_isakmp(sa, now, reason="internal error", notify_peer=False)
        for c in list(self.children.values()):
            if c.child_id not in self.children:
                continue
            try:
                self._child_timers(c, now)
            except Exception as e:
                self._event("error", c.conn.name, f"IPsec SA timer failed ({type(e).__name__}); SA deleted")
                self._delete_child(c, now, reason="internal error", notify_peer=False)
        self._summaries(now)
        return self._end()

    def _child_timers(self, c, now: float) -> None:
        if c.attach_at is not None and now >= c.attach_at:
            self._out.append(c.attach)
            c.attach_at = c.attach = None
        if c.delete_at is not None and now >= c.delete_at:
            # the rekey's initiator deletes the old pair with a Delete, also one the peer
            # created: the peer may hold it as a standby (quick.py) until told
            self._delete_child(c, now, reason="replaced by rekeyed SA", notify_peer=c.initiator or c.rekeyed_here)
        elif c.expire_at is not None and now >= c.expire_at:
            self._delete_child(c, now, reason="lifetime expired")
        elif c.state == "INSTALLED" and c.rekey_at is not None and now >= c.rekey_at:
            self._rekey_child(c, now)
        elif c.conn.idle_time and now - max(c.last_in, c.last_out) >= c.conn.idle_time:
            self._delete_child(c, now, reason=f"idle for {c.conn.idle_time} s")

    # ------------------------------------------------------------------ status

    def connection_status(self, name: str) -> dict:
        sas = [s for s in self.sas.values() if s.conn.name == name]
        children = [c for c in self.children.values() if c.conn.name == name]
        up = any(s.is_established for s in sas) or bool(children)
        state = "up" if children else ("connecting" if sas else "down")
        if up and not children:
            state = "up" if any(s.is_established for s in sas) else state
        return {"state": state, "ike_sas": sum(1 for s in sas if s.is_established and not s.replaced),
                "child_sas": sum(1 for c in children if c.state != "REKEYED")}

    def status_ike_sas(self, now: float) -> list[dict]:
        out = []
        shown_children = set()
        by_conn = {}
        for sa in self.sas.values():
            if sa.is_established and not sa.replaced:
                by_conn.setdefault(sa.conn.name, sa)
        for sa in sorted(self.sas.values(), key=lambda s: s.ike_id):
            entry = {
                "connection": sa.conn.name, "version": 1,
                "state": ("REPLACED" if sa.replaced else "ESTABLISHED") if sa.is_established else "CONNECTING",
                "isakmp_state": sa.state,
                "exchange": "Aggressive" if sa.aggressive else "Main",
                "local": hostport(sa.local), "remote": hostport(sa.remote),
                "nat_detected": sa.nat, "nat_local": sa.nat_local, "nat_remote": sa.nat_remote,
                "initiator": sa.initiator, "spi_i": sa.cky_i.hex(), "spi_r": sa.cky_r.hex(),
                "proposal": sa.policy.describe() if sa.policy else "",
                "auth": C.AUTH_NAMES.get(sa.policy.auth, "") if sa.policy else "",
                "remote_id": identity.describe_id(sa.peer_id) if sa.peer_id else None,
                "established_s": int(now - sa.established) if sa.established else 0,
                "rekey_in_s": max(0, int((sa.rekey_at or sa.expire_at) - now)) if (sa.rekey_at or sa.expire_at) else 0,
                "dpd": bool(sa.peer_dpd and sa.conn.dpd.interval),
                "child_sas": [],
            }
            for qm in sorted(self.qms.get(sa.ike_id, {}).values(), key=lambda q: q.mid):
                if _inbound_only(qm):  # issue 7.8: shown while it waits, not only once complete
                    entry["child_sas"].append(self._qm_status(sa, qm, now))
            if by_conn.get(sa.conn.name) is sa:
                for c in sorted(self.children.values(), key=lambda c: c.child_id):
                    if c.conn.name == sa.conn.name:
                        entry["child_sas"].append(self._child_status(c, now))
                        shown_children.add(c.child_id)
            out.append(entry)
        # IKEv1 IPsec SAs outlive their ISAKMP SA: show orphans under a placeholder
        for c in self.children.values():
            if c.child_id not in shown_children:
                out.append({"connection": c.conn.name, "version": 1, "state": "NONE",
                            "isakmp_state": "MM_NO_STATE", "local": "", "remote": c.conn.peer,
                            "nat_detected": c.udp, "initiator": c.initiator, "spi_i": "", "spi_r": "",
                            "proposal": "", "established_s": 0, "rekey_in_s": None,
                            "child_sas": [self._child_status(c, now)]})
        return out

    def _qm_status(self, sa: IsakmpSA, qm, now: float) -> dict:
        """An IPsec SA installed inbound only while its Quick Mode finishes: state
        INSTALLING, no outbound traffic on it yet."""
        proto = C.PROTO_ESP if C.PROTO_ESP in qm.spis_in else C.PROTO_AH
        return {"name": qm.conn.name, "child_id": qm.child_id, "state": "INSTALLING", "mode": qm.chosen[0].mode,
                "protocol": "esp" if proto == C.PROTO_ESP else "ah",
                "bundle": sorted("esp" if p == C.PROTO_ESP else "ah" for p in qm.spis_in),
                "udp_encap": sa.nat, "spi_in": qm.spis_in[proto].hex(),
                "spi_out": qm.spis_out[proto].hex() if proto in qm.spis_out else "",
                "inbound_only": True, "proposal": describe_transforms(qm.chosen),
                "local_ts": [str(qm.local_ts)], "remote_ts": [str(qm.remote_ts)],
                "bytes_in": 0, "packets_in": 0, "bytes_out": 0, "packets_out": 0,
                "replay_drops": 0, "auth_failures": 0, "rekey_in_s": None,
                "lifetime_s": qm.life_s, "lifetime_kb": qm.life_kb, "installed_s": int(now - qm.started),
                "gives_up_in_s": max(0, int(qm.started + self.timers.inbound_only_wait - now))}

    def _child_status(self, c, now: float) -> dict:
        esp = c.spis_in.get(C.PROTO_ESP)
        proto = C.PROTO_ESP if esp else C.PROTO_AH
        return {"name": c.conn.name, "child_id": c.child_id, "state": c.state, "mode": c.mode,
                "protocol": "esp" if proto == C.PROTO_ESP else "ah",
                "bundle": sorted("esp" if p == C.PROTO_ESP else "ah" for p in c.spis_in),
                "udp_encap": c.udp, "spi_in": c.spis_in[proto].hex(), "spi_out": c.spis_out[proto].hex(),
                "proposal": c.proposal(), "local_ts": [str(c.local_ts)], "remote_ts": [str(c.remote_ts)],
                "bytes_in": 0, "packets_in": 0, "bytes_out": 0, "packets_out": 0,
                "replay_drops": 0, "auth_failures": 0,
                "rekey_in_s": max(0, int(c.rekey_at - now)) if c.rekey_at and c.state == "INSTALLED" else None,
                "lifetime_s": c.life_s, "lifetime_kb": c.life_kb, "installed_s": int(now - c.installed)}

    # ------------------------------------------------------------------ receive

    def _receive(self, data: bytes, local, remote, now: float) -> None:
        hdr = codec.decode_header(data)
        if hdr.major != 1:
            return
        if hdr.length != len(data):
            raise codec.MalformedMessage("header length differs from the datagram")
        self._last_raw = data
        sa = self.sas.get(hdr.spi_i)
        zero = b"\x00" * 8
        if sa is not None and sa.cky_r != zero and hdr.spi_r != sa.cky_r:
            alt = self._alts.get(hdr.spi_i + hdr.spi_r)
            if alt is not None:
                sa = alt
            elif not (hdr.spi_r == zero and not sa.initiator):
                return  # not ours
        if sa is not None and sa.remote[0] != remote[0]:
            return  # cookies are bound to the peer address (RFC 2408 2.5.3)
        ex = hdr.exchange
        self._ctx = sa
        self._rx_mid = (ex, hdr.message_id)
        if self.trace and not hdr.flags & codec.FLAG_V1_ENCRYPTION:
            self._trace_in(sa, data, data, hdr.next_payload, codec.HEADER_LEN)
        if ex in (C.EXCH_MAIN, C.EXCH_AGGRESSIVE):
            if sa is None:
                if hdr.spi_r != zero or hdr.message_id != 0 or hdr.flags & codec.FLAG_V1_ENCRYPTION:
                    return
                pls = codec.decode_chain(data, hdr.next_payload, P.REGISTRY, start=codec.HEADER_LEN)
                self._p1_respond_new(hdr, pls, local, remote, now)
                return
            if hdr.spi_r == zero:
                if not sa.initiator:
                    self._repeated_or_other_msg1(sa, hdr, data, local, remote, now)
                return
            if (ex == C.EXCH_AGGRESSIVE) != sa.aggressive:
                return
            self._p1_receive(sa, hdr, data, local, remote, now)
        elif ex == C.EXCH_QUICK:
            if sa is not None:
                if self._lost_am_msg3(sa, hdr):
                    return
                self._adopt_if_moved(sa, local, remote)
                self._qm_receive(sa, hdr, data, now)
        elif ex == C.EXCH_INFO:
            if sa is not None and self._lost_am_msg3(sa, hdr):
                return
            self._info_receive(sa, hdr, data, local, remote, now)
        else:
            self.drops += 1

    def _lost_am_msg3(self, sa: IsakmpSA, hdr) -> bool:
        """An encrypted message with both our cookies for an Aggressive Mode responder SA
        still waiting for message 3: the initiator is done (its message 3 got lost) and has
        started phase 2. Message 2, sent only once (issue 8.5), goes again so that it repeats
        message 3 (a few times); the source knows our cookie, so this answers no spoofed
        packet. vpnd's initiator repeats message 3 then; strongSwan repeats its last request
        (the Quick Mode), so with it a lost message 3 stays lost, as it did when message 2
        was retransmitted on a timer (Aggressive Mode has no acknowledgement of message 3)."""
        if sa.initiator or not sa.aggressive or sa.is_established or hdr.spi_r != sa.cky_r \
                or not hdr.flags & codec.FLAG_V1_ENCRYPTION:
            return False  # (a plain notify is the peer's refusal: _info_receive takes it)
        if sa.retx is not None and sa.retx.tries < AM_MSG2_RESENDS:
            sa.retx.tries += 1
            self._resend(sa.retx)
        return True

    # ------------------------------------------------------------------ half-open budgets (8.5)

    def _configured_source(self, ip: str) -> bool:
        return any(c.peer == ip for c in self.v1_conns)

    def _is_unverified(self, sa: IsakmpSA) -> bool:
        return sa.cky_i + sa.cky_r in self._unverified

    def _admit_unverified(self, ip: str, now: float) -> bool:
        """Room for one more unverified responder SA from `ip`: evict the source's oldest
        beyond HALF_OPEN_PER_SOURCE and, for a source that is no configured peer, the oldest
        of those beyond HALF_OPEN_UNVERIFIED_MAX. False: verified half-open SAs are at
        their cap (refused, a configured peer excepted)."""
        configured = self._configured_source(ip)
        if not configured and len(self.sas) - len(self._unverified) >= HALF_OPEN_VERIFIED_MAX:
            verified = sum(1 for s in self.sas.values() if not s.is_established and not s.initiator) \
                - sum(1 for s in self._unverified.values() if self.sas.get(s.cky_i) is s)
            if verified >= HALF_OPEN_VERIFIED_MAX:
                self._unauth_event("half_open_limit", "half_open_limit", (ip, 0),
                                   f"IKEv1 message 1 from {ip} refused: {verified} half-open ISAKMP SAs")
                return False
        dq = self._unverified_by_src.get(ip)
        while dq and len(dq) >= HALF_OPEN_PER_SOURCE:
            self._evict(self._unverified[dq[0]], now)
            dq = self._unverified_by_src.get(ip)
        if not configured:
            while self._unverified_any >= HALF_OPEN_UNVERIFIED_MAX:
                oldest = next(s for s in self._unverified.values() if not s.configured_source)
                self._evict(oldest, now)
        return True

    def _track_unverified(self, sa: IsakmpSA) -> None:
        key = sa.cky_i + sa.cky_r
        sa.configured_source = self._configured_source(sa.remote[0])
        self._unverified[key] = sa
        self._unverified_by_src.setdefault(sa.remote[0], deque()).append(key)
        if not sa.configured_source:
            self._unverified_any += 1

    def _untrack(self, sa: IsakmpSA) -> None:
        """`sa` is no longer an unverified responder SA (verified, established or gone)."""
        key = sa.cky_i + sa.cky_r
        if self._unverified.get(key) is not sa:
            return
        del self._unverified[key]
        dq = self._unverified_by_src.get(sa.remote[0])
        if dq is not None:
            try:
                dq.remove(key)
            except ValueError:
                pass
            if not dq:
                del self._unverified_by_src[sa.remote[0]]
        if not sa.configured_source:
            self._unverified_any -= 1

    def _evict(self, sa: IsakmpSA, now: float) -> None:
        self._untrack(sa)
        key = sa.cky_i + sa.cky_r
        if self._alts.get(key) is sa:
            del self._alts[key]
        elif self.sas.get(sa.cky_i) is sa:
            alts = [k for k in self._alts if k[:8] == sa.cky_i]
            if alts:  # another candidate for that initiator cookie takes its place
                self.sas[sa.cky_i] = self._alts.pop(alts[0])
            else:
                del self.sas[sa.cky_i]
        self._unauth_event("half_open_evicted", "half_open_evicted", sa.remote,
                           f"unverified half-open ISAKMP SA from {sa.remote[0]} evicted (flood protection)")

    def _am_allowed(self, ip: str, now: float) -> bool:
        """May an Aggressive Mode message 1 from `ip` cost a DH key pair now?"""
        lim = self.am_limit_peers if self._configured_source(ip) else self.am_limit
        if lim.allow(ip, now):
            return True
        self._unauth_event("am_rate", "aggressive_rate", (ip, 0),
                           f"Aggressive Mode message 1 from {ip} dropped (rate limit)")
        return False

    def _repeated_or_other_msg1(self, sa: IsakmpSA, hdr, data: bytes, local, remote, now: float) -> None:
        """A message 1 with the cookie of a responder SA we hold. The same message again: the
        peer lost our answer. Another one while that SA is half-open: nothing tells which of
        the two is genuine (phase 1 authenticates only at its end), so a forgery that came
        first must not shadow the real one: it gets a responder SA of its own, under its own
        responder cookie, and whichever the initiator continues (RFC 2408 2.5.3: the cookie
        pair names the SA) is the one that can finish."""
        dig = _digest(data)
        alts = [a for k, a in self._alts.items() if k[:8] == sa.cky_i]
        for cand in [sa] + alts:
            if dig == cand.last_in:
                if cand.retx:
                    self._resend(cand.retx)
                return
        if sa.is_established or len(alts) >= MAX_ALTERNATES:
            return
        pls = codec.decode_chain(data, hdr.next_payload, P.REGISTRY, start=codec.HEADER_LEN)
        self._p1_respond_new(hdr, pls, local, remote, now, alternate=True)

    def _settle_alternates(self, sa: IsakmpSA) -> None:
        """`sa` finished phase 1: it becomes the SA of its initiator cookie, the other
        candidates (answers to another message 1 with that cookie) go."""
        for k in [k for k in self._alts if k[:8] == sa.cky_i]:
            self._untrack(self._alts.pop(k))
        self._untrack(sa)
        self.sas[sa.cky_i] = sa

    def _adopt_if_moved(self, sa: IsakmpSA, local, remote) -> None:
        if sa.is_established and (local, remote) != (sa.local, sa.remote) and local[1] == self.natt_port:
            self._adopt_addresses_established(sa, local, remote)

    # ------------------------------------------------------------------ framing

    def _plain(self, sa: IsakmpSA, exch: int, mid: int, pls: list, flags: int = 0) -> bytes:
        h = codec.Header(sa.cky_i, sa.cky_r, 0, 1, 0, exch, flags, mid)
        data = codec.encode_message(h, pls)
        if self.trace:
            self._trace_out(sa, data, data, data[16], codec.HEADER_LEN)
        return data

    def _encrypted(self, sa: IsakmpSA, exch: int, mid: int, pls: list, flags: int = 0) -> bytes:
        first, body = codec.encode_chain(pls)
        return self._encrypted_raw(sa, exch, mid, first, body, flags)

    def _encrypted_raw(self, sa: IsakmpSA, exch: int, mid: int, first: int, body: bytes,
                       flags: int = 0) -> bytes:
        """Encrypt with the IV of the exchange and advance its CBC chain (RFC 2409 app. B)."""
        iv = sa.iv if mid == 0 else sa.p2_iv[mid]
        if self.trace:
            self._trace_out(sa, codec.encode_header(codec.Header(sa.cky_i, sa.cky_r, first, 1, 0, exch, flags, mid),
                                                    0), body, first, 0)
        ct = keys.encrypt(sa.cipher, iv, body)
        bs = sa.cipher.block_size
        if mid == 0:
            sa.iv = ct[-bs:]
        else:
            sa.p2_iv[mid] = ct[-bs:]
        h = codec.Header(sa.cky_i, sa.cky_r, first, 1, 0, exch, flags | codec.FLAG_V1_ENCRYPTION, mid)
        return codec.encode_header(h, codec.HEADER_LEN + len(ct)) + ct

    def _decrypt(self, sa: IsakmpSA, data: bytes, iv: bytes) -> tuple[bytes, bytes]:
        """(plaintext, next IV); raises ValueError on a ciphertext of the wrong size."""
        ct = data[codec.HEADER_LEN:]
        bs = sa.cipher.block_size
        if not ct or len(ct) % bs:
            raise ValueError("ciphertext is not a multiple of the block size")
        try:
            plain = keys.decrypt(sa.cipher, iv, ct)
        except Exception as e:  # CipherError
            raise ValueError(str(e)) from None
        if self.trace:
            self._trace_in(sa, data, plain, data[16], 0)
        return plain, ct[-bs:]

    # ------------------------------------------------------------------ debug lines (ike/trace.py)

    def _sent_by_initiator(self, sa: IsakmpSA | None, header: bytes, ours: bool) -> bool:
        """IKEv1 has no response flag: a message is a "request" when the initiator of its
        exchange sends it (Main/Aggressive: the ISAKMP SA's; Quick Mode: the QM's); every
        Informational is a request of its own."""
        exch = header[18]
        if exch == C.EXCH_INFO or sa is None:
            return True
        if exch == C.EXCH_QUICK:
            mid = struct.unpack_from("!I", header, 20)[0]
            qm = self.qms.get(sa.ike_id, {}).get(mid)
            if qm is None:  # a new one: ours unless it answers the message 1 we are taking
                we_initiated = self._rx_mid != (exch, mid) if ours else False
            else:
                we_initiated = qm.initiator
            return we_initiated == ours
        return sa.initiator == ours

    def _trace_out(self, sa: IsakmpSA, header: bytes, body: bytes, first: int, start: int) -> None:
        request = self._sent_by_initiator(sa, header, True)
        self._out.append(trace.ike(trace.v1_message("generating", header, body, first, start, not request),
                                   sa.conn.name, sa.ike_id))

    def _trace_in(self, sa: IsakmpSA | None, header: bytes, body: bytes, first: int, start: int) -> None:
        labels = trace.chain(body, first, start, 1)
        if any(x.startswith("UNKNOWN(") or x.endswith("(truncated)") for x in labels):
            return  # not a clean chain: undecryptable (wrong key or IV); its drop is reported
        request = self._sent_by_initiator(sa, header, False)
        name, ike_id = (sa.conn.name, sa.ike_id) if sa else (None, None)
        if self._rx is not None:
            self._out.append(trace.net(trace.packet(False, *self._rx), name, ike_id))
            self._rx = None
        self._out.append(trace.ike(trace.v1_message("parsed", header, body, first, start, not request),
                                   name, ike_id))

    def _make_retx(self, sa: IsakmpSA, data: bytes, now: float, *, expect_reply: bool) -> Retransmit:
        due = now + liveness.retransmit_wait(0, self.timers) if expect_reply else None
        return Retransmit(data, sa.local, sa.remote, due)

    def _send(self, sa: IsakmpSA, data: bytes, now: float, *, expect_reply: bool) -> None:
        sa.retx = self._make_retx(sa, data, now, expect_reply=expect_reply)
        self._out_send(sa, data)

    def _out_send(self, sa: IsakmpSA, data: bytes) -> None:
        if self.trace:
            self._out.append(trace.net(trace.packet(True, sa.local, sa.remote, len(data)), sa.conn.name, sa.ike_id))
        self._out.append(SendDatagram(data, sa.local, sa.remote))

    def _resend(self, r: Retransmit) -> None:
        self._out.append(SendDatagram(r.data, r.local, r.remote))

    # ------------------------------------------------------------------ timers

    def _sa_timers(self, sa: IsakmpSA, now: float) -> None:
        self._ctx = sa
        half_open = not sa.is_established and liveness.half_open_expired(
            sa.created, now, self.timers, retransmitting=_retransmitting(sa))
        if half_open and self._is_unverified(sa):
            # never answered with our cookie: most likely a spoofed message 1 (issue 8.5),
            # counted, not reported one by one, and nothing is sent to its source
            self._drop_isakmp(sa, now, reason="timed out", notify_peer=False)
            self._unauth_event("half_open_timeout", "half_open_timeout", sa.remote,
                               f"half-open ISAKMP SA from {sa.remote[0]} timed out (no message 3)")
            return
        if half_open:
            self._p1_fail(sa, self._give_up(sa, "negotiation timed out"), now)
            return
        r = sa.retx
        if r is not None and r.due is not None and now >= r.due:
            if liveness.retransmissions_exhausted(r.tries, self.timers):
                self._p1_fail(sa, self._give_up(sa, f"no answer from {sa.remote[0]} after {r.tries} "
                                                "retransmissions"), now)
                return
            r.tries += 1
            r.due = now + liveness.retransmit_wait(r.tries, self.timers)
            self._resend(r)
        for qm in list(self.qms.get(sa.ike_id, {}).values()):
            if _inbound_only(qm) and now >= qm.started + self.timers.inbound_only_wait:
                waited = "HASH(3)" if not qm.initiator else "CONNECTED"
                self._event("failed", qm.conn.name, f"Quick Mode {qm.mid:#010x} with {sa.remote[0]}: no {waited} "
                            f"within {self.timers.inbound_only_wait:g} s; its inbound-only IPsec SA removed",
                            ike_id=sa.ike_id)
                if qm.initiator:
                    self._qm_failed(sa, qm, now)
                else:  # the peer's exchange: forget it (a repeat of its message 1 is not answered)
                    self._qm_abandon(sa, qm)
                    self._qm_by_mid(sa).pop(qm.mid, None)
                    sa.p2_iv.pop(qm.mid, None)
                    self._done_mids.setdefault(sa.ike_id, set()).add(qm.mid)
                continue
            q = qm.retx
            if q is not None and q.due is not None and now >= q.due:
                if liveness.retransmissions_exhausted(q.tries, self.timers):
                    self._event("error", qm.conn.name, f"Quick Mode {qm.mid:#010x} got no answer", ike_id=sa.ike_id)
                    self._qm_failed(sa, qm, now)
                    continue
                q.tries += 1
                q.due = now + liveness.retransmit_wait(q.tries, self.timers)
                self._resend(q)
        if sa.expire_at is not None and now >= sa.expire_at:
            if sa.duplicate and now < sa.established + sa.policy.lifetime:
                if self._established_for_conn(sa.conn.name) is None:
                    self._revive_duplicate(sa, now)  # never retire the last one
                else:
                    self._drop_isakmp(sa, now, reason="duplicate retired")
                return
            self._event("ike_down", sa.conn.name, "ISAKMP SA lifetime expired", ike_id=sa.ike_id)
            self._drop_isakmp(sa, now, reason="expired")
            return
        if sa.rekey_at is not None and now >= sa.rekey_at:
            sa.rekey_at = None
            if not sa.replaced:
                self._rekey_isakmp(sa.conn, now)
        if sa.pending_at is not None and now >= sa.pending_at:
            self._start_pending(sa, now)
        if sa.dpd_due is not None and now >= sa.dpd_due:
            self._dpd_timer(sa, now)
        if sa.cky_i in self.sas and sa.keepalive_at is not None and now >= sa.keepalive_at:
            self._keepalive_timer(sa, now)

    @staticmethod
    def _give_up(sa: IsakmpSA, why: str) -> Phase1Failed:
        """The failure of a phase 1 that ran out of time: if a message was dropped on the
        way, that is the likelier cause (a wrong key looks like this), and its answer."""
        e = sa.rejected
        if e is None:
            return Phase1Failed(why)
        return Phase1Failed(f"{why}; dropped: {e}", e.notify, e.kind)

    def _linger_done(self, item, now: float) -> bool:
        ike_id, mid, t = item
        if now < t:
            return False
        self.qms.get(ike_id, {}).pop(mid, None)
        for sa in self.sas.values():
            if sa.ike_id == ike_id:
                sa.p2_iv.pop(mid, None)
        self._done_mids.setdefault(ike_id, set()).add(mid)
        return True

    # ------------------------------------------------------------------ connections & SAs

    def _conn(self, name: str):
        for c in self.v1_conns:
            if c.name == name:
                return c
        return None

    def _conns_for_peer(self, ip: str, peer_idp) -> list:
        exact = [c for c in self.v1_conns if c.peer == ip]
        if exact:
            return exact
        dyn = [c for c in self.v1_conns if c.peer == "%any"]
        if peer_idp is not None:
            dyn = [c for c in dyn if identity.id_matches(c.remote_id, peer_idp)] or dyn
        return dyn

    def _aggressive_conns(self, ip: str, peer_idp) -> list:
        """Connections that answer an Aggressive Mode message 1 from `ip` with this ID:
        `aggressive: true` ones (never when daemon.aggressive_mode is false), those for the
        peer's address first, then %any ones; the ID must match their remote_id (rsa-encr
        sends it encrypted: checked after decryption)."""
        if not self.aggressive_allowed:
            return []
        for group in ([c for c in self.v1_conns if c.peer == ip],
                      [c for c in self.v1_conns if c.peer == "%any"]):
            cands = [c for c in group if c.aggressive and (
                (c.auth is not None and c.auth.method == "rsa_encr") or
                (peer_idp is not None and identity.id_matches(c.remote_id, peer_idp)))]
            if cands:
                return cands
        return []

    def _conn_for_ts(self, sa: IsakmpSA, local_ts, remote_ts):
        cands = [sa.conn] + [c for c in self.v1_conns if c is not sa.conn and c.peer in (sa.conn.peer, "%any")
                             and c.auth == sa.conn.auth]
        for conn in cands:
            for l, r in self._ts_pairs(conn) if conn.peer != "%any" else self._ts_pairs_dyn(conn, sa):
                if l.version == local_ts.version and r.version == remote_ts.version and \
                        local_ts.subnet_of(l) and remote_ts.subnet_of(r):
                    return conn
        return None

    def _ts_pairs_dyn(self, conn, sa: IsakmpSA):
        local = conn.local_ts or (ipaddress.ip_network(sa.local[0]),)
        remote = conn.remote_ts or (ipaddress.ip_network(sa.remote[0]),)
        return [(l, r) for l in local for r in remote]

    def _established_for_conn(self, name: str) -> IsakmpSA | None:
        best = None
        for sa in self.sas.values():
            if sa.conn.name == name and sa.is_established and not sa.replaced:
                if best is None or sa.established > best.established:
                    best = sa
        return best

    def _isakmp_for(self, conn) -> IsakmpSA | None:
        """The connection's own ISAKMP SA, or an established one of another connection to
        the same peer with the same IKE settings and credentials: its Quick Modes run under
        that one (one ISAKMP SA per peer, as on Cisco; ike/peers.py shares_ike_sa)."""
        sa = self._established_for_conn(conn.name)
        if sa is not None:
            return sa
        from vpnd.ike.peers import shares_ike_sa

        best = None
        for s in self.sas.values():
            if s.is_established and not s.replaced and s.conn.name != conn.name \
                    and s.remote[0] == conn.peer and shares_ike_sa(s.conn, conn):
                if best is None or s.established > best.established:
                    best = s
        return best

    def _established_for_ip(self, ip: str) -> IsakmpSA | None:
        best = None
        for sa in self.sas.values():
            if sa.remote[0] == ip and sa.is_established and not sa.replaced:
                if best is None or sa.established > best.established:
                    best = sa
        return best

    def _established_count(self) -> int:
        return sum(1 for s in self.sas.values() if s.is_established)

    def _initiate_conn(self, conn, now: float) -> None:
        if conn.peer == "%any":
            self._event("error", conn.name, "cannot initiate: peer is %any")
            return
        if conn.aggressive and not self.aggressive_allowed:
            self._event("error", conn.name, "Aggressive Mode is disabled (daemon.aggressive_mode: false)")
            return
        pairs = self._ts_pairs(conn)
        if conn.per_host:
            pairs = []  # per-host SAs come from traffic (acquire)
        sa = self._isakmp_for(conn)
        if sa is not None and sa.pending_at is not None:
            if sa.conn.name != conn.name:  # another connection's SA: ours join its queue
                sa.pending += [(l, r, None, False, conn) for l, r in pairs]
            return  # its Quick Modes are about to start
        if sa is not None:
            for l, r in pairs:
                if not any(c.conn.name == conn.name and c.local_ts == l and c.remote_ts == r
                           for c in self.children.values()):
                    self._qm_initiate(sa, conn, l, r, now)
            return
        pending = [s for s in self.sas.values() if s.conn.name == conn.name and not s.is_established]
        if pending:
            return
        shared = self._shared_phase1(conn)
        if shared is not None:
            # a phase 1 of a connection it may share is under way: its Quick Modes wait for it
            if not any(len(x) > 4 and x[4].name == conn.name for x in shared.pending):
                shared.pending += [(l, r, None, False, conn) for l, r in pairs]
            return
        self._p1_initiate(conn, now, [(l, r, None, False) for l, r in pairs])

    def _shared_phase1(self, conn) -> IsakmpSA | None:
        """A phase 1 we are running for another connection that `conn` may share."""
        from vpnd.ike.peers import shares_ike_sa

        return next((s for s in self.sas.values() if s.initiator and not s.is_established and not s.rekeying
                     and s.conn.name != conn.name and s.remote[0] == conn.peer
                     and shares_ike_sa(s.conn, conn)), None)

    def _start_child(self, conn, local_ts, remote_ts, now: float, *, rekey_of=None, per_host=False) -> None:
        sa = self._isakmp_for(conn)
        if sa is not None and sa.pending_at is not None:
            sa.pending.append((local_ts, remote_ts, rekey_of, per_host))
            return
        if sa is not None:
            self._qm_initiate(sa, conn, local_ts, remote_ts, now, rekey_of=rekey_of, per_host=per_host)
            return
        pend = next((s for s in self.sas.values() if s.conn.name == conn.name and not s.is_established
                     and s.initiator), None)
        if pend is not None:
            pend.pending.append((local_ts, remote_ts, rekey_of, per_host))
        elif conn.peer != "%any":
            self._p1_initiate(conn, now, [(local_ts, remote_ts, rekey_of, per_host)])

    def _rekey_child(self, c, now: float) -> None:
        c.state = "REKEYING"
        self._start_child(c.conn, c.local_ts, c.remote_ts, now, rekey_of=c.child_id, per_host=c.per_host)

    def _rekey_isakmp(self, conn, now: float) -> None:
        """IKEv1 has no in-place rekey: a new phase 1 takes over, then the old one is deleted."""
        if conn.peer == "%any":
            return
        if any(s.conn.name == conn.name and not s.is_established and s.initiator for s in self.sas.values()):
            return
        self._p1_initiate(conn, now, [])

    def _on_isakmp_up(self, sa: IsakmpSA, now: float) -> None:
        self._want_up.discard(sa.conn.name)
        for other in list(self.sas.values()):
            if other is sa or other.conn.name != sa.conn.name or not other.is_established \
                    or other.remote[0] != sa.remote[0]:
                continue
            if sa.initiator and sa.rekeying:
                # our own rekey: the new SA takes over, the old one goes now
                other.replaced = True
                self._event("ike_rekeyed", sa.conn.name, f"ISAKMP SA {other.cky_i.hex()} replaced by "
                            f"{sa.cky_i.hex()}", ike_id=sa.ike_id, old_ike_id=other.ike_id)
                self._send_delete_isakmp(other, now)
                self._drop_isakmp(other, now, reason="rekeyed", notify_peer=False)
            elif not other.replaced and other.initiator == sa.initiator:
                # both the peer's: it rekeyed (and deletes the old SA itself) or restarted
                # without INITIAL-CONTACT (nobody will): the old SA goes after a grace period
                self._retire(other, now, rekey=True)
            elif not other.replaced and other.established is not None \
                    and other.established + SIMULTANEOUS_WINDOW < sa.created:
                # the other one was up long before this one began: no simultaneous start
                # but the peer's rekey (its Delete follows) or a peer that restarted without
                # INITIAL-CONTACT (nobody will tell us; issue 7.12): the older SA goes
                self._retire(other, now, rekey=True)
            elif not other.replaced:
                # Two SAs up at once, one from each end: the peer rekeyed one of ours, or
                # both ends initiated at the same time (`start: start` on both), or the peer
                # restarted without INITIAL-CONTACT. Only the initiator of an SA knows whether
                # it was a rekey, and the ends may see the two SAs come up in either order,
                # so both pick the redundant one by the same rule, the lowest of the four
                # nonces (RFC 7296 2.8.1's rule): the ends agree without another message.
                # Each initiator still runs its Quick Modes on its own SA (RFC 2409 5.5
                # allows any ISAKMP SA), and a Delete from the peer settles a rekey.
                loser = sa if _nonce_key(sa) < _nonce_key(other) else other
                self._retire(loser, now, rekey=not sa.initiator and loser is other)
        if not sa.replaced:
            from vpnd.ike.peers import shares_ike_sa

            for c in self.children.values():
                # also those of the other connections it carries (one ISAKMP SA per peer)
                if c.conn.name == sa.conn.name or (shares_ike_sa(c.conn, sa.conn) and c.conn.peer == sa.remote[0]):
                    c.ike_id = sa.ike_id
        if sa.aggressive and sa.initiator and sa.pending:
            # message 3 and the first Quick Mode would leave back to back; a multi-threaded
            # peer (charon) may then see Quick Mode before its ISAKMP SA is up and drop it,
            # costing a retransmission. A short pause avoids that.
            sa.pending_at = now + 0.2
            return
        self._start_pending(sa, now)

    def _retire(self, sa: IsakmpSA, now: float, *, rekey: bool) -> None:
        """No new exchanges on `sa`. Where we initiated it, or it is the older SA, it goes
        after a grace period that lets Quick Modes in flight finish; an SA the peer set up
        waits for the peer's Delete (the peer may take it as its rekey and delete the
        other), so that the ends never delete different SAs."""
        sa.replaced = sa.duplicate = True
        sa.rekey_at = None
        sa.dpd_due = None
        if sa.initiator or rekey:
            grace = self.timers.replaced_grace
            sa.expire_at = min(sa.expire_at or now + grace, now + grace)
        if rekey:
            new = self._established_for_conn(sa.conn.name)
            self._event("ike_rekeyed", sa.conn.name, f"ISAKMP SA {sa.cky_i.hex()} replaced by "
                        f"{new.cky_i.hex() if new else '?'}", ike_id=new.ike_id if new else None,
                        old_ike_id=sa.ike_id)
        else:
            self._event("ike_duplicate", sa.conn.name, f"ISAKMP SA {sa.cky_i.hex()} with {sa.remote[0]} is "
                        "a duplicate of one set up at the same time: retired", ike_id=sa.ike_id)

    def _revive_duplicate(self, gone: IsakmpSA, now: float) -> None:
        """The SA that won a tie-break went (the peer deleted it: to the peer the other SA
        was its rekey): the retired one carries on."""
        if self._established_for_conn(gone.conn.name) is not None:
            return
        cands = [s for s in self.sas.values() if s.duplicate and s.is_established
                 and s.conn.name == gone.conn.name and s.remote[0] == gone.remote[0]]
        if not cands:
            return
        sa = max(cands, key=lambda s: s.established)
        sa.replaced = sa.duplicate = False
        sa.expire_at = sa.established + sa.policy.lifetime
        if sa.initiator:
            life = sa.policy.lifetime
            sa.rekey_at = sa.established + life * 0.9 - life * 0.045 * ((sa.ike_id * 7) % 10) / 9
        self._dpd_arm(sa, now)
        for c in self.children.values():
            if c.conn.name == sa.conn.name:
                c.ike_id = sa.ike_id

    def _start_pending(self, sa: IsakmpSA, now: float) -> None:
        sa.pending_at = None
        pending, sa.pending = sa.pending, []
        for item in pending:
            l, r, rekey_of, per_host = item[:4]
            conn = item[4] if len(item) > 4 else sa.conn  # another connection sharing this SA
            self._qm_initiate(sa, conn, l, r, now, rekey_of=rekey_of, per_host=per_host)

    def _drop_isakmp(self, sa: IsakmpSA, now: float, *, reason: str, notify_peer: bool = True) -> None:
        if self.sas.get(sa.cky_i) is not sa:
            return
        if notify_peer:
            self._send_delete_isakmp(sa, now)
        del self.sas[sa.cky_i]
        self._untrack(sa)
        for k in [k for k in self._alts if k[:8] == sa.cky_i]:
            self._untrack(self._alts.pop(k))  # they lived only as long as the half-open SA they shadowed
        for qm in self.qms.pop(sa.ike_id, {}).values():
            self._qm_abandon(sa, qm)  # answered Quick Modes lose their inbound-only SAs
        self._done_mids.pop(sa.ike_id, None)
        for c in self.children.values():
            if c.state == "REKEYING" and c.ike_id == sa.ike_id:
                c.state = "INSTALLED"
        if sa.is_established:
            sa.state = "DELETED"
            self._event("ike_down", sa.conn.name, f"ISAKMP SA with {sa.remote[0]} deleted ({reason})",
                        ike_id=sa.ike_id)
            if not sa.replaced:
                self._revive_duplicate(sa, now)

    def _after_failure(self, sa: IsakmpSA, now: float) -> None:
        """A failed phase 1 we started: try again later if the connection wants to be up."""
        conn = sa.conn
        if sa.initiator and conn.peer != "%any" and (conn.start == "start" or conn.name in self._want_up):
            self._restart_at[conn.name] = now + self.timers.connect_retry
        for item in sa.pending:  # connections that waited to share it try on their own later
            other = item[4] if len(item) > 4 else None
            if other is not None and sa.initiator and (other.start == "start" or other.name in self._want_up):
                self._restart_at[other.name] = now + self.timers.connect_retry
        for c in self.children.values():
            if c.conn.name == conn.name and c.state == "REKEYING":
                c.state = "INSTALLED"

    def _has_children(self, sa: IsakmpSA) -> bool:
        return any(c.conn.name == sa.conn.name for c in self.children.values())

    def _last_in_for(self, sa: IsakmpSA) -> float:
        return max((c.last_in for c in self.children.values() if c.conn.name == sa.conn.name), default=0.0)

    def _last_out_for(self, sa: IsakmpSA) -> float:
        return max((c.last_out for c in self.children.values() if c.conn.name == sa.conn.name), default=0.0)

    def _unauth_event(self, kind: str, what: str, remote, message: str, conn: str | None = None) -> None:
        """An event caused by unauthenticated input (issue 8.2): the first of its `what` is
        reported in full, further ones are counted into one `suppressed` event per interval
        (limits.LogSummary, as IKEv2 does)."""
        self.drops += 1
        if self.unauth_log.note(what, remote[0], self._now):
            self._event(kind, conn, message)
        self._summaries(self._now)

    def _summaries(self, now: float) -> None:
        for what, count, sources, line in self.unauth_log.due_records(now):
            self._event("suppressed", None, line, what=what, count=count, sources=sources)

    def _error_answer_allowed(self, remote) -> bool:
        """May an unprotected error notify go to this source now (limits, shared with v2)?"""
        return self.error_answer_limit.allow(remote[0], self._now)

    def _count_drop(self, sa: IsakmpSA | None, why: str) -> None:
        self._drop_event(sa.conn.name if sa else None, why, ike_id=sa.ike_id if sa else None)

    def _drop_event(self, conn: str | None, why: str, **data) -> None:
        """Count a dropped message; report at most one a second so that a flood of garbage
        cannot flood the log too."""
        self.drops += 1
        if self._now - self._last_drop_report >= 1.0:
            self._last_drop_report = self._now
            self._event("drop", conn, f"{why} ({self.drops} dropped so far)", **data)

    # ------------------------------------------------------------------ actions

    def _begin(self, now: float) -> None:
        self._out = []
        self._now = now
        self._ctx = None
        self._rx_mid = None
        self._rx = None

    def _end(self) -> list:
        out, self._out = self._out, []
        ctx, self._ctx = self._ctx, None
        if not self.trace:
            return out
        traced = []
        for a in out:
            if isinstance(a, Trace) and a.ike_id is None and ctx is not None:
                a = Trace(a.subsystem, a.message, ctx.conn.name, ctx.ike_id)
            elif isinstance(a, SendDatagram) and not (traced and isinstance(traced[-1], Trace)
                                                      and traced[-1].message.startswith("sending")):
                sa = self.sas.get(a.data[:8]) if len(a.data) >= 28 else ctx
                text = (trace.packet(True, a.local, a.remote, len(a.data)) if a.data != b"\xff"
                        else f"sending keep-alive to {trace.where(a.remote)}")
                traced.append(trace.net(text, sa.conn.name if sa else None, sa.ike_id if sa else None))
            traced.append(a)
        return traced

    def _event(self, kind: str, conn: str | None, message: str, **data) -> None:
        if "ike_id" not in data and conn is not None:
            sa = self._ctx if self._ctx is not None else self._established_for_conn(conn)
            if sa is not None:
                data["ike_id"] = sa.ike_id
        # one line whatever reached it (textsafe.one_line; peer data goes through safe())
        self._out.append(Event(kind, conn, one_line(message), {k: v for k, v in data.items() if v is not None}))


def _packet_hosts(packet: bytes):
    """(source, destination) host networks of an IPv4 or IPv6 packet, or None."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return (ipaddress.ip_network(ipaddress.IPv4Address(packet[12:16])),
                ipaddress.ip_network(ipaddress.IPv4Address(packet[16:20])))
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return (ipaddress.ip_network(ipaddress.IPv6Address(packet[8:24])),
                ipaddress.ip_network(ipaddress.IPv6Address(packet[24:40])))
    return None


def _retransmitting(sa: IsakmpSA) -> bool:
    """We initiated this phase 1 and our request is on its retransmission schedule (which
    then bounds it, not timers.half_open: vpnd/ike/liveness.py)."""
    return sa.initiator and sa.retx is not None and sa.retx.due is not None


def _inbound_only(qm) -> bool:
    """Does this Quick Mode hold an installed inbound-only SA (see timers.inbound_only_wait)?"""
    return qm.child_id is not None and qm.state in ("QM_SENT2", "QM_WAIT_CONNECTED")


def _nonce_key(sa: IsakmpSA) -> bytes:
    """The lower of an SA's two nonces (RFC 7296 2.8.1: the lowest nonce loses a tie)."""
    return min(sa.ni, sa.nr)
