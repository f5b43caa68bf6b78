"""vpnctl keys --wireshark: the control command is refused without daemon.allow_key_export,
exports the installed SAs' keys with it, and the UAT lines are in Wireshark's format (tshark
loads them; the live decryption is tests/netns/test_ops_keys.py)."""

import asyncio
import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from vpnd import keyexport
from vpnd.control import dispatch, parse_request
from vpnd.daemon import Daemon
from vpnd.ike.actions import ChildKeys


def fake_daemon(allow: bool):
    act = SimpleNamespace(
        connection="site-b", local=("10.200.0.1", 4500), remote=("10.200.0.2", 4500),
        inbound=(ChildKeys(0xc1a2b3c4, "esp", "aes128", "sha256", b"\x01" * 16, b"\x02" * 32),
                 ChildKeys(0xc1a2b3c5, "ah", None, "sha1", b"", b"\x03" * 20)),
        outbound=(ChildKeys(0xd5e6f7a8, "esp", "aes128gcm16", None, b"\x04" * 20, b""),))
    v2 = SimpleNamespace(sas={1: SimpleNamespace(
        conn=SimpleNamespace(name="site-b"), spi_i=bytes.fromhex("1122334455667788"),
        spi_r=bytes.fromhex("99aabbccddeeff00"),
        keys=SimpleNamespace(encryption="aes256gcm16", integrity=None, sk_ei=b"\x05" * 36,
                             sk_er=b"\x06" * 36, sk_ai=b"", sk_ar=b"")),
        2: SimpleNamespace(spi_i=b"\x01" * 8, spi_r=b"", keys=None)})  # half-open: skipped
    v1 = SimpleNamespace(sas={b"\x07" * 8: SimpleNamespace(
        conn=SimpleNamespace(name="old"), cky_i=b"\x07" * 8, cky_r=b"\x08" * 8,
        keys=SimpleNamespace(enc_key=b"\x09" * 32))})
    d = SimpleNamespace(config=SimpleNamespace(daemon=SimpleNamespace(allow_key_export=allow)),
                        children={1: SimpleNamespace(action=act)},
                        ike=SimpleNamespace(v2=v2, v1=v1))
    d.export_keys = lambda: Daemon.export_keys(d)  # the daemon's command, on this stand-in
    return d


def run(handler):
    return asyncio.run(dispatch(handler, parse_request(b'{"command": "keys"}')))


def test_refused_unless_allowed():
    r = run(fake_daemon(False))
    assert r["ok"] is False and "allow_key_export" in r["error"]


def test_export_and_uat_lines(caplog):
    r = run(fake_daemon(True))
    assert r["ok"] is True
    res = r["result"]
    assert len(res["esp_sa"]) == 2 and len(res["ikev2"]) == 1 and len(res["ikev1"]) == 1
    esp, notes = keyexport.esp_sa_lines(res["esp_sa"])
    assert esp == [
        '"IPv4","10.200.0.2","10.200.0.1","0xc1a2b3c4","AES-CBC [RFC3602]","0x' + "01" * 16
        + '","HMAC-SHA-256-128 [RFC4868]","0x' + "02" * 32 + '"',
        '"IPv4","10.200.0.1","10.200.0.2","0xd5e6f7a8","AES-GCM with 16 octet ICV [RFC4106]","0x'
        + "04" * 20 + '","NULL",""']
    v2, _ = keyexport.ikev2_lines(res["ikev2"])
    assert v2 == ["1122334455667788,99aabbccddeeff00," + "05" * 36 + "," + "06" * 36
                  + ',"AES-GCM-256 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"']
    assert keyexport.ikev1_lines(res["ikev1"]) == ["07" * 8 + "," + "09" * 32]
    # the log says that keys left, never which
    assert "01010101" not in caplog.text


def test_chacha_is_noted_not_written():
    lines, notes = keyexport.esp_sa_lines([{"connection": "c", "spi": 0x100, "src": "::1",
                                            "dst": "::2", "encryption": "chacha20poly1305",
                                            "integrity": None, "enc_key": "00", "auth_key": ""}])
    assert lines == [] and "chacha20poly1305" in notes[0]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_accepts_the_files(tmp_path):
    res = run(fake_daemon(True))["result"]
    for name, lines in (("esp_sa", keyexport.esp_sa_lines(res["esp_sa"])[0]),
                        ("ikev2_decryption_table", keyexport.ikev2_lines(res["ikev2"])[0]),
                        ("ikev1_decryption_table", keyexport.ikev1_lines(res["ikev1"]))):
        keyexport._write(str(tmp_path / name), lines)
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    r = subprocess.run(["tshark", "-r", "/dev/null", "-o", "esp.enable_encryption_decode:TRUE"],
                       capture_output=True, text=True,
                       env=dict(os.environ, WIRESHARK_CONFIG_DIR=str(tmp_path)))
    assert "Error loading table" not in r.stderr and "invalid value" not in r.stderr, r.stderr
