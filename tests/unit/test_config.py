"""Config: contract keys, defaults, and one clear line (with key path) per problem."""

import copy
import datetime
import ipaddress
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from vpnd.config import (
    ANY_IDENTITY, ConfigError, Identity, Secret, load_config, parse_config, parse_identity,
)

ROOT = Path(__file__).resolve().parents[2]

CONTRACT = """
daemon:
  tun: vpnd0
  mtu: 1400
  control_socket: /run/vpnd/vpnd.sock
  listen: 0.0.0.0
  ike_port: 500
  natt_port: 4500
  log_level: info

connections:
  site-b:
    version: 2
    aggressive: false
    local: 10.200.0.1
    peer: 10.200.0.2
    psk: "a pre-shared key"
    local_id: 10.200.0.1
    remote_id: 10.200.0.2
    ike: aes128-sha256-modp2048, aes256gcm16-prfsha384-ecp384
    esp: aes128gcm16-modp2048
    local_ts: [10.1.0.0/16]
    remote_ts: [10.2.0.0/16]
    mode: tunnel
    start: start
    lifetime: {ike: 86400, seconds: 3600, kilobytes: 4608000}
    idle_time: 0
    replay_window: 64
    per_host: false
    dpd: {interval: 30, retry: 5, mode: on-demand, action: restart}
    nat_keepalive: 20
    encap: false
    rri: {enabled: true}
"""

KEY16 = "00112233445566778899aabbccddeeff"
KEY32 = KEY16 * 2


def parse(text, base_dir=None):
    return parse_config(yaml.safe_load(text), base_dir=base_dir)


def problems_of(data, base_dir=None):
    with pytest.raises(ConfigError) as e:
        parse_config(data, base_dir=base_dir)
    for p in e.value.problems:
        assert "\n" not in p
    return e.value.problems


def conn(**kw):
    """A minimal valid connection plus overrides; None removes a key."""
    c = {"peer": "10.200.0.2", "psk": "secret key 123"}
    for k, v in kw.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return {"connections": {"site-b": c}}


def one_problem(data, base_dir=None):
    ps = problems_of(data, base_dir)
    assert len(ps) == 1, ps
    return ps[0]


def test_contract_example_parses_exactly():
    cfg = parse(CONTRACT)
    d = cfg.daemon
    assert (d.tun, d.mtu, d.control_socket, d.listen, d.ike_port, d.natt_port, d.log_level) == \
        ("vpnd0", 1400, "/run/vpnd/vpnd.sock", "0.0.0.0", 500, 4500, "info")
    (c,) = cfg.connections
    assert c.name == "site-b" and c.version == 2 and c.peer == "10.200.0.2"
    assert c.local == "10.200.0.1" and c.auth.method == "psk"
    assert c.psk.value == b"a pre-shared key"
    assert c.local_id == Identity("ipv4", "10.200.0.1")
    assert [p.describe() for p in c.ike] == [
        "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
        "AES_GCM_16-256/PRF_HMAC_SHA2_384/ECP_384"]
    assert c.esp[0].describe() == "AES_GCM_16-128/MODP_2048"
    assert c.local_ts == (ipaddress.ip_network("10.1.0.0/16"),)
    assert c.remote_ts == (ipaddress.ip_network("10.2.0.0/16"),)
    assert (c.mode, c.start, c.idle_time, c.replay_window, c.per_host) == \
        ("tunnel", "start", 0, 64, False)
    assert (c.lifetime.ike, c.lifetime.seconds, c.lifetime.kilobytes) == (86400, 3600, 4608000)
    assert (c.dpd.interval, c.dpd.retry, c.dpd.mode, c.dpd.action) == \
        (30, 5, "on-demand", "restart")
    assert (c.nat_keepalive, c.encap, c.rri.enabled) == (20, False, True)


def test_defaults_of_a_minimal_connection():
    cfg = parse_config(conn())
    d = cfg.daemon
    assert (d.tun, d.mtu, d.ike_port, d.natt_port, d.control_socket, d.aggressive_mode) == \
        ("vpnd0", None, 500, 4500, "/run/vpnd/vpnd.sock", True)
    (c,) = cfg.connections
    assert [str(p) for p in c.ike] == ["aes128-sha256-prfsha256-modp2048",
                                       "aes256gcm16-prfsha384-ecp384"]
    assert [str(p) for p in c.esp] == ["aes128gcm16", "aes128-sha256"]
    assert c.start == "trap" and c.version == 2 and c.lifetime.kilobytes == 4608000
    assert c.remote_id is None and not c.dynamic


