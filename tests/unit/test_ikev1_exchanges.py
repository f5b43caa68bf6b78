"""IKEv1 cores against each other in memory: phase 1 (Main/Aggressive, PSK, rsa-sig,
rsa-encr), Quick Mode, proposals, IDs, lost and duplicated messages."""
import pytest

from test_ikev1_harness import A_IP, B_IP, LAN_A, LAN_B, make_pki, pair


def _up(net):
    ia, ib = net.installs("A"), net.installs("B")
    assert len(ia) == 1 and len(ib) == 1, (net.events("A"), net.events("B"))
    a, b = ia[0], ib[0]
    # the two ends derived the same keys for each direction
    assert [(k.spi, k.enc_key, k.auth_key) for k in a.outbound] == [(k.spi, k.enc_key, k.auth_key) for k in b.inbound]
    assert [(k.spi, k.enc_key, k.auth_key) for k in a.inbound] == [(k.spi, k.enc_key, k.auth_key) for k in b.outbound]
    assert a.outbound[0].enc_key != a.inbound[0].enc_key
    assert [str(n) for n in a.local_ts] == [LAN_A] and [str(n) for n in a.remote_ts] == [LAN_B]
    assert [str(n) for n in b.local_ts] == [LAN_B] and [str(n) for n in b.remote_ts] == [LAN_A]
    return a, b


@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
@pytest.mark.parametrize("ike,esp,enc,integ", [
    ("aes128-sha1-modp2048", "aes128-sha1-modp2048", "aes128", "sha1"),
    ("aes256-sha256-modp2048", "aes256-sha256", "aes256", "sha256"),
    ("3des-sha1-modp1536", "3des-sha1", "3des", "sha1"),
    ("aes192-sha512-ecp256", "aes256gcm16-ecp384", "aes256gcm16", None),
    ("aes256-sha384-modp3072", "aes128-md5", "aes128", "md5"),
])
def test_psk(aggressive, ike, esp, enc, integ):
    conf = {"ike": ike, "esp": esp, "aggressive": aggressive}
    net = pair(conf, conf)
    a, b = _up(net)
    assert a.outbound[0].encryption == enc and a.outbound[0].integrity == integ
    st = net.a.status_ike_sas(net.now)
    assert st[0]["state"] == "ESTABLISHED" and st[0]["isakmp_state"] == "QM_IDLE" and st[0]["version"] == 1
    assert st[0]["child_sas"][0]["state"] == "INSTALLED"
    if "gcm" in enc:
        assert len(a.outbound[0].enc_key) == 36  # key + 4-byte salt (RFC 4106 8.1)


def test_policies_tried_in_order():
    # initiator offers three policies; responder accepts only the last one
    net = pair({"ike": "aes128-sha1-modp2048, aes256-sha256-modp2048, 3des-sha1-modp1536"},
               {"ike": "3des-sha1-modp1536, aes256-sha256-modp2048"})
    _up(net)
    # the responder's own order picks among what was offered
    assert net.a.status_ike_sas(0)[0]["proposal"] == "3DES_CBC/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1536"


def test_isakmp_policy_list_syntax():
    pol = [{"seq": 20, "encryption": "aes 256", "hash": "sha256", "group": 14},
           {"seq": 10, "encryption": "3des", "hash": "sha", "group": 5}]
    net = pair({"ike": pol}, {"ike": "aes256-sha256-modp2048"})
    _up(net)


def test_no_proposal_chosen():
    net = pair({"ike": "aes128-sha1-modp2048"}, {"ike": "aes256-sha256-modp3072"})
    assert not net.installs("A")
    msg = net.events("B", "no_proposal")[0].message
    assert "AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_2048" in msg and "MODP_3072" in msg
    assert net.events("A", "no_proposal")


def test_quick_mode_no_proposal():
    net = pair({"esp": "aes128-sha1"}, {"esp": "aes256-sha256"})
    assert net.events("A", "ike_up") and not net.installs("A") and not net.installs("B")
    assert "Quick Mode NO-PROPOSAL-CHOSEN" in net.events("B", "no_proposal")[0].message


