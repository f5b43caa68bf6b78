"""vpnctl pki as an operator uses it: keys, a CA, gateway certificates that openssl verifies,
Cisco key-strings both ways, fingerprints equal to openssl's and strongSwan's `pki --keyid`,
and the outputs accepted by `vpnd --check` as auth: cert/key/ca and rsa_encr keys."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vpnd import pki

BIN = Path(sys.executable).parent


def vpnctl(*args, check=True, **kw):
    return subprocess.run([str(BIN / "vpnctl"), *map(str, args)], capture_output=True, check=check, **kw)


def openssl(*args, **kw):
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, check=True, **kw)


@pytest.fixture
def made(tmp_path):
    """CA (RSA) + two gateways (RSA, ECDSA) made with the CLI."""
    t = tmp_path
    vpnctl("pki", "genkey", "--size", "2048", "--out", t / "ca.key")
    vpnctl("pki", "genkey", "--size", "2048", "--out", t / "gw-a.key")
    vpnctl("pki", "genkey", "--type", "ecdsa", "--size", "384", "--out", t / "gw-b.key")
    vpnctl("pki", "ca", "--key", t / "ca.key", "--dn", "C=CH, O=Example, CN=Example CA",
           "--out", t / "ca.pem")
    vpnctl("pki", "issue", "--ca", t / "ca.pem", "--ca-key", t / "ca.key", "--key", t / "gw-a.key",
           "--dn", "C=CH, O=Example, CN=gw-a", "--id", "10.200.0.1", "--id", "@gw-a.example.com",
           "--id", "ops@example.com", "--out", t / "gw-a.pem")
    vpnctl("pki", "issue", "--ca", t / "ca.pem", "--ca-key", t / "ca.key", "--key", t / "gw-b.key",
           "--dn", "C=CH, O=Example, CN=gw-b", "--id", "2001:db8::2", "--out", t / "gw-b.pem")
    return t


def test_private_keys_are_0600_and_chain_verifies_with_openssl(made):
    for k in ("ca.key", "gw-a.key", "gw-b.key"):
        assert (made / k).stat().st_mode & 0o777 == 0o600
    for gw in ("gw-a.pem", "gw-b.pem"):
        out = openssl("verify", "-CAfile", made / "ca.pem", "-purpose", "sslclient", made / gw, text=True)
        assert out.stdout.strip().endswith(": OK")
    text = openssl("x509", "-in", made / "gw-a.pem", "-noout", "-text", text=True).stdout
    assert "IP Address:10.200.0.1" in text and "DNS:gw-a.example.com" in text
    assert "email:ops@example.com" in text and "Subject: C = CH, O = Example, CN = gw-a" in text
    assert "IP Address:2001:DB8:0:0:0:0:0:2" in openssl("x509", "-in", made / "gw-b.pem", "-noout",
                                                         "-text", text=True).stdout
    # the key files are what openssl reads as keys of those certificates
    for gw in ("gw-a", "gw-b"):
        a = openssl("x509", "-in", made / f"{gw}.pem", "-noout", "-pubkey").stdout
        b = openssl("pkey", "-in", made / f"{gw}.key", "-pubout").stdout
        assert a == b


def test_vpnd_check_accepts_the_certificates_and_a_key_string_peer_key(made):
    conf = made / "vpnd.yaml"
    # what a Cisco peer's `addressed-key ... encryption` key-string becomes for rsa_encr
    ios = vpnctl("pki", "pub", "--in", made / "gw-b.key", "--format", "key-string").stdout
    (made / "peer.keystring").write_bytes(b"key-string\n" + ios + b"quit\n")
    vpnctl("pki", "pub", "--in", made / "peer.keystring", "--out", made / "peer.pub")
    conf.write_text(f"""daemon: {{tun: vpnd9}}
connections:
  cert:
    peer: 10.200.0.2
    local_id: "@gw-a.example.com"
    remote_id: "C=CH, O=Example, CN=gw-b"
    auth: {{cert: {made}/gw-a.pem, key: {made}/gw-a.key, ca: {made}/ca.pem}}
  encr:
    version: 1
    peer: 10.200.0.3
    ike: aes128-sha256-modp2048
    auth: {{rsa_encr: {{key: {made}/gw-a.key, peer_pubkey: {made}/gw-a.pub}}}}
