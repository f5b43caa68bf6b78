"""The IKEv2 sans-IO engine: every IKEv2 SA of the daemon, message plumbing (message IDs,
window size 1, retransmission with exponential back-off, cached responses, RFC 7296 2.1-2.3),
timers (rekey, expiry, DPD, NAT keepalives) and status. The exchanges themselves live in
exchange_*.py; this module routes messages to them.

Nothing here touches sockets or clocks: callers pass `now` and get a list of actions.
"""

from __future__ import annotations

import itertools
import os
import random
import struct

from vpnd.crypto.auth import AuthError
from vpnd.crypto.credentials import Credentials, CredentialStore
from vpnd.ike import codec, liveness, trace
from vpnd.ike.actions import (NAT_KEEPALIVE, ActivateOutbound, Address, ChildKeys, DeleteChildSA,
                              Event, InstallChildSA, RetireChildSA, SendDatagram, Trace,
                              UpdateChildAddresses)
from vpnd.ike.codec import CodecError, Encrypted, Header
from vpnd.ike import limits
from vpnd.ike.limits import invalid_spi_limiter
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2 import exchange_auth, exchange_child, exchange_info, exchange_init, mobike
from vpnd.ike.v2.payloads import REGISTRY, Notify
from vpnd.ike.v2.sa import EVENT_SEQ, ChildSa, IkeSa, Request
from vpnd.ike.v2.sk import IntegrityError, protect, unprotect

DROP_REPORT_INTERVAL = 10.0
FAILED_LINGER = 10.0
# Make-before-break on child rekeys (config.daemon.timers, vpnd/configschema.py Timers).
# The responder of a rekey sends on the new SA only once the initiator's Delete of the old
# one arrives (the initiator installs the new inbound SA before it sends that Delete), or
# after timers.outbound_fallback if no Delete comes. A replaced child's inbound SA stays
# timers.inbound_linger after its deletion (RetireChildSA; the SA table removes it then):
# packets the peer sent on it just before switching may still be on the way (or queued
# behind the IKE message). A failed
# `start: start` connection tries again after timers.connect_retry (as IKEv1 does).
# Unauthenticated input (issue 8): error notifies sent without an IKE SA (NO_PROPOSAL_CHOSEN,
# INVALID_SYNTAX, UNSUPPORTED_CRITICAL_PAYLOAD, INVALID_MAJOR_VERSION) are limited per source
# address and overall, so that a spoofed flood gets far less than one answer per packet
# (2.21.1: answering helps a peer diagnose, but forged messages must not make us a reflector).
# (the rates: limits.ERROR_ANSWER_*, one rule for IKEv1 and IKEv2)