def test_wrong_psk():
    net = pair({}, {"psk": "another key entirely 987654"})
    assert not net.installs("A") and not net.installs("B")
    assert net.events("B", "auth_failed") or net.events("A", "auth_failed")


@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_rsa_sig(tmp_path, aggressive):
    pki = make_pki(tmp_path)
    a = {"psk": None, "auth": {"cert": pki["gwa"]["cert"], "key": pki["gwa"]["key"], "ca": pki["ca"]},
         "remote_id": pki["gwb"]["dn"], "aggressive": aggressive}
    b = {"psk": None, "auth": {"cert": pki["gwb"]["cert"], "key": pki["gwb"]["key"], "ca": pki["ca"]},
         "remote_id": pki["gwa"]["dn"], "aggressive": aggressive}
    net = pair(a, b)
    _up(net)
    st = net.a.status_ike_sas(0)[0]
    assert st["auth"] == "rsa-sig" and st["remote_id"] == "C=CH, O=vpnd test, CN=gwb"


def test_rsa_sig_wrong_identity(tmp_path):
    pki = make_pki(tmp_path)
    a = {"psk": None, "auth": {"cert": pki["gwa"]["cert"], "key": pki["gwa"]["key"], "ca": pki["ca"]},
         "remote_id": "C=CH, O=vpnd test, CN=someone-else"}
    b = {"psk": None, "auth": {"cert": pki["gwb"]["cert"], "key": pki["gwb"]["key"], "ca": pki["ca"]}}
    net = pair(a, b)
    assert not net.installs("A")
    assert any("is not" in e.message for e in net.events("A", "auth_failed"))