def test_ikev1_default_has_no_aead():
    (c,) = parse_config(conn(version=1)).connections
    assert not any(p.aead for p in c.ike)


def test_dynamic_peer_defaults_to_respond_only_any_identity():
    (c,) = parse_config(conn(peer="%any")).connections
    assert c.start == "none" and c.remote_id == ANY_IDENTITY and c.dynamic


def test_shipped_configs_are_valid():
    for name in ("vpnd.yaml", "manual.yaml", "demo/site-a.yaml", "demo/site-b.yaml",
                 "demo/site-a-manual.yaml", "demo/site-b-manual.yaml"):
        cfg = load_config(ROOT / "conf" / name)
        assert cfg.connections, name


def test_demo_manual_keys_mirror_each_other():
    a = load_config(ROOT / "conf/demo/site-a-manual.yaml").connections[0].manual
    b = load_config(ROOT / "conf/demo/site-b-manual.yaml").connections[0].manual
    assert a.inbound.esp.spi == b.outbound.esp.spi and a.inbound.esp.enc_key == b.outbound.esp.enc_key
    assert a.outbound.esp.spi == b.inbound.esp.spi and a.outbound.esp.enc_key == b.inbound.esp.enc_key


def test_secrets_never_printed():
    cfg = parse(CONTRACT)
    assert "a pre-shared key" not in repr(cfg) and "a pre-shared key" not in str(cfg)
    assert repr(Secret(b"x")) == "Secret(***)" and str(Secret(b"x")) == "***"
    man = load_config(ROOT / "conf/manual.yaml")
    text = repr(man)
    assert "00112233" not in text and "ffeeddcc" not in text


def test_psk_encodings():
    assert parse_config(conn(psk="0x0102ff")).connections[0].psk.value == b"\x01\x02\xff"
    assert parse_config(conn(psk="0sAQL/")).connections[0].psk.value == b"\x01\x02\xff"


