"""Informational exchanges (RFC 2408 4.8, RFC 2409 5.7): Delete and Notify payloads under
HASH(1), INITIAL-CONTACT, INVALID-SPI recovery, Dead Peer Detection (RFC 3706) and NAT-T
keepalives (RFC 3948 2.3). A mixin of Ikev1Core."""

from __future__ import annotations

import hmac
import struct

from vpnd.ike import codec, liveness, trace
from vpnd.ike.actions import DeleteChildSA, SendDatagram
from vpnd.ike.v1 import constants as C
from vpnd.ike.v1 import keys
from vpnd.ike.v1 import payloads as P
from vpnd.ike.v1.state import IsakmpSA

DPD_MAX_RETRIES = liveness.DPD_RETRIES  # the one DPD rule of both versions (vpnd/ike/liveness.py)


class InfoMixin:
    # ------------------------------------------------------------------ sending

    def _info_send(self, sa: IsakmpSA, pls: list, now: float) -> None:
        """An authenticated Informational exchange: HDR*, HASH(1), N/D (RFC 2409 5.7)."""
        if sa.keys is None:
            return
        mid = self._new_mid(sa)
        hname, a = sa.policy.hash, sa.keys.a
        first, body = self._hashed_body(lambda rest: keys.qm_hash1(hname, a, mid, rest), pls)
        sa.p2_iv[mid] = keys.phase2_iv(hname, sa.iv, mid, sa.cipher.block_size)
        data = self._encrypted_raw(sa, C.EXCH_INFO, mid, first, body)
        sa.p2_iv.pop(mid, None)  # one message: no chain to keep
        self._out_send(sa, data)

    def _notify_plain(self, hdr, notify: int, local, remote) -> None:
        """Unauthenticated notify answering a message we could not take (RFC 2408 5)."""
        n = P.Notify(notify, C.PROTO_ISAKMP, hdr.spi_i + hdr.spi_r)
        h = codec.Header(hdr.spi_i, hdr.spi_r, 0, 1, 0, C.EXCH_INFO, 0, 0)
        data = codec.encode_message(h, [n])
        if self.trace:
            self._out.append(trace.ike(trace.v1_message("generating", data, data, data[16], codec.HEADER_LEN,
                                                        False), None, None))
        self._out.append(SendDatagram(data, local, remote))

    def _notify_plain_sa(self, sa: IsakmpSA, notify: int) -> None:
        n = P.Notify(notify, C.PROTO_ISAKMP, sa.cky_i + sa.cky_r)
        h = codec.Header(sa.cky_i, sa.cky_r, 0, 1, 0, C.EXCH_INFO, 0, 0)
        data = codec.encode_message(h, [n])
        if self.trace:
            self._trace_out(sa, data, data, data[16], codec.HEADER_LEN)
        self._out.append(SendDatagram(data, sa.local, sa.remote))

    def _send_delete_isakmp(self, sa: IsakmpSA, now: float) -> None:
        if sa.is_established:
            self._info_send(sa, [P.Delete(C.PROTO_ISAKMP, [sa.cky_i + sa.cky_r])], now)

    def _send_delete_child(self, sa: IsakmpSA | None, child, now: float) -> None:
        """Delete payloads carry our inbound SPIs, one per protocol (RFC 2408 3.15)."""
        if sa is None or not sa.is_established:
            return
        for proto, spi in child.spis_in.items():
            self._info_send(sa, [P.Delete(proto, [spi])], now)

    # ------------------------------------------------------------------ receiving

    def _info_receive(self, sa: IsakmpSA | None, hdr, data: bytes, local, remote, now: float) -> None:
        if not hdr.flags & codec.FLAG_V1_ENCRYPTION:
            # unauthenticated: only believed while phase 1 is still being set up
            try:
                pls = codec.decode_chain(data, hdr.next_payload, P.REGISTRY, start=codec.HEADER_LEN)
            except codec.CodecError:
                return
            for n in pls:
                if isinstance(n, P.Notify) and sa is not None and not sa.is_established and n.notify_type < 16384:
                    from vpnd.ike.v1.phase1 import Phase1Failed, notify_name
                    self._p1_fail(sa, Phase1Failed(f"peer sent {notify_name(n.notify_type)}", None,
                                                   "no_proposal" if n.notify_type == C.N_NO_PROPOSAL_CHOSEN
                                                   else "error"), now)
                    return
            return
        if sa is None or sa.keys is None:
            return
        mid = hdr.message_id
        if mid in sa.info_seen:
            return  # a replayed informational
        self._lock_phase2_iv(sa, data)
        iv = keys.phase2_iv(sa.policy.hash, sa.iv, mid, sa.cipher.block_size)
        try:
            plain, _ = self._decrypt(sa, data, iv)
            pls = codec.decode_chain(plain, hdr.next_payload, P.REGISTRY, start=0, trailing_ok=True)
            hv, rest = self._after_hash(plain, hdr.next_payload)
        except Exception:
            self._count_drop(sa, "undecryptable Informational")
            return
        if not hmac.compare_digest(hv, keys.qm_hash1(sa.policy.hash, sa.keys.a, mid, rest)):
            self._count_drop(sa, "Informational with a bad HASH(1)")
            return
        sa.info_seen[mid] = now
        if len(sa.info_seen) > 256:
            for k in sorted(sa.info_seen, key=sa.info_seen.get)[:128]:
                del sa.info_seen[k]
        sa.last_heard = now
        if sa.is_established:
            self._adopt_addresses_established(sa, local, remote)
        for p in pls:
            if isinstance(p, P.Notify):
                self._take_notify(sa, p, now)
            elif isinstance(p, P.Delete):
                self._take_delete(sa, p, now)

    def _adopt_addresses_established(self, sa: IsakmpSA, local, remote) -> None:
        if (local, remote) == (sa.local, sa.remote):
            return
        self._adopt_addresses(sa, local, remote)
        from vpnd.ike.actions import UpdateChildAddresses
        for c in self.children.values():
            if c.conn.name == sa.conn.name:
                self._out.append(UpdateChildAddresses(c.child_id, sa.local, sa.remote, c.udp))

    def _take_notify(self, sa: IsakmpSA, n: P.Notify, now: float) -> None:
        t = n.notify_type
        if t == C.N_R_U_THERE:
            if n.spi and n.spi != sa.cky_i + sa.cky_r:
                return
            self._info_send(sa, [P.Notify(C.N_R_U_THERE_ACK, C.PROTO_ISAKMP, sa.cky_i + sa.cky_r, n.data)], now)
        elif t == C.N_R_U_THERE_ACK:
            if len(n.data) == 4 and sa.dpd_wait is not None:
                seq = struct.unpack("!I", n.data)[0]
                if sa.dpd_first <= seq <= sa.dpd_wait:
                    sa.dpd_wait = None
                    sa.dpd_tries = 0
                    self._dpd_arm(sa, now)
        elif t == C.N_INITIAL_CONTACT:
            self._peer_restarted(sa, now)
        elif t == C.N_INVALID_SPI:
            spi = n.spi if len(n.spi) == 4 else n.data[:4]
            self._peer_lost_spi(sa, n.protocol, spi, now)
        elif t == C.N_CONNECTED:
            for qm in list(self._qm_by_mid(sa).values()):
                if qm.initiator and qm.state == "QM_WAIT_CONNECTED" and \
                        qm.spis_out.get(n.protocol) == n.spi:
                    qm.state = "QM_DONE"
                    self._qm_install(sa, qm, now)
                    self._qm_finish(sa, qm)
        elif t < 16384:
            from vpnd.ike.v1.phase1 import notify_name
            # a failed Quick Mode we started: stop retransmitting it (or, refused because of
            # IPComp, ask again without it: then it is no failure yet)
            retried = failed = False
            for qm in list(self._qm_by_mid(sa).values()):
                if qm.initiator and qm.state == "QM_SENT1":
                    if t == C.N_NO_PROPOSAL_CHOSEN and self._qm_retry_without_ipcomp(sa, qm, now):
                        retried = True
                        continue
                    failed = True
                    self._qm_failed(sa, qm, now)
            if failed or not retried:
                self._event("failed", sa.conn.name, f"peer reports {notify_name(t)}", ike_id=sa.ike_id)

    def _take_delete(self, sa: IsakmpSA, d: P.Delete, now: float) -> None:
        if d.protocol == C.PROTO_ISAKMP:
            for spi in d.spis:
                target = self.sas.get(spi[:8])
                if target is not None and target.cky_r == spi[8:16] and target.remote[0] == sa.remote[0]:
                    self._event("ike_down", target.conn.name,
                                f"peer deleted ISAKMP SA {spi[:8].hex()}/{spi[8:16].hex()}", ike_id=target.ike_id)
                    self._drop_isakmp(target, now, reason="deleted by peer", notify_peer=False)
            return
        if d.protocol not in (C.PROTO_ESP, C.PROTO_AH):
            return
        for spi in d.spis:
            for c in list(self.children.values()):
                if c.spis_out.get(d.protocol) == spi and c.conn.name in self._peer_conns(sa):
                    self._delete_child(c, now, reason="deleted by peer", notify_peer=c.state != "REKEYED")

    def _peer_conns(self, sa: IsakmpSA) -> set:
        return {c.name for c in self.v1_conns if c.peer in (sa.remote[0], "%any")} | {sa.conn.name}

    def _peer_restarted(self, sa: IsakmpSA, now: float) -> None:
        """INITIAL-CONTACT (RFC 2407 4.6.3.3): the peer lost its state; drop what we hold
        with it except the SA that carried the notify.

        Only SAs that were up before this one's negotiation began are the peer's lost
        state: one still being set up, or set up while this one was (both ends initiating
        at once, each sending INITIAL-CONTACT), is one the peer is working on right now.
        Dropping those made simultaneous `start: start` ends kill each other's
        initiator SA, and with it every Quick Mode.

        Only SAs between the same identity pair, of any connection and both versions
        (ike/peers.py): other identities at the same address keep theirs."""
        if self.peers is not None:
            victims = self.peers.same_version_victims(1, sa)
            keep = {o.ike_id for o in self.sas.values() if o is not sa and o not in victims}
            for other in victims:
                self._drop_isakmp(other, now, reason="peer restarted (INITIAL-CONTACT)", notify_peer=False)
            for c in list(self.children.values()):
                # IPsec SAs outlive their ISAKMP SA: those of a live SA of another identity stay
                if c.conn.name in self._peer_conns(sa) and c.installed < sa.created and c.ike_id not in keep:
                    self._delete_child(c, now, reason="peer restarted (INITIAL-CONTACT)", notify_peer=False)
            self.peers.initial_contact(1, sa, now)
            return
        for other in list(self.sas.values()):
            if other is not sa and other.remote[0] == sa.remote[0] and \
                    other.established is not None and other.established < sa.created:
                self._drop_isakmp(other, now, reason="peer restarted (INITIAL-CONTACT)", notify_peer=False)
        for c in list(self.children.values()):
            if c.conn.name in self._peer_conns(sa) and c.installed < sa.created:
                self._delete_child(c, now, reason="peer restarted (INITIAL-CONTACT)", notify_peer=False)

    def _peer_lost_spi(self, sa: IsakmpSA, proto: int, spi: bytes, now: float) -> None:
        """The peer has no SA for an SPI we send with: drop ours, negotiate anew."""
        for c in list(self.children.values()):
            if c.spis_out.get(proto) == spi and c.conn.name in self._peer_conns(sa):
                self._delete_child(c, now, reason="peer sent INVALID-SPI", notify_peer=False)
                if c.conn.start != "none" or c.initiator:
                    self._start_child(c.conn, c.local_ts, c.remote_ts, now, per_host=c.per_host)

    def _send_invalid_spi(self, spi: int, remote, now: float) -> None:
        # per peer address, bounded, the same rule as IKEv2 (limits.invalid_spi_limiter):
        # random-SPI garbage from the peer's address must not be answered 1:1
        if not self.invalid_spi_limit.peek(remote[0], now):
            return
        sa = self._established_for_ip(remote[0])
        if sa is None:
            return
        self.invalid_spi_limit.allow(remote[0], now)
        self._info_send(sa, [P.Notify(C.N_INVALID_SPI, C.PROTO_ESP, spi.to_bytes(4, "big"))], now)
        self._event("invalid_spi", sa.conn.name, f"sent INVALID-SPI for {spi:08x} to {remote[0]}", ike_id=sa.ike_id)

    # ------------------------------------------------------------------ DPD (RFC 3706)

    def _dpd_arm(self, sa: IsakmpSA, now: float) -> None:
        d = sa.conn.dpd
        if not d.interval or not sa.peer_dpd or not sa.is_established:
            sa.dpd_due = None
            return
        if sa.dpd_wait is None:
            sa.dpd_due = now + d.interval

    def _dpd_timer(self, sa: IsakmpSA, now: float) -> None:
        d = sa.conn.dpd
        if sa.dpd_wait is not None:
            if sa.last_heard > sa.dpd_sent:
                # anything authenticated from the peer since the probe shows it is alive
                sa.dpd_wait = None
                sa.dpd_tries = 0
                self._dpd_arm(sa, now)
                return
            sa.dpd_tries += 1
            if liveness.dpd_peer_dead(sa.dpd_tries):
                self._peer_dead(sa, now)
                return
            self._dpd_probe(sa, now)
            return
        idle_since = max(sa.last_heard, self._last_in_for(sa))
        if d.mode == "periodic" or now - idle_since >= d.interval:
            if d.mode != "periodic" and self._last_out_for(sa) <= idle_since and self._has_children(sa):
                # on-demand: probe only when we send and hear nothing back
                sa.dpd_due = now + d.interval
                return
            sa.dpd_first = sa.dpd_seq + 1
            self._dpd_probe(sa, now)
        else:
            sa.dpd_due = idle_since + d.interval

    def _dpd_probe(self, sa: IsakmpSA, now: float) -> None:
        if sa.dpd_seq == 0:
            sa.dpd_seq = int.from_bytes(self.rng(4), "big") & 0x7FFFFFFF or 1
            sa.dpd_first = sa.dpd_seq
        else:
            sa.dpd_seq = (sa.dpd_seq + 1) & 0xFFFFFFFF or 1
        sa.dpd_wait = sa.dpd_seq
        sa.dpd_sent = now
        sa.dpd_due = now + liveness.dpd_retry(sa.conn.dpd)
        self._info_send(sa, [P.Notify(C.N_R_U_THERE, C.PROTO_ISAKMP, sa.cky_i + sa.cky_r,
                                      struct.pack("!I", sa.dpd_seq))], now)

    def _peer_dead(self, sa: IsakmpSA, now: float) -> None:
        conn = sa.conn
        self._event("peer_dead", conn.name, f"peer {sa.remote[0]} is dead (no R-U-THERE-ACK after "
                    f"{DPD_MAX_RETRIES} retries); action {conn.dpd.action}", ike_id=sa.ike_id)
        for other in list(self.sas.values()):
            if other.conn.name == conn.name:
                self._drop_isakmp(other, now, reason="peer dead", notify_peer=False)
        carried = set()
        for c in list(self.children.values()):
            if c.conn.name == conn.name or c.ike_id == sa.ike_id:  # also those it carried for others
                if c.conn.name != conn.name:
                    carried.add(c.conn.name)
                self._delete_child(c, now, reason="peer dead", notify_peer=False)
        for name in sorted(carried):
            other = self._conn(name)
            if other is not None and other.dpd.action == "restart" and other.peer != "%any" \
                    and (self.peers is None or self.peers.may_reinitiate(name)):
                self._want_up.add(name)
                self._initiate_conn(other, now)
        # the peer lost our state (or will have): the next contact says INITIAL-CONTACT
        self._had_contact.pop(sa.remote[0], None)
        if conn.dpd.action == "restart" and conn.peer != "%any" \
                and (self.peers is None or self.peers.may_reinitiate(conn.name)):
            self._want_up.add(conn.name)
            self._initiate_conn(conn, now)

    # ------------------------------------------------------------------ NAT keepalive

    def _keepalive_timer(self, sa: IsakmpSA, now: float) -> None:
        if not (sa.nat_local and sa.conn.nat_keepalive and sa.is_established):
            sa.keepalive_at = None
            return
        # one 0xff byte on the NAT-T port (RFC 3948 2.3); the daemon sends it without marker
        self._out.append(SendDatagram(b"\xff", sa.local, sa.remote))
        sa.keepalive_at = now + sa.conn.nat_keepalive

    def _delete_child(self, c, now: float, *, reason: str, notify_peer: bool = True) -> None:
        if c.child_id not in self.children:
            return
        if notify_peer:
            self._send_delete_child(self._isakmp_for(c.conn), c, now)
        del self.children[c.child_id]
        for proto, spi in c.spis_in.items():
            self._spis_in.discard(int.from_bytes(spi, "big"))
        self._out.append(DeleteChildSA(c.child_id))
        self._event("child_down", c.conn.name, f"IPsec SA {c.local_ts} <-> {c.remote_ts} deleted ({reason})",
                    child_id=c.child_id)
        if c.state == "INSTALLED":
            for o in self.children.values():
                if o.standby and o.conn.name == c.conn.name and (o.local_ts, o.remote_ts) == (c.local_ts, c.remote_ts):
                    o.state, o.standby = "INSTALLED", False  # see _qm_install
