"""IKE_AUTH (RFC 7296 1.2, 2.15): identities, PSK and certificate authentication (RSA,
ECDSA, RFC 7427), INITIAL_CONTACT (2.4), and the first CHILD_SA."""

from __future__ import annotations

import datetime

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from vpnd.crypto import auth as authc
from vpnd.crypto import certs
from vpnd.ike.peers import SIMULTANEOUS_WINDOW, id_key
from vpnd.ike.v2 import childless
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2 import exchange_child, mobike
from vpnd.ike.v2.payloads import IDi, IDr, Auth, Cert, CertReq, Notify, notify
from vpnd.ike.v2.sa import IkeSa, id_matches, id_payload_body, id_to_str


def _psk(conn) -> bytes | None:
    a = conn.auth
    if a is not None and a.method == "psk" and a.psk is not None:
        return a.psk.value
    if conn.psk is not None:
        return conn.psk.value
    return None


def _uses_certs(conn) -> bool:
    return conn.auth is not None and conn.auth.method == "cert"


def _signed_octets(sa: IkeSa, *, for_initiator: bool, id_body: bytes) -> bytes:
    """InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI (2.15), and the
    responder's counterpart with message 2 and Ni."""
    k = sa.keys
    if for_initiator:
        return sa.init_req + sa.nr + k.prf(k.sk_pi, id_body)
    return sa.init_resp + sa.ni + k.prf(k.sk_pr, id_body)


def _our_auth(e, sa: IkeSa, conn, id_cls, we_are_initiator: bool) -> list:
    creds = e.credentials(conn) if _uses_certs(conn) else None
    t, d = id_payload_body(conn.local_id, sa.local[0], creds.cert if creds else None)
    idp = id_cls(t, d)
    octets = _signed_octets(sa, for_initiator=we_are_initiator, id_body=idp.encode())
    out: list = [idp]
    if creds is not None:
        if creds.cert is None or creds.key is None:
            raise authc.AuthError("certificate or key missing")
        # 3.6: our certificate first (its key verifies AUTH), then the intermediates
        for crt in (creds.cert, *creds.chain):
            out.append(Cert(c.CERT_X509_SIGNATURE, crt.public_bytes(serialization.Encoding.DER)))
        method, data = authc.sign(creds.key, octets, sa.peer_hashes)
    else:
        psk = _psk(conn)
        if psk is None:
            raise authc.AuthError("no pre-shared key")
        method, data = c.AUTH_PSK, authc.psk_auth(sa.keys.prf, psk, octets)
    out.append(Auth(method, data))
    return out


def _wallclock(e) -> datetime.datetime:
    if e.wallclock is not None:
        return e.wallclock()
    return datetime.datetime.now(datetime.timezone.utc)


def verify_peer(e, sa: IkeSa, conn, idp, auth: Auth, cert_payloads: list, *,
                peer_is_initiator: bool) -> str | None:
    """None when the peer proved the identity `idp` as `conn` wants; else the reason."""
    try:
        return _verify_peer(e, sa, conn, idp, auth, cert_payloads, peer_is_initiator=peer_is_initiator)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        # a certificate that parses but cannot be used (odd extensions, algorithms)
        return f"unusable peer certificate ({type(err).__name__})"