@pytest.mark.parametrize("data,line", [
    (conn(esp="aes999"), "connections.site-b.esp: unknown algorithm 'aes999'"),
    (conn(ike="aes128-sha256"), "connections.site-b.ike: IKE proposal needs a DH group"),
    (conn(esp="aes128gcm16-sha256"),
     "connections.site-b.esp: AEAD algorithm 'aes128gcm16' cannot be combined with integrity 'sha256'"),
    (conn(aggresive=True), "connections.site-b.aggresive: unknown key (did you mean 'aggressive'?)"),
    ({"daemon": {"tunn": "x"}}, "daemon.tunn: unknown key (did you mean 'tun'?)"),
    ({"deamon": {}}, "deamon: unknown key (did you mean 'daemon'?)"),
    (conn(peer="10.200.0.300"), "connections.site-b.peer: '10.200.0.300' is not an IP address"),
    (conn(peer=None), "connections.site-b.peer: required: the peer's address, or %any to respond only"),
    (conn(local="x"), "connections.site-b.local: 'x' is not an IP address"),
    (conn(local_ts=["10.1.0.1/16"]),
     "connections.site-b.local_ts[0]: '10.1.0.1/16' has host bits set (did you mean 10.1.0.0/16?)"),
    (conn(remote_ts="10.2.0.0/33"),
     "connections.site-b.remote_ts: '10.2.0.0/33' is not a subnet (like 10.1.0.0/16)"),
    (conn(version=3), "connections.site-b.version: 3 is not 1 (IKEv1) or 2 (IKEv2)"),
    (conn(mode="tunel"), "connections.site-b.mode: 'tunel' is not one of: tunnel, transport"),
    (conn(replay_window=-1),
     "connections.site-b.replay_window: -1 is out of range (must be between 0 and 65536)"),
    (conn(replay_window="64"),
     "connections.site-b.replay_window: expected an integer, got string '64'"),
    (conn(encap="yes"), "connections.site-b.encap: expected true or false, got string 'yes'"),
    (conn(lifetime={"seconds": "1h"}),
     "connections.site-b.lifetime.seconds: expected an integer, got string '1h'"),
    (conn(lifetime={"secs": 10}),
     "connections.site-b.lifetime.secs: unknown key (did you mean 'seconds'?)"),
    (conn(dpd={"mode": "always"}),
     "connections.site-b.dpd.mode: 'always' is not one of: periodic, on-demand"),
    (conn(rri={"next_hop": "nowhere"}), "connections.site-b.rri.next_hop: 'nowhere' is not an IP address"),
    (conn(psk_file="/x"), "connections.site-b: give only one of psk, psk_file, auth (found psk, psk_file)"),
    (conn(psk=None), "connections.site-b: needs authentication: psk, psk_file or auth"),
    (conn(psk=12345), "connections.site-b.psk: expected a string, got integer (quote it)"),
    (conn(psk=""), "connections.site-b.psk: must not be empty"),
    (conn(psk="0xzz"), "connections.site-b.psk: starts with 0x but is not valid hex"),
    (conn(psk=None, psk_file="/nonexistent/vpnd.psk"),
     "connections.site-b.psk_file: cannot read '/nonexistent/vpnd.psk': No such file or directory"),
    (conn(peer="%any", start="start"),
     "connections.site-b.start: 'start' needs a peer address; peer %any can only respond (start: none)"),
    (conn(aggressive=True),
     "connections.site-b.aggressive: Aggressive Mode exists only in IKEv1 (version: 1)"),
    ({"daemon": {"aggressive_mode": False}, **conn(version=1, aggressive=True)},
     "connections.site-b.aggressive: Aggressive Mode is disabled by daemon.aggressive_mode: false"),
    (conn(version=1, ike="aes128gcm16-prfsha256-modp2048"),
     "connections.site-b.ike: IKEv1 has no AEAD ISAKMP transform: 'aes128gcm16' (use it in esp:)"),
    (conn(local_id="X=1"),
     "connections.site-b.local_id: 'X' is not a DN attribute (C, ST, L, O, OU, CN, E, DC, ...)"),
    (conn(remote_id=42), "connections.site-b.remote_id: expected an identity string, got integer (quote it)"),
    (conn(esp="des-sha1"),
     "connections.site-b.esp: algorithm 'des' is insecure and needs 'allow_legacy: true'; "
     "DES is withdrawn (RFC 4772; RFC 8221: MUST NOT), use aes256 or aes256gcm16"),
    (conn(pfs=True),
     "connections.site-b.pfs: name the group, e.g. pfs: group14 (Cisco's default group1 is not assumed)"),
    (conn(esp="aes128gcm16-modp2048", pfs="group14"),
     "connections.site-b.pfs: the esp:/ah: proposals already name a DH group"),
    (conn(mode="transport", local_ts=["10.1.0.0/16"]),
     "connections.site-b.local_ts: transport mode protects the gateways' own addresses; 10.1.0.0/16 is a subnet"),
    ({"daemon": {"mtu": 100}}, "daemon.mtu: 100 is out of range (must be between 576 and 65535)"),
    ({"daemon": {"mtu": "big"}}, "daemon.mtu: expected an integer, got string 'big'"),
    ({"daemon": {"mss_clamp": "yes"}},
     "daemon.mss_clamp: expected auto, false or an integer MSS, got string 'yes'"),
    ({"daemon": {"tun": "a-very-long-tun-name"}},
     "daemon.tun: 'a-very-long-tun-name' is not a valid interface name (max 15 characters)"),
    ({"daemon": {"ike_port": 70000}}, "daemon.ike_port: 70000 is out of range (must be between 1 and 65535)"),
    ({"daemon": {"natt_port": 500}}, "daemon.natt_port: must differ from ike_port (500)"),
    ({"daemon": {"control_socket": "vpnd.sock"}}, "daemon.control_socket: 'vpnd.sock' must be an absolute path"),
    ({"daemon": {"log_level": "verbose"}},
     "daemon.log_level: 'verbose' is not one of: debug, info, warning, error"),
    ({"daemon": {"listen": "0.0.0.0.0"}}, "daemon.listen: '0.0.0.0.0' is not an IP address"),
    ({"daemon": {"control_group": "no-such-group-vpnd"}},
     "daemon.control_group: no such group 'no-such-group-vpnd'"),
    ({"connections": []}, "connections: expected a mapping of connection names, got list"),
    ({"connections": {"bad name": {}}},
     "connections.bad name: connection name must be letters, digits, '.', '_' or '-' "
     "(at most 64, starting with a letter or digit)"),
    ({"connections": {"x": "oops"}}, "connections.x: expected a mapping, got string"),
    ([1, 2], "expected a mapping, got list"),
    (conn(version=1, ike="aes128-sha256-prfsha384-modp2048"),
     "connections.site-b.ike: IKEv1 has no separate PRF: 'prfsha384' must follow the hash "
     "('prfsha256') or be left out"),
    (conn(version=1, ike=[{"encryption": "aes", "group": 14, "authentication": "rsa-sig"}]),
     "connections.site-b.ike[0].authentication: rsa-sig does not match the connection's "
     "credentials (psk)"),
    (conn(ike=[{"encryption": "aes", "group": 14}]),
     "connections.site-b.ike: ISAKMP policy lists are IKEv1 (version: 1); for IKEv2 write "
     "proposals like aes128-sha256-modp2048"),
    (conn(local="10.0.0.1", peer="2001:db8::1"),
     "connections.site-b.local: 10.0.0.1 and peer 2001:db8::1 are of different IP versions"),
    (conn(peer=1234), "connections.site-b.peer: expected an IP address, got integer 1234 (quote it)"),
])
def test_each_error_is_one_line_with_its_key_path(data, line):
    assert one_problem(data) == line


