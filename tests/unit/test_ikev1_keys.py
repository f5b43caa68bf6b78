"""IKEv1 key material checked against independent computations: the RFC 2409 formulas
written out here with plain hmac/hashlib, `cryptography`'s AES-CBC decrypting what the core
put on the wire, and scapy's ISAKMP parser reading our messages."""
import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vpnd.ike.v1 import keys

from test_ikev1_harness import pair


def H(name, data):
    return hashlib.new(name, data).digest()


def prf(name, k, d):
    return hmac.new(k, d, name).digest()


def test_skeyid_psk_and_expansion_by_formula():
    ni, nr, gxy = b"\x11" * 16, b"\x22" * 16, b"\x33" * 256
    ci, cr, psk = b"\x01" * 8, b"\x02" * 8, b"shared secret"
    gxi, gxr = b"\x44" * 256, b"\x55" * 256
    got = keys.derive_phase1(1, "sha1", "aes256", ni=ni, nr=nr, gxy=gxy, gxi=gxi, gxr=gxr,
                             cky_i=ci, cky_r=cr, psk=psk)
    skeyid = prf("sha1", psk, ni + nr)  # RFC 2409 5, pre-shared keys
    d = prf("sha1", skeyid, gxy + ci + cr + b"\x00")
    a = prf("sha1", skeyid, d + gxy + ci + cr + b"\x01")
    e = prf("sha1", skeyid, a + gxy + ci + cr + b"\x02")
    k1 = prf("sha1", e, b"\x00")  # appendix B: 20-byte SKEYID_e, 32-byte AES-256 key
    k2 = prf("sha1", e, k1)
    assert (got.skeyid, got.d, got.a, got.e) == (skeyid, d, a, e)
    assert got.enc_key == (k1 + k2)[:32]
    assert got.iv0 == H("sha1", gxi + gxr)[:16]


def test_skeyid_signature_and_encryption_methods():
    ni, nr, gxy, ci, cr = b"n" * 20, b"r" * 24, b"g" * 128, b"i" * 8, b"c" * 8
    assert keys.skeyid(3, "sha256", ni=ni, nr=nr, gxy=gxy, cky_i=ci, cky_r=cr) == prf("sha256", ni + nr, gxy)
    assert keys.skeyid(4, "md5", ni=ni, nr=nr, gxy=gxy, cky_i=ci, cky_r=cr) == \
        prf("md5", H("md5", ni + nr), ci + cr)


def test_no_expansion_when_prf_is_long_enough():
    e = b"\x07" * 48
    assert keys.expand("sha384", e, 24) == e[:24]


def test_keymat_by_formula_with_pfs():
    d, ni, nr, spi, g = b"d" * 20, b"N" * 16, b"R" * 16, b"\x00\x00\x12\x34", b"G" * 256
    seed = g + bytes([3]) + spi + ni + nr
    k1 = prf("sha1", d, seed)
    k2 = prf("sha1", d, k1 + seed)
    assert keys.keymat("sha1", d, 3, spi, ni, nr, 36, g) == (k1 + k2)[:36]


def _handshake(ike="aes128-sha1-modp2048", esp="aes128-sha1-modp2048"):
    net = pair({"ike": ike, "esp": esp}, {"ike": ike, "esp": esp})
    return net, net.a.sas[next(iter(net.a.sas))]


@pytest.mark.parametrize("ike,esp,hname,ek,ik", [
    ("aes128-sha1-modp2048", "aes128-sha1-modp2048", "sha1", 16, 20),
    ("aes256-sha256-modp2048", "aes256-sha256", "sha256", 32, 32),
    ("3des-sha1-modp1536", "3des-sha1", "sha1", 24, 20),
    ("aes128-sha1-modp2048", "aes128gcm16", "sha1", 20, 0),
])
def test_installed_keys_match_rfc2409_keymat(ike, esp, hname, ek, ik):
    net, sa = _handshake(ike, esp)
    qm_ni_nr = None
    inst = net.installs("A")[0]
    # recompute SKEYID chain from what crossed the wire + the DH secret A computed
    psk = b"in-memory test psk 0123456789"
    skeyid = prf(hname, psk, sa.ni + sa.nr)
    d = prf(hname, skeyid, sa.gxy + sa.cky_i + sa.cky_r + b"\x00")
    assert d == sa.keys.d
    # the Quick Mode nonces: take them from the core's record of the exchange
    qm = [q for q in net.a.qms.get(sa.ike_id, {}).values()]
    assert qm, "initiator keeps its finished Quick Mode a while"
    q = qm[0]
    qm_ni_nr = (q.ni, q.nr)
    for k in inst.inbound:
        spi = struct.pack("!I", k.spi)
        seed = q.gqm + bytes([3]) + spi + q.ni + q.nr
        out, blk = b"", b""
        while len(out) < ek + ik:
            blk = prf(hname, d, blk + seed)
            out += blk
        assert k.enc_key == out[:ek] and k.auth_key == out[ek:ek + ik]
    assert qm_ni_nr


