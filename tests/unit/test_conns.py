"""vpnctl conns (vpnd/conns.py) and the control protocol of `down --peer / --all`."""
from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from vpnd.config import load_config
from vpnd.conns import describe, format_conns
from vpnd.control import ProtocolError, parse_request

CONF = """daemon: {tun: vpnd0}
connections:
  site:
    peer: 10.200.0.2
    local: 10.200.0.1
    psk: "a-long-secret-psk-value"
    local_id: "@gw-a.example"
    ike: aes256-sha256-modp2048
    esp: aes256gcm16
    local_ts: [10.1.0.0/16]
    remote_ts: [10.2.0.0/16]
    dpd: {interval: 10, retry: 2}
    lifetime: {ike: 28800, seconds: 1800, kilobytes: 100000}
"""


def test_conns_lists_configuration_without_secrets(tmp_path):
    p = tmp_path / "vpnd.yaml"
    p.write_text(CONF)
    p.chmod(0o600)
    res = describe(NS(config=load_config(str(p))))
    (c,) = res["connections"]
    assert c["local_id"] == "@gw-a.example" and c["auth"] == "psk"
    assert c["dpd"]["interval"] == 10 and c["lifetime"]["seconds"] == 1800
    text = format_conns(res)
    assert "a-long-secret-psk-value" not in text and "a-long-secret" not in str(res)
    assert "10.1.0.0/16 === 10.2.0.0/16" in text
    assert "aes256-sha256-prfsha256-modp2048" in text and "aes256gcm16" in text
    assert "every 10 s" in text and "lifetime 1800 s / 100000 KB" in text


def test_down_by_peer_or_all_requests():
    assert parse_request(b'{"command":"down","peer":"10.0.0.2"}') == \
        {"command": "down", "all": False, "peer": "10.0.0.2"}
    assert parse_request(b'{"command":"down","all":true}') == {"command": "down", "all": True}
    for bad in (b'{"command":"down","peer":"nope"}', b'{"command":"down","all":1}',
                b'{"command":"down","all":true,"peer":"10.0.0.2"}',
                b'{"command":"down","name":"x","all":true}', b'{"command":"down","peer":5}'):
        with pytest.raises(ProtocolError):
            parse_request(bad)
    assert parse_request(b'{"command":"conns"}') == {"command": "conns"}


def test_vpnctl_down_usage(capsys):
    from vpnd.cli import vpnctl_main
    assert vpnctl_main(["--socket", "/nonexistent", "down"]) == 2
    assert vpnctl_main(["--socket", "/nonexistent", "down", "x", "--all"]) == 2
    assert vpnctl_main(["--socket", "/nonexistent", "down", "--all"]) == 3  # unreachable