def test_all_problems_are_collected():
    data = {"daemon": {"mtu": "x", "log_level": "loud"},
            "connections": {
                "a": {"peer": "1.2.3.4", "psk": "k", "esp": "aes999", "ike": "aes128-sha256"},
                "b": {"peer": "bad", "psk": "k", "mode": "x"}}}
    ps = problems_of(data)
    assert ps == [
        "daemon.mtu: expected an integer, got string 'x'",
        "daemon.log_level: 'loud' is not one of: debug, info, warning, error",
        "connections.a.ike: IKE proposal needs a DH group",
        "connections.a.esp: unknown algorithm 'aes999'",
        "connections.b.peer: 'bad' is not an IP address",
        "connections.b.mode: 'x' is not one of: tunnel, transport",
    ]


def test_psk_value_never_in_errors():
    ps = problems_of(conn(psk=["my secret"]))
    assert ps == ["connections.site-b.psk: expected a string, got list (quote it)"]
    assert not any("my secret" in p for p in ps)


def test_yaml_syntax_error_is_one_line_with_line_number(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("daemon:\n  tun: vpnd0\n  mtu: [1400\nconnections: {}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    (line,) = e.value.problems
    assert line.startswith(f"{f}: line ") and "\n" not in line


def test_duplicate_yaml_keys_are_reported(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("connections:\n  a:\n    peer: 10.0.0.1\n    psk: x\n    psk: y\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.problems == [f"{f}: line 5, column 5: duplicate key 'psk'"]


def test_missing_file():
    with pytest.raises(ConfigError) as e:
        load_config("/nonexistent/vpnd.yaml")
    assert e.value.problems == ["/nonexistent/vpnd.yaml: cannot read: No such file or directory"]


def test_psk_file_relative_to_config_dir(tmp_path):
    (tmp_path / "k.psk").write_text("file key\n")
    os.chmod(tmp_path / "k.psk", 0o600)
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(conn(psk=None, psk_file="k.psk")))
    cfg = load_config(tmp_path / "v.yaml")
    assert cfg.connections[0].psk.value == b"file key" and not cfg.warnings


def test_psk_file_world_readable_is_a_warning(tmp_path):
    (tmp_path / "k.psk").write_text("file key\n")
    os.chmod(tmp_path / "k.psk", 0o644)
    cfg = parse_config(conn(psk=None, psk_file="k.psk"), base_dir=str(tmp_path))
    assert cfg.warnings == (
        f"connections.site-b.psk_file: '{tmp_path}/k.psk' is readable by everyone; chmod 600 it",)


def test_empty_psk_file(tmp_path):
    (tmp_path / "k.psk").write_text("\n")
    assert one_problem(conn(psk=None, psk_file="k.psk"), str(tmp_path)) == \
        "connections.site-b.psk_file: the file is empty"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and a gateway certificate made with `cryptography` (independent of vpnd)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID
    d = tmp_path_factory.mktemp("pki")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vpnd test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "gw.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (d / "gw.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(d / "gw.key", 0o600)
    (d / "peer.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "rsa.key").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    os.chmod(d / "rsa.key", 0o600)
    (d / "rsa.pub").write_bytes(rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (d / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    return d


def test_cert_auth(pki):
    (c,) = parse_config(conn(psk=None, auth={"cert": "gw.der", "key": "gw.key", "ca": "ca.pem"}),
                        base_dir=str(pki)).connections
    assert c.auth.method == "cert" and c.auth.cert == f"{pki}/gw.der"
    assert c.auth.ca == (f"{pki}/ca.pem",) and c.psk is None


def test_cert_auth_problems_all_reported(pki):
    ps = problems_of(conn(psk=None, auth={"cert": "missing.pem", "key": "ca.pem",
                                          "ca": ["garbage.pem"]}), base_dir=str(pki))
    assert ps == [
        "connections.site-b.auth.cert: cannot read 'missing.pem': No such file or directory",
        f"connections.site-b.auth.key: '{pki}/ca.pem' is not a PEM or DER private key",
        f"connections.site-b.auth.ca[0]: '{pki}/garbage.pem' is not a PEM or DER certificate",
    ]


def test_cert_auth_needs_all_three(pki):
    assert one_problem(conn(psk=None, auth={"cert": "gw.der", "key": "gw.key"}), str(pki)) == \
        "connections.site-b.auth.ca: required for certificate authentication"


def test_cert_and_key_must_belong_together(pki):
    assert one_problem(conn(psk=None, auth={"cert": "gw.der", "key": "rsa.key", "ca": "ca.pem"}),
                       str(pki)) == \
        f"connections.site-b.auth.key: '{pki}/rsa.key' is not the key of certificate '{pki}/gw.der'"


def test_rsa_encr_needs_rsa_keys(pki):
    a = {"rsa_encr": {"key": "gw.key", "peer_pubkey": "peer.pub"}}
    assert problems_of(conn(version=1, psk=None, auth=a), str(pki)) == [
        f"connections.site-b.auth.rsa_encr.key: '{pki}/gw.key' is not an RSA key "
        "(RSA-encrypted nonces need RSA)",
        f"connections.site-b.auth.rsa_encr.peer_pubkey: '{pki}/peer.pub' is not an RSA key "
        "(RSA-encrypted nonces need RSA)"]


def test_rsa_encr_ikev1_only(pki):
    a = {"rsa_encr": {"key": "rsa.key", "peer_pubkey": "rsa.pub"}}
    (c,) = parse_config(conn(version=1, psk=None, auth=a), base_dir=str(pki)).connections
    assert c.auth.method == "rsa_encr" and c.auth.peer_pubkey == f"{pki}/rsa.pub"
    assert one_problem(conn(psk=None, auth=a), str(pki)) == \
        "connections.site-b.auth.rsa_encr: RSA-encrypted nonces exist only in IKEv1 (version: 1)"


@pytest.mark.parametrize("text,kind,value", [
    ("10.200.0.1", "ipv4", "10.200.0.1"),
    ("2001:db8::1", "ipv6", "2001:db8::1"),
    ("@gw.Example.com", "fqdn", "gw.example.com"),
    ("gw.example.com", "fqdn", "gw.example.com"),
    ("admin@example.com", "email", "admin@example.com"),
    ("C=CH,O=Example Corp, CN=gw-a", "dn", "C=CH, O=Example Corp, CN=gw-a"),
    ("/C=CH/O=Example/CN=gw", "dn", "C=CH, O=Example, CN=gw"),
    ("%any", "any", "%any"),
])
def test_identities(text, kind, value):
    ident = parse_identity(text)
    assert (ident.kind, ident.value) == (kind, value)


def test_dn_identity_encodes_like_openssl():
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    ident = parse_identity("C=CH, O=Example, CN=gw")
    expected = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "gw")])
    assert ident.x509_name().public_bytes() == expected.public_bytes()


def test_cisco_isakmp_policies_in_seq_order():
    pol = [{"seq": 20, "encryption": "3des", "hash": "sha", "group": 5},
           {"seq": 10, "encryption": "aes 256", "hash": "sha256", "group": 14,
            "authentication": "pre-share"}]
    (c,) = parse_config(conn(version=1, ike=pol)).connections
    assert [str(p) for p in c.ike] == ["aes256-sha256-prfsha256-modp2048",
                                       "3des-sha1-prfsha1-modp1536"]


def test_cisco_policy_problems():
    pol = [{"seq": 10, "encryption": "aes 512", "group": 14}, {"seq": 10, "hash": "sha"}]
    assert problems_of(conn(version=1, ike=pol)) == [
        "connections.site-b.ike[0].encryption: 'aes 512' is not one of: 3des, aes, aes 128, "
        "aes 192, aes 256, aes128, aes192, aes256, des",
        "connections.site-b.ike[1].seq: duplicate seq 10",
        "connections.site-b.ike[1].encryption: required (Cisco's default is not assumed)",
        "connections.site-b.ike[1].group: required (Cisco's default is not assumed)",
    ]


def test_pfs_adds_group_and_bundles():
    # (a bundle: IKEv1; IKEv2 has none, test_config_issue7.py)
    (c,) = parse_config(conn(version=1, esp="esp-aes 256 esp-sha-hmac", ah="sha256",
                             pfs="group14")).connections
    assert c.esp[0].dh == ("modp2048",) and c.esp[0].ah_integrity == ("sha256",)
    (c,) = parse_config(conn(esp="ah-sha-hmac")).connections
    assert c.esp == () and c.ah[0].integrity == ("sha1",) and c.child_proposals == c.ah
    (c,) = parse_config(conn(esp="none", ah="sha1")).connections
    assert c.esp == () and c.ah[0].protocol == "ah"


def manual_conn(esp="aes128-sha256", ah=None, inbound=None, outbound=None, **kw):
    inbound = inbound if inbound is not None else {"esp": {"spi": 0x1000, "enc_key": KEY16, "auth_key": KEY32}}
    outbound = outbound or {"esp": {"spi": 0x2000, "enc_key": KEY16, "auth_key": KEY32}}
    c = {"peer": "10.200.0.2", "esp": esp, "manual": {"inbound": inbound, "outbound": outbound}}
    if ah:
        c["ah"] = ah
    c.update(kw)
    return {"connections": {"m": c}}


def test_manual_keying():
    (c,) = parse_config(manual_conn()).connections
    sa = c.manual.inbound.esp
    assert (sa.spi, sa.encryption, sa.integrity) == (0x1000, "aes128", "sha256")
    assert sa.enc_key.value == bytes.fromhex(KEY16) and c.auth is None and c.start == "start"


def test_manual_keying_ah_bundle_and_hex_forms():
    inb = {"esp": {"spi": "0x1000", "enc_key": "0x" + ":".join([KEY16[i:i + 2] for i in range(0, 32, 2)]),
                   "auth_key": KEY16 + "00112233"},
           "ah": {"spi": 4097, "key": KEY32}}
    out = {"esp": {"spi": 0x2000, "enc_key": KEY16, "auth_key": KEY16 + "00112233"},
           "ah": {"spi": 0x2001, "key": KEY32}}
    (c,) = parse_config(manual_conn(esp="aes128-sha1", ah="sha256", inbound=inb,
                                    outbound=out)).connections
    assert c.manual.inbound.esp.enc_key.value == bytes.fromhex(KEY16)
    assert c.manual.inbound.ah.integrity == "sha256" and c.manual.inbound.ah.spi == 0x1001


@pytest.mark.parametrize("esp,inbound,line", [
    ("aes128-sha256", {"esp": {"spi": 255, "enc_key": KEY16, "auth_key": KEY32}},
     "connections.m.manual.inbound.esp.spi: SPI 0xff is out of range (0x100..0xffffffff; 1-255 are reserved)"),
    ("aes128-sha256", {"esp": {"spi": 2**32, "enc_key": KEY16, "auth_key": KEY32}},
     "connections.m.manual.inbound.esp.spi: SPI 0x100000000 is out of range (0x100..0xffffffff; 1-255 are reserved)"),
    ("aes128-sha256", {"esp": {"spi": "12ab", "enc_key": KEY16, "auth_key": KEY32}},
     "connections.m.manual.inbound.esp.spi: '12ab' is not a number (like 0x1000)"),
    ("aes128-sha256", {"esp": {"spi": 0x1000, "enc_key": KEY16[:-2], "auth_key": KEY32}},
     "connections.m.manual.inbound.esp.enc_key: aes128 needs 16 bytes, got 15"),
    ("aes128-sha256", {"esp": {"spi": 0x1000, "enc_key": "xyz", "auth_key": KEY32}},
     "connections.m.manual.inbound.esp.enc_key: is not a hex string"),
    ("aes128-sha256", {"esp": {"spi": 0x1000, "enc_key": 1234, "auth_key": KEY32}},
     "connections.m.manual.inbound.esp.enc_key: expected a hex string, got integer (quote it)"),
    ("aes128-sha256", {"esp": {"spi": 0x1000, "enc_key": KEY16}},
     "connections.m.manual.inbound.esp.auth_key: required: 32 bytes for sha256"),
    ("aes128gcm16", {"esp": {"spi": 0x1000, "enc_key": KEY16}},
     "connections.m.manual.inbound.esp.enc_key: aes128gcm16 needs 20 bytes "
     "(key plus 4-byte salt, RFC 4106 8.1 / RFC 7634 2), got 16"),
    ("aes128gcm16", {"esp": {"spi": 0x1000, "enc_key": KEY16 + "01020304", "auth_key": KEY32}},
     "connections.m.manual.inbound.esp.auth_key: aes128gcm16 is an AEAD cipher: its key "
     "(20 bytes with the salt) authenticates too"),
    ("null-sha1", {"esp": {"spi": 0x1000, "enc_key": KEY16, "auth_key": KEY16 + "00112233"}},
     "connections.m.manual.inbound.esp.enc_key: null takes no key"),
    ("aes128-sha256", {"esp": {"spi": 0x1000, "enc_key": KEY16, "auth_key": KEY32},
                       "ah": {"spi": 0x1001, "key": KEY32}},
     "connections.m.manual.inbound.ah: the connection has no AH proposal (ah:)"),
    ("aes128-sha256", {},
     "connections.m.manual.inbound.esp: required: the connection's esp: names ESP"),
])
def test_manual_key_errors(esp, inbound, line):
    outbound = {"aes128-sha256": {"spi": 0x2000, "enc_key": KEY16, "auth_key": KEY32},
                "aes128gcm16": {"spi": 0x2000, "enc_key": KEY16 + "01020304"},
                "null-sha1": {"spi": 0x2000, "auth_key": KEY16 + "00112233"}}[esp]
    assert one_problem(manual_conn(esp=esp, inbound=inbound, outbound={"esp": outbound})) == line


def test_manual_rejects_ike_keys_and_needs_peer():
    ps = problems_of(manual_conn(psk="x", ike="aes128-sha256-modp2048", peer="%any",
                                 lifetime={"seconds": 10}))
    assert ps == ["connections.m.psk: not used with manual keying (manual:)",
                  "connections.m.ike: not used with manual keying (manual:)",
                  "connections.m.lifetime: not used with manual keying (manual:)",
                  "connections.m.peer: manual keying needs a peer address, not %any"]


def test_manual_inbound_spis_unique_across_connections():
    a = manual_conn()["connections"]["m"]
    data = {"connections": {"m": a, "n": copy.deepcopy(a)}}
    assert problems_of(data) == [
        "connections.n.manual.inbound.esp.spi: SPI 0x1000 is already used by connection 'm'"]


# -- fuzz: any YAML-shaped input gives a Config or a ConfigError, nothing else ---------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["%any", "10.200.0.2", "10.1.0.0/16", "auto", "aes128-sha256-modp2048",
                     "aes999", "esp-aes 256 esp-sha-hmac", "0x1000", KEY16, "@gw", "C=CH",
                     "tunnel", "start", "periodic", "group14", "sha1", "none"]))
