"""Credentials in one place (vpnd/crypto/credentials.py, issue 9): certificates and keys read
once from the config into an immutable store shared by both IKE engines; the engines read
no file; a reload reads the files as they are then."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization

from test_certs import Node, _auth, gw
from test_ikev2_pair import A_IP, B_IP, Pair, conf as v2_conf
from vpnd.config import Auth
from vpnd.configschema import MAX_FILE_BYTES
from vpnd.crypto import credentials
from vpnd.crypto.auth import AuthError
from vpnd.crypto.credentials import CredentialStore


def _pki(tmp_path):
    root = Node("root")
    mid = Node("mid", root)
    a = _auth(tmp_path, "a", gw("gw-a", mid, kind="rsa"), [mid], root)
    b = _auth(tmp_path, "b", gw("gw-b", root, kind="rsa"), [], root)
    return root, mid, a, b


def test_engines_read_no_file_after_start(tmp_path):
    # both ends' files disappear after the managers started: the handshake still works
    # (it used to load them at the first IKE_AUTH)
    _, _, a, b = _pki(tmp_path)
    p = Pair({"auth": a}, {"auth": b})
    for f in tmp_path.iterdir():
        f.unlink()
    p.up()
    p.check_tunnel()


def test_one_store_for_both_versions_each_file_read_once(tmp_path, monkeypatch):
    _, _, a, b = _pki(tmp_path)
    reads = []
    orig = credentials.read_bounded
    monkeypatch.setattr(credentials, "read_bounded", lambda path: reads.append(path) or orig(path))
    p = Pair({"auth": a}, {"auth": b})
    m = p.a.m
    assert m.v1.creds is m.v2.creds
    assert sorted(reads) == sorted([a["cert"], a["key"], a["ca"], b["cert"], b["key"], b["ca"]])
    p.up()
    assert len(reads) == 6  # nothing read during the handshake
    cr = m.v2.credentials(m.config.connections[0])
    assert len(cr.chain) == 1 and "mid" in cr.chain[0].subject.rfc4514_string()
    # immutable: no attribute of the shared objects can be changed
    with pytest.raises(Exception):
        cr.cert = None
    with pytest.raises(TypeError):
        m.v2.creds._entries[object()] = cr


def test_reload_reads_the_files_as_they_are_now(tmp_path):
    # a renewed certificate under the same file name is taken on reload (IKEv2 used to keep
    # the one it had cached by path)
    root, _, a, b = _pki(tmp_path)
    p = Pair({"auth": a}, {"auth": b})
    conn = p.b.m.config.connections[0]
    old = p.b.m.v2.credentials(conn).cert
    renewed = gw("gw-b", root, kind="rsa")
    (tmp_path / "b.pem").write_bytes(renewed.cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "b.key").write_bytes(renewed.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert p.b.m.v2.credentials(conn).cert == old  # loaded once, not per use
    # SIGHUP: the config is parsed again (which reads the files), then given to the manager
    new_config = v2_conf(B_IP, A_IP, "10.2.0.0/16", "10.1.0.0/16", auth=b)
    p.feed(p.b, p.b.m.reload(new_config, p.now))
    assert p.b.m.v2.credentials(conn).cert == renewed.cert
    assert p.b.m.v1.creds is p.b.m.v2.creds
    p.up()
    p.check_tunnel()


def _conf(tmp_path, **auth):
    return SimpleNamespace(connections=[SimpleNamespace(name="site", auth=Auth("cert", **auth))])


def test_bad_files_are_errors_of_their_connection(tmp_path):
    _, _, a, _ = _pki(tmp_path)
    big = tmp_path / "big.pem"
    big.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * (MAX_FILE_BYTES + 10))
    cases = {"/dev/zero": "not a regular file", str(big): "larger than",
             str(tmp_path / "gone.pem"): "cannot read",
             a["key"]: "not a PEM or DER certificate"}
    for path, word in cases.items():
        conf = _conf(tmp_path, cert=path, key=a["key"], ca=(a["ca"],))
        store = CredentialStore.from_config(conf)  # never raises, never reads without bound
        with pytest.raises(AuthError, match=word):
            store.get(conf.connections[0])
    conf = _conf(tmp_path, cert=a["cert"], key=a["cert"], ca=(a["ca"],))
    with pytest.raises(AuthError) as err:
        CredentialStore.from_config(conf).get(conf.connections[0])
    assert "private key" in str(err.value) and "BEGIN" not in str(err.value)


def test_no_key_material_in_reprs(tmp_path):
    _, _, a, _ = _pki(tmp_path)
    conf = _conf(tmp_path, cert=a["cert"], key=a["key"], ca=(a["ca"],))
    store = CredentialStore.from_config(conf)
    cr = store.get(conf.connections[0])
    pem = open(a["key"]).read()
    for text in (repr(cr), str(cr), repr(store)):
        assert "PRIVATE" not in text and pem[40:80] not in text and "key=" not in text
    # PSK connections have no entry and no error
    psk = SimpleNamespace(name="p", auth=Auth("psk"))
    assert CredentialStore.from_config(SimpleNamespace(connections=[psk])).get(psk) is None