def test_main_mode_message5_decrypts_with_rfc_iv():
    """Message 5 on the wire, decrypted here with AES-CBC and IV = hash(g^xi | g^xr)."""
    net, sa = _handshake()
    msgs = [dg.data for s, dg in net.sent if s == "A" and dg.data[16 + 2] == 2]  # exchange 2 = Main
    m5 = [m for m in msgs if m[19] & 1][0]  # first encrypted one
    iv = H("sha1", sa.gxi + sa.gxr)[:16]
    dec = Cipher(algorithms.AES(sa.keys.enc_key), modes.CBC(iv)).decryptor()
    plain = dec.update(m5[28:]) + dec.finalize()
    assert m5[16] == 5 and plain[4] == 1  # first payload ID, type ID_IPV4_ADDR
    assert plain[8:12] == bytes([10, 200, 0, 1])
    # HASH_I follows the ID payload: prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b)
    id_len = struct.unpack("!H", plain[2:4])[0]
    idii_b = plain[4:id_len]
    hash_len = struct.unpack("!H", plain[id_len + 2:id_len + 4])[0]
    got = plain[id_len + 4:id_len + hash_len]
    skeyid = prf("sha1", b"in-memory test psk 0123456789", sa.ni + sa.nr)
    want = prf("sha1", skeyid, sa.gxi + sa.gxr + sa.cky_i + sa.cky_r + sa.sai_b + idii_b)
    assert got == want


def test_quick_mode_iv_from_last_phase1_block():
    net, sa = _handshake()
    m6 = [dg.data for s, dg in net.sent if s == "B" and dg.data[18] == 2 and dg.data[19] & 1][0]
    qm1 = [dg.data for s, dg in net.sent if s == "A" and dg.data[18] == 32][0]
    mid = qm1[20:24]
    iv = H("sha1", m6[-16:] + mid)[:16]  # appendix B: hash(last phase-1 CBC block | M-ID)
    dec = Cipher(algorithms.AES(sa.keys.enc_key), modes.CBC(iv)).decryptor()
    plain = dec.update(qm1[28:]) + dec.finalize()
    assert qm1[16] == 8  # HASH first
    hl = struct.unpack("!H", plain[2:4])[0]
    # HASH(1) = prf(SKEYID_a, M-ID | rest of the message without padding)
    rest_end = hl
    t = plain[0]
    while t:
        t, ln = plain[rest_end], struct.unpack("!H", plain[rest_end + 2:rest_end + 4])[0]
        rest_end += ln
    assert plain[4:hl] == prf("sha1", sa.keys.a, mid + plain[hl:rest_end])


def test_scapy_parses_our_main_mode_offer():
    from scapy.layers.isakmp import ISAKMP

    net = pair({"ike": "aes256-sha256-modp2048, 3des-sha1-modp1536"}, {})
    m1 = [dg.data for s, dg in net.sent if s == "A"][0]
    pkt = ISAKMP(m1)
    assert pkt.exch_type == 2 and pkt.init_cookie == m1[:8]
    sa = pkt.payload
    prop = sa.prop
    trans = prop.trans
    got = []
    while trans is not None and trans.__class__.__name__ == "ISAKMP_payload_Transform":
        got.append(dict(trans.transforms))
        trans = trans.payload if trans.next_payload else None
    assert got[0]["Encryption"] == "AES-CBC" and got[0]["KeyLength"] == 256
    assert got[0]["Hash"] == "SHA2-256" and got[0]["GroupDesc"] == "2048MODPgr"
    assert got[0]["Authentication"] == "PSK"
    assert got[1]["Encryption"] == "3DES-CBC" and got[1]["GroupDesc"] == "1536MODPgr"