_keys = st.sampled_from(
    ["daemon", "connections", "site-b", "peer", "psk", "psk_file", "auth", "esp", "ike", "ah",
     "manual", "inbound", "outbound", "spi", "enc_key", "auth_key", "key", "version",
     "lifetime", "dpd", "rri", "mtu", "tun", "local_ts", "cert", "ca", "rsa_encr", "pfs",
     "mss_clamp", "mode", "start", "local_id", "seq", "group", "encryption", "x"])
_yamlish = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(_keys, st.integers(0, 3)), inner, max_size=5)),
    max_leaves=25)


def _must_only_raise_config_error(data):
    try:
        cfg = parse_config(data, base_dir="/nonexistent")
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and "\n" not in p for p in e.problems)
    else:
        assert cfg.daemon is not None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yamlish)
def test_fuzz_random_structures(data):
    _must_only_raise_config_error(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["contract", "manual"]), st.lists(_keys, min_size=1, max_size=3),
       _yamlish)
def test_fuzz_mutated_valid_configs(base, key_path, value):
    data = yaml.safe_load(CONTRACT) if base == "contract" else manual_conn(
        esp="aes128-sha1", ah="sha256",
        inbound={"esp": {"spi": 0x1000, "enc_key": KEY16, "auth_key": KEY16 + "00112233"},
                 "ah": {"spi": 0x1001, "key": KEY32}})
    node = data["connections"][next(iter(data["connections"]))]
    for k in key_path[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = node[k] = {}
        node = nxt
    node[key_path[-1]] = value
    _must_only_raise_config_error(data)


_yaml_chars = st.sampled_from(list("ab: -[]{}\n\t'\"!&*#%@0x1,.?|>\\") +
                              ["connections:", "\n  site-b:", "\n    peer: ", "psk: ", "!!python/object:os.system",
                               "&a ", "*a", "? ", "!!binary ", "\xff", "\x00", "esp: "])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(_yaml_chars, max_size=40).map("".join))