def _verify_peer(e, sa: IkeSa, conn, idp, auth: Auth, cert_payloads: list, *,
                 peer_is_initiator: bool) -> str | None:
    octets = _signed_octets(sa, for_initiator=peer_is_initiator, id_body=idp.encode())
    want = conn.remote_id
    if _uses_certs(conn):
        # 3.6: the first certificate holds the key for AUTH; further ones may be the
        # intermediate CAs up to one we trust
        x509s = [p.data for p in cert_payloads if p.encoding == c.CERT_X509_SIGNATURE]
        cert = authc.load_peer_cert(x509s[0]) if x509s else None
        if cert is None:
            return "no peer certificate"
        creds = e.credentials(conn)
        more = certs.load_der(x509s[1:]) + list(creds.chain if creds else ())
        why = certs.verify_chain(cert, creds.cas if creds else [], _wallclock(e), more)
        if why:
            return f"peer certificate {why}"
        if not certs.cert_carries_id(cert, idp.id_type, idp.data):
            return f"identity {id_to_str(idp.id_type, idp.data)} not confirmed by the certificate"
        if want is not None and want.kind != "any" and not id_matches(want, idp.id_type, idp.data):
            return f"identity {id_to_str(idp.id_type, idp.data)} is not {want}"
        if auth.method == c.AUTH_PSK or not authc.verify(cert, auth.method, auth.data, octets):
            return "signature check failed"
        return None
    if want is not None and want.kind != "any" and not id_matches(want, idp.id_type, idp.data):
        return f"identity {id_to_str(idp.id_type, idp.data)} is not {want}"
    psk = _psk(conn)
    if psk is None or auth.method != c.AUTH_PSK:
        return "peer did not use a pre-shared key" if psk is not None else "no pre-shared key"
    if not authc.psk_verify(sa.keys.prf, psk, octets, auth.data):
        return "pre-shared key mismatch"
    return None


def _initial_contact(e, sa: IkeSa, now: float) -> None:
    """2.4: the peer has no state from before; drop our older SAs with it. Only SAs up
    before this SA's IKE_SA_INIT reached us: when both ends initiate at once, the peer's
    INITIAL_CONTACT was true when sent but our own SA with it completed meanwhile, and the
    peer has it too (drop_duplicate settles that pair with a Delete both ends see)."""
    if e.peers is not None:
        # the identity pair, any connection, both versions (ike/peers.py)
        for other in e.peers.same_version_victims(2, sa):
            e.kill_ike(other, now, "peer sent INITIAL_CONTACT")
        e.peers.initial_contact(2, sa, now)
        return
    for other in list(e.sas.values()):
        if other is not sa and other.conn.name == sa.conn.name and other.peer_id == sa.peer_id \
                and other.state not in ("CONNECTING", "AUTHENTICATING") \
                and (other.established_seq is None or other.established_seq < sa.created_seq):
            e.kill_ike(other, now, "peer sent INITIAL_CONTACT")


# IKE SAs of one connection set up by both ends within peers.SIMULTANEOUS_WINDOW of each
# other are one simultaneous initiation, not a peer that restarted and came back (the same
# window as IKEv1's and the shared peer rules').


def drop_duplicate(e, sa: IkeSa, now: float) -> None:
    """Both ends initiated the same connection at once and now share two IKE SAs, each with
    its CHILD_SA. RFC 7296 2.8 leaves this open; we keep one, decided as for a rekey
    collision (2.8.1) so that both ends agree without a message: the SA whose smaller nonce
    is the lowest of the four nonces is redundant, and the end that initiated it deletes it
    (its CHILD_SAs go with it). The data plane keeps the surviving CHILD_SA's policy, so
    traffic carries on; status shows one IKE SA again."""
    for other in list(e.sas.values()):
        if other is sa or other.state != "ESTABLISHED" or other.initiator == sa.initiator \
                or other.conn.name != sa.conn.name or other.peer_id != sa.peer_id \
                or other.remote[0] != sa.remote[0] or other.rekeyed_to is not None \
                or abs(other.created_at - sa.created_at) > SIMULTANEOUS_WINDOW:
            continue
        redundant, kept = sorted((sa, other), key=lambda s: min(s.ni, s.nr))
        if redundant.initiator:
            from vpnd.ike.v2 import exchange_info

            e.event("ike_duplicate", sa.conn.name,
                    f"IKE_SA {sa.conn.name}[{redundant.ike_id}] duplicates {sa.conn.name}[{kept.ike_id}] "
                    "(both ends initiated): deleting it")
            redundant.queue.clear()
            redundant.state = "DELETING"
            e.queue_force(redundant, exchange_info.DeleteIkeTask(), now)
        return


