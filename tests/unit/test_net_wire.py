"""net/: the NAT-T port demultiplexer (RFC 3948), sd_notify datagrams, RRI options, and the
daemon's reading of manual-key connections."""

import os
import socket

import pytest

from vpnd.net import notify
from vpnd.net.routes import RTPROT_STATIC, RTNH_F_ONLINK, RouteManager, RouteOptions
from vpnd.esp.natt import NON_ESP_MARKER, classify_udp4500


@pytest.mark.parametrize("data,kind", [
    (b"\xff", "keepalive"),                             # RFC 3948 2.3 NAT-keepalive
    (NON_ESP_MARKER + b"\x11" * 28, "ike"),             # RFC 3948 2.2 non-ESP marker
    (b"\x00\x00\x10\x01" + b"\x00" * 20, "esp"),         # SPI 0x1001
    (b"\xde\xad\xbe\xef", "bad"),                       # SPI only: shorter than any ESP
    (b"\xde\xad\xbe\xef\x00\x00\x00\x01", "esp"),       # SPI and sequence number
    (NON_ESP_MARKER, "bad"),                            # a marker and nothing after it
    (b"", "bad"),
    (b"\x00\x01", "bad"),
    (b"\xff\xff", "bad"),                               # not a keepalive (length 1 only)
])
def test_classify_natt(data, kind):
    assert classify_udp4500(data) == kind


def _listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    return s, path


def test_sd_notify_path(tmp_path, monkeypatch):
    s, path = _listener(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        assert notify.ready("2 SAs installed")
        assert s.recv(100) == b"READY=1\nSTATUS=2 SAs installed"
        assert notify.reloading() and s.recv(100) == b"RELOADING=1"
        assert notify.stopping() and s.recv(100) == b"STOPPING=1"
    finally:
        s.close()


def test_sd_notify_abstract(monkeypatch):
    name = f"vpnd-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert notify.ready()
        assert s.recv(100) == b"READY=1"
    finally:
        s.close()


def test_sd_notify_absent_or_dead(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify.ready() is False  # no exception: systemd gone is not our failure


def test_route_options_and_specs():
    class Rri:
        enabled, next_hop, metric, tag, static, remote_peer = True, None, 10, 42, True, False
    o = RouteOptions.from_config(Rri)
    assert (o.enabled, o.next_hop, o.metric, o.tag, o.static) == (True, None, 10, 42, True)
    rm = RouteManager.__new__(RouteManager)
    rm.tun_index = 7
    assert rm._spec("10.2.0.0/16", o) == {"dst": "10.2.0.0/16", "oif": 7, "proto": 42, "priority": 10}
    nh = o.replace(next_hop="10.9.9.9", metric=None, tag=None)
    assert rm._spec("10.2.0.0/16", nh) == {"dst": "10.2.0.0/16", "oif": 7, "proto": RTPROT_STATIC,
                                           "gateway": "10.9.9.9", "flags": RTNH_F_ONLINK}
    outer = nh.replace(oif=3)  # host route to the peer over the WAN: no onlink
    assert rm._spec("10.200.0.2/32", outer)["oif"] == 3
    assert "flags" not in rm._spec("10.200.0.2/32", outer)
    assert o.key() != nh.key() != outer.key()


def test_manual_install_action_keys_stay_hidden():
    from vpnd.config import parse_config
    from vpnd.ike.manual import install_action as manual_install_action
    cfg = parse_config({
        "daemon": {"tun": "vpnd0"},
        "connections": {"x": {
            "local": "10.200.0.1", "peer": "10.200.0.2", "esp": "aes128-sha256", "ah": "sha1",
            "local_ts": ["10.1.0.0/16"], "remote_ts": ["10.2.0.0/16"], "replay_window": 128,
            "manual": {
                "inbound": {"esp": {"spi": 0x1001, "enc_key": "11" * 16, "auth_key": "22" * 32},
                            "ah": {"spi": 0x1002, "key": "33" * 20}},
                "outbound": {"esp": {"spi": 0x2001, "enc_key": "44" * 16, "auth_key": "55" * 32},
                             "ah": {"spi": 0x2002, "key": "66" * 20}}}}}})
    act = manual_install_action(cfg.connections[0], 99)
    assert [(k.spi, k.protocol, k.encryption, k.integrity) for k in act.inbound] == [
        (0x1001, "esp", "aes128", "sha256"), (0x1002, "ah", None, "sha1")]
    assert act.outbound[0].enc_key == bytes.fromhex("44" * 16)
    assert act.outbound[1].auth_key == bytes.fromhex("66" * 20)
    assert act.replay_window == 128 and act.child_id == 99 and act.udp_encap is False
    assert act.proposal == "AES_CBC-128/HMAC_SHA2_256_128/AH:HMAC_SHA1_96"
    text = repr(act)
    for secret in ("11" * 16, "22" * 32, "33" * 20, "44" * 16, "55" * 32, "66" * 20):
        assert secret not in text
    assert "\\x11" not in text and "\\x44" not in text
