"""Phase 1: Main Mode (6 messages) and Aggressive Mode (3 messages), RFC 2409 5.1-5.4,
with pre-shared keys, RSA signatures (X.509) and RSA-encrypted nonces (RFC 2409 5.2), and
the NAT-T (RFC 3947) and DPD (RFC 3706) vendor IDs and NAT-D payloads.

A mixin of Ikev1Core: `self` holds the SA tables, the clock-free helpers to frame, encrypt
and send messages, and the action list.
"""

from __future__ import annotations

import copy
import hmac

from cryptography import x509

from vpnd.ike.addresses import local_for
from vpnd.crypto import certs as x509certs
from vpnd.crypto import dh
from vpnd.crypto.auth import AuthError
from vpnd.crypto.credentials import Credentials
from vpnd.crypto.rsa_encr import RsaError, decrypt_pkcs1, encrypt_pkcs1, sign_raw_pkcs1, verify_raw_pkcs1
from vpnd.ike import codec
from vpnd.ike.v1 import constants as C
from vpnd.ike.v1 import identity, keys, policy
from vpnd.ike.v1 import payloads as P
from vpnd.ike.v1.state import IsakmpSA

NONCE_LEN = 32
RESEND_LIMIT = 5  # answers resent on variants of the peer's last message


class Phase1Failed(Exception):
    """Negotiation or authentication failed: `notify` is the RFC's answer (or None)."""

    def __init__(self, message: str, notify: int | None = None, kind: str = "error"):
        super().__init__(message)
        self.notify = notify
        self.kind = kind


def _auth_method(conn) -> int:
    m = conn.auth.method if conn.auth else "psk"
    return {"psk": C.AUTH_PSK, "cert": C.AUTH_RSA_SIG, "rsa_encr": C.AUTH_RSA_ENCR}[m]