class AuthTask:
    """Initiator side of IKE_AUTH."""

    exchange = c.IKE_AUTH

    def __init__(self, ts_hint=None):
        self.ts_hint = ts_hint
        self.req = None

    def ready(self, e, sa) -> bool:
        return True

    def build(self, e, sa: IkeSa, now: float) -> list:
        conn = sa.conn
        out = _our_auth(e, sa, conn, IDi, True)
        self.idi = out[0]
        sa.local_id_key = id_key(out[0].id_type, out[0].data)
        if _uses_certs(conn):
            creds = e.credentials(conn)
            if creds and creds.cas:
                out.insert(2, CertReq(c.CERT_X509_SIGNATURE, creds.certreq_data()))
        if conn.remote_id is not None and conn.remote_id.kind != "any":
            t, d = id_payload_body(conn.remote_id, None)
            out.insert(len(out) - 1, IDr(t, d))
        # 2.4: we hold no other IKE SA with this peer (start-up, after DPD, ...); one in any
        # state, also the peer's own attempt arriving at the same time, means no contact.
        # Between the identity pair, for any connection and both versions (ike/peers.py).
        if e.peers is not None:
            contact = e.peers.may_send_initial_contact(2, sa, conn)
        else:
            contact = not any(o is not sa and o.conn.name == conn.name and o.state not in ("DEAD", "FAILED")
                              for o in e.sas.values())
        if contact:
            out.append(Notify(c.N_INITIAL_CONTACT))
        out += mobike.auth_request(e, sa, conn)
        if childless.initiate_childless(conn, sa.peer_childless):
            # RFC 6023: no SA, TSi, TSr; the CHILD_SA follows with CREATE_CHILD_SA
            sa.childless = True
            self.req = None
            return out
        child_payloads, self.req = exchange_child.child_request(e, sa, conn, ts_hint=self.ts_hint, in_auth=True)
        return out + child_payloads

    def on_response(self, e, sa: IkeSa, payloads: list, now: float) -> None:
        conn = sa.conn
        idr = next((p for p in payloads if isinstance(p, IDr)), None)
        auth = next((p for p in payloads if isinstance(p, Auth)), None)
        if idr is None or auth is None:
            err = next((p for p in payloads if isinstance(p, Notify) and p.is_error), None)
            name = c.NOTIFY_NAMES.get(err.type, str(err.type)) if err else "no AUTH payload"
            if sa.childless and err is not None and err.type == c.N_INVALID_SYNTAX:
                # what a responder that does not accept childless IKE SAs answers (RFC 6023)
                e.event("failed", conn.name, f"IKE_AUTH with {sa.remote[0]} failed: peer answered "
                        f"{name} to our childless IKE_AUTH ({childless.RFC}; set childless: allow)")
                e.kill_ike(sa, now, "childless IKE SA refused")
                return
            e.event("auth_failed", conn.name, f"IKE_AUTH with {sa.remote[0]} failed: peer answered {name}")
            e.kill_ike(sa, now, f"authentication failed ({name})")
            return
        sa.peer_id = id_to_str(idr.id_type, idr.data)
        why = verify_peer(e, sa, conn, idr, auth, [p for p in payloads if isinstance(p, Cert)],
                          peer_is_initiator=False)
        if not why:
            sa.peer_id_raw = (idr.id_type, idr.data)  # authenticated (ike/peers.py compares it)
        if why:
            e.event("auth_failed", conn.name, f"IKE_AUTH: authentication of {sa.peer_id} failed: {why}")
            sa.state = "DELETING"
            from vpnd.ike.v2 import exchange_info

            e.queue_force(sa, exchange_info.DeleteIkeTask(), now)
            return
        mobike.auth_accepted(e, sa, payloads)
        e.ike_established(sa, now)
        if self.req is None:
            # childless (RFC 6023): the connection's CHILD_SA now, with its own nonces (and
            # PFS group, if any)
            e.event("ike_childless", conn.name,
                    f"IKE_SA {conn.name}[{sa.ike_id}] established without a CHILD_SA ({childless.RFC}, "
                    f"childless: {conn.childless}); creating the CHILD_SA with CREATE_CHILD_SA",
                    ike_id=sa.ike_id)
            e.queue(sa, exchange_child.CreateChildTask(conn, ts_hint=self.ts_hint), now)
        else:
            exchange_child.child_accept(e, sa, self.req, payloads, sa.ni, sa.nr, now)
        drop_duplicate(e, sa, now)