def test_fuzz_yaml_text(tmp_path, text):
    f = tmp_path / "fuzz.yaml"
    f.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_config(f)
    except ConfigError as e:
        assert e.problems and all("\n" not in p for p in e.problems)


def test_python_tags_are_not_executed(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("daemon: !!python/object/apply:os.system ['false']\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    (line,) = e.value.problems
    assert line.startswith(f"{f}: line 1, column 9: ")


def test_listen_families_and_ipv6_peers():
    """issue 12: daemon.listen %any (the default) = IPv4 and IPv6; an address, 0.0.0.0 or
    :: = that family only, and a connection of the other family is refused by name."""
    conn = {"peer": "fd00:200::2", "psk": "k" * 20, "local_ts": ["10.1.0.0/16"],
            "remote_ts": ["10.2.0.0/16"]}
    assert parse_config({"connections": {"s": conn}}).daemon.listen == "%any"
    assert parse_config({"daemon": {"listen": "%any6"}, "connections": {"s": conn}}).daemon.listen == "::"
    v4 = {**conn, "peer": "10.200.0.2"}
    assert parse_config({"daemon": {"listen": "%any4"}, "connections": {"s": v4}}).daemon.listen == "0.0.0.0"
    with pytest.raises(ConfigError) as e:
        parse_config({"daemon": {"listen": "0.0.0.0"}, "connections": {"s": conn}})
    assert e.value.problems == ["connections.s.peer: fd00:200::2 is IPv6 but daemon.listen 0.0.0.0 "
                                "listens on IPv4 only (listen: %any for both)"]
    with pytest.raises(ConfigError) as e:
        parse_config({"daemon": {"listen": "::"}, "connections": {"s": {**conn, "peer": "%any",
                                                                       "local": "10.200.0.1"}}})
    assert e.value.problems[0].startswith("connections.s.local: 10.200.0.1 is IPv4")


def test_mobike_key():
    """issue 12: mobike: yes|no per connection, default yes (strongSwan's); IKEv2 only."""
    base = {"peer": "10.200.0.2", "psk": "k" * 20, "local_ts": ["10.1.0.0/16"],
            "remote_ts": ["10.2.0.0/16"]}
    assert parse_config({"connections": {"s": base}}).connections[0].mobike is True
    off = yaml.safe_load("mobike: no")
    assert parse_config({"connections": {"s": {**base, **off}}}).connections[0].mobike is False
    with pytest.raises(ConfigError) as e:
        parse_config({"connections": {"s": {**base, "version": 1, "mobike": True}}})
    assert e.value.problems == ["connections.s.mobike: MOBIKE (RFC 4555) is an IKEv2 extension: "
                                "not used with IKEv1 or manual keying"]
    with pytest.raises(ConfigError) as e:
        parse_config({"connections": {"s": {**base, "mobike": "sometimes"}}})
    assert e.value.problems[0].startswith("connections.s.mobike: expected true or false")