def test_rsa_sig_untrusted_ca(tmp_path):
    pki = make_pki(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    pki2 = make_pki(other)
    a = {"psk": None, "auth": {"cert": pki["gwa"]["cert"], "key": pki["gwa"]["key"], "ca": pki2["ca"]}}
    b = {"psk": None, "auth": {"cert": pki["gwb"]["cert"], "key": pki["gwb"]["key"], "ca": pki["ca"]}}
    net = pair(a, b)
    assert not net.installs("A")
    assert any("not trusted" in e.message for e in net.events("A", "auth_failed"))


@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_rsa_encr(tmp_path, aggressive):
    pki = make_pki(tmp_path)
    a = {"psk": None, "auth": {"rsa_encr": {"key": pki["gwa"]["key"], "peer_pubkey": pki["gwb"]["pub"]}},
         "aggressive": aggressive, "local_id": "@gwa.test", "remote_id": "@gwb.test"}
    b = {"psk": None, "auth": {"rsa_encr": {"key": pki["gwb"]["key"], "peer_pubkey": pki["gwa"]["pub"]}},
         "aggressive": aggressive, "local_id": "@gwb.test", "remote_id": "@gwa.test"}
    net = pair(a, b)
    _up(net)
    assert net.a.status_ike_sas(0)[0]["auth"] == "rsa-encr"
    # the identities never cross the wire in clear (RFC 2409 5.2)
    assert not any(b"gwa.test" in dg.data or b"gwb.test" in dg.data for _, dg in net.sent)


def test_rsa_encr_wrong_key(tmp_path):
    pki = make_pki(tmp_path, names=("gwa", "gwb", "gwc"))
    a = {"psk": None, "auth": {"rsa_encr": {"key": pki["gwa"]["key"], "peer_pubkey": pki["gwc"]["pub"]}}}
    b = {"psk": None, "auth": {"rsa_encr": {"key": pki["gwb"]["key"], "peer_pubkey": pki["gwa"]["pub"]}}}
    net = pair(a, b)
    assert not net.installs("A") and not net.installs("B")


@pytest.mark.parametrize("ident", ["@gwa.example", "user@example.com", "C=CH, O=Org, CN=gwa"])
def test_identities(ident):
    net = pair({"local_id": ident}, {"remote_id": ident})
    _up(net)
    assert net.b.status_ike_sas(0)[0]["remote_id"] == ident


def test_identity_mismatch():
    net = pair({"local_id": "@gwa.example"}, {"remote_id": "@other.example"})
    assert not net.installs("B")
    assert net.events("B", "auth_failed")


def test_aggressive_mode_disabled():
    net = pair({"aggressive": True}, {}, daemon_b={"aggressive_mode": False})
    assert not net.installs("A")
    assert any("refused" in e.message for e in net.events("B"))


def test_pfs_and_bundle_transport():
    conf = {"esp": "ah-sha-hmac esp-aes 256 esp-sha-hmac group14", "mode": "transport",
            "local_ts": None, "remote_ts": None}
    net = pair(conf, conf)
    a = net.installs("A")[0]
    b = net.installs("B")[0]
    assert a.mode == "transport"
    assert [k.protocol for k in a.inbound] == ["esp", "ah"]
    assert [(k.spi, k.auth_key) for k in a.outbound] == [(k.spi, k.auth_key) for k in b.inbound]
    assert [str(n) for n in a.local_ts] == [f"{A_IP}/32"] and [str(n) for n in a.remote_ts] == [f"{B_IP}/32"]
    assert "MODP_2048" in a.proposal


def test_several_subnets_one_sa_pair_each():
    conf_a = {"local_ts": ["10.1.0.0/16", "10.3.0.0/16"], "remote_ts": ["10.2.0.0/16"]}
    conf_b = {"local_ts": ["10.2.0.0/16"], "remote_ts": ["10.1.0.0/16", "10.3.0.0/16"]}
    net = pair(conf_a, conf_b)
    assert len(net.installs("A")) == 2 and len(net.installs("B")) == 2


def test_proxy_ids_outside_config_refused():
    net = pair({"local_ts": ["10.9.0.0/16"]}, {})
    assert net.events("A", "ike_up") and not net.installs("B")


def test_per_host():
    conf = {"per_host": True, "start": "trap"}
    net = pair(conf, {"per_host": True}, start=False)
    pkt = bytes([0x45, 0, 0, 20]) + bytes(8) + bytes([10, 1, 0, 10, 10, 2, 0, 10])
    net.feed(net.a, net.a.acquire("site", pkt, 0.0))
    a = net.installs("A")
    assert len(a) == 1 and [str(x) for x in a[0].local_ts] == ["10.1.0.10/32"]
    pkt2 = pkt[:16] + bytes([10, 2, 0, 11])
    net.feed(net.a, net.a.acquire("site", pkt2, 0.0))
    assert len(net.installs("A")) == 2 and len(net.installs("B")) == 2


@pytest.mark.parametrize("which", range(9))
def test_lost_message_is_retransmitted(which):
    counter = {"n": 0}

    def drop(side, dg):
        counter["n"] += 1
        return counter["n"] == which + 1

    net = pair(start=False)
    net.drop = drop
    net.feed(net.a, net.a.initiate("site", 0.0))
    net.advance(60)
    assert len(net.live_children("A")) == 1 and len(net.live_children("B")) == 1, (which, net.events("A"), net.events("B"))


def test_duplicated_messages():
    net = pair(start=False)
    net.dup = lambda side, dg: True
    net.feed(net.a, net.a.initiate("site", 0.0))
    net.advance(30)
    assert len(net.installs("A")) == 1 and len(net.installs("B")) == 1
    assert len(net.a.sas) == 1 and len(net.b.sas) == 1


def test_responder_lifetime_honoured():
    net = pair({"lifetime": {"seconds": 3600}}, {"lifetime": {"seconds": 1200}})
    a, b = net.installs("A")[0], net.installs("B")[0]
    assert a.lifetime_seconds == 1200 and b.lifetime_seconds == 1200


def test_secrets_not_in_events_or_status():
    net = pair()
    text = repr(net.log) + repr(net.a.status_ike_sas(0)) + repr(net.a.sas)
    assert "in-memory test psk" not in text
    for x in net.installs("A"):
        for k in x.inbound + x.outbound:
            assert k.enc_key.hex() not in text


@pytest.mark.parametrize("ike", [
    "des-md5-modp768", "3des-md5-modp1024", "aes128-sha1-modp1536", "aes192-sha256-modp2048",
    "aes256-sha384-modp3072", "aes128-sha512-modp4096", "aes128-sha256-ecp256", "aes256-sha384-ecp384",
    "aes256-sha512-ecp521",
])
def test_every_isakmp_attribute_combination(ike):
    """The seed's policy knobs: encryption des/3des/aes 128/192/256, hash md5/sha/sha2, groups
    1, 2, 5, 14, 15, 16, 19, 20, 21 (des and group 1 only with allow_legacy)."""
    conf = {"ike": ike, "esp": "aes128-sha1", "allow_legacy": True}
    net = pair(conf, conf)
    _up(net)
    from vpnd.proposals import describe_ike, parse_proposals

    (p,) = parse_proposals(ike, "ike", allow_legacy=True)
    assert net.a.status_ike_sas(0)[0]["proposal"] == describe_ike(p.encryption[0], p.integrity[0], p.prf[0], p.dh[0])


def test_rsa_sig_through_intermediate_ca(tmp_path):
    """gwa's certificate comes from an intermediate CA; gwa sends both, gwb trusts the root."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    pki = make_pki(tmp_path)
    now = datetime.datetime.now(datetime.timezone.utc)
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    root = (x509.CertificateBuilder().subject_name(name("root")).issuer_name(name("root"))
            .public_key(root_key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=5))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    mid_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    mid = (x509.CertificateBuilder().subject_name(name("intermediate")).issuer_name(root.subject)
           .public_key(mid_key.public_key()).serial_number(2)
           .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=5))
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(root_key, hashes.SHA256()))
    ee_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ee = (x509.CertificateBuilder().subject_name(name("gwa-leaf")).issuer_name(mid.subject)
          .public_key(ee_key.public_key()).serial_number(3)
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=5))
          .sign(mid_key, hashes.SHA256()))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    (tmp_path / "chain.pem").write_bytes(pem(ee) + pem(mid))
    (tmp_path / "root.pem").write_bytes(pem(root))
    kp = tmp_path / "leaf.key"
    kp.write_bytes(ee_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    kp.chmod(0o600)
    # gwb's own certificate stays under make_pki's CA; each side trusts the other's root
    a = {"psk": None, "auth": {"cert": str(tmp_path / "chain.pem"), "key": str(kp), "ca": pki["ca"]},
         "remote_id": pki["gwb"]["dn"]}
    b = {"psk": None, "auth": {"cert": pki["gwb"]["cert"], "key": pki["gwb"]["key"], "ca": str(tmp_path / "root.pem")},
         "remote_id": "CN=gwa-leaf"}
    net = pair(a, b)
    _up(net)
    # without the intermediate the chain does not verify
    (tmp_path / "chain.pem").write_bytes(pem(ee))
    net2 = pair(a, b)
    assert not net2.installs("B")
    assert any("not trusted" in e.message for e in net2.events("B", "auth_failed"))


def test_lost_quick_mode_answer_resent_without_waiting():
    """Quick Mode message 2 lost: the initiator's repeat of message 1 brings it back at once
    (the responder does not wait for its own timer)."""
    net = pair(start=False)
    seen = {"qm2": 0}

    def drop(side, dg):
        if side == "B" and dg.data[18] == 32 and seen["qm2"] == 0:
            seen["qm2"] += 1
            return True
        return False

    net.drop = drop
    net.feed(net.a, net.a.initiate("site", 0.0))
    assert not net.installs("A")
    net.advance(4.5)  # the initiator's first retransmission is due after 4 s
    assert net.installs("A") and net.installs("B")
    assert net.now < 5


def test_duplicates_everywhere_stay_bounded():
    net = pair(start=False)
    net.dup = lambda side, dg: True
    net.feed(net.a, net.a.initiate("site", 0.0))
    net.advance(30)
    assert len(net.sent) < 60, len(net.sent)
