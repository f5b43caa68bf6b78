"""Quick Mode (RFC 2409 5.5): IPsec SA pairs under an ISAKMP SA, with PFS, proxy IDs,
ESP/AH/ESP+AH, tunnel/transport with the RFC 3947 UDP encapsulation modes, lifetimes and
RESPONDER-LIFETIME (RFC 2407 4.5.4), the commit bit (RFC 2408 3.1) and rekeying.

A mixin of Ikev1Core.
"""

from __future__ import annotations

import hmac
import ipaddress

from vpnd.ike.addresses import local_for
from vpnd.crypto import dh
from vpnd.ike import codec, ipcomp, liveness
from vpnd.ike.actions import ActivateOutbound, ChildKeys, DeleteChildSA, InstallChildSA, IPCompParams
from vpnd.ike.v1 import constants as C
from vpnd.ike.v1 import keys, policy
from vpnd.ike.v1 import payloads as P
from vpnd.ike.peers import SIMULTANEOUS_WINDOW
from vpnd.ike.v1.state import Child, IsakmpSA, QuickMode, describe_transforms

NONCE_LEN = 32




class QuickFailed(Exception):
    def __init__(self, message: str, notify: int | None = None):
        super().__init__(message)
        self.notify = notify


def ts_id(net) -> P.ID:
    """Proxy identity (RFC 2407 4.6.2): an address for a host, otherwise a subnet."""
    if net.version == 4:
        if net.prefixlen == 32:
            return P.ID(C.ID_IPV4_ADDR, 0, 0, net.network_address.packed)
        return P.ID(C.ID_IPV4_ADDR_SUBNET, 0, 0, net.network_address.packed + net.netmask.packed)
    if net.prefixlen == 128:
        return P.ID(C.ID_IPV6_ADDR, 0, 0, net.network_address.packed)
    return P.ID(C.ID_IPV6_ADDR_SUBNET, 0, 0, net.network_address.packed + net.netmask.packed)


def id_ts(p: P.ID):
    """Network of a proxy identity; None for what we cannot express (ports, odd ranges)."""
    try:
        if p.id_type == C.ID_IPV4_ADDR and len(p.data) == 4:
            return ipaddress.ip_network(ipaddress.IPv4Address(p.data))
        if p.id_type == C.ID_IPV6_ADDR and len(p.data) == 16:
            return ipaddress.ip_network(ipaddress.IPv6Address(p.data))
        if p.id_type == C.ID_IPV4_ADDR_SUBNET and len(p.data) == 8:
            return ipaddress.IPv4Network((p.data[:4], _prefixlen(p.data[4:])), strict=False)
        if p.id_type == C.ID_IPV6_ADDR_SUBNET and len(p.data) == 32:
            # (ipaddress takes no IPv6 netmask in dotted form: the prefix length instead)
            return ipaddress.IPv6Network((p.data[:16], _prefixlen(p.data[16:])), strict=False)
        if p.id_type == C.ID_IPV4_ADDR_RANGE and len(p.data) == 8:
            a, b = ipaddress.IPv4Address(p.data[:4]), ipaddress.IPv4Address(p.data[4:])
            nets = list(ipaddress.summarize_address_range(a, b))
            return nets[0] if len(nets) == 1 else None
        if p.id_type == C.ID_IPV6_ADDR_RANGE and len(p.data) == 32:
            a, b = ipaddress.IPv6Address(p.data[:16]), ipaddress.IPv6Address(p.data[16:])
            nets = list(ipaddress.summarize_address_range(a, b))
            return nets[0] if len(nets) == 1 else None
    except ValueError:
        return None
    return None


def _prefixlen(mask: bytes) -> int:
    """Prefix length of a netmask; ValueError for a mask that is not contiguous."""
    n, bits = int.from_bytes(mask, "big"), len(mask) * 8
    plen = bits - ((~n) & ((1 << bits) - 1)).bit_length()
    if n != ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1):
        raise ValueError("netmask is not contiguous")
    return plen


def _protocol_name(proto: int) -> str:
    return "esp" if proto == C.PROTO_ESP else "ah"