def responder(e, sa: IkeSa, h, payloads: list, now: float) -> None:
    if sa.initiator or sa.state != "CONNECTING":
        e.respond(sa, c.IKE_AUTH, h.message_id, [Notify(c.N_INVALID_SYNTAX)], now)
        return
    idi = next((p for p in payloads if isinstance(p, IDi)), None)
    auth = next((p for p in payloads if isinstance(p, Auth)), None)
    idr = next((p for p in payloads if isinstance(p, IDr)), None)
    cert_pls = [p for p in payloads if isinstance(p, Cert)]
    if idi is None or auth is None:
        _fail(e, sa, h, "IKE_AUTH without IDi/AUTH (EAP is not supported)", now)
        return
    sa.peer_id = id_to_str(idi.id_type, idi.data)
    reasons = []
    chosen = None
    # several connections to one peer differ by their subnets: try those whose traffic
    # selectors fit the proposed ones first
    cands = sorted(sa.candidates, key=lambda x: not exchange_child.ts_fits(sa, x, payloads))
    for conn in cands:
        if idr is not None and conn.local_id is not None and conn.local_id.kind != "any" \
                and not id_matches(conn.local_id, idr.id_type, idr.data):
            reasons.append(f"{conn.name}: IDr is not ours")
            continue
        why = verify_peer(e, sa, conn, idi, auth, cert_pls, peer_is_initiator=True)
        if why is None:
            chosen = conn
            break
        reasons.append(f"{conn.name}: {why}")
    if chosen is None:
        _fail(e, sa, h, f"authentication of {sa.peer_id} failed: {'; '.join(reasons) or 'no connection'}", now)
        return
    sa.conn = chosen
    sa.peer_id_raw = (idi.id_type, idi.data)  # authenticated (ike/peers.py compares it)
    if sa.peer_certreq is False:
        sa.peer_certreq = any(isinstance(p, CertReq) for p in payloads)
    try:
        ours = _our_auth(e, sa, chosen, IDr, False)
    except authc.AuthError as err:
        _fail(e, sa, h, f"cannot authenticate ourselves: {err}", now)
        return
    sa.local_id_key = id_key(ours[0].id_type, ours[0].data)
    sa.childless = childless.is_childless(payloads)
    why = childless.responder_refusal(chosen, sa.childless)
    if why is not None:
        # asked after authentication, as strongSwan does: nothing is told to an unknown peer
        e.event("failed", chosen.name, f"IKE_AUTH from {sa.remote[0]} ({sa.peer_id}) refused: {why}; "
                "answered INVALID_SYNTAX")
        e.respond(sa, c.IKE_AUTH, h.message_id, [Notify(c.N_INVALID_SYNTAX)], now)
        e.linger(sa, now)
        return
    ours += mobike.auth_response(e, sa, chosen, payloads)
    if notify(payloads, c.N_INITIAL_CONTACT) is not None:
        _initial_contact(e, sa, now)
    e.ike_established(sa, now)
    if sa.childless:
        e.event("ike_childless", chosen.name,
                f"IKE_SA {chosen.name}[{sa.ike_id}] established without a CHILD_SA ({childless.RFC}); "
                "CHILD_SAs follow with CREATE_CHILD_SA", ike_id=sa.ike_id)
        e.respond(sa, c.IKE_AUTH, h.message_id, ours, now)
        drop_duplicate(e, sa, now)
        return
    child_payloads, child, keymat = exchange_child.child_respond(e, sa, chosen, payloads, sa.ni, now,
                                                                 in_auth=True, nr=sa.nr)
    if child is not None:
        e.install_child(sa, child, keymat, now)
    e.respond(sa, c.IKE_AUTH, h.message_id, ours + child_payloads, now)
    drop_duplicate(e, sa, now)


def _fail(e, sa: IkeSa, h, why: str, now: float) -> None:
    e.event("auth_failed", sa.conn.name, f"IKE_AUTH from {sa.remote[0]}: {why}")
    e.respond(sa, c.IKE_AUTH, h.message_id, [Notify(c.N_AUTHENTICATION_FAILED)], now)
    e.linger(sa, now)