def _hostport(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


class Ikev2Engine:
    def __init__(self, config, *, now: float, rng=os.urandom, ids=None, wallclock=None,
                 credentials: CredentialStore | None = None):
        self.config = config
        # certificates and keys, loaded once (the IkeManager shares one store with IKEv1)
        self.creds = credentials if credentials is not None else CredentialStore.from_config(config)
        self.rng = rng
        self._ids = ids or itertools.count(1).__next__
        self.wallclock = wallclock
        self.sas: dict[int, IkeSa] = {}
        self.by_spi: dict[bytes, IkeSa] = {}  # our SPI -> SA
        self.half_open: dict[tuple[bytes, str], IkeSa] = {}  # responder: (SPIi, peer ip)
        self.init_index: dict[tuple[bytes, str], IkeSa] = {}  # same key, for the SA's whole life:
        # a late retransmitted IKE_SA_INIT gets the cached answer, not a second SA (2.1)
        self.cookie_secret = rng(32)
        self.cookie_mode = False  # exchange_init.cookies_required: asking for cookies now
        self.cookie_secret_old = self.cookie_secret
        self.cookie_rotated = now
        self.contacted: set[str] = set()  # connections we have had an IKE SA for (INITIAL_CONTACT)
        # per peer address, bounded (vpnd/ike/limits.py): garbage ESP is never amplified
        self.invalid_spi_limit = invalid_spi_limiter()
        self.error_answer_limit = limits.error_answer_limiter()
        self.unauth_log = limits.unauth_log()
        self.retry_at: dict[str, float] = {}  # connection -> when to re-initiate (restart)
        self.drops = 0
        self.persistent: set[str] = set()
        self._drop_reported = float("-inf")
        self._out: list = []
        self.rand = random.Random(int.from_bytes(rng(8), "big"))
        self.peers = None  # ike.peers.PeerRules, set by the IkeManager (rules across versions)
        # connections waiting for an IKE SA of another connection being set up (one IKE SA
        # per peer): ike_id -> [(conn, ts_hint)], queued as CREATE_CHILD_SA once it is up
        self.waiting: dict[int, list] = {}
        # our addresses as the daemon last reported them (MOBIKE, ike/v2/mobike.py);
        # None: not known (no address lists sent)
        self.local_addrs: frozenset | None = None
        # debug lines per message (vpnd/ike/trace.py): off unless the daemon logs them
        self.trace = False
        self._ctx: IkeSa | None = None  # the SA the current input is about (log context)
        self._rx = None  # (local, remote, size) of the datagram being taken, until traced

    # ------------------------------------------------------------------ helpers for exchanges

    def new_id(self) -> int:
        return self._ids()

    def emit(self, action) -> None:
        self._out.append(action)

    def event(self, kind: str, conn: str | None, message: str, **data) -> None:
        if "ike_id" not in data and conn is not None:
            sa = self._event_sa(conn, data.get("child_id"))
            if sa is not None:
                data["ike_id"] = sa.ike_id
        self._out.append(Event(kind, conn, message, data))

    def _event_sa(self, conn: str, child_id) -> IkeSa | None:
        """The IKE SA an event of `conn` is about, for its log line's `site-b[3]`: the one
        holding its child, else the SA whose input runs now, else the only one of conn."""
        if child_id is not None:
            for sa in self.sas.values():
                if child_id in sa.children:
                    return sa
        if self._ctx is not None and self.hosts(self._ctx, conn):
            return self._ctx
        found = [sa for sa in self.sas.values() if self.hosts(sa, conn) and sa.state != "DEAD"]
        return found[0] if len(found) == 1 else None

    def take(self) -> list:
        out, self._out = self._out, []
        ctx, self._ctx = self._ctx, None
        if self.trace and ctx is not None:  # lines made before the SA was known (a new responder SA)
            out = [Trace(a.subsystem, a.message, ctx.conn.name, ctx.ike_id)
                   if isinstance(a, Trace) and a.ike_id is None else a for a in out]
        return out

    def trace_message(self, verb: str, sa: IkeSa | None, exchange: int, response: bool, mid: int,
                      payloads) -> None:
        """`parsed IKE_AUTH response 1 [ IDr AUTH SA TSi TSr ]` (inner payloads of SK)."""
        text = trace.message(verb, exchange, 2, response, mid, trace.v2_payloads(payloads))
        name, ike_id = (sa.conn.name, sa.ike_id) if sa else (None, None)
        if verb == "parsed" and self._rx is not None:
            self._out.append(trace.net(trace.packet(False, *self._rx), name, ike_id))
            self._rx = None
        self._out.append(trace.ike(text, name, ike_id))

    def unauth_event(self, what: str, source: str, now: float, kind: str, conn: str | None,
                     message: str, **data) -> None:
        """An event caused by unauthenticated input: the first of its `what` is logged in
        full, further ones only counted and summarised once per limits.UNAUTH_LOG_INTERVAL."""
        if self.unauth_log.note(what, source, now):
            self.event(kind, conn, message, **data)
        self._summaries(now)

    def _summaries(self, now: float) -> None:
        for what, count, sources, line in self.unauth_log.due_records(now):
            self.event("suppressed", None, line, what=what, count=count, sources=sources)

    def error_answer_allowed(self, remote: Address, now: float) -> bool:
        """May we send an unprotected error notify to this source now?"""
        return self.error_answer_limit.allow(remote[0], now)

    @property
    def ike_port(self) -> int:
        return self.config.daemon.ike_port

    @property
    def natt_port(self) -> int:
        return self.config.daemon.natt_port

    def connections(self):
        return [x for x in self.config.connections if x.version == 2 and x.manual is None]

    def conn_by_name(self, name: str):
        for x in self.connections():
            if x.name == name:
                return x
        return None

    def child_conn(self, sa: IkeSa, child: ChildSa):
        """The connection a CHILD_SA belongs to: an IKE SA may carry the children of several
        connections to one peer (ike/peers.py, shares_ike_sa)."""
        if child.name != sa.conn.name:
            conn = self.conn_by_name(child.name)
            if conn is not None:
                return conn
        return sa.conn

    def hosts(self, sa: IkeSa, name: str) -> bool:
        """Does `sa` belong to connection `name`, as its own or by one of its children?"""
        return sa.conn.name == name or any(ch.name == name for ch in sa.children.values())

    def shared_sa_for(self, conn, exclude: IkeSa | None = None) -> IkeSa | None:
        """An IKE SA of another connection that `conn` may add its CHILD_SA to: established,
        or one we are setting up (the child waits for it)."""
        from vpnd.ike.peers import shares_ike_sa

        best = None
        for sa in self.sas.values():
            if sa is exclude or sa.conn.name == conn.name or sa.rekeyed_to is not None \
                    or sa.remote[0] != conn.peer or not shares_ike_sa(sa.conn, conn):
                continue
            if sa.state == "ESTABLISHED":
                return sa
            if sa.state == "CONNECTING" and sa.initiator and best is None:
                best = sa
        return best

    def _add_to(self, sa: IkeSa, conn, ts_hint, now: float) -> None:
        if sa.state == "ESTABLISHED":
            self.queue(sa, exchange_child.CreateChildTask(conn, ts_hint=ts_hint), now)
        else:
            self.waiting.setdefault(sa.ike_id, []).append((conn, ts_hint))

    def credentials(self, conn) -> Credentials | None:
        """Our certificate/key and trusted CAs of a connection (None for PSK); AuthError when
        its files could not be loaded."""
        a = conn.auth
        if a is None or a.method != "cert":
            return None
        return self.creds.get(conn)

    def new_spi(self) -> bytes:
        while True:
            spi = self.rng(8)
            if spi != bytes(8) and spi not in self.by_spi:
                return spi

    def new_child_spi(self) -> int:
        used = {ch.spi_in for sa in self.sas.values() for ch in sa.children.values()}
        while True:
            spi = struct.unpack("!I", self.rng(4))[0]
            if spi >= 256 and spi not in used:
                return spi

    def register(self, sa: IkeSa) -> None:
        self.sas[sa.ike_id] = sa
        if self._ctx is None:  # a responder's new SA: its IKE_SA_INIT lines are about it
            self._ctx = sa
        self.by_spi[sa.our_spi] = sa

    def forget(self, sa: IkeSa) -> None:
        self.sas.pop(sa.ike_id, None)
        if self.by_spi.get(sa.our_spi) is sa:
            del self.by_spi[sa.our_spi]
        for d in (self.half_open, self.init_index):
            for k, v in list(d.items()):
                if v is sa:
                    del d[k]

    def send(self, data: bytes, sa: IkeSa | None = None, *, local: Address | None = None,
             remote: Address | None = None, now: float | None = None, resent: bool = False) -> None:
        if self.trace:
            self._trace_send(data, sa, local or sa.local, remote or sa.remote, resent)
        self._out.append(SendDatagram(data, local or sa.local, remote or sa.remote))
        if sa is not None and now is not None:
            sa.last_sent = now

    def _trace_send(self, data: bytes, sa: IkeSa | None, local: Address, remote: Address,
                    resent: bool) -> None:
        name, ike_id = (sa.conn.name, sa.ike_id) if sa is not None else (None, None)
        if data == NAT_KEEPALIVE:
            self._out.append(trace.net(f"sending keep-alive to {trace.where(remote)}", name, ike_id))
            return
        if not resent and len(data) >= codec.HEADER_LEN and data[16] not in (c.PT_SK, c.PT_SKF):
            # unprotected (IKE_SA_INIT and its error answers); SK messages were traced when built
            mid = struct.unpack_from("!I", data, 20)[0]
            labels = trace.chain(data, data[16], codec.HEADER_LEN, 2)
            self._out.append(trace.ike(trace.message("generating", data[18], 2, bool(data[19] & c.FLAG_R),
                                                     mid, labels), name, ike_id))
        self._out.append(trace.net(trace.packet(True, local, remote, len(data)), name, ike_id))

    def header(self, sa: IkeSa, exchange: int, mid: int, response: bool) -> Header:
        return Header(sa.spi_i, sa.spi_r, 0, 2, 0, exchange, sa.flags(response), mid)

    @property
    def timers(self):
        return self.config.daemon.timers

    def retransmit_timeouts(self, sa: IkeSa) -> list[float]:
        """The shared back-off (vpnd/ike/liveness.py: 2 s doubling, 5 retransmissions); with
        DPD on, cut to the DPD budget, so that a peer that answers nothing is given up as soon
        as an unanswered probe would make it dead (and a restart re-initiates that often)."""
        t = liveness.retransmit_timeouts(self.timers)
        dpd = sa.conn.dpd
        if dpd.interval > 0:
            return liveness.within(t, liveness.dpd_dead_after(dpd))
        return t

    # Follow-ups that one exchange starts for another go through the engine, which knows
    # every exchange module, so the exchange modules never import each other (issue 9).
    def queue_delete_child(self, sa: IkeSa, child: ChildSa, now: float) -> None:
        self.queue(sa, exchange_info.DeleteChildTask(child), now)

    def queue_delete_ike(self, sa: IkeSa, now: float) -> None:
        self.queue_force(sa, exchange_info.DeleteIkeTask(), now)

    def recreate_child(self, sa: IkeSa, conn) -> None:
        """A CHILD_SA the peer lost (INVALID_SPI) is negotiated again."""
        sa.queue.append(exchange_child.CreateChildTask(conn))

    @staticmethod
    def is_delete_ike(task) -> bool:
        return isinstance(task, exchange_info.DeleteIkeTask)

    def ike_established(self, sa: IkeSa, now: float) -> None:
        """An IKE SA is up: by IKE_AUTH, or as the new SA of an IKE SA rekey (2.18)."""
        sa.state = "ESTABLISHED"
        sa.established_at = now
        sa.established_seq = next(EVENT_SEQ)
        sa.last_recv = now
        lt = sa.conn.lifetime.ike
        if lt:
            sa.rekey_at = now + lt * self.rekey_fraction(sa.initiator)
            sa.expire_at = now + lt
        for k, v in list(self.half_open.items()):
            if v is sa:
                del self.half_open[k]
        self.contacted.add(sa.conn.name)
        self.event("ike_up", sa.conn.name,
                   f"IKE_SA {sa.conn.name}[{sa.ike_id}] established between {sa.local[0]}[{sa.local[1]}]"
                   f"...{sa.remote[0]}[{sa.remote[1]}] ({sa.peer_id}), {sa.chosen.describe()}"
                   f"{', NAT detected' if sa.nat_local or sa.nat_remote else ''}",
                   ike_id=sa.ike_id, nat=sa.nat_local or sa.nat_remote)

    def queue(self, sa: IkeSa, task, now: float) -> None:
        """Queue an exchange; it is sent once the window is free (2.3)."""
        sa.queue.append(task)
        self.kick(sa, now)

    def kick(self, sa: IkeSa, now: float) -> None:
        if sa.state == "ESTABLISHED" and sa.ike_id in self.waiting:
            for conn, hint in self.waiting.pop(sa.ike_id):
                sa.queue.append(exchange_child.CreateChildTask(conn, ts_hint=hint))
        while sa.pending is None and sa.queue and sa.state not in ("CONNECTING", "DEAD") \
                and sa.crypto_out is not None:
            task = sa.queue.popleft()
            if not task.ready(self, sa):
                continue
            try:
                payloads = task.build(self, sa, now)
            except AuthError as err:
                self.event("auth_failed", sa.conn.name, f"cannot authenticate: {err}")
                self.kill_ike(sa, now, "local credentials unusable")
                return
            if payloads is None:  # nothing to do any more
                continue
            mid = sa.mid_out
            sa.mid_out += 1
            if self.trace:
                self.trace_message("generating", sa, task.exchange, False, mid, payloads)
            data = protect(self.header(sa, task.exchange, mid, False), payloads, sa.crypto_out, self.rng)
            timeouts = task.timeouts(self, sa) if hasattr(task, "timeouts") else self.retransmit_timeouts(sa)
            sa.pending = Request(mid, task.exchange, data, task, now, now + timeouts[0], timeouts)
            sa.dpd_probe = isinstance(task, exchange_info.DpdTask)
            self.send(data, sa, now=now)

    def respond(self, sa: IkeSa, exchange: int, mid: int, payloads: list, now: float,
                path: tuple | None = None) -> None:
        """path: (local, remote) to answer on, when not the SA's (a MOBIKE path check)."""
        if self.trace:
            self.trace_message("generating", sa, exchange, True, mid, payloads)
        data = protect(self.header(sa, exchange, mid, True), payloads, sa.crypto_out, self.rng)
        sa.last_response = (mid, data)
        if path is not None:
            self.send(data, sa, local=path[0], remote=path[1], now=now)
        else:
            self.send(data, sa, now=now)

    # ------------------------------------------------------------------ children

    def install_child(self, sa: IkeSa, child: ChildSa, keys: tuple, now: float,
                      replaces: int | None = None, outbound: bool = True,
                      defer_outbound: bool = False) -> None:
        """Emit InstallChildSA; keys = (enc_i2r, auth_i2r, enc_r2i, auth_r2i). defer_outbound:
        inbound only for now; activate_outbound() adds the outbound SA later."""
        conn = self.child_conn(sa, child)
        lt = conn.lifetime
        child.installed_at = now
        child.udp_encap = sa.udp_encap
        if lt.seconds:
            child.rekey_at = now + lt.seconds * self.rekey_fraction(child.initiator)
            child.expire_at = now + lt.seconds
        child.last_in = child.last_out = now
        sa.children[child.child_id] = child
        if outbound and defer_outbound:
            child.out_pending = (keys, replaces)
            child.out_at = now + self.timers.outbound_fallback
            outbound = False
        child.has_outbound = outbound
        self.emit(self._install_action(sa, child, keys, outbound, replaces if outbound else None))
        ch = child.chosen
        self.event("child_up", conn.name,
                   f"CHILD_SA {conn.name}{{{child.child_id}}} established with SPIs "
                   f"{child.spi_in:08x}_i {child.spi_out:08x}_o and TS "
                   f"{' '.join(map(str, child.local_ts))} === {' '.join(map(str, child.remote_ts))}",
                   child_id=child.child_id, proposal=ch.describe(), udp_encap=sa.udp_encap)
        if self.peers is not None and replaces is None:
            # a peer that restarted without INITIAL_CONTACT: older same-selector duplicates go
            self.peers.child_installed(2, sa, [n for t in child.local_ts for n in t.networks()],
                                       [n for t in child.remote_ts for n in t.networks()], now)
        if replaces is None and outbound and not defer_outbound:
            self._settle_twin(sa, child, now)

    def _settle_twin(self, sa: IkeSa, child: ChildSa, now: float) -> None:
        """Both ends created a CHILD_SA for the same connection and selectors at once
        (crossing CREATE_CHILD_SAs): as for a rekey collision (2.8.1), the one with the
        lowest nonce is redundant and its initiator deletes it, so both ends agree."""
        sel = (sorted(map(str, child.local_ts)), sorted(map(str, child.remote_ts)))
        for other in list(sa.children.values()):
            if other is child or other.name != child.name or other.initiator == child.initiator \
                    or other.state != "INSTALLED" or other.rekeyed_by is not None or not other.has_outbound \
                    or (sorted(map(str, other.local_ts)), sorted(map(str, other.remote_ts))) != sel:
                continue
            redundant = min((child, other), key=lambda x: min(x.ni, x.nr))
            if redundant.initiator:
                self.event("child_duplicate", child.name,
                           f"CHILD_SA {child.name}{{{redundant.child_id}}} duplicates "
                           f"{{{(other if redundant is child else child).child_id}}} (both ends created it): deleting it")
                self._delete_child(sa, redundant, now, "duplicate of one the peer created at the same time")
            return

    def activate_outbound(self, sa: IkeSa, child: ChildSa, why: str) -> None:
        """Move outbound traffic to a child installed with defer_outbound: the daemon gets the
        same InstallChildSA again, now with the outbound keys (inbound stays as it is)."""
        if child.out_pending is None:
            return
        keys, replaces = child.out_pending
        child.out_pending = child.out_at = None
        child.has_outbound = True
        full = self._install_action(sa, child, keys, True, replaces)
        self.emit(ActivateOutbound(child.child_id, full.outbound, replaces))
        self.event("child_outbound", child.name,
                   f"CHILD_SA {child.name}{{{child.child_id}}} now carries outbound traffic ({why})",
                   child_id=child.child_id)

    def _install_action(self, sa: IkeSa, child: ChildSa, keys: tuple, outbound: bool,
                        replaces: int | None) -> InstallChildSA:
        ch = child.chosen
        enc_i, auth_i, enc_r, auth_r = keys
        we_i = child.initiator
        enc_in, auth_in = (enc_r, auth_r) if we_i else (enc_i, auth_i)
        enc_out, auth_out = (enc_i, auth_i) if we_i else (enc_r, auth_r)
        conn = self.child_conn(sa, child)
        lt = conn.lifetime
        kb = lt.kilobytes or 0
        enc = ch.encryption if ch.protocol == "esp" else None
        return InstallChildSA(
            connection=conn.name, child_id=child.child_id, ike_id=sa.ike_id, mode=child.mode,
            local=sa.local, remote=sa.remote, udp_encap=sa.udp_encap, esn=ch.esn,
            replay_window=conn.replay_window,
            local_ts=tuple(n for t in child.local_ts for n in t.networks()),
            remote_ts=tuple(n for t in child.remote_ts for n in t.networks()),
            inbound=(ChildKeys(child.spi_in, ch.protocol, enc, ch.integrity, enc_in, auth_in),),
            outbound=(ChildKeys(child.spi_out, ch.protocol, enc, ch.integrity, enc_out, auth_out),)
            if outbound else (),
            proposal=ch.describe(), lifetime_seconds=lt.seconds,
            soft_kilobytes=int(kb * 0.9), hard_kilobytes=kb, replaces=replaces,
            ipcomp=child.ipcomp)

    def rekey_fraction(self, creator: bool) -> float:
        """When to rekey, as a fraction of the lifetime, with jitter (2.8). The side that
        created the SA rekeys at 85-90 %; the other side only as a fallback at 94-96 %, so
        that equal lifetimes on both ends do not make every rekey a collision."""
        if creator:
            return 0.9 - 0.05 * self.rand.random()
        return 0.96 - 0.02 * self.rand.random()

    def remove_child(self, sa: IkeSa, child: ChildSa, reason: str, now: float | None = None) -> None:
        if sa.children.pop(child.child_id, None) is None:
            return
        child.out_pending = child.out_at = None
        succ = sa.children.get(child.rekeyed_by) if child.rekeyed_by is not None else None
        if succ is not None and succ.out_pending is not None and succ.state in ("INSTALLED", "REKEYING"):
            # the old SA goes: its successor must carry the traffic from now on
            self.activate_outbound(sa, succ, f"{{{child.child_id}}} deleted")
        if now is not None and succ is not None and succ.has_outbound:
            # replaced: the peer may still have packets on the way on the old SA
            self.emit(RetireChildSA(child.child_id, now + self.timers.inbound_linger))
        else:
            self.emit(DeleteChildSA(child.child_id))
        self.event("child_down", child.name,
                   f"CHILD_SA {child.name}{{{child.child_id}}} deleted ({reason})",
                   child_id=child.child_id)

    def find_child_by_out(self, sa: IkeSa, spi: int) -> ChildSa | None:
        for ch in sa.children.values():
            if ch.spi_out == spi:
                return ch
        return None

    def find_child_by_in(self, sa: IkeSa, spi: int) -> ChildSa | None:
        for ch in sa.children.values():
            if ch.spi_in == spi:
                return ch
        return None

    def kill_ike(self, sa: IkeSa, now: float, reason: str, *, dead: bool = False) -> None:
        """Drop an IKE SA and its children locally (no message)."""
        if sa.ike_id not in self.sas:
            return
        for conn, hint in self.waiting.pop(sa.ike_id, []):
            # the IKE SA they waited for failed: another one, or their own attempt later
            other = self.shared_sa_for(conn, exclude=sa)
            if other is not None:
                self._add_to(other, conn, hint, now)
            elif conn.start == "start" and (self.peers is None or self.peers.may_reinitiate(conn.name)):
                self.retry_at[conn.name] = now + self.timers.connect_retry
        carried = [ch.name for ch in sa.children.values()]
        for ch in list(sa.children.values()):
            self.remove_child(sa, ch, reason)  # the whole tunnel goes: no linger
        was_up = sa.established_at is not None
        if sa.pending is not None and hasattr(sa.pending.task, "abort"):
            sa.pending.task.abort(self, sa)
        sa.state = "DEAD"
        sa.pending = None
        sa.queue.clear()
        self.forget(sa)
        if was_up:
            self.event("ike_down", sa.conn.name,
                       f"IKE_SA {sa.conn.name}[{sa.ike_id}] deleted ({reason})", ike_id=sa.ike_id)
        if dead:
            self.on_peer_dead(sa, now)
            for name in {ch_name for ch_name in carried if ch_name != sa.conn.name}:
                conn = self.conn_by_name(name)
                if conn is not None:
                    self.on_peer_dead(sa, now, conn)

    def on_peer_dead(self, sa: IkeSa, now: float, conn=None) -> None:
        conn = conn or sa.conn
        action = conn.dpd.action
        self.event("peer_dead", conn.name,
                   f"peer {sa.remote[0]} of {conn.name} is dead (no answer), action {action}")
        if action == "restart" and not conn.dynamic and not self._has_other_sa(conn, sa) \
                and (self.peers is None or self.peers.may_reinitiate(conn.name)):
            self.retry_at[conn.name] = now  # re-initiate on the next timer, until it works
            self.persistent.add(conn.name)

    def _has_other_sa(self, conn, exclude: IkeSa) -> bool:
        return any(s is not exclude and self.hosts(s, conn.name) and s.state not in ("DEAD", "FAILED")
                   for s in self.sas.values())

    # ------------------------------------------------------------------ receive path

    def receive(self, data: bytes, local: Address, remote: Address, now: float) -> list:
        # its `received packet` line comes with its `parsed` one: a datagram that parses as
        # nothing of ours (a spoofed flood, issue 8) costs no line, even at debug
        self._rx = (local, remote, len(data)) if self.trace else None
        try:
            self._receive(data, local, remote, now)
        except CodecError as e:
            self.drops += 1
            # counted always, reported at most every DROP_REPORT_INTERVAL (no log flood)
            if now - self._drop_reported >= DROP_REPORT_INTERVAL:
                self._drop_reported = now
                self.event("drop", None, f"dropped malformed IKEv2 message from {remote[0]}: {e} "
                                         f"({self.drops} dropped so far)")
        except Exception as e:  # a bug must not take the daemon down; counted and reported
            self.drops += 1
            self.event("error", None, f"internal error on IKEv2 message from {remote[0]}: "
                                      f"{type(e).__name__}: {e}")
        return self.take()

    def _receive(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        if (len(data) >= codec.HEADER_LEN and data[17] >> 4 == 2 and data[18] == c.IKE_SA_INIT
                and not data[19] & c.FLAG_R and not exchange_init.candidates(self, local, remote)):
            # before any parsing: a flood from unconfigured sources costs a header peek each
            exchange_init.drop_unconfigured(self, remote, now)
            return
        if (len(data) >= codec.HEADER_LEN and data[18] == c.IKE_SA_INIT and not data[19] & c.FLAG_R
                and exchange_init.cookie_precheck(self, data, local, remote, now)):
            return
        try:
            msg = codec.decode_message(data, REGISTRY)
        except codec.InvalidMajorVersion as e:
            self.drops += 1
            self._invalid_major_version(data, e.major, local, remote, now)
            return
        except codec.UnsupportedCriticalPayload as e:
            self.drops += 1
            h = codec.decode_header(data)
            self.unauth_event("unsupported critical payload", remote[0], now, "unsupported_critical", None,
                              f"rejected IKEv2 {c.EXCHANGE_NAMES.get(h.exchange, h.exchange)} message from "
                              f"{remote[0]}: unsupported critical payload type {e.payload_type} (RFC 7296 2.5)",
                              payload_type=e.payload_type)
            self._unprotected_notify_error(h, local, remote, now, c.N_UNSUPPORTED_CRITICAL_PAYLOAD,
                                           struct.pack("!B", e.payload_type))
            return
        except CodecError:
            # a malformed IKE_SA_INIT request (e.g. a nonce under 16 octets, 2.10/3.9) gets
            # INVALID_SYNTAX; everything else malformed is dropped (2.21.1, 2.21.2)
            try:
                h = codec.decode_header(data)
            except CodecError:
                raise
            if h.length == len(data):
                self._unprotected_notify_error(h, local, remote, now, c.N_INVALID_SYNTAX, b"")
            raise
        h = msg.header
        if h.exchange == c.IKE_SA_INIT:
            if self.trace:
                self.trace_message("parsed", None, h.exchange, h.is_response, h.message_id, msg.payloads)
            if not h.is_response:
                if h.spi_r != bytes(8):
                    self.drops += 1
                    return
                exchange_init.responder(self, msg, data, local, remote, now)
            else:
                sa = self.by_spi.get(h.spi_i)
                if sa is None or not sa.initiator or sa.state != "CONNECTING":
                    self.drops += 1
                    return
                self._ctx = sa
                exchange_init.on_response(self, sa, msg, data, local, remote, now)
            return
        # everything else is protected: find the SA by our SPI (2.21.4: unknown SPI -> drop)
        ours = h.spi_r if h.is_initiator else h.spi_i
        sa = self.by_spi.get(ours)
        if sa is None or (sa.spi_i != h.spi_i) or (h.spi_r != sa.spi_r) or sa.crypto_in is None:
            self.drops += 1
            return
        if sa.initiator == h.is_initiator:
            self.drops += 1  # our own flags reflected back
            return
        self._ctx = sa
        if not msg.payloads or not isinstance(msg.payloads[-1], Encrypted) or len(msg.payloads) != 1:
            self.drops += 1
            return
        enc = msg.payloads[-1]
        if h.is_response:
            req = sa.pending
            if req is None or h.message_id != req.mid or h.exchange != req.exchange:
                self.drops += 1
                return
            try:
                payloads = unprotect(data, enc, sa.crypto_in)
            except IntegrityError:
                self.drops += 1
                return
            except codec.CodecError:
                # authenticated but malformed: treat as a failed exchange
                payloads = [Notify(c.N_INVALID_SYNTAX)]
            if self.trace:
                self.trace_message("parsed", sa, h.exchange, True, h.message_id, payloads)
            sa.pending = None
            sa.last_recv = now
            self._maybe_peer_moved(sa, local, remote, now)
            req.task.on_response(self, sa, payloads, now)
            self.kick(sa, now)
            return
        # a request
        if h.message_id == sa.mid_in - 1 and sa.last_response and sa.last_response[0] == h.message_id:
            try:
                unprotect(data, enc, sa.crypto_in)  # only authentic retransmits get an answer
            except codec.CodecError:
                self.drops += 1
                return
            if self.trace:
                self._out.append(trace.net(trace.packet(False, *self._rx), sa.conn.name, sa.ike_id))
                self._out.append(trace.ike(f"received retransmit of request {h.message_id}, retransmitting "
                                           "response", sa.conn.name, sa.ike_id))
            self.send(sa.last_response[1], sa, now=now, resent=True)
            return
        if h.message_id != sa.mid_in or sa.state == "FAILED":
            self.drops += 1
            return
        try:
            payloads = unprotect(data, enc, sa.crypto_in)
        except IntegrityError:
            self.drops += 1
            return
        except codec.UnsupportedCriticalPayload as e:
            sa.mid_in += 1
            sa.last_recv = now
            self.unauth_event("unsupported critical payload", remote[0], now, "unsupported_critical",
                              sa.conn.name,
                              f"rejected {c.EXCHANGE_NAMES.get(h.exchange, h.exchange)} request from "
                              f"{remote[0]} on IKE_SA {sa.conn.name}[{sa.ike_id}]: unsupported critical "
                              f"payload type {e.payload_type} (RFC 7296 2.5)", payload_type=e.payload_type)
            self.respond(sa, h.exchange, h.message_id,
                         [Notify(c.N_UNSUPPORTED_CRITICAL_PAYLOAD, bytes([e.payload_type]))], now)
            return
        except codec.CodecError:
            sa.mid_in += 1
            sa.last_recv = now
            self.respond(sa, h.exchange, h.message_id, [Notify(c.N_INVALID_SYNTAX)], now)
            return
        sa.mid_in += 1
        sa.last_recv = now
        if self.trace:
            self.trace_message("parsed", sa, h.exchange, False, h.message_id, payloads)
        self._maybe_peer_moved(sa, local, remote, now)
        sa.request_path = (local, remote)
        if h.exchange == c.IKE_AUTH:
            exchange_auth.responder(self, sa, h, payloads, now)
        elif h.exchange == c.CREATE_CHILD_SA:
            exchange_child.responder(self, sa, h, payloads, now)
        elif h.exchange == c.INFORMATIONAL:
            exchange_info.responder(self, sa, h, payloads, now)
        else:
            self.respond(sa, h.exchange, h.message_id, [Notify(c.N_INVALID_SYNTAX)], now)
        self.kick(sa, now)

    def _maybe_peer_moved(self, sa: IkeSa, local: Address, remote: Address, now: float) -> None:
        """Answer where authentic messages come from: the peer floats to the NAT-T port, and a
        NATed peer's mapping may change (2.23)."""
        if remote == sa.remote and local[1] == sa.local[1]:
            return
        if remote[0] != sa.remote[0] and not sa.nat_remote:
            return
        if sa.mobike and (remote[0] != sa.remote[0] or local[0] != sa.local[0]):
            return  # RFC 4555 3.8: only UPDATE_SA_ADDRESSES moves it (a NAT's new port does)
        if remote[1] == self.natt_port or local[1] == self.natt_port:
            sa.natt = True
        sa.remote = remote
        sa.local = (local[0] if local[0] not in ("0.0.0.0", "::") else sa.local[0], local[1])
        for ch in sa.children.values():
            self.emit(UpdateChildAddresses(ch.child_id, sa.local, sa.remote, sa.udp_encap))

    def _unprotected_notify_error(self, h: Header, local, remote, now: float, ntype: int,
                                  ndata: bytes) -> None:
        """Errors on IKE_SA_INIT requests get an unprotected answer (2.21.1), but only for
        sources we have a connection for, and rate-limited (issue 8.2)."""
        if h.exchange != c.IKE_SA_INIT or h.is_response or h.message_id != 0 or h.spi_r != bytes(8):
            return
        if not exchange_init.candidates(self, local, remote) or not self.error_answer_allowed(remote, now):
            return
        resp = Header(h.spi_i, bytes(8), 0, 2, 0, c.IKE_SA_INIT, c.FLAG_R, 0)
        self.send(codec.encode_message(resp, [Notify(ntype, ndata)]), local=local, remote=remote)

    def _invalid_major_version(self, data: bytes, major: int, local, remote, now: float) -> None:
        """2.5: a message with a higher major version is dropped, and a request SHOULD be
        answered with INVALID_MAJOR_VERSION carrying our version in the header. Never a
        response (that could loop between two implementations); only to sources we have a
        connection for; rate-limited."""
        if len(data) < codec.HEADER_LEN or major <= 2:
            return
        spi_i, spi_r, _, _, exch, flags, mid = struct.unpack_from("!8s8sBBBBI", data)
        if flags & c.FLAG_R:
            return
        self.unauth_event("unknown IKE major version", remote[0], now, "invalid_major_version", None,
                          f"dropped IKE message of major version {major} from {remote[0]} "
                          f"(we speak 2; answering INVALID_MAJOR_VERSION, RFC 7296 2.5)", major=major)
        if not exchange_init.candidates(self, local, remote) or not self.error_answer_allowed(remote, now):
            return
        resp = Header(spi_i, spi_r, 0, 2, 0, exch, c.FLAG_R, mid)
        self.send(codec.encode_message(resp, [Notify(c.N_INVALID_MAJOR_VERSION)]), local=local, remote=remote)

    # ------------------------------------------------------------------ public API

    def initiate(self, name: str, now: float, *, ts_hint=None) -> list:
        conn = self.conn_by_name(name)
        if conn is None:
            self.event("error", name, f"no IKEv2 connection {name!r}")
            return self.take()
        if conn.dynamic:
            self.event("error", name, f"connection {name} has peer %any and can only respond")
            return self.take()
        err = exchange_child.bundle_error(conn)
        if err is not None:
            self.event("error", name, err)
            return self.take()
        self.retry_at.pop(name, None)
        for sa in self.sas.values():
            if self.hosts(sa, name) and sa.state in ("ESTABLISHED", "CONNECTING") and sa.rekeyed_to is None:
                if sa.state == "ESTABLISHED" and not any(ch.state != "DELETING" and ch.name == name
                                                         for ch in sa.children.values()) \
                        and not any(isinstance(t, exchange_child.CreateChildTask) and t.conn.name == name
                                    for t in sa.queue):
                    self.queue(sa, exchange_child.CreateChildTask(conn, ts_hint=ts_hint), now)
                elif conn.per_host and ts_hint is not None and sa.state == "ESTABLISHED":
                    self.queue(sa, exchange_child.CreateChildTask(conn, ts_hint=ts_hint), now)
                return self.take()
        shared = self.shared_sa_for(conn)
        if shared is not None:
            # same peer, same IKE settings and credentials: one IKE SA, one more CHILD_SA
            # (RFC 7296 1.3.1), as strongSwan reuses its IKE SA and Cisco keeps one per peer
            if not any(c is conn or c.name == name for c, _ in self.waiting.get(shared.ike_id, [])):
                self._add_to(shared, conn, ts_hint, now)
            return self.take()
        exchange_init.initiate(self, conn, now, ts_hint=ts_hint)
        return self.take()

    def mobike_peers(self) -> set[str]:
        """Peer addresses (current and additional) of the IKE SAs whose path we decide
        (MOBIKE initiator): the daemon looks up which of our addresses reaches each."""
        out: set[str] = set()
        for sa in self.sas.values():
            if sa.mobike and sa.mobike_initiator and sa.state == "ESTABLISHED":
                out.add(sa.remote[0])
                out.update(sa.peer_addrs)
        return out

    def addresses_changed(self, addrs, sources: dict, now: float) -> list:
        """Our addresses are now `addrs`, and the kernel reaches each peer address of
        mobike_peers() from sources[peer] (None: unreachable). MOBIKE SAs move (RFC 4555)."""
        self.local_addrs = frozenset(addrs)
        for sa in list(self.sas.values()):
            mobike.addresses_changed(self, sa, sources, now)
        return self.take()

    def terminate(self, name: str, now: float) -> list:
        self.retry_at.pop(name, None)
        for sa in list(self.sas.values()):
            if not self.hosts(sa, name):
                continue
            others = [ch for ch in sa.children.values() if ch.name != name and ch.state != "DELETING"]
            if others and sa.state == "ESTABLISHED":
                # the IKE SA carries other connections' children: only ours go (each with a
                # Delete); the IKE SA stays with them, and goes with the last of them
                for ch in [ch for ch in sa.children.values() if ch.name == name]:
                    if ch.state != "DELETING":
                        self.queue(sa, exchange_info.DeleteSpiTask(ch.protocol, ch.spi_in), now)
                    self.remove_child(sa, ch, "terminated")
                for t in [t for t in sa.queue if getattr(getattr(t, "conn", None), "name", None) == name]:
                    sa.queue.remove(t)
                if sa.conn.name == name:
                    sa.conn = self.child_conn(sa, others[0])
                continue
            if sa.state in ("ESTABLISHED", "REKEYED") and sa.crypto_out is not None:
                sa.queue.clear()
                sa.pending = None
                sa.state = "DELETING"
                # the tunnel is down now (issue 7.2): the data plane SAs go at once, the
                # Delete is sent and retransmitted a bounded time whether or not it is answered
                for ch in list(sa.children.values()):
                    self.remove_child(sa, ch, "terminated")
                self.queue_force(sa, exchange_info.DeleteIkeTask(), now)
            else:
                self.kill_ike(sa, now, "terminated")
        return self.take()

    def linger(self, sa: IkeSa, now: float) -> None:
        """A failed SA stays FAILED_LINGER seconds, only to answer a retransmitted request
        with the same cached error (2.1), then goes."""
        for d in (self.half_open,):
            for k, v in list(d.items()):
                if v is sa:
                    del d[k]
        sa.state = "FAILED"
        sa.pending = None
        sa.queue.clear()
        sa.expire_at = now + FAILED_LINGER

    def queue_force(self, sa: IkeSa, task, now: float) -> None:
        """Queue on an SA that is being deleted (only the delete itself is still sent)."""
        state = sa.state
        sa.state = "ESTABLISHED"
        sa.queue.append(task)
        self.kick(sa, now)
        sa.state = state

    def rekey(self, name: str, now: float, *, ike: bool = False) -> list:
        for sa in list(self.sas.values()):
            if not self.hosts(sa, name) or sa.state != "ESTABLISHED":
                continue
            if ike:
                self.queue(sa, exchange_child.RekeyIkeTask(), now)
            else:
                for ch in list(sa.children.values()):
                    if ch.state == "INSTALLED" and ch.name == name:
                        self.queue(sa, exchange_child.CreateChildTask(self.child_conn(sa, ch), rekey=ch), now)
            return self.take()
        self.event("error", name, f"connection {name} has no established IKE SA to rekey")
        return self.take()

    def acquire(self, name: str, packet: bytes, now: float) -> list:
        """start: trap — a packet hit the policy without an SA."""
        ts_hint = exchange_child.packet_selectors(packet)
        return self.initiate(name, now, ts_hint=ts_hint)

    def child_expiring(self, child_id: int, hard: bool, now: float) -> list:
        for sa in self.sas.values():
            ch = sa.children.get(child_id)
            if ch is None:
                continue
            if hard:
                self._delete_child(sa, ch, now, "hard lifetime (volume) reached")
            elif ch.state == "INSTALLED":
                self.queue(sa, exchange_child.CreateChildTask(self.child_conn(sa, ch), rekey=ch), now)
        return self.take()

    def child_activity(self, child_id: int, last_in: float, last_out: float) -> None:
        for sa in self.sas.values():
            ch = sa.children.get(child_id)
            if ch is not None:
                ch.last_in = max(ch.last_in, last_in)
                ch.last_out = max(ch.last_out, last_out)

    def unknown_spi(self, spi: int, remote: Address, now: float) -> list:
        """ESP with an SPI we do not know from a peer we share an IKE SA with: tell it with
        an INVALID_SPI notify (2.21.3), at most once per second per peer."""
        if not self.config.daemon.invalid_spi_recovery:
            return self.take()
        if not self.invalid_spi_limit.peek(remote[0], now):
            return self.take()
        for sa in self.sas.values():
            if sa.remote[0] == remote[0] and sa.state == "ESTABLISHED":
                self.invalid_spi_limit.allow(remote[0], now)  # only peers we have an SA with
                self.queue(sa, exchange_info.InvalidSpiTask(spi), now)
                break
        return self.take()

    def _delete_child(self, sa: IkeSa, ch: ChildSa, now: float, reason: str) -> None:
        if ch.state == "DELETING":
            return
        ch.state = "DELETING"
        self.event("child_expire", ch.name, f"deleting CHILD_SA {ch.name}{{{ch.child_id}}}: {reason}")
        self.queue(sa, exchange_info.DeleteChildTask(ch), now)

    # ------------------------------------------------------------------ timers

    def next_timer(self) -> float | None:
        times: list[float] = list(self.retry_at.values())
        summary_at = self.unauth_log.next_due()
        if summary_at is not None:
            times.append(summary_at)
        for sa in self.sas.values():
            if sa.state == "FAILED":
                times.append(sa.expire_at)
                continue
            if sa.pending is not None:
                times.append(sa.pending.next_at)
            if sa.state == "CONNECTING":
                if sa.pending is None:
                    times.append(liveness.half_open_due(sa.created_at, self.timers))
                continue
            if sa.state != "ESTABLISHED":
                continue
            for t in (sa.rekey_at, sa.expire_at):
                if t is not None:
                    times.append(t)
            dpd = sa.conn.dpd
            if dpd.interval > 0 and sa.pending is None:
                times.append(max(sa.last_recv, self._last_traffic_in(sa)) + dpd.interval)
            ka = self._keepalive_interval(sa)
            if ka:
                times.append(max(sa.last_sent, sa.last_keepalive) + ka)
            for ch in sa.children.values():
                for t in (ch.rekey_at, ch.expire_at, ch.out_at):
                    if t is not None:
                        times.append(t)
                idle = self.child_conn(sa, ch).idle_time
                if idle:
                    times.append(max(ch.last_in, ch.last_out) + idle)
        return min(times) if times else None

    def _keepalive_interval(self, sa: IkeSa) -> int:
        if sa.conn.nat_keepalive and (sa.nat_local or (sa.conn.encap and sa.initiator)):
            return sa.conn.nat_keepalive
        return 0

    def _last_traffic_in(self, sa: IkeSa) -> float:
        return max((ch.last_in for ch in sa.children.values()), default=0.0)

    def handle_timer(self, now: float) -> list:
        self._summaries(now)
        for name, t in list(self.retry_at.items()):
            if t <= now:
                del self.retry_at[name]
                conn = self.conn_by_name(name)
                if conn is not None and not any(s.conn.name == name for s in self.sas.values()) \
                        and (self.peers is None or self.peers.may_reinitiate(name)):
                    sa = exchange_init.initiate(self, conn, now)
                    sa.persistent = name in self.persistent
                    self.persistent.discard(name)
        for sa in list(self.sas.values()):
            if sa.ike_id not in self.sas:
                continue
            self._timers_of(sa, now)
        if now - self.cookie_rotated > 300:
            self.cookie_secret_old, self.cookie_secret = self.cookie_secret, self.rng(32)
            self.cookie_rotated = now
        return self.take()

    def _timers_of(self, sa: IkeSa, now: float) -> None:
        self._ctx = sa
        if sa.state == "FAILED":
            if now >= sa.expire_at:
                self.forget(sa)
            return
        req = sa.pending
        if req is not None and req.next_at <= now:
            if req.tries >= len(req.timeouts) - 1 and self.is_delete_ike(req.task):
                # our Delete of this SA (after a rekey, a down, a reload) went unanswered: the
                # SA goes as it would have anyway; that is no dead peer to act on (issue 7.10)
                after = f" after its rekey to [{sa.rekeyed_to}]" if sa.rekeyed_to is not None else ""
                self.event("delete_unanswered", sa.conn.name,
                           f"IKE_SA {sa.conn.name}[{sa.ike_id}]: {sa.remote[0]} did not answer our Delete"
                           f"{after} ({req.tries} retransmissions); removed it", ike_id=sa.ike_id)
                self.kill_ike(sa, now, "Delete not answered")
                return
            if req.tries >= len(req.timeouts) - 1:
                what = "liveness check" if sa.dpd_probe else c.EXCHANGE_NAMES.get(req.exchange, "request")
                self.event("timeout", sa.conn.name,
                           f"{what} to {sa.remote[0]} not answered after {req.tries} retransmissions")
                if sa.established_at is None:
                    self.event("failed", sa.conn.name,
                               f"IKE_SA {sa.conn.name}[{sa.ike_id}] could not be established: "
                               f"{sa.remote[0]} does not answer")
                    self.kill_ike(sa, now, "peer not responding")
                    if sa.initiator and (sa.conn.start == "start" or sa.persistent) and not sa.conn.dynamic:
                        self.persistent.add(sa.conn.name)
                        self.retry_at[sa.conn.name] = now + self.timers.connect_retry
                else:
                    # an unanswered Delete of ours is no dead peer to act on (no restart)
                    self.kill_ike(sa, now, "peer not responding", dead=sa.state != "DELETING")
                return
            req.tries += 1
            req.next_at = now + req.timeouts[req.tries]
            self.send(req.data, sa, now=now, resent=True)
            self.event("retransmit", sa.conn.name,
                       f"retransmit {req.tries} of {c.EXCHANGE_NAMES.get(req.exchange)} request {req.mid}")
        if sa.state == "CONNECTING":
            if liveness.half_open_expired(sa.created_at, now, self.timers,
                                          retransmitting=sa.pending is not None):
                self.kill_ike(sa, now, "half-open timeout")
            return
        if sa.state != "ESTABLISHED":
            return
        conn = sa.conn
        if sa.expire_at is not None and now >= sa.expire_at:
            self.kill_ike(sa, now, "IKE lifetime expired")
            if conn.start == "start" and not conn.dynamic and not self._has_other_sa(conn, sa):
                self.retry_at[conn.name] = now  # the rekey never worked: start afresh
            return
        if sa.rekey_at is not None and now >= sa.rekey_at:
            sa.rekey_at = None
            self.queue(sa, exchange_child.RekeyIkeTask(), now)
        for ch in list(sa.children.values()):
            conn = self.child_conn(sa, ch)
            if ch.out_at is not None and now >= ch.out_at and ch.state in ("INSTALLED", "REKEYING"):
                self.activate_outbound(sa, ch, "no Delete of the old SA came")
            if ch.expire_at is not None and now >= ch.expire_at:
                ch.expire_at = None
                self._delete_child(sa, ch, now, "lifetime expired")
                if conn.start == "start" and ch.state != "REKEYED" and ch.rekeyed_by is None:
                    # the rekey never succeeded: a start connection gets a fresh CHILD_SA
                    self.queue(sa, exchange_child.CreateChildTask(conn), now)
            elif ch.rekey_at is not None and now >= ch.rekey_at and ch.state == "INSTALLED":
                ch.rekey_at = None
                self.queue(sa, exchange_child.CreateChildTask(conn, rekey=ch), now)
            elif conn.idle_time and ch.state == "INSTALLED" and now - max(ch.last_in, ch.last_out) >= conn.idle_time:
                self._delete_child(sa, ch, now, f"idle for {conn.idle_time} s")
        conn = sa.conn
        dpd = conn.dpd
        if dpd.interval > 0 and sa.pending is None and not sa.queue:
            quiet_since = max(sa.last_recv, self._last_traffic_in(sa))
            if now - quiet_since >= dpd.interval:
                if dpd.mode == "periodic":
                    self.queue(sa, exchange_info.DpdTask(), now)
                else:
                    # on-demand: only when we are sending into the tunnel and hear nothing back
                    last_out = max((ch.last_out for ch in sa.children.values()), default=0.0)
                    if last_out > quiet_since or not sa.children:
                        self.queue(sa, exchange_info.DpdTask(), now)
                    else:
                        sa.last_recv = now - dpd.interval / 2  # look again later
        ka = self._keepalive_interval(sa)
        if ka and now - max(sa.last_sent, sa.last_keepalive) >= ka:
            sa.last_keepalive = now
            self.send(NAT_KEEPALIVE, sa)

    # ------------------------------------------------------------------ status

    def status(self, now: float) -> list[dict]:
        out = []
        for sa in self.sas.values():
            if sa.state in ("DEAD", "FAILED"):
                continue
            out.append({
                "connection": sa.conn.name, "version": 2, "state": sa.state, "ike_id": sa.ike_id,
                "local": _hostport(sa.local), "remote": _hostport(sa.remote),
                "nat_detected": bool(sa.nat_local or sa.nat_remote),
                "nat_local": sa.nat_local, "nat_remote": sa.nat_remote,
                "initiator": sa.initiator, "spi_i": sa.spi_i.hex(), "spi_r": sa.spi_r.hex(),
                "proposal": sa.chosen.describe() if sa.chosen else "",
                "remote_id": sa.peer_id,
                "childless": sa.childless,  # set up without a CHILD_SA in IKE_AUTH (RFC 6023)
                "mobike": sa.mobike, "peer_addresses": list(sa.peer_addrs),
                # every connection whose CHILD_SAs this IKE SA carries (one IKE SA per peer)
                "connections": sorted({sa.conn.name} | {ch.name for ch in sa.children.values()}),
                "established_s": int(now - sa.established_at) if sa.established_at is not None else 0,
                "rekey_in_s": max(0, int(sa.rekey_at - now)) if sa.rekey_at is not None else 0,
                "child_sas": [{
                    "name": ch.name, "child_id": ch.child_id, "state": ch.state,
                    "mode": ch.mode, "protocol": ch.protocol, "udp_encap": ch.udp_encap,
                    "spi_in": f"{ch.spi_in:08x}", "spi_out": f"{ch.spi_out:08x}",
                    "proposal": ch.chosen.describe(),
                    "local_ts": [str(n) for t in ch.local_ts for n in t.networks()],
                    "remote_ts": [str(n) for t in ch.remote_ts for n in t.networks()],
                    "bytes_in": 0, "packets_in": 0, "bytes_out": 0, "packets_out": 0,
                    "replay_drops": 0, "auth_failures": 0,
                    "rekey_in_s": max(0, int(ch.rekey_at - now)) if ch.rekey_at is not None else 0,
                } for ch in sa.children.values()],
            })
        return out

    def reload(self, config, now: float, credentials: CredentialStore | None = None) -> list:
        """New config: SAs of removed connections go; others pick up the new settings (and
        the certificates and keys as the files are now)."""
        self.config = config
        self.creds = credentials if credentials is not None else CredentialStore.from_config(config)
        names = {x.name: x for x in self.connections()}
        out: list = []
        # an IKE SA may carry several connections' children: each removed one goes alone
        gone = sorted({n for sa in self.sas.values() for n in [sa.conn.name, *(ch.name for ch in sa.children.values())]
                       if n not in names})
        for name in gone:
            out += self.terminate(name, now)
        for sa in list(self.sas.values()):
            new = names.get(sa.conn.name)
            if new is not None:
                sa.conn = new
        return out + self.take()