class Phase1Mixin:
    # ------------------------------------------------------------------ vendor IDs / NAT-D

    def _our_vids(self, sa: IsakmpSA | None = None) -> list:
        """DPD (RFC 3706 2.1) and NAT-T vendor IDs: all NAT-T versions in message 1, the one
        chosen from the peer's in the answer (RFC 3947 3.1)."""
        vids = [P.VendorID(C.VID_DPD)]
        if sa is None or sa.initiator:
            vids += [P.VendorID(v) for v in C.VIDS_NATT]
        elif sa.natt == "rfc":
            vids.append(P.VendorID(C.VID_NATT_RFC))
        elif sa.natt == "draft":
            vids.append(P.VendorID(sa.natt_vid or C.VID_NATT_DRAFT_02N))
        return vids

    def _take_vids(self, sa: IsakmpSA, pls: list) -> None:
        got = {p.data for p in pls if isinstance(p, P.VendorID)}
        if C.VID_NATT_RFC in got:
            sa.natt = "rfc"
        else:
            for v in (C.VID_NATT_DRAFT_03, C.VID_NATT_DRAFT_02N, C.VID_NATT_DRAFT_02):
                if v in got:
                    sa.natt = "draft"
                    sa.natt_vid = v
                    break
        sa.peer_dpd = any(v[:14] == C.VID_DPD[:14] for v in got)

    def _natd_payloads(self, sa: IsakmpSA) -> list:
        if not sa.natt:
            return []
        cls = P.NatD if sa.natt == "rfc" else P.NatDDraft
        h = sa.policy.hash
        dst = keys.natd_hash(h, sa.cky_i, sa.cky_r, sa.remote[0], sa.remote[1])
        if sa.conn.encap:
            # force UDP encapsulation as strongSwan's encap=yes: a source hash that cannot
            # match makes the peer see a NAT in front of us (RFC 3947 leaves this open)
            src = keys.hash_(h, self.rng(16))
        else:
            src = keys.natd_hash(h, sa.cky_i, sa.cky_r, sa.local[0], sa.local[1])
        return [cls(dst), cls(src)]

    def _check_natd(self, sa: IsakmpSA, pls: list, local, remote) -> None:
        got = [p.data for p in pls if isinstance(p, (P.NatD, P.NatDDraft))]
        if not sa.natt or len(got) < 2:
            return
        h = sa.policy.hash
        mine = keys.natd_hash(h, sa.cky_i, sa.cky_r, local[0], local[1])
        theirs = keys.natd_hash(h, sa.cky_i, sa.cky_r, remote[0], remote[1])
        sa.nat_local = got[0] != mine or bool(sa.conn.encap)
        sa.nat_remote = theirs not in got[1:]
        if sa.nat:
            self._event("nat", sa.conn.name, f"NAT detected ({'local' if sa.nat_local else ''}"
                        f"{' ' if sa.nat_local and sa.nat_remote else ''}"
                        f"{'remote' if sa.nat_remote else ''})", ike_id=sa.ike_id)

    def _float(self, sa: IsakmpSA) -> None:
        """Move to the NAT-T port (RFC 3947 4): from message 5 of Main Mode / 3 of Aggressive."""
        if sa.nat and not sa.floated and sa.remote[1] != self.natt_port:
            sa.local = (sa.local[0], self.natt_port)
            sa.remote = (sa.remote[0], self.natt_port)
        if sa.nat:
            sa.floated = True

    # ------------------------------------------------------------------ credentials

    def _psk(self, conn) -> bytes:
        a = conn.auth
        if a is None or a.psk is None:
            raise Phase1Failed("no pre-shared key configured", C.N_AUTHENTICATION_FAILED, "auth_failed")
        return a.psk.value

    def _creds(self, conn) -> Credentials:
        """Certificates and keys of a connection, from the store loaded with the config."""
        try:
            cr = self.creds.get(conn)
        except AuthError as e:
            raise Phase1Failed(f"local credentials unusable: {e}", C.N_AUTHENTICATION_FAILED, "auth_failed")
        return cr if cr is not None else Credentials()

    def _local_id(self, sa: IsakmpSA) -> P.ID:
        conn = sa.conn
        if conn.local_id is not None:
            return identity.id_payload(conn.local_id)
        if conn.auth and conn.auth.method == "cert":
            cert = self._creds(conn).cert
            return P.ID(C.ID_DER_ASN1_DN, 0, 0, cert.subject.public_bytes())
        return identity.id_payload(conn.local or sa.local[0])

    def _certreq(self, sa: IsakmpSA) -> list:
        if sa.policy is None or sa.policy.auth != C.AUTH_RSA_SIG:
            return []
        return [P.CertReq(C.CERT_X509_SIG, ca.subject.public_bytes()) for ca in self._creds(sa.conn).cas]

    def _auth_payloads(self, sa: IsakmpSA, initiator: bool) -> list:
        """HASH_I/HASH_R or [CERT] SIG_I/SIG_R of RFC 2409 5.1."""
        id_b = sa.id_i if initiator else sa.id_r
        h = keys.auth_hash(sa.policy.hash, sa.keys.skeyid, initiator=initiator, gxi=sa.gxi,
                           gxr=sa.gxr, cky_i=sa.cky_i, cky_r=sa.cky_r, sai_b=sa.sai_b, id_b=id_b)
        if sa.policy.auth == C.AUTH_RSA_SIG:
            cr = self._creds(sa.conn)
            return [P.Cert(C.CERT_X509_SIG, identity.cert_der(c)) for c in (cr.cert,) + cr.chain] + \
                [P.Signature(sign_raw_pkcs1(cr.key, h))]
        return [P.Hash(h)]

    def _verify_auth(self, sa: IsakmpSA, pls: list, from_initiator: bool) -> None:
        id_b = sa.id_i if from_initiator else sa.id_r
        want = keys.auth_hash(sa.policy.hash, sa.keys.skeyid, initiator=from_initiator,
                              gxi=sa.gxi, gxr=sa.gxr, cky_i=sa.cky_i, cky_r=sa.cky_r,
                              sai_b=sa.sai_b, id_b=id_b)
        peer_id = sa.peer_id
        if sa.policy.auth == C.AUTH_RSA_SIG:
            sig = _first(pls, P.Signature)
            certs = [p for p in pls if isinstance(p, P.Cert) and p.encoding == C.CERT_X509_SIG]
            if sig is None or not certs:
                raise Phase1Failed("signature or certificate missing", C.N_INVALID_SIGNATURE, "auth_failed")
            try:
                cert = x509.load_der_x509_certificate(certs[0].data)
            except ValueError:
                raise Phase1Failed("peer certificate does not parse", C.N_AUTHENTICATION_FAILED, "auth_failed")
            cr = self._creds(sa.conn)
            # intermediates: the peer's further CERT payloads, then our configured chain
            more = x509certs.load_der(c.data for c in certs[1:]) + list(cr.chain)
            why = x509certs.verify_chain(cert, cr.cas, self._wallclock(), more)
            if why:
                raise Phase1Failed(f"peer certificate {why}", C.N_AUTHENTICATION_FAILED, "auth_failed")
            if not x509certs.cert_carries_id(cert, peer_id.id_type, peer_id.data):
                raise Phase1Failed(f"identity {identity.describe_id(peer_id)} is not in the peer certificate",
                                   C.N_INVALID_ID_INFORMATION, "auth_failed")
            if not verify_raw_pkcs1(cert.public_key(), want, sig.data):
                raise Phase1Failed("signature check failed", C.N_INVALID_SIGNATURE, "auth_failed")
            sa.peer_cert = cert
        else:
            got = _first(pls, P.Hash)
            if got is None or not hmac.compare_digest(got.data, want):
                raise Phase1Failed("HASH_%s mismatch (wrong pre-shared key?)" % ("I" if from_initiator else "R"),
                                   C.N_INVALID_HASH_INFORMATION, "auth_failed")
        if not identity.id_matches(sa.conn.remote_id, peer_id):
            raise Phase1Failed(f"peer identity {identity.describe_id(peer_id)} is not {sa.conn.remote_id}",
                               C.N_INVALID_ID_INFORMATION, "auth_failed")

    # ------------------------------------------------------------------ key exchange

    def _make_kex(self, sa: IsakmpSA) -> None:
        sa.kex = dh.KeyExchange(sa.policy.group)

    def _take_ke(self, sa: IsakmpSA, ke: P.KE | None) -> bytes:
        if ke is None:
            raise Phase1Failed("KE payload missing", C.N_INVALID_KEY_INFORMATION)
        if len(ke.data) != dh.public_value_length(sa.policy.group):
            raise Phase1Failed("KE of the wrong length for the group", C.N_INVALID_KEY_INFORMATION)
        try:
            sa.gxy = sa.kex.shared(ke.data)
        except dh.InvalidPublicValue:
            raise Phase1Failed("invalid DH public value", C.N_INVALID_KEY_INFORMATION)
        return ke.data

    def _derive(self, sa: IsakmpSA) -> None:
        psk = self._psk(sa.conn) if sa.policy.auth == C.AUTH_PSK else None
        sa.keys = keys.derive_phase1(sa.policy.auth, sa.policy.hash, sa.policy.enc, ni=sa.ni,
                                     nr=sa.nr, gxy=sa.gxy, gxi=sa.gxi, gxr=sa.gxr,
                                     cky_i=sa.cky_i, cky_r=sa.cky_r, psk=psk)
        sa.cipher = keys.make_cipher(sa.policy.enc, sa.keys.enc_key)
        sa.iv = sa.keys.iv0

    # rsa-encr (RFC 2409 5.2): the ID and nonce bodies go encrypted with the peer's key
    def _encr_id_nonce(self, sa: IsakmpSA, id_b: bytes, nonce: bytes) -> list:
        pub = self._creds(sa.conn).peer_pubkey
        enc_id = encrypt_pkcs1(pub, id_b)
        return [_RawID(enc_id), P.Nonce(encrypt_pkcs1(pub, nonce))]

    def _decr_id_nonce(self, sa: IsakmpSA, pls: list) -> tuple[bytes, bytes]:
        idp, n = _first(pls, P.ID), _first(pls, P.Nonce)
        if idp is None or n is None:
            raise Phase1Failed("ID or nonce missing", C.N_PAYLOAD_MALFORMED)
        key = self._creds(sa.conn).key
        try:
            id_b = decrypt_pkcs1(key, idp.encode())
            nonce = decrypt_pkcs1(key, n.data)
        except RsaError:
            raise Phase1Failed("cannot decrypt the RSA-encrypted ID/nonce", C.N_AUTHENTICATION_FAILED, "auth_failed")
        return id_b, nonce

    # ------------------------------------------------------------------ initiator

    def _p1_initiate(self, conn, now: float, pending: list) -> IsakmpSA:
        local_ip = local_for(conn, self.listen)
        sa = IsakmpSA(self._new_id(), conn, True, bool(conn.aggressive), self.rng(8), b"\x00" * 8,
                      (local_ip, self.ike_port), (conn.peer, self.ike_port), now)
        sa.policies = policy.p1_policies(conn.ike, _auth_method(conn), conn.lifetime.ike)
        sa.pending = list(pending)
        sa.last_heard = now
        sa.rekeying = self._established_for_conn(conn.name) is not None
        self.sas[sa.cky_i] = sa
        offer = policy.p1_sa(sa.policies)
        sa.sai_b = offer.encode()
        if not sa.aggressive:
            sa.state = "MM_NO_STATE"
            data = self._plain(sa, C.EXCH_MAIN, 0, [offer] + self._our_vids())
        else:
            # Aggressive Mode commits to one DH group in message 1 (RFC 2409 5.4): that of the
            # first policy; all offered transforms must share it and the auth method.
            first = sa.policies[0]
            sa.policies = [p for p in sa.policies if p.group == first.group]
            offer = policy.p1_sa(sa.policies)
            sa.sai_b = offer.encode()
            sa.policy = first
            self._make_kex(sa)
            sa.gxi = sa.kex.public
            sa.ni = self.rng(NONCE_LEN)
            idp = self._local_id(sa)
            sa.id_i = idp.encode()
            if first.auth == C.AUTH_RSA_ENCR:
                body = [offer, P.KE(sa.gxi)] + self._encr_id_nonce(sa, sa.id_i, sa.ni)
            else:
                body = [offer, P.KE(sa.gxi), P.Nonce(sa.ni), idp] + self._certreq(sa)
            sa.state = "AG_INIT_EXCH"
            data = self._plain(sa, C.EXCH_AGGRESSIVE, 0, body + self._our_vids())
        self._send(sa, data, now, expect_reply=True)
        self._event("ike_connecting", conn.name, f"initiating {'Aggressive' if sa.aggressive else 'Main'} Mode "
                    f"to {conn.peer}", ike_id=sa.ike_id)
        return sa

    def _mm_i_msg2(self, sa: IsakmpSA, hdr, pls, now):
        sa_p = _first(pls, P.SA)
        if sa_p is None:
            raise Phase1Failed("SA payload missing in message 2", C.N_PAYLOAD_MALFORMED)
        chosen = _single_transform(sa_p)
        pol = policy.p1_parse(chosen)
        if pol is None or not any(pol.same_algorithms(p) for p in sa.policies):
            raise Phase1Failed("responder chose a transform we did not offer", C.N_NO_PROPOSAL_CHOSEN, "no_proposal")
        lifetime = policy.own_lifetime(pol, sa.policies)
        sa.policy = policy.P1Policy(pol.enc, pol.hash, pol.group, pol.auth, lifetime)
        sa.cky_r = hdr.spi_r
        self._take_vids(sa, pls)
        self._make_kex(sa)
        sa.gxi = sa.kex.public
        sa.ni = self.rng(NONCE_LEN)
        if sa.policy.auth == C.AUTH_RSA_ENCR:
            idp = self._local_id(sa)
            sa.id_i = idp.encode()
            body = [P.KE(sa.gxi)] + self._encr_id_nonce(sa, sa.id_i, sa.ni)
        else:
            body = [P.KE(sa.gxi), P.Nonce(sa.ni)] + self._certreq(sa)
        body += self._natd_payloads(sa)
        sa.state = "MM_SA_SETUP"
        self._send(sa, self._plain(sa, C.EXCH_MAIN, 0, body), now, expect_reply=True)

    def _mm_i_msg4(self, sa: IsakmpSA, hdr, pls, local, remote, now):
        sa.gxr = self._take_ke(sa, _first(pls, P.KE))
        if sa.policy.auth == C.AUTH_RSA_ENCR:
            sa.id_r, sa.nr = self._decr_id_nonce(sa, pls)
            sa.peer_id = _decode_id(sa.id_r)
        else:
            n = _first(pls, P.Nonce)
            if n is None:
                raise Phase1Failed("nonce missing in message 4", C.N_PAYLOAD_MALFORMED)
            sa.nr = n.data
        self._check_natd(sa, pls, local, remote)
        self._derive(sa)
        self._float(sa)
        if sa.policy.auth == C.AUTH_RSA_ENCR:
            body = [P.Hash(keys.auth_hash(sa.policy.hash, sa.keys.skeyid, initiator=True, gxi=sa.gxi,
                                          gxr=sa.gxr, cky_i=sa.cky_i, cky_r=sa.cky_r,
                                          sai_b=sa.sai_b, id_b=sa.id_i))]
        else:
            idp = self._local_id(sa)
            sa.id_i = idp.encode()
            body = [idp] + self._auth_payloads(sa, True)
        body += self._initial_contact(sa)
        sa.state = "MM_KEY_EXCH"
        self._send(sa, self._encrypted(sa, C.EXCH_MAIN, 0, body), now, expect_reply=True)

    def _take_peer_id(self, sa: IsakmpSA, pls, message: int) -> None:
        """Main Mode message 5/6: the peer's ID, in the clear of the encrypted body (with
        rsa-encr it came encrypted in message 3/4 already, RFC 2409 5.2)."""
        if sa.policy.auth == C.AUTH_RSA_ENCR:
            return
        idp = _first(pls, P.ID)
        if idp is None:
            raise Phase1Failed(f"ID missing in message {message}", C.N_PAYLOAD_MALFORMED)
        if message == 5:
            sa.id_i = idp.encode()
        else:
            sa.id_r = idp.encode()
        sa.peer_id = idp

    def _mm_i_msg6(self, sa: IsakmpSA, hdr, pls, now):
        self._take_peer_id(sa, pls, 6)
        self._verify_auth(sa, pls, from_initiator=False)
        self._p1_established(sa, now)

    def _am_i_msg2(self, sa: IsakmpSA, hdr, pls, local, remote, now):
        sa_p = _first(pls, P.SA)
        if sa_p is None:
            raise Phase1Failed("SA payload missing", C.N_PAYLOAD_MALFORMED)
        pol = policy.p1_parse(_single_transform(sa_p))
        if pol is None or not any(pol.same_algorithms(p) for p in sa.policies):
            raise Phase1Failed("responder chose a transform we did not offer", C.N_NO_PROPOSAL_CHOSEN, "no_proposal")
        sa.policy = policy.P1Policy(pol.enc, pol.hash, pol.group, pol.auth,
                                    policy.own_lifetime(pol, sa.policies))
        sa.cky_r = hdr.spi_r
        self._take_vids(sa, pls)
        sa.gxr = self._take_ke(sa, _first(pls, P.KE))
        if sa.policy.auth == C.AUTH_RSA_ENCR:
            sa.id_r, sa.nr = self._decr_id_nonce(sa, pls)
            sa.peer_id = _decode_id(sa.id_r)
        else:
            n, idp = _first(pls, P.Nonce), _first(pls, P.ID)
            if n is None or idp is None:
                raise Phase1Failed("nonce or ID missing", C.N_PAYLOAD_MALFORMED)
            sa.nr = n.data
            sa.id_r = idp.encode()
            sa.peer_id = idp
        self._derive(sa)
        self._verify_auth(sa, pls, from_initiator=False)
        self._check_natd(sa, pls, local, remote)
        self._float(sa)
        if sa.policy.auth == C.AUTH_RSA_ENCR:
            body = [P.Hash(keys.auth_hash(sa.policy.hash, sa.keys.skeyid, initiator=True, gxi=sa.gxi,
                                          gxr=sa.gxr, cky_i=sa.cky_i, cky_r=sa.cky_r,
                                          sai_b=sa.sai_b, id_b=sa.id_i))]
        else:
            body = self._auth_payloads(sa, True)
        body += self._natd_payloads(sa) + self._initial_contact(sa)
        # RFC 2409 shows message 3 in the clear; strongSwan and Cisco encrypt it, and a
        # receiver takes both (RFC 2408 3.1: the E flag tells).
        data = self._encrypted(sa, C.EXCH_AGGRESSIVE, 0, body)
        self._send(sa, data, now, expect_reply=False)
        self._p1_established(sa, now)

    # ------------------------------------------------------------------ responder

    def _p1_respond_new(self, hdr, pls, local, remote, now, *, alternate: bool = False):
        """Message 1 of Main or Aggressive Mode from a new peer (`alternate`: another
        message 1 with the cookie of a half-open responder SA, see core.py)."""
        aggressive = hdr.exchange == C.EXCH_AGGRESSIVE
        sa_p = _first(pls, P.SA)
        if sa_p is None:
            return
        peer_idp = _first(pls, P.ID) if aggressive else None
        if aggressive:
            # Aggressive Mode is answered only for a connection with `aggressive: true` whose
            # remote ID this is (issue 8.1): its message 2 carries a PSK-keyed hash that a
            # prober could crack offline. Every refusal -- unknown ID, the ID of a connection
            # without Aggressive Mode, Aggressive Mode disabled -- gets the same answer,
            # silence (RFC 2408 5: failure notifies are optional, a DoS-protection choice;
            # libreswan also drops), so a prober cannot tell which IDs exist, and nothing
            # is reflected. A configured aggressive ID necessarily gets a real handshake.
            conns = self._aggressive_conns(remote[0], peer_idp)
            if not conns:
                why = ("daemon.aggressive_mode: false" if not self.aggressive_allowed else
                       "no connection with aggressive: true for ID "
                       + (identity.describe_id(peer_idp) if peer_idp else "(none)"))
                self._unauth_event("error", "aggressive_refused", remote,
                                   f"Aggressive Mode from {remote[0]} refused ({why})")
                return
        else:
            conns = self._conns_for_peer(remote[0], None)
        if not conns:
            self._unauth_event("error", "no_connection", remote, f"no IKEv1 connection for {remote[0]}")
            return
        choice = None
        for conn in conns:
            own = policy.p1_policies(conn.ike, _auth_method(conn), conn.lifetime.ike)
            choice = policy.p1_select(sa_p, own)
            if choice:
                break
        if choice is None:
            names = "; ".join(", ".join(p.describe() + "/" + C.AUTH_NAMES[p.auth] for p in
                                        policy.p1_policies(c.ike, _auth_method(c), c.lifetime.ike))
                              for c in conns)
            self._unauth_event("no_proposal", "no_proposal", remote,
                               f"NO-PROPOSAL-CHOSEN for {remote[0]}: peer offered {policy.describe_offer(sa_p)}; "
                               f"we accept {names}", conn=conns[0].name)
            if self._error_answer_allowed(remote):
                self._notify_plain(hdr, C.N_NO_PROPOSAL_CHOSEN, local, remote)
            return
        transform, pol = choice
        if aggressive and not self._am_allowed(remote[0], now):
            return
        if not self._admit_unverified(remote[0], now):
            return
        sa = IsakmpSA(self._new_id(), conn, False, aggressive, hdr.spi_i, self.rng(8),
                      (local[0], local[1]), remote, now)
        sa.policy = pol
        sa.sai_b = sa_p.encode()
        sa.last_heard = now
        sa.last_in = _digest(self._last_raw)
        self._take_vids(sa, pls)
        answer = P.SA([P.Proposal(1, C.PROTO_ISAKMP, b"", [transform])])
        if not aggressive:
            self._store_responder(sa, alternate)
            sa.state = "MM_SA_SETUP"
            # sent once: again only when the initiator repeats its message 1 (issue 8.5)
            self._send(sa, self._plain(sa, C.EXCH_MAIN, 0, [answer] + self._our_vids(sa)),
                       now, expect_reply=False)
            return
        # Aggressive Mode message 2
        try:
            ke = _first(pls, P.KE)
            if ke is None or len(ke.data) != dh.public_value_length(pol.group):
                raise Phase1Failed("KE payload missing or of the wrong length", C.N_INVALID_KEY_INFORMATION)
            self._make_kex(sa)
            sa.gxr = sa.kex.public
            if pol.auth == C.AUTH_RSA_SIG:
                sa.gxi = self._take_ke(sa, ke)  # SKEYID needs g^xy (RFC 2409 5)
            else:
                # PSK and rsa-encr: SKEYID and HASH_R need no g^xy, so the responder computes
                # it only when message 3 comes back (issue 8.5: a spoofed message 1 costs
                # one key pair, not a whole DH); the public value is checked then too
                sa.gxi = ke.data
            if pol.auth == C.AUTH_RSA_ENCR:
                sa.id_i, sa.ni = self._decr_id_nonce(sa, pls)
                sa.peer_id = _decode_id(sa.id_i)
            else:
                n = _first(pls, P.Nonce)
                if n is None or peer_idp is None:
                    raise Phase1Failed("nonce or ID missing", C.N_PAYLOAD_MALFORMED)
                sa.ni = n.data
                sa.id_i = peer_idp.encode()
                sa.peer_id = peer_idp
            if not identity.id_matches(conn.remote_id, sa.peer_id):
                # (rsa-encr: the ID was encrypted) silent, as any unknown ID (see above)
                raise Phase1Failed(f"peer identity {identity.describe_id(sa.peer_id)} is not {conn.remote_id}",
                                   None, "auth_failed")
            sa.nr = self.rng(NONCE_LEN)
            if sa.gxy:
                self._derive(sa)
            else:
                self._derive_skeyid(sa)
        except Phase1Failed as e:
            self._unauth_event(e.kind, "aggressive_failed", remote, f"Aggressive Mode from {remote[0]}: {e}",
                               conn=conn.name)
            if e.notify and self._error_answer_allowed(remote):
                self._notify_plain(hdr, e.notify, local, remote)
            return
        self._store_responder(sa, alternate)
        idp = self._local_id(sa)
        sa.id_r = idp.encode()
        if pol.auth == C.AUTH_RSA_ENCR:
            body = [answer, P.KE(sa.gxr)] + self._encr_id_nonce(sa, sa.id_r, sa.nr) + self._auth_payloads(sa, False)
        else:
            body = [answer, P.KE(sa.gxr), P.Nonce(sa.nr), idp] + self._auth_payloads(sa, False)
            # the initiator's certificate comes in message 3; peers send it only when asked
            body += self._certreq(sa)
        body += self._our_vids(sa) + self._natd_payloads(sa)
        sa.state = "AG_INIT_EXCH"
        # sent once (issue 8.5: a spoofed source gets one answer per packet, no timer
        # retransmissions): again when the initiator repeats message 1, or, when its message
        # 3 was lost, on its first phase-2 message (core._lost_am_msg3)
        self._send(sa, self._plain(sa, C.EXCH_AGGRESSIVE, 0, body), now, expect_reply=False)

    def _store_responder(self, sa: IsakmpSA, alternate: bool) -> None:
        if self._ctx is None:  # its message 1's log lines are about it
            self._ctx = sa
        if alternate:
            self._alts[sa.cky_i + sa.cky_r] = sa
        else:
            self.sas[sa.cky_i] = sa
        self._track_unverified(sa)

    def _derive_skeyid(self, sa: IsakmpSA) -> None:
        """SKEYID alone (PSK, rsa-encr: no g^xy in it), for HASH_R of an Aggressive Mode
        message 2; the other keys follow in _finish_deferred_dh."""
        psk = self._psk(sa.conn) if sa.policy.auth == C.AUTH_PSK else None
        sk = keys.skeyid(sa.policy.auth, sa.policy.hash, ni=sa.ni, nr=sa.nr, gxy=b"",
                         cky_i=sa.cky_i, cky_r=sa.cky_r, psk=psk)
        sa.keys = keys.Phase1Keys(sk, b"", b"", b"", b"", b"")

    def _finish_deferred_dh(self, sa: IsakmpSA) -> None:
        """Aggressive Mode responder, message 3 in: g^xy (checked, RFC 6989) and the keys."""
        self._take_ke(sa, P.KE(sa.gxi))
        self._derive(sa)

    def _mm_r_msg3(self, sa: IsakmpSA, hdr, pls, local, remote, now):
        self._make_kex(sa)
        sa.gxr = sa.kex.public
        sa.gxi = self._take_ke(sa, _first(pls, P.KE))
        sa.nr = self.rng(NONCE_LEN)
        if sa.policy.auth == C.AUTH_RSA_ENCR:
            sa.id_i, sa.ni = self._decr_id_nonce(sa, pls)
            sa.peer_id = _decode_id(sa.id_i)
            idp = self._local_id(sa)
            sa.id_r = idp.encode()
            body = [P.KE(sa.gxr)] + self._encr_id_nonce(sa, sa.id_r, sa.nr)
        else:
            n = _first(pls, P.Nonce)
            if n is None:
                raise Phase1Failed("nonce missing in message 3", C.N_PAYLOAD_MALFORMED)
            sa.ni = n.data
            body = [P.KE(sa.gxr), P.Nonce(sa.nr)] + self._certreq(sa)
        self._check_natd(sa, pls, local, remote)
        body += self._natd_payloads(sa)
        self._derive(sa)
        sa.state = "MM_KEY_EXCH"
        self._send(sa, self._plain(sa, C.EXCH_MAIN, 0, body), now, expect_reply=False)

    def _mm_r_msg5(self, sa: IsakmpSA, hdr, pls, now):
        self._take_peer_id(sa, pls, 5)
        self._verify_auth(sa, pls, from_initiator=True)
        if sa.policy.auth == C.AUTH_RSA_ENCR:
            body = [P.Hash(keys.auth_hash(sa.policy.hash, sa.keys.skeyid, initiator=False, gxi=sa.gxi,
                                          gxr=sa.gxr, cky_i=sa.cky_i, cky_r=sa.cky_r,
                                          sai_b=sa.sai_b, id_b=sa.id_r))]
        else:
            idp = self._local_id(sa)
            sa.id_r = idp.encode()
            body = [idp] + self._auth_payloads(sa, False)
        self._send(sa, self._encrypted(sa, C.EXCH_MAIN, 0, body), now, expect_reply=False)
        self._take_initial_contact(sa, pls, now)
        self._p1_established(sa, now)

    def _am_r_msg3(self, sa: IsakmpSA, hdr, pls, local, remote, now):
        self._verify_auth(sa, pls, from_initiator=True)
        self._check_natd(sa, pls, local, remote)
        sa.retx = None
        self._take_initial_contact(sa, pls, now)
        self._p1_established(sa, now)

    # ------------------------------------------------------------------ dispatch

    def _p1_receive(self, sa: IsakmpSA, hdr, data: bytes, local, remote, now):
        """A phase-1 message for a known SA (message 2 onwards)."""
        enc = bool(hdr.flags & codec.FLAG_V1_ENCRYPTION)
        if _digest(data) == sa.last_in or sa.is_established:
            # the peer repeats its last message: it lost our answer. Only the answering side
            # resends on a duplicate; a side with its own retransmit timer waits for it, so
            # duplicates cannot ping-pong (RFC 2408 5.x leaves the policy to us).
            if sa.retx and sa.retx.due is None:
                if _digest(data) == sa.last_in:
                    self._resend(sa.retx)
                elif sa.is_established:
                    self._resend_answer(sa.retx)
            if sa.is_established and enc and _digest(data) != sa.last_in:
                self._final_variant(sa, data)
            return
        new_iv = None
        if not sa.initiator and sa.aggressive and sa.state == "AG_INIT_EXCH" and not sa.gxy \
                and sa.keys is not None:
            try:
                self._finish_deferred_dh(sa)
            except Phase1Failed as e:
                self._p1_reject(sa, e)
                return
        if enc:
            if sa.cipher is None:
                return
            try:
                plain, new_iv = self._decrypt(sa, data, sa.iv)
            except ValueError:
                self._count_drop(sa, "undecryptable phase-1 message")
                return
            try:
                pls = codec.decode_chain(plain, hdr.next_payload, P.REGISTRY, start=0, trailing_ok=True)
            except codec.CodecError:
                # keys differ: with a PSK this is the usual sign of a wrong key, or a forgery
                self._p1_reject(sa, Phase1Failed("encrypted phase-1 message does not decrypt to payloads "
                                                 "(wrong pre-shared key?)", None, "auth_failed"))
                return
        else:
            try:
                pls = codec.decode_chain(data, hdr.next_payload, P.REGISTRY, start=codec.HEADER_LEN)
            except codec.CodecError as e:
                self._p1_reject(sa, Phase1Failed(f"malformed message: {e}"))
                return
        n = _first(pls, P.Notify)
        if n is not None and n.notify_type < 16384 and not _first(pls, P.SA) and not _first(pls, P.KE):
            self._p1_fail(sa, Phase1Failed(f"peer sent {notify_name(n.notify_type)}", None,
                                           "no_proposal" if n.notify_type == C.N_NO_PROPOSAL_CHOSEN else "error"), now)
            return
        st = sa.state
        old_iv = sa.iv
        before = copy.copy(sa)
        try:
            if new_iv is not None:
                sa.iv = new_iv
            if sa.initiator and not sa.aggressive:
                if st == "MM_NO_STATE" and not enc:
                    self._mm_i_msg2(sa, hdr, pls, now)
                elif st == "MM_SA_SETUP" and not enc:
                    self._mm_i_msg4(sa, hdr, pls, local, remote, now)
                elif st == "MM_KEY_EXCH" and enc:
                    self._mm_i_msg6(sa, hdr, pls, now)
                else:
                    sa.iv = old_iv
                    return
            elif sa.initiator:
                if st == "AG_INIT_EXCH" and not enc:
                    self._am_i_msg2(sa, hdr, pls, local, remote, now)
                else:
                    sa.iv = old_iv
                    return
            elif not sa.aggressive:
                if st == "MM_SA_SETUP" and not enc:
                    self._mm_r_msg3(sa, hdr, pls, local, remote, now)
                elif st == "MM_KEY_EXCH" and enc:
                    self._adopt_addresses(sa, local, remote)
                    self._mm_r_msg5(sa, hdr, pls, now)
                else:
                    sa.iv = old_iv
                    return
            else:
                if st == "AG_INIT_EXCH":
                    if enc:
                        self._adopt_addresses(sa, local, remote)
                    else:
                        sa.iv = old_iv
                    self._am_r_msg3(sa, hdr, pls, local, remote, now)
                else:
                    sa.iv = old_iv
                    return
        except Phase1Failed as e:
            # Nothing in phase 1 proves who sent a message before its HASH/SIG checks out:
            # a message that fails is dropped and the exchange goes on as if it had never
            # come (RFC 2408 5.4-5.6: invalid payloads and hashes are discarded), so that a
            # forgery cannot end or poison it; the genuine message (or its retransmission)
            # still finds the state it needs. A real failure (wrong key) ends the exchange
            # when the retransmissions run out; the first rejection is reported at once.
            sa.__dict__.update(before.__dict__)
            sa.iv = old_iv
            self._p1_reject(sa, e)
            return
        sa.last_in = _digest(data)
        sa.last_heard = now
        if not sa.initiator:
            self._untrack(sa)  # message 3 came back with our cookie: the source is real (8.5)
        if enc and sa.is_established:
            sa.final_iv = old_iv

    def _resend_answer(self, r) -> None:
        """The peer sent its last message again, but not byte for byte the copy we took: a
        forger changed what no hash covers (vendor IDs, NAT-D, padding) in a copy that came
        first, and the peer, repeating the genuine one, never got our answer. Resend it, a
        bounded number of times (the copy may also be the forger's)."""
        if r.tries < 2 * RESEND_LIMIT:
            r.tries += 1
            self._resend(r)

    def _final_variant(self, sa: IsakmpSA, data: bytes) -> None:
        """Another copy of the peer's final phase-1 message that also verifies: it differs
        where no hash reaches (trailing NAT-D or notify payloads, padding), so one of the two
        is forged, and we cannot tell which. The phase-2 IVs derive from its last cipher
        block (RFC 2409 app. B): keep that block as an alternative, and let the first
        authenticated phase-2 message decide (_lock_phase2_iv)."""
        if not sa.final_iv or len(sa.iv_alts) >= 3:
            return
        try:
            plain, last = self._decrypt(sa, data, sa.final_iv)
            pls = codec.decode_chain(plain, data[16], P.REGISTRY, start=0, trailing_ok=True)
            idp = _first(pls, P.ID)
            if idp is not None and idp.encode() != (sa.id_r if sa.initiator else sa.id_i):
                return
            self._verify_auth(sa, pls, from_initiator=not sa.initiator)
        except (ValueError, codec.CodecError, Phase1Failed):
            self._count_drop(sa, "a changed copy of the final phase-1 message dropped")
            return
        if last != sa.iv and last not in sa.iv_alts:
            sa.iv_alts.append(last)

    def _lock_phase2_iv(self, sa: IsakmpSA, data: bytes) -> None:
        """With alternative phase-1 IVs (see _final_variant), the one under which this
        phase-2 message decrypts and its HASH(1) verifies is the peer's: keep it."""
        if not sa.iv_alts:
            return
        mid = int.from_bytes(data[20:24], "big")
        for base in [sa.iv] + sa.iv_alts:
            try:
                plain, _ = self._decrypt(sa, data, keys.phase2_iv(sa.policy.hash, base, mid,
                                                                  sa.cipher.block_size))
                hv, rest = self._after_hash(plain, data[16])
            except Exception:  # ValueError, QuickFailed
                continue
            if hmac.compare_digest(hv, keys.qm_hash1(sa.policy.hash, sa.keys.a, mid, rest)):
                sa.iv, sa.iv_alts = base, []
                return

    def _p1_reject(self, sa: IsakmpSA, e: Phase1Failed) -> None:
        """A phase-1 message that does not fit or does not verify: counted and dropped. The
        first one of an SA is reported as a failure event of its kind (so that a waiting
        `vpnctl up` learns of a wrong key at once), later ones count as drops."""
        if sa.rejected is None:
            sa.rejected = e
            self.drops += 1
            self._event(e.kind, sa.conn.name, f"ISAKMP SA with {sa.remote[0]}: message dropped: {e}",
                        ike_id=sa.ike_id)
        else:
            self._count_drop(sa, f"phase-1 message from {sa.remote[0]} dropped: {e}")

    def _p1_fail(self, sa: IsakmpSA, e: Phase1Failed, now: float) -> None:
        self._event(e.kind, sa.conn.name, f"ISAKMP SA with {sa.remote[0]} failed: {e}", ike_id=sa.ike_id)
        if e.notify and sa.cky_r != b"\x00" * 8:
            self._notify_plain_sa(sa, e.notify)
        self._drop_isakmp(sa, now, reason=str(e))
        self._after_failure(sa, now)

    def _adopt_addresses(self, sa: IsakmpSA, local, remote) -> None:
        """The peer floated to the NAT-T port (RFC 3947 4) or its NAT mapping changed."""
        if (local, remote) != (sa.local, sa.remote):
            if local[1] == self.natt_port:
                sa.floated = True
            sa.local, sa.remote = local, remote

    def _p1_established(self, sa: IsakmpSA, now: float) -> None:
        if not sa.initiator:
            self._settle_alternates(sa)
        sa.state = "QM_IDLE"
        sa.established = now
        sa.expire_at = now + sa.policy.lifetime
        if sa.initiator:
            life = sa.policy.lifetime
            sa.rekey_at = now + life * 0.9 - life * 0.045 * ((sa.ike_id * 7) % 10) / 9
        # keep our last message only where the peer may still repeat its own: the Main
        # Mode responder (message 6 answers a repeated 5) and the Aggressive Mode initiator
        # (message 3 answers a repeated 2); nobody answers a final message
        if sa.initiator != sa.aggressive:
            sa.retx = None
        elif sa.retx:
            sa.retx.due = None
        sa.last_heard = now
        if sa.nat_local and sa.conn.nat_keepalive:
            sa.keepalive_at = now + sa.conn.nat_keepalive
        self._dpd_arm(sa, now)
        self._event("ike_up", sa.conn.name,
                    f"ISAKMP SA established with {sa.remote[0]} ({'Aggressive' if sa.aggressive else 'Main'} Mode, "
                    f"{sa.policy.describe()}, {C.AUTH_NAMES[sa.policy.auth]}, "
                    f"peer {identity.describe_id(sa.peer_id) if sa.peer_id else '?'})", ike_id=sa.ike_id)
        self._on_isakmp_up(sa, now)

    def _initial_contact(self, sa: IsakmpSA) -> list:
        """INITIAL-CONTACT (RFC 2407 4.6.3.3) when we hold no other SA with this peer."""
        others = [o for o in self.sas.values() if o is not sa and o.is_established
                  and o.remote[0] == sa.remote[0]]
        if others or self._had_contact.get(sa.remote[0]):
            return []
        if self.peers is not None and not self.peers.may_send_initial_contact(1, sa, sa.conn):
            return []  # an SA with the same identity pair, in IKEv2 or another connection
        self._had_contact[sa.remote[0]] = True
        return [P.Notify(C.N_INITIAL_CONTACT, C.PROTO_ISAKMP, sa.cky_i + sa.cky_r)]

    def _take_initial_contact(self, sa: IsakmpSA, pls, now) -> None:
        for n in pls:
            if isinstance(n, P.Notify) and n.notify_type == C.N_INITIAL_CONTACT:
                self._peer_restarted(sa, now)


