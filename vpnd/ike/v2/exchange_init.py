"""IKE_SA_INIT (RFC 7296 1.2): proposals and DH, cookies (2.6), INVALID_KE_PAYLOAD (1.2,
2.7), NAT detection (2.23) and RFC 7427's SIGNATURE_HASH_ALGORITHMS announcement."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct

from vpnd.ike.addresses import WILDCARDS, local_for
from vpnd.crypto.dh import InvalidPublicValue, KeyExchange
from vpnd.ike import codec
from vpnd.ike.codec import Header
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2 import childless, exchange_auth, negotiate
from vpnd.ike.v2.keys import derive_ike_keys, initial_skeyseed
from vpnd.ike.v2.natd import detect_nat as _detect_nat, nat_notifies as _nat_notifies, peer_does_natt
from vpnd.ike.v2.payloads import KE, SA, CertReq, Nonce, Notify, notify
from vpnd.ike.v2.sa import IkeSa, Request

MAX_INIT_RETRIES = 3
OUR_HASHES = (c.HASH_SHA256, c.HASH_SHA384, c.HASH_SHA512)


def _uses_certs(conn) -> bool:
    return conn.auth is not None and conn.auth.method == "cert"


def _sig_hashes() -> Notify:
    return Notify(c.N_SIGNATURE_HASH_ALGORITHMS, b"".join(struct.pack("!H", h) for h in OUR_HASHES))


def _peer_hashes(payloads) -> frozenset:
    n = notify(payloads, c.N_SIGNATURE_HASH_ALGORITHMS)
    if n is None or len(n.data) % 2:
        return frozenset()
    return frozenset(struct.unpack(f"!{len(n.data) // 2}H", n.data))


def _derive(sa: IkeSa, shared: bytes) -> None:
    ch = sa.chosen
    seed = initial_skeyseed(ch.prf, sa.ni, sa.nr, shared)
    sa.keys = derive_ike_keys(ch.prf, ch.encryption, ch.integrity, seed, sa.ni, sa.nr, sa.spi_i, sa.spi_r)
    sa.crypto_out = sa.keys.crypto(initiator=sa.initiator, outbound=True)
    sa.crypto_in = sa.keys.crypto(initiator=sa.initiator, outbound=False)


# --------------------------------------------------------------------------- initiator


def local_address(e, conn) -> str:
    return local_for(conn, e.config.daemon.listen)


def initiate(e, conn, now: float, *, ts_hint=None) -> IkeSa:
    sa = IkeSa(ike_id=e.new_id(), conn=conn, initiator=True, spi_i=e.new_spi(), spi_r=bytes(8),
               local=(local_address(e, conn), e.ike_port), remote=(conn.peer, e.ike_port),
               created_at=now, last_recv=now)
    sa.auth_child = {"ts_hint": ts_hint}
    e.register(sa)
    group = conn.ike[0].dh[0]
    e.event("ike_connecting", conn.name, f"initiating IKE_SA {conn.name}[{sa.ike_id}] to {conn.peer}",
            ike_id=sa.ike_id)
    send_init(e, sa, group, now)
    return sa


def send_init(e, sa: IkeSa, group: str, now: float, *, same: bool = False) -> None:
    """`same`: resend with the cookie, all other payloads unchanged (2.6)."""
    conn = sa.conn
    if not same:
        sa.kex = KeyExchange(group)
        sa.ni = e.rng(32)
    sa.offered = negotiate.to_sa(conn.ike, "ike", b"", only_dh=group)
    payloads = []
    if sa.cookie is not None:
        payloads.append(Notify(c.N_COOKIE, sa.cookie))  # first payload (2.6)
    payloads += [SA(sa.offered), KE(sa.kex.group_id, sa.kex.public), Nonce(sa.ni)]
    payloads += _nat_notifies(e, conn, sa.spi_i, bytes(8), sa.local, sa.remote)
    payloads.append(_sig_hashes())
    h = Header(sa.spi_i, bytes(8), 0, 2, 0, c.IKE_SA_INIT, c.FLAG_I, 0)
    data = codec.encode_message(h, payloads)
    sa.init_req = data
    sa.mid_out = 1
    timeouts = e.retransmit_timeouts(sa)
    sa.pending = Request(0, c.IKE_SA_INIT, data, None, now, now + timeouts[0], timeouts)
    e.send(data, sa, now=now)


def on_response(e, sa: IkeSa, msg, data: bytes, local, remote, now: float) -> None:
    h = msg.header
    pl = msg.payloads
    conn = sa.conn
    if h.message_id != 0:
        e.drops += 1
        return
    cookie = notify(pl, c.N_COOKIE)
    if cookie is not None:
        if sa.cookie is not None and cookie.data == sa.cookie:
            # the answer to a retransmission of our cookie-less request (or a duplicate):
            # our request with this cookie is out already, its own retransmissions go on
            e.drops += 1
            return
        if sa.init_tries >= MAX_INIT_RETRIES or not 1 <= len(cookie.data) <= 64:
            e.event("failed", conn.name, f"IKE_SA {conn.name}[{sa.ike_id}] could not be established: "
                    f"{sa.remote[0]} keeps asking for a new cookie (RFC 7296 2.6)")
            e.kill_ike(sa, now, "cookie exchange failed")
            return
        sa.init_tries += 1
        sa.cookie = cookie.data
        send_init(e, sa, sa.kex.group, now, same=True)
        return
    ike_err = notify(pl, c.N_INVALID_KE_PAYLOAD)
    if ike_err is not None:
        allowed = {g for p in conn.ike for g in p.dh}
        group = c.DH_NAMES.get(struct.unpack("!H", ike_err.data[:2])[0]) if len(ike_err.data) >= 2 else None
        if group in allowed and group != sa.kex.group and sa.init_tries < MAX_INIT_RETRIES:
            sa.init_tries += 1
            e.event("invalid_ke", conn.name, f"peer wants DH group {group}, retrying IKE_SA_INIT")
            send_init(e, sa, group, now)
        else:
            e.event("failed", conn.name, f"peer asked for unusable DH group {group}")
            e.kill_ike(sa, now, "DH group negotiation failed")
        return
    errors = [p for p in pl if isinstance(p, Notify) and p.is_error]
    if errors:
        n = errors[0]
        name = c.NOTIFY_NAMES.get(n.type, str(n.type))
        if n.type == c.N_NO_PROPOSAL_CHOSEN:
            e.event("no_proposal", conn.name,
                    f"IKE_SA_INIT: peer {sa.remote[0]} answered NO_PROPOSAL_CHOSEN to our proposals "
                    f"{negotiate.describe_offer(sa.offered)} (its own are in its log)",
                    ours=negotiate.describe_offer(sa.offered))
        else:
            e.event("failed", conn.name, f"IKE_SA_INIT failed: peer answered {name}")
        sa.pending = None
        e.kill_ike(sa, now, f"peer answered {name}")
        return
    sa_p, ke, nonce = msg.get(SA), msg.get(KE), msg.get(Nonce)
    if sa_p is None or ke is None or nonce is None or h.spi_r == bytes(8):
        e.drops += 1
        return  # not a valid answer; keep retransmitting
    acc = negotiate.accept_response(sa.offered, sa_p.proposals)
    if acc is None or c.DH_IDS.get(acc[1].dh) != ke.group or ke.group != sa.kex.group_id:
        e.event("failed", conn.name, "IKE_SA_INIT: the peer's answer does not match our proposals")
        e.kill_ike(sa, now, "invalid proposal in response")
        return
    try:
        shared = sa.kex.shared(ke.data)
    except InvalidPublicValue as err:
        e.event("failed", conn.name, f"IKE_SA_INIT: bad KE from peer: {err}")
        e.kill_ike(sa, now, "invalid KE payload")
        return
    sa.pending = None
    sa.chosen = acc[1]
    del e.by_spi[sa.spi_i]
    sa.spi_r = h.spi_r
    e.by_spi[sa.spi_i] = sa
    sa.nr = nonce.data
    sa.init_resp = data
    _derive(sa, shared)
    sa.kex = None
    sa.last_recv = now
    sa.peer_hashes = _peer_hashes(pl)
    sa.peer_certreq = msg.get(CertReq) is not None
    sa.nat_local, sa.nat_remote = _detect_nat(pl, sa.spi_i, sa.spi_r, local, remote)
    sa.peer_childless = notify(pl, c.N_CHILDLESS_IKEV2_SUPPORTED) is not None
    why = childless.initiator_refusal(conn, sa.peer_childless)
    if why is not None:
        e.event("failed", conn.name, f"IKE_SA {conn.name}[{sa.ike_id}] not established: {why}")
        e.kill_ike(sa, now, "childless IKE SA not supported by the peer")
        return
    sa.local = local
    if sa.nat_local or sa.nat_remote or conn.encap or (conn.mobike and peer_does_natt(pl)):
        # 2.23: move to the NAT-T port for everything after IKE_SA_INIT; with MOBIKE also
        # without a NAT when the peer does NAT-T (RFC 4555 3.3: no change of ports later)
        sa.natt = True
        sa.udp_encap = sa.nat_local or sa.nat_remote or conn.encap
        sa.local = (local[0], e.natt_port)
        sa.remote = (remote[0], e.natt_port)
    sa.state = "AUTHENTICATING"
    e.queue(sa, exchange_auth.AuthTask(sa.auth_child.get("ts_hint") if sa.auth_child else None), now)


# --------------------------------------------------------------------------- responder


def _cookie(e, secret: bytes, ni: bytes, ip: str, spi_i: bytes) -> bytes:
    return b"\x01" + hashlib.sha256(ni + ipaddress.ip_address(ip).packed + spi_i + secret).digest()[:16]


def _reply_notify(e, h: Header, local, remote, ntype: int, data: bytes = b"") -> None:
    resp = Header(h.spi_i, bytes(8), 0, 2, 0, c.IKE_SA_INIT, c.FLAG_R, 0)
    e.send(codec.encode_message(resp, [Notify(ntype, data)]), local=local, remote=remote)


def _reply_error(e, h: Header, local, remote, now: float, ntype: int) -> None:
    """An error notify without an IKE SA: rate-limited per source and overall (issue 8.2)."""
    if e.error_answer_allowed(remote, now):
        _reply_notify(e, h, local, remote, ntype)


def _scan(data: bytes) -> tuple[bytes | None, bytes | None] | None:
    """(Ni, COOKIE data) from a walk over the payload headers only; None if the chain is
    broken (the full parse then decides what to answer)."""
    if len(data) < codec.HEADER_LEN or struct.unpack_from("!I", data, 24)[0] != len(data):
        return None
    np, pos, nonce, cookie = data[16], codec.HEADER_LEN, None, None
    while np:
        if pos + 4 > len(data):
            return None
        nxt, _, plen = struct.unpack_from("!BBH", data, pos)
        if plen < 4 or pos + plen > len(data):
            return None
        if np == c.PT_NONCE and nonce is None:
            nonce = data[pos + 4:pos + plen]
        elif np == c.PT_NOTIFY and plen >= 8 and cookie is None:
            spi_size = data[pos + 5]
            if struct.unpack_from("!H", data, pos + 6)[0] == c.N_COOKIE:
                cookie = data[pos + 8 + spi_size:pos + plen]
        np, pos = nxt, pos + plen
    return nonce, cookie


def cookie_precheck(e, data: bytes, local, remote, now: float) -> bool:
    """Under cookie protection (2.6) a request without a valid COOKIE is answered from a walk
    over its payload headers, before the full parse (most of the cost of a spoofed packet).
    True: answered. False: go on with the full parse (which checks the cookie again)."""
    if not cookies_required(e):
        return False
    if data[8:16] != bytes(8) or data[20:24] != bytes(4) or not data[19] & c.FLAG_I:
        return False
    if (data[:8], remote[0]) in e.init_index:
        return False  # a retransmission: answered from the cache
    got = _scan(data)
    if got is None or got[0] is None or not 16 <= len(got[0]) <= 256:
        return False
    nonce, cookie = got
    want = _cookie(e, e.cookie_secret, nonce, remote[0], data[:8])
    if cookie is not None and (hmac.compare_digest(cookie, want) or hmac.compare_digest(
            cookie, _cookie(e, e.cookie_secret_old, nonce, remote[0], data[:8]))):
        return False
    resp = Header(data[:8], bytes(8), 0, 2, 0, c.IKE_SA_INIT, c.FLAG_R, 0)
    e.send(codec.encode_message(resp, [Notify(c.N_COOKIE, want)]), local=local, remote=remote)
    return True


def drop_unconfigured(e, remote, now: float) -> None:
    """No connection could ever accept this source: no answer and no work at all (2.21.1
    leaves answering errors before authentication to policy; a spoofed flood from
    unconfigured addresses must not make us a reflector nor fill the log, issue 8.2)."""
    e.drops += 1
    e.unauth_event("IKE_SA_INIT from an address without a connection", remote[0], now, "no_config", None,
                   f"IKE_SA_INIT from {remote[0]}: no connection for this peer, dropped without answer")


def candidates(e, local, remote) -> list:
    out = []
    for conn in e.connections():
        if conn.local and conn.local != local[0] and local[0] not in WILDCARDS:
            continue
        if not conn.dynamic and conn.peer != remote[0]:
            continue
        out.append(conn)
    # specific peers before %any
    out.sort(key=lambda x: x.dynamic)
    return out


def cookies_required(e) -> bool:
    """Cookies (2.6) from cookie_threshold half-open SAs on, and on until the count falls
    below half of it: a responder that flips between asking for a cookie and answering at
    once would answer an initiator's cookie-less retransmission after the initiator moved on
    to its request with the cookie, and the initiator would then sign the wrong request
    (its IKE_AUTH fails as a PSK/signature mismatch; seen with bench/scale at a hub)."""
    n, threshold = len(e.half_open), e.config.daemon.cookie_threshold
    if n >= threshold:
        e.cookie_mode = True
    elif n < max(1, threshold // 2):
        e.cookie_mode = False
    return e.cookie_mode


def responder(e, msg, data: bytes, local, remote, now: float) -> None:
    h = msg.header
    pl = msg.payloads
    if h.message_id != 0 or not h.is_initiator:
        e.drops += 1
        return
    key = (h.spi_i, remote[0])
    old = e.init_index.get(key)
    if old is not None:
        if old.init_req == data:
            e.send(old.init_resp, old, local=local, remote=remote, resent=True)  # retransmitted request
        else:
            e.drops += 1
        return
    conns = candidates(e, local, remote)
    if not conns:
        drop_unconfigured(e, remote, now)
        return
    dcfg = e.config.daemon
    if len(e.half_open) >= dcfg.half_open_limit:
        e.drops += 1
        e.unauth_event("IKE_SA_INIT over the half-open limit", remote[0], now, "half_open_limit", None,
                       f"dropping IKE_SA_INIT from {remote[0]}: {len(e.half_open)} half-open SAs")
        return
    sa_p, ke, nonce = msg.get(SA), msg.get(KE), msg.get(Nonce)
    if sa_p is None or ke is None or nonce is None:
        _reply_error(e, h, local, remote, now, c.N_INVALID_SYNTAX)
        return
    if cookies_required(e):
        want = _cookie(e, e.cookie_secret, nonce.data, remote[0], h.spi_i)
        old_want = _cookie(e, e.cookie_secret_old, nonce.data, remote[0], h.spi_i)
        got = notify(pl, c.N_COOKIE)
        if got is None or not (hmac.compare_digest(got.data, want) or hmac.compare_digest(got.data, old_want)):
            _reply_notify(e, h, local, remote, c.N_COOKIE, want)
            return
    ke_group = c.DH_NAMES.get(ke.group)
    chosen = None
    accepting = []
    for conn in conns:
        res = negotiate.select(negotiate.to_sa(conn.ike, "ike", b""), sa_p.proposals, ke_group=ke_group)
        if res is None:
            continue
        if chosen is None:
            chosen = res
            accepting.append(conn)
        elif res[1] == chosen[1]:
            accepting.append(conn)
    if chosen is None:
        ours = "; ".join(f"{x.name}: {negotiate.describe_offer(negotiate.to_sa(x.ike, 'ike', b''))}"
                         for x in conns)
        theirs = negotiate.describe_offer(sa_p.proposals)
        e.unauth_event("IKE_SA_INIT without an acceptable proposal", remote[0], now, "no_proposal",
                       conns[0].name,
                       f"IKE_SA_INIT from {remote[0]}: no acceptable proposal; received {theirs}; configured {ours}",
                       received=theirs, configured=ours)
        _reply_error(e, h, local, remote, now, c.N_NO_PROPOSAL_CHOSEN)
        return
    peer_prop, ch = chosen
    if c.DH_IDS[ch.dh] != ke.group:
        e.unauth_event("IKE_SA_INIT with another DH group", remote[0], now, "invalid_ke", accepting[0].name,
                       f"IKE_SA_INIT from {remote[0]}: DH group {ke_group or ke.group} unacceptable, "
                       f"requesting {ch.dh}")
        _reply_notify(e, h, local, remote, c.N_INVALID_KE_PAYLOAD, struct.pack("!H", c.DH_IDS[ch.dh]))
        return
    kex = KeyExchange(ch.dh)
    try:
        shared = kex.shared(ke.data)
    except InvalidPublicValue as err:
        e.unauth_event("IKE_SA_INIT with an invalid KE", remote[0], now, "bad_ke", accepting[0].name,
                       f"IKE_SA_INIT from {remote[0]}: {err}")
        _reply_error(e, h, local, remote, now, c.N_INVALID_SYNTAX)
        return
    conn = accepting[0]
    sa = IkeSa(ike_id=e.new_id(), conn=conn, initiator=False, spi_i=h.spi_i, spi_r=e.new_spi(),
               local=local, remote=remote, created_at=now, last_recv=now)
    sa.candidates = accepting
    sa.chosen = ch
    sa.ni = nonce.data
    sa.nr = e.rng(32)
    _derive(sa, shared)
    sa.peer_hashes = _peer_hashes(pl)
    sa.peer_certreq = msg.get(CertReq) is not None
    # the initiator hashed with SPIr = 0 (it did not know ours yet)
    sa.nat_local, sa.nat_remote = _detect_nat(pl, h.spi_i, bytes(8), local, remote)
    sa.udp_encap = sa.nat_local or sa.nat_remote
    payloads = [SA([negotiate.encode_chosen(ch, peer_prop.num, b"")]), KE(kex.group_id, kex.public),
                Nonce(sa.nr)]
    payloads += _nat_notifies(e, conn, sa.spi_i, sa.spi_r, local, remote)
    if conn.encap:
        sa.udp_encap = True
    if any(_uses_certs(x) for x in accepting):
        creds = e.credentials(conn)
        if creds is not None and creds.cas:
            payloads.append(CertReq(c.CERT_X509_SIGNATURE, creds.certreq_data()))
    payloads.append(_sig_hashes())
    if childless.announce(accepting):
        payloads.append(Notify(c.N_CHILDLESS_IKEV2_SUPPORTED))  # RFC 6023 3
    resp = Header(sa.spi_i, sa.spi_r, 0, 2, 0, c.IKE_SA_INIT, c.FLAG_R, 0)
    sa.init_req = data
    sa.init_resp = codec.encode_message(resp, payloads)
    sa.mid_in = 1
    e.register(sa)
    e.half_open[key] = sa
    e.init_index[key] = sa
    e.send(sa.init_resp, sa, now=now)