class QuickMixin:
    # ------------------------------------------------------------------ helpers

    def _ts_pairs(self, conn):
        local = conn.local_ts or (ipaddress.ip_network(local_for(conn, self.listen)),)
        remote = conn.remote_ts or ((ipaddress.ip_network(conn.peer),) if conn.peer != "%any" else ())
        return [(l, r) for l in local for r in remote]

    def _child_sets(self, conn, udp: bool, pfs_only: str | None = "first"):
        props = conn.esp or conn.ah
        sets = [policy.p2_choices(p, mode=conn.mode, udp=udp, life_s=conn.lifetime.seconds,
                                  life_kb=conn.lifetime.kilobytes) for p in props]
        return [s for s in sets if s]

    def _new_spi(self) -> bytes:
        while True:
            spi = self.rng(4)
            v = int.from_bytes(spi, "big")
            if v >= 0x100 and v not in self._spis_in:
                self._spis_in.add(v)
                return spi

    def _new_mid(self, sa: IsakmpSA) -> int:
        while True:
            mid = int.from_bytes(self.rng(4), "big")
            if mid and mid not in sa.p2_iv and mid not in self._qm_by_mid(sa):
                return mid

    def _qm_by_mid(self, sa: IsakmpSA) -> dict:
        return self.qms.setdefault(sa.ike_id, {})

    def _hashed_body(self, hfn, payloads: list) -> tuple[int, bytes]:
        """HASH payload first, then `payloads`; hfn(rest_bytes) gives the hash value."""
        first, rest = codec.encode_chain(payloads)
        h = hfn(rest)
        return C.PL_HASH, codec.payload_header(first, len(h)) + h + rest

    @staticmethod
    def _after_hash(plain: bytes, first_type: int) -> tuple[bytes, bytes]:
        """(hash value, bytes of the payloads after it without padding) of a decrypted body
        whose first payload must be HASH (RFC 2409 5.5)."""
        ext = P.chain_end(plain, first_type, 0)
        if not ext or ext[0][0] != C.PL_HASH:
            raise QuickFailed("HASH is not the first payload", C.N_INVALID_HASH_INFORMATION)
        hv = plain[ext[0][1] + 4:ext[0][2]]
        return hv, plain[ext[0][2]:ext[-1][2]]

    def _nat_oa(self, sa: IsakmpSA, mode: str, ip_i: str, ip_r: str) -> list:
        """NAT-OAi/NAT-OAr (RFC 3947 5.2): the original addresses, sent in transport mode
        behind a NAT so that the peer can fix TCP/UDP checksums. ip_i/ip_r: the Quick Mode
        initiator's and responder's addresses as this side knows them."""
        if mode != "transport" or not sa.nat or not sa.natt:
            return []
        cls = P.NatOA if sa.natt == "rfc" else P.NatOADraft
        out = []
        for ip in (ip_i, ip_r):
            a = ipaddress.ip_address(ip)
            t = C.ID_IPV4_ADDR if a.version == 4 else C.ID_IPV6_ADDR
            out.append(cls(bytes([t, 0, 0, 0]) + a.packed))
        return out

    # ------------------------------------------------------------------ initiator

    def _qm_initiate(self, sa: IsakmpSA, conn, local_ts, remote_ts, now: float, *,
                     rekey_of: int | None = None, per_host: bool = False) -> QuickMode:
        mid = self._new_mid(sa)
        qm = QuickMode(mid, True, conn, local_ts, remote_ts, started=now, rekey_of=rekey_of,
                       per_host=per_host)
        udp = sa.nat
        sets = self._child_sets(conn, udp)
        protos = {x.protocol for s in sets for alt in s for x in alt}
        qm.spis_in = {p: self._new_spi() for p in sorted(protos)}
        comp = None
        if conn.comp and not sa.ipcomp_refused:  # each proposal with IPComp, then without
            qm.cpi_in = ipcomp.new_cpi(self.rng)
            comp = (conn.comp, qm.cpi_in)
        qm.offered = policy.p2_sa(sets, qm.spis_in, sa.natt, comp)
        qm.offered.encode()
        qm.ni = self.rng(NONCE_LEN)
        group = next((x.group for s in sets for alt in s for x in alt if x.group), None)
        pls = [qm.offered, P.Nonce(qm.ni)]
        if group:
            qm.kex = dh.KeyExchange(group)
            pls.append(P.KE(qm.kex.public))
        pls += [ts_id(local_ts), ts_id(remote_ts)]
        pls += self._nat_oa(sa, conn.mode, sa.local[0], sa.remote[0])
        hname, a = sa.policy.hash, sa.keys.a
        first, body = self._hashed_body(lambda rest: keys.qm_hash1(hname, a, mid, rest), pls)
        sa.p2_iv[mid] = keys.phase2_iv(hname, sa.iv, mid, sa.cipher.block_size)
        data = self._encrypted_raw(sa, C.EXCH_QUICK, mid, first, body)
        self._qm_by_mid(sa)[mid] = qm
        qm.state = "QM_SENT1"
        qm.retx = self._make_retx(sa, data, now, expect_reply=True)
        self._out_send(sa, data)
        return qm

    def _qm_i_msg2(self, sa: IsakmpSA, qm: QuickMode, hdr, plain: bytes, pls: list, now: float):
        hv, rest = self._after_hash(plain, hdr.next_payload)
        want = keys.qm_hash2(sa.policy.hash, sa.keys.a, qm.mid, qm.ni, rest)
        if not hmac.compare_digest(hv, want):
            raise QuickFailed("HASH(2) mismatch", C.N_INVALID_HASH_INFORMATION)
        sa_p = _first(pls, P.SA)
        nr = _first(pls, P.Nonce)
        if sa_p is None or nr is None:
            raise QuickFailed("SA or nonce missing in Quick Mode message 2", C.N_PAYLOAD_MALFORMED)
        try:
            chosen, spis_out = policy.p2_parse_answer(sa_p, qm.offered)
        except policy.PolicyError as e:
            raise QuickFailed(str(e), C.N_NO_PROPOSAL_CHOSEN)
        qm.nr = nr.data
        qm.chosen = chosen
        qm.spis_out = spis_out
        peer_cpi = policy.p2_answer_ipcomp(sa_p, qm.offered, qm.conn.comp) if qm.cpi_in else None
        if peer_cpi is not None:
            qm.ipcomp = IPCompParams(qm.conn.comp, qm.cpi_in, peer_cpi)
        group = chosen[0].group
        ke = _first(pls, P.KE)
        if group:
            if ke is None or qm.kex is None or qm.kex.group != group:
                raise QuickFailed("PFS KE missing or of another group", C.N_INVALID_KEY_INFORMATION)
            try:
                qm.gqm = qm.kex.shared(ke.data)
            except dh.InvalidPublicValue:
                raise QuickFailed("invalid PFS public value", C.N_INVALID_KEY_INFORMATION)
        ids = [p for p in pls if type(p) is P.ID]
        if len(ids) == 2:
            if id_ts(ids[0]) != qm.local_ts or id_ts(ids[1]) != qm.remote_ts:
                raise QuickFailed("responder changed the proxy identities", C.N_INVALID_ID_INFORMATION)
        qm.life_s, qm.life_kb = chosen[0].life_s, chosen[0].life_kb
        for n in pls:
            if isinstance(n, P.Notify) and n.notify_type == C.N_RESPONDER_LIFETIME:
                self._take_responder_lifetime(qm, n)
        # HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)
        h3 = keys.qm_hash3(sa.policy.hash, sa.keys.a, qm.mid, qm.ni, qm.nr)
        data = self._encrypted_raw(sa, C.EXCH_QUICK, qm.mid, C.PL_HASH, codec.payload_header(0, len(h3)) + h3)
        self._out_send(sa, data)
        qm.retx = self._make_retx(sa, data, now, expect_reply=False)
        qm.child_id = self._new_id()
        if hdr.flags & codec.FLAG_V1_COMMIT:
            # the responder wants us to wait for its CONNECTED notify (RFC 2408 3.1): it may
            # send on the new SA from HASH(3) on, we send on it from CONNECTED on
            qm.commit = True
            qm.state = "QM_WAIT_CONNECTED"
            qm.retx.due = now + liveness.retransmit_wait(0, self.timers)
            self._out.append(self._qm_action(sa, qm, *self._qm_keys(sa, qm), outbound_too=False))
            qm.inbound_installed = True
            return
        qm.state = "QM_DONE"
        self._qm_install(sa, qm, now)

    def _take_responder_lifetime(self, qm: QuickMode, n: P.Notify) -> None:
        try:
            attrs = codec.decode_attributes(n.data)
        except codec.CodecError:
            return
        s, kb = policy._life(attrs)
        if s and (not qm.life_s or s < qm.life_s):
            qm.life_s = s
        if kb and (not qm.life_kb or kb < qm.life_kb):
            qm.life_kb = kb

    # ------------------------------------------------------------------ responder

    def _qm_r_msg1(self, sa: IsakmpSA, hdr, plain: bytes, pls: list, now: float):
        hv, rest = self._after_hash(plain, hdr.next_payload)
        if not hmac.compare_digest(hv, keys.qm_hash1(sa.policy.hash, sa.keys.a, hdr.message_id, rest)):
            raise QuickFailed("HASH(1) mismatch", C.N_INVALID_HASH_INFORMATION)
        sa_p, ni = _first(pls, P.SA), _first(pls, P.Nonce)
        if sa_p is None or ni is None:
            raise QuickFailed("SA or nonce missing", C.N_PAYLOAD_MALFORMED)
        ids = [p for p in pls if type(p) is P.ID]
        if len(ids) == 2:
            remote_ts, local_ts = id_ts(ids[0]), id_ts(ids[1])
            if remote_ts is None or local_ts is None:
                raise QuickFailed("unsupported proxy identity", C.N_INVALID_ID_INFORMATION)
        elif not ids:
            remote_ts = ipaddress.ip_network(sa.remote[0])
            local_ts = ipaddress.ip_network(sa.local[0])
        else:
            raise QuickFailed("one proxy identity alone", C.N_INVALID_ID_INFORMATION)
        if sa.nat_remote and remote_ts.num_addresses == 1 and len(ids) == 2 and \
                remote_ts != ipaddress.ip_network(sa.remote[0]):
            # transport mode from behind a NAT: the peer names its private address (RFC 3947
            # 5.2, NAT-OA); the SA is with the address we see
            cand = ipaddress.ip_network(sa.remote[0])
            if self._conn_for_ts(sa, local_ts, remote_ts) is None:
                remote_ts = cand
        conn = self._conn_for_ts(sa, local_ts, remote_ts)
        if conn is None:
            raise QuickFailed(f"proxy IDs {remote_ts} <-> {local_ts} match no configured subnets",
                              C.N_INVALID_ID_INFORMATION)
        udp = sa.nat
        choice = policy.p2_select(sa_p, self._child_sets(conn, udp), conn.comp)
        if choice is None:
            names = ", ".join(p.describe() for p in (conn.esp or conn.ah))
            self._event("no_proposal", conn.name, f"Quick Mode NO-PROPOSAL-CHOSEN: peer offered "
                        f"{policy.describe_offer(sa_p)}; we accept {names}")
            raise QuickFailed("no acceptable IPsec proposal", C.N_NO_PROPOSAL_CHOSEN)
        chosen, numbers, spis_out, prop_no = choice
        qm = QuickMode(hdr.message_id, False, conn, local_ts, remote_ts, started=now)
        qm.ni = ni.data
        qm.chosen = chosen
        qm.spis_out = spis_out
        qm.spis_in = {x.protocol: self._new_spi() for x in chosen}
        comp_answer = None
        peer_ipc = policy.p2_ipcomp(sa_p, prop_no, conn.comp)
        if peer_ipc is not None:  # the peer's CPI and transform number; ours in the answer
            cpi_in = ipcomp.new_cpi(self.rng)
            qm.ipcomp = IPCompParams(conn.comp, cpi_in, peer_ipc[0])
            comp_answer = (conn.comp, cpi_in, peer_ipc[1])
        qm.nr = self.rng(NONCE_LEN)
        group = chosen[0].group
        ke = _first(pls, P.KE)
        out_ke = []
        if group:
            if ke is None:
                raise QuickFailed("PFS group without KE", C.N_INVALID_KEY_INFORMATION)
            qm.kex = dh.KeyExchange(group)
            try:
                qm.gqm = qm.kex.shared(ke.data)
            except dh.InvalidPublicValue:
                raise QuickFailed("invalid PFS public value", C.N_INVALID_KEY_INFORMATION)
            out_ke = [P.KE(qm.kex.public)]
        # lifetimes: the shorter of the offer and ours; tell the initiator when ours is
        # shorter (RESPONDER-LIFETIME, RFC 2407 4.5.4)
        own_s, own_kb = conn.lifetime.seconds, conn.lifetime.kilobytes
        off_s, off_kb = chosen[0].life_s, chosen[0].life_kb
        qm.life_s = min(x for x in (own_s, off_s) if x) if (own_s or off_s) else 0
        qm.life_kb = min(x for x in (own_kb, off_kb) if x) if (own_kb or off_kb) else 0
        notify = []
        # only what the initiator offered can be shortened; a limit it did not offer stays
        # ours alone (we rekey by it), as strongSwan does
        if (own_s and off_s and own_s < off_s) or (own_kb and off_kb and own_kb < off_kb):
            attrs = []
            if qm.life_s and off_s:
                attrs += P.life_attr(C.P2_LIFE_TYPE, C.P2_LIFE_DURATION, C.LIFE_SECONDS, qm.life_s)
            if qm.life_kb and off_kb:
                attrs += P.life_attr(C.P2_LIFE_TYPE, C.P2_LIFE_DURATION, C.LIFE_KILOBYTES, qm.life_kb)
            x = chosen[-1]
            notify = [P.Notify(C.N_RESPONDER_LIFETIME, x.protocol, spis_out[x.protocol],
                               codec.encode_attributes(attrs))]
        # answer with the modes as we do them (UDP encapsulation from our own NAT view)
        answer_x = [policy.P2Transform(x.protocol, x.enc, x.integ, x.esn, x.group, x.mode, udp,
                                       x.life_s, x.life_kb) for x in chosen]
        answer = policy.p2_sa_answer(answer_x, numbers, qm.spis_in, sa.natt, prop_no, comp_answer)
        pls_out = [answer, P.Nonce(qm.nr)] + out_ke
        if ids:
            pls_out += [P.ID(i.id_type, i.protocol, i.port, i.data) for i in ids]  # echoed as sent
        pls_out += notify
        pls_out += self._nat_oa(sa, answer_x[0].mode, sa.remote[0], sa.local[0])
        mid = hdr.message_id
        hname, a = sa.policy.hash, sa.keys.a
        first, body = self._hashed_body(lambda r: keys.qm_hash2(hname, a, mid, qm.ni, r), pls_out)
        flags = codec.FLAG_V1_COMMIT if hdr.flags & codec.FLAG_V1_COMMIT else 0
        qm.commit = bool(flags)
        data = self._encrypted_raw(sa, C.EXCH_QUICK, mid, first, body, flags=flags)
        self._qm_by_mid(sa)[mid] = qm
        qm.state = "QM_SENT2"
        qm.retx = self._make_retx(sa, data, now, expect_reply=True)
        # The initiator sends on the new SA as soon as it has sent HASH(3); if we waited for
        # HASH(3) to receive on it, a delayed or lost message 3 would drop those packets. So
        # the inbound half goes in now, the outbound half when message 3 proves the peer
        # has the keys (as Cisco and strongSwan do); _qm_abandon removes it if it never comes.
        qm.child_id = self._new_id()
        self._out.append(self._qm_action(sa, qm, *self._qm_keys(sa, qm), outbound_too=False))
        qm.inbound_installed = True
        self._out_send(sa, data)

    def _qm_r_msg3(self, sa: IsakmpSA, qm: QuickMode, hdr, plain: bytes, pls: list, now: float):
        hv, rest = self._after_hash(plain, hdr.next_payload)
        if not hmac.compare_digest(hv, keys.qm_hash3(sa.policy.hash, sa.keys.a, qm.mid, qm.ni, qm.nr)):
            raise QuickFailed("HASH(3) mismatch", C.N_INVALID_HASH_INFORMATION)
        if rest:
            raise QuickFailed("payloads after HASH(3)", C.N_PAYLOAD_MALFORMED)
        qm.retx = None
        qm.state = "QM_DONE"
        self._qm_install(sa, qm, now)
        if qm.commit:
            self._info_send(sa, [P.Notify(C.N_CONNECTED, qm.chosen[-1].protocol,
                                          qm.spis_in[qm.chosen[-1].protocol])], now)

    # ------------------------------------------------------------------ install

    def _qm_keys(self, sa: IsakmpSA, qm: QuickMode) -> tuple[tuple, tuple]:
        """KEYMAT per direction and protocol (RFC 2409 5.5): the SPI is the receiver's;
        encryption key first, then the integrity key (AEAD keys end with their salt,
        RFC 4106 8.1)."""
        inbound, outbound = [], []
        ordered = sorted(qm.chosen, key=lambda x: 0 if x.protocol == C.PROTO_ESP else 1)
        for x in ordered:
            ek, ik = x.key_sizes()
            for spi, lst in ((qm.spis_in[x.protocol], inbound), (qm.spis_out[x.protocol], outbound)):
                km = keys.keymat(sa.policy.hash, sa.keys.d, x.protocol, spi, qm.ni, qm.nr,
                                 ek + ik, qm.gqm)
                if x.protocol == C.PROTO_ESP:
                    lst.append(ChildKeys(int.from_bytes(spi, "big"), "esp", x.enc, x.integ,
                                         km[:ek], km[ek:ek + ik]))
                else:
                    lst.append(ChildKeys(int.from_bytes(spi, "big"), "ah", None, x.integ, b"", km[:ik]))
        return tuple(inbound), tuple(outbound)

    def _qm_action(self, sa: IsakmpSA, qm: QuickMode, inbound, outbound, *,
                   replaces: int | None = None, outbound_too: bool = True) -> InstallChildSA:
        return InstallChildSA(
            connection=qm.conn.name, child_id=qm.child_id, ike_id=sa.ike_id,
            mode=qm.chosen[0].mode, local=sa.local, remote=sa.remote, udp_encap=sa.nat,
            esn=qm.chosen[0].esn, replay_window=qm.conn.replay_window,
            local_ts=(qm.local_ts,), remote_ts=(qm.remote_ts,), inbound=inbound,
            outbound=outbound if outbound_too else (), proposal=describe_transforms(qm.chosen),
            lifetime_seconds=qm.life_s,
            soft_kilobytes=int(qm.life_kb * 0.9) if qm.life_kb else 0, hard_kilobytes=qm.life_kb,
            replaces=replaces, ipcomp=qm.ipcomp)

    def _qm_abandon(self, sa: IsakmpSA, qm: QuickMode) -> None:
        """A Quick Mode we answered ends without message 3 (timeout, ISAKMP SA gone): its
        inbound-only SA, installed with message 2, goes; so does that of an initiator which
        waited in vain for CONNECTED."""
        if qm.state not in ("QM_SENT2", "QM_WAIT_CONNECTED") or qm.child_id is None:
            return
        self._out.append(DeleteChildSA(qm.child_id))
        for spi in qm.spis_in.values():
            self._spis_in.discard(int.from_bytes(spi, "big"))
        qm.child_id = None
        qm.inbound_installed = False

    def _qm_install(self, sa: IsakmpSA, qm: QuickMode, now: float) -> None:
        conn = qm.conn
        inbound, outbound = self._qm_keys(sa, qm)
        mode = qm.chosen[0].mode
        udp = sa.nat
        if qm.child_id is None:
            qm.child_id = self._new_id()
        child_id = qm.child_id
        replaces = qm.rekey_of
        redundant = None  # the pair this one lost the tie-break against
        nonce_key = min(qm.ni, qm.nr)
        if replaces is None:
            # responder side of a rekey, or a duplicate SA: the newest carries the traffic
            for c in self.children.values():
                if c.conn.name == conn.name and c.local_ts == qm.local_ts and \
                        c.remote_ts == qm.remote_ts and c.state == "INSTALLED":
                    if c.nonce_key and nonce_key < c.nonce_key and not c.standby \
                            and c.initiator != qm.initiator \
                            and c.installed + SIMULTANEOUS_WINDOW >= sa.created:
                        # Both ends ran a Quick Mode for the same selectors at once, or the
                        # peer rekeyed ours (two pairs of the peer's: the newer one wins, as
                        # before). The ends may install the two pairs in either order,
                        # so "the newest wins" made each end delete a different one. The
                        # pair with the lowest nonce is the redundant one (RFC 7296 2.8.1's
                        # rule), the same on both ends; a rekeying peer deletes the old
                        # pair itself whatever we chose.
                        redundant = c
                    else:
                        replaces = c.child_id
                    break
        life_s = qm.life_s
        # the initiator rekeys at 85.5-90 % of the lifetime (spread so that many SAs do not
        # rekey at once), the responder only as a fallback at 97 %: no collisions by design
        jitter = life_s * 0.045 * ((child_id * 7) % 10) / 9 if qm.initiator else 0.0
        margin = 0.1 if qm.initiator else 0.03
        child = Child(child_id, conn, sa.ike_id, qm.initiator, qm.chosen, dict(qm.spis_in),
                      dict(qm.spis_out), mode, udp, qm.local_ts, qm.remote_ts, now, life_s,
                      qm.life_kb,
                      rekey_at=(now + life_s * (1 - margin) - jitter) if life_s else None,
                      expire_at=(now + life_s) if life_s else None, per_host=qm.per_host,
                      pfs_group=qm.chosen[0].group, nonce_key=nonce_key)
        child.last_in = child.last_out = now
        if redundant is not None and qm.initiator:
            # installed all the same (the peer may send on it until it installs the other
            # one), behind the other pair's outbound policy; we delete it, as its initiator
            child.state = "REKEYED"
            child.delete_at = min(child.expire_at or now + 60, now + 60)
        elif redundant is not None:
            # the peer deletes one of the two: this one (it ran its Quick Mode at the same
            # time as ours) or the older (it rekeyed). Until then the older one carries the
            # traffic but is not rekeyed; it is back to INSTALLED if this one goes.
            redundant.state = "REKEYED"
            redundant.standby = True
        self.children[child_id] = child
        desc = child.proposal()
        activate = ActivateOutbound(child_id, outbound, replaces)
        if qm.initiator and not qm.commit and redundant is None and replaces in self.children:
            # rekey initiator: receive now, send a moment later (timers.outbound_settle), but
            # well before the old pair expires (its Delete would drop our packets still on
            # it). The responder installs its inbound SA when message 3 arrives, and
            # strongSwan handles IKE and ESP in different threads, so ESP sent at once can
            # overtake it. The old SA carries the traffic meanwhile.
            self._out.append(self._qm_action(sa, qm, inbound, outbound, replaces=replaces,
                                             outbound_too=False))
            old_exp = self.children[replaces].expire_at
            settle = self.timers.outbound_settle
            delay = settle if old_exp is None else min(settle, max(0.0, old_exp - now) / 2)
            child.attach_at, child.attach = now + delay, activate
        elif qm.inbound_installed:
            # a responder's inbound half is in place since message 2 (an initiator's since
            # message 3 with the commit bit): it now sends too
            self._out.append(activate)
        else:
            self._out.append(self._qm_action(sa, qm, inbound, outbound, replaces=replaces))
        spi_text = "/".join(f"{_protocol_name(x.protocol)} in {qm.spis_in[x.protocol].hex()} "
                            f"out {qm.spis_out[x.protocol].hex()}" for x in qm.chosen)
        self._event("child_up", conn.name, f"IPsec SA {qm.local_ts} <-> {qm.remote_ts} installed "
                    f"({desc}, {mode}{', UDP-encapsulated' if udp else ''}, {spi_text})",
                    ike_id=sa.ike_id, child_id=child_id)
        if self.peers is not None and replaces is None and redundant is None:
            # a peer that restarted without INITIAL_CONTACT: its IKEv2 leftovers go (ike/peers.py)
            self.peers.child_installed(1, sa, [qm.local_ts], [qm.remote_ts], now)
        if replaces is not None and replaces in self.children:
            old = self.children[replaces]
            old.state = "REKEYED"
            # the old pair lingers so packets in flight still decrypt (make-before-break);
            # the rekey's initiator deletes it with a Delete payload, the other side on expiry
            if qm.initiator and qm.rekey_of is not None:
                old.delete_at = now + self.rekeyed_linger
                old.rekeyed_here = True
            else:
                old.delete_at = min(old.expire_at or now + 60, now + 60)
        self._dpd_arm(sa, now)

    # ------------------------------------------------------------------ dispatch

    def _qm_receive(self, sa: IsakmpSA, hdr, data: bytes, now: float):
        if not sa.is_established:
            return
        mid = hdr.message_id
        qms = self._qm_by_mid(sa)
        qm = qms.get(mid)
        dig = _digest(data)
        if qm is not None and dig == qm.last_in:
            # the answering side resends at once (see phase1.py); so does the responder, whose
            # message 2 the initiator's repeated message 1 shows lost
            if qm.retx and (qm.retx.due is None or not qm.initiator):
                self._resend(qm.retx)
            return
        if qm is not None and qm.initiator and qm.state == "QM_DONE" and qm.retx:
            # another message 2 after we answered one: the peer did not get our HASH(3),
            # whichever copy of its message 2 we took (see phase1._resend_answer)
            self._resend_answer(qm.retx)
            return
        if qm is None and mid in self._done_mids.get(sa.ike_id, ()):
            return
        if not hdr.flags & codec.FLAG_V1_ENCRYPTION:
            return
        if qm is None:
            self._lock_phase2_iv(sa, data)
        iv = sa.p2_iv.get(mid) or keys.phase2_iv(sa.policy.hash, sa.iv, mid, sa.cipher.block_size)
        try:
            plain, new_iv = self._decrypt(sa, data, iv)
            pls = codec.decode_chain(plain, hdr.next_payload, P.REGISTRY, start=0, trailing_ok=True)
        except (ValueError, codec.CodecError):
            self._count_drop(sa, "undecryptable Quick Mode message")
            return
        try:
            if qm is None:
                if len(qms) > 32:
                    return  # too many half-done exchanges from this peer
                sa.p2_iv[mid] = new_iv
                self._qm_r_msg1(sa, hdr, plain, pls, now)
                qm = qms.get(mid)
            elif qm.initiator and qm.state == "QM_SENT1":
                old = sa.p2_iv[mid]
                sa.p2_iv[mid] = new_iv
                try:
                    self._qm_i_msg2(sa, qm, hdr, plain, pls, now)
                except QuickFailed:
                    sa.p2_iv[mid] = old
                    raise
            elif not qm.initiator and qm.state == "QM_SENT2":
                self._qm_r_msg3(sa, qm, hdr, plain, pls, now)
            else:
                return
        except QuickFailed as e:
            if qm is None:
                sa.p2_iv.pop(mid, None)
            if e.notify == C.N_INVALID_HASH_INFORMATION:
                # not from the peer (RFC 2408 5.5: discarded): answering it, or giving up
                # the exchange, would let a forgery spoil the genuine message that follows
                self._count_drop(sa, f"Quick Mode {mid:#010x} message dropped: {e}")
                return
            self._event("failed", sa.conn.name, f"Quick Mode {mid:#010x} failed: {e}", ike_id=sa.ike_id)
            if e.notify:
                self._info_send(sa, [P.Notify(e.notify, C.PROTO_ISAKMP, sa.cky_i + sa.cky_r)], now)
            if qm is not None and qm.initiator:
                self._qm_failed(sa, qm, now)
            return
        if qm is not None:
            qm.last_in = dig
            if qm.state == "QM_DONE" and not qm.initiator:
                self._qm_finish(sa, qm)
        sa.last_heard = now

    def _qm_retry_without_ipcomp(self, sa: IsakmpSA, qm: QuickMode, now: float) -> bool:
        """NO-PROPOSAL-CHOSEN to a Quick Mode that offered IPComp: strongSwan refuses the
        whole exchange when it cannot get a CPI (kernel-libipsec) instead of taking our
        proposal without IPCOMP. Ask again at once without it, and not again on this
        ISAKMP SA."""
        if qm.cpi_in is None or sa.ipcomp_refused:
            return False
        sa.ipcomp_refused = True
        self._qm_by_mid(sa).pop(qm.mid, None)
        sa.p2_iv.pop(qm.mid, None)
        for spi in qm.spis_in.values():
            self._spis_in.discard(int.from_bytes(spi, "big"))
        self._event("ipcomp_refused", qm.conn.name, "peer refused the proposals with IPComp; "
                    "asking again without compression", ike_id=sa.ike_id)
        self._qm_initiate(sa, qm.conn, qm.local_ts, qm.remote_ts, now, rekey_of=qm.rekey_of,
                          per_host=qm.per_host)
        return True

    def _qm_failed(self, sa: IsakmpSA, qm: QuickMode, now: float) -> None:
        """A Quick Mode we started failed: forget it; a rekey is tried again later (the old
        pair still carries traffic), a first SA when the connection wants to be up."""
        self._qm_abandon(sa, qm)
        self._qm_by_mid(sa).pop(qm.mid, None)
        sa.p2_iv.pop(qm.mid, None)
        old = self.children.get(qm.rekey_of) if qm.rekey_of is not None else None
        if old is not None and old.state == "REKEYING":
            old.state = "INSTALLED"
            old.rekey_at = now + 30.0
            if old.expire_at is not None:
                old.rekey_at = min(old.rekey_at, max(now + 1.0, old.expire_at - 5.0))
        elif old is None and qm.conn.start == "start" and qm.conn.peer != "%any":
            self._restart_at[qm.conn.name] = now + 30.0

    def _qm_finish(self, sa: IsakmpSA, qm: QuickMode) -> None:
        """Forget a finished exchange, but keep answering a repeated last message for a while
        (the initiator keeps its HASH(3) to resend if message 2 comes again)."""
        if qm.initiator and qm.state == "QM_DONE":
            qm.retx.due = None
            self._lingering.append((sa.ike_id, qm.mid, self._now + 30))
            return
        self._qm_by_mid(sa).pop(qm.mid, None)
        sa.p2_iv.pop(qm.mid, None)
        self._done_mids.setdefault(sa.ike_id, set()).add(qm.mid)


def _first(pls, cls):
    for p in pls:
        if type(p) is cls:
            return p
    return None


from vpnd.ike.v1.phase1 import _digest  # noqa: E402  (one notion of "the same message")