def _first(pls: list, cls):
    for p in pls:
        if type(p) is cls:
            return p
    return None


def _single_transform(sa_p: P.SA) -> P.Transform:
    if len(sa_p.proposals) != 1 or len(sa_p.proposals[0].transforms) != 1:
        raise Phase1Failed("responder must return exactly one transform", C.N_PAYLOAD_MALFORMED)
    return sa_p.proposals[0].transforms[0]


def _decode_id(body: bytes) -> P.ID:
    try:
        return P.ID.decode(body)
    except codec.CodecError:
        raise Phase1Failed("malformed ID", C.N_INVALID_ID_INFORMATION)


def _digest(data: bytes) -> bytes:
    """What tells a repeated message: all of it but the version and flags octets of the
    header, which no HASH covers -- a copy with those changed is the same message to us
    (we act on it alike), and the genuine one after it must count as a repeat."""
    import hashlib

    return hashlib.sha256(data[:17] + data[18:19] + data[20:]).digest()[:16]


class _RawID(P.ID):
    """An ID payload whose body is opaque (RSA-encrypted, RFC 2409 5.2)."""

    def __init__(self, body: bytes):
        super().__init__(0, 0, 0, b"")
        self._body = body

    def encode(self) -> bytes:
        return self._body


_NOTIFY_NAMES = {v: k[2:] for k, v in vars(C).items() if k.startswith("N_")}


def notify_name(t: int) -> str:
    return _NOTIFY_NAMES.get(t, str(t)).replace("_", "-")