""")
    vpnctl("pki", "pub", "--in", made / "gw-a.pem", "--out", made / "gw-a.pub")
    r = subprocess.run([str(BIN / "vpnd"), "--config", conf, "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_key_string_round_trip_in_ios_layout(made):
    out = vpnctl("pki", "pub", "--in", made / "gw-a.key", "--format", "ios",
                 "--addressed-key", "10.200.0.1", text=True).stdout
    lines = out.splitlines()
    assert lines[:3] == ["crypto key pubkey-chain rsa", " addressed-key 10.200.0.1 encryption",
                         "  key-string"]
    assert lines[-2:] == ["  quit", " exit"]
    hexlines = lines[3:-2]
    for l in hexlines[:-1]:  # IOS: 8 groups of 8 upper-case hex digits per line
        assert re.fullmatch(r"   ([0-9A-F]{8} ){7}[0-9A-F]{8}", l), l
    der = openssl("pkey", "-in", made / "gw-a.key", "-pubout", "-outform", "DER").stdout
    assert "".join(hexlines).replace(" ", "") == der.hex().upper()
    # read back: the whole pasted block, or `show crypto key mypubkey rsa`'s Key Data lines
    (made / "block.txt").write_text(out)
    back = vpnctl("pki", "pub", "--in", made / "block.txt", "--format", "der").stdout
    assert back == der
    assert pki.public_der(pki.parse_key_string("Key Data:\n" + pki.to_key_string(der))) == der
    with pytest.raises(pki.PkiError):
        pki.parse_key_string("key-string\n 3082ZZZZ\nquit\n")
    with pytest.raises(pki.PkiError):
        pki.parse_key_string("key-string\n 30820122 3000\nquit\n")


def test_fingerprints_match_openssl_and_strongswan(made):
    out = vpnctl("pki", "keyid", "--in", made / "gw-a.pem", text=True).stdout
    fps = dict(re.findall(r"^(.+):\n\s+([0-9a-f:]+)$", out, re.M))
    der = openssl("pkey", "-in", made / "gw-a.key", "-pubout", "-outform", "DER").stdout
    import hashlib
    assert fps["SHA-256 of subjectPublicKeyInfo"].replace(":", "") == hashlib.sha256(der).hexdigest()
    cert_fp = openssl("x509", "-in", made / "gw-a.pem", "-noout", "-fingerprint", "-sha256",
                      text=True).stdout.split("=")[1].strip().lower()
    assert fps["SHA-256 of the certificate"] == cert_fp
    # the same from the private key (no certificate line then)
    key_out = vpnctl("pki", "keyid", "--in", made / "gw-a.key", text=True).stdout
    assert fps["subjkey (SHA-1 of subjectPublicKey)"] in key_out
    if shutil.which("pki"):  # strongSwan's own tool (Debian strongswan-pki)
        sw = subprocess.run(["pki", "--keyid", "--in", made / "gw-a.pem", "--type", "x509"],
                            capture_output=True, text=True, check=True).stdout
        sw_fps = dict(re.findall(r"^(.+):\n\s+([0-9a-f:]+)$", sw, re.M))
        assert sw_fps["subjkey (SHA-1 of subjectPublicKey)"] == fps["subjkey (SHA-1 of subjectPublicKey)"]
        assert sw_fps["keyid (SHA-1 of subjectPublicKeyInfo)"] == fps["keyid (SHA-1 of subjectPublicKeyInfo)"]


def test_errors_are_one_line_and_no_private_key_on_a_terminal(made):
    r = vpnctl("pki", "issue", "--ca", made / "ca.pem", "--ca-key", made / "gw-a.key", "--key",
               made / "gw-a.key", "--dn", "CN=x", check=False, text=True)
    assert r.returncode == 1 and r.stderr == "vpnctl pki: --ca-key is not the key of --ca\n"
    r = vpnctl("pki", "issue", "--ca", made / "gw-a.pem", "--ca-key", made / "gw-a.key", "--key",
               made / "gw-b.key", "--dn", "CN=x", check=False, text=True)
    assert r.returncode == 1 and "not a CA certificate" in r.stderr
    r = vpnctl("pki", "ca", "--key", made / "ca.key", "--dn", "gw.example.com", check=False, text=True)
    assert r.returncode == 1 and "not a distinguished name" in r.stderr
    r = vpnctl("pki", "genkey", "--type", "ecdsa", "--size", "255", check=False, text=True)
    assert r.returncode == 1 and "256, 384 or 521" in r.stderr
    r = vpnctl("pki", "pub", "--in", made / "gw-b.key", "--format", "ios", "--named-key", "x",
               check=False, text=True)
    assert r.returncode == 1 and "RSA keys only" in r.stderr
    (made / "junk").write_bytes(b"\x00\xffjunk" * 10)
    r = vpnctl("pki", "keyid", "--in", made / "junk", check=False, text=True)
    assert r.returncode == 1 and r.stderr.startswith("vpnctl pki: ") and "Traceback" not in r.stderr
    r = vpnctl("pki", "keyid", "--in", made / "nothere", check=False, text=True)
    assert r.returncode == 1 and "No such file" in r.stderr
    # a terminal gets no private key (script(1) gives it one)
    if shutil.which("script"):
        r = subprocess.run(["script", "-qec", f"{BIN / 'vpnctl'} pki genkey", "/dev/null"],
                           capture_output=True, text=True)
        assert "BEGIN PRIVATE KEY" not in r.stdout and "refusing" in r.stdout
