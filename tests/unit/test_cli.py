"""vpnctl and vpnd command lines: parsing, socket defaults, exit codes, the status table."""

import asyncio
import json
import threading

import pytest

from vpnd import cli
from vpnd.control import ControlServer
from vpnd.daemon import CommandError
from vpnd.status import format_status

STATUS = {
    "connections": [{"name": "site-b", "version": 2, "peer": "10.200.0.2", "state": "up",
                     "ike_sas": 1, "child_sas": 1},
                    {"name": "lab", "version": 2, "peer": "10.9.0.1", "state": "down",
                     "ike_sas": 0, "child_sas": 0, "keying": "manual"}],
    "ike_sas": [{
        "connection": "site-b", "version": 2, "state": "ESTABLISHED",
        "local": "10.200.0.1:500", "remote": "10.200.0.2:500", "nat_detected": False,
        "initiator": True, "spi_i": "1122334455667788", "spi_r": "99aabbccddeeff00",
        "proposal": "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
        "established_s": 12, "rekey_in_s": 3500,
        "child_sas": [{"name": "site-b", "state": "INSTALLED", "mode": "tunnel", "protocol": "esp",
                       "udp_encap": False, "spi_in": "c1a2b3c4", "spi_out": "d5e6f7a8",
                       "proposal": "AES_GCM_16-128", "local_ts": ["10.1.0.0/16"],
                       "remote_ts": ["10.2.0.0/16"], "bytes_in": 8400, "packets_in": 100,
                       "bytes_out": 8316, "packets_out": 99, "replay_drops": 3,
                       "auth_failures": 2, "rekey_in_s": 3000}]}]}


# -- parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,req", [
    (["status"], {"command": "status"}),
    (["status", "--json"], {"command": "status"}),
    (["up", "site-b"], {"command": "up", "name": "site-b", "timeout": 30.0}),
    (["down", "site-b", "--timeout", "5"], {"command": "down", "name": "site-b", "timeout": 5.0}),
    (["rekey", "site-b"], {"command": "rekey", "name": "site-b", "timeout": 30.0, "ike": False}),
    (["rekey", "site-b", "--ike"], {"command": "rekey", "name": "site-b", "timeout": 30.0, "ike": True}),
    (["--socket", "/x.sock", "reload"], {"command": "reload"}),
])
def test_vpnctl_requests(argv, req):
    args = cli.vpnctl_parser().parse_args(argv)
    assert cli.build_request(args) == req


@pytest.mark.parametrize("argv", [[], ["up"], ["frobnicate"], ["status", "--yaml"], ["reload", "x"]])
def test_vpnctl_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.vpnctl_main(argv)
    assert e.value.code == 2


def test_vpnd_parser_defaults():
    a = cli.vpnd_parser().parse_args([])
    assert a.config == "/etc/vpnd/vpnd.yaml" and a.check is False
    a = cli.vpnd_parser().parse_args(["--config", "f.yaml", "--check"])
    assert a.config == "f.yaml" and a.check is True


def test_default_socket_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("VPND_SOCKET", raising=False)
    cfg = tmp_path / "vpnd.yaml"
    assert cli.default_socket(str(cfg)) == "/run/vpnd/vpnd.sock"  # no config file
    cfg.write_text("daemon:\n  control_socket: /tmp/elsewhere.sock\n")
    assert cli.default_socket(str(cfg)) == "/tmp/elsewhere.sock"
    cfg.write_text("daemon: [not, a, mapping\n")  # broken YAML: built-in default
    assert cli.default_socket(str(cfg)) == "/run/vpnd/vpnd.sock"
    monkeypatch.setenv("VPND_SOCKET", "/tmp/env.sock")
    assert cli.default_socket(str(cfg)) == "/tmp/env.sock"


# -- against a live control server -----------------------------------------------------------

class Handler:
    def status(self):
        return STATUS

    async def cmd_up(self, name, timeout=30.0):
        if name != "site-b":
            raise CommandError(f"no connection named {name!r}")
        return {"connection": name, "state": "up"}

    async def cmd_down(self, name, timeout=15.0):
        raise CommandError(f"{name}: timed out after {timeout:g}s waiting for the CHILD_SA to be deleted")

    async def cmd_rekey(self, name, ike=False, timeout=30.0):
        return {"connection": name, "rekeyed": "ike" if ike else "child"}

    async def cmd_reload(self):
        return {"reloaded": True}


@pytest.fixture
def sock(tmp_path, monkeypatch):
    loop = asyncio.new_event_loop()
    srv = ControlServer(str(tmp_path / "c.sock"), Handler())
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    asyncio.run_coroutine_threadsafe(srv.start(), loop).result(5)
    monkeypatch.setenv("VPND_SOCKET", srv.path)
    yield srv.path
    asyncio.run_coroutine_threadsafe(srv.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    loop.close()


def test_status_json_is_the_object(sock, capsys):
    assert cli.vpnctl_main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_status_table(sock, capsys):
    assert cli.vpnctl_main(["--socket", sock, "status"]) == 0
    out = capsys.readouterr().out
    assert out == format_status(STATUS)


def test_up_ok_and_unknown(sock, capsys):
    assert cli.vpnctl_main(["up", "site-b"]) == 0
    assert capsys.readouterr().out.strip() == "site-b: up"
    assert cli.vpnctl_main(["up", "nope"]) == 1
    assert "up failed: no connection named 'nope'" in capsys.readouterr().err


def test_down_timeout_reason(sock, capsys):
    assert cli.vpnctl_main(["down", "site-b", "--timeout", "2"]) == 1
    assert "timed out after 2s" in capsys.readouterr().err


def test_rekey_and_reload(sock, capsys):
    assert cli.vpnctl_main(["rekey", "site-b", "--ike"]) == 0
    assert "IKE SA rekeyed" in capsys.readouterr().out
    assert cli.vpnctl_main(["reload"]) == 0


def test_bad_timeout_exit_2(sock, capsys):
    assert cli.vpnctl_main(["up", "site-b", "--timeout", "0"]) == 2


def test_unreachable_exit_3(tmp_path, capsys):
    assert cli.vpnctl_main(["--socket", str(tmp_path / "none.sock"), "status"]) == 3
    assert "is vpnd running?" in capsys.readouterr().err


# -- the table ----------------------------------------------------------------------------------

def test_format_status_shows_cisco_like_fields():
    out = format_status(STATUS)
    for needle in ("10.200.0.2", "ESTABLISHED", "1122334455667788/99aabbccddeeff00",
                   "inbound  spi 0xc1a2b3c4: #pkts decaps 100, #bytes 8400",
                   "outbound spi 0xd5e6f7a8: #pkts encaps 99, #bytes 8316",
                   "#replay drops 3, #auth failures 2", "AES_GCM_16-128",
                   "local  ident: 10.1.0.0/16", "remote ident: 10.2.0.0/16"):
        assert needle in out, needle
    lab = [line for line in out.splitlines() if line.strip().startswith("lab")]
    assert lab and "manual" in lab[0] and "down" in lab[0]


def test_format_status_empty():
    out = format_status({"connections": [], "ike_sas": []})
    assert "(none configured)" in out and out.count("(none)") == 2


def test_format_status_daemon_footer_shows_moved_drop_counters():
    st = {"connections": [], "ike_sas": [],
          "daemon": {"tun": "vpnd0", "mtu": 1446, "uptime_s": 3, "routes": ["10.2.0.0/16"],
                     "decap_drops": 2, "dp_unknown_spi": 1, "dp_malformed": 0, "tun_in": 9}}
    out = format_status(st)
    assert "daemon: tun vpnd0 mtu 1446, uptime 3s, routes 10.2.0.0/16" in out
    assert "drops: decap_drops 2, unknown_spi 1\n" in out and "malformed" not in out
    st["daemon"].update(decap_drops=0, dp_unknown_spi=0)
    assert "drops: none" in format_status(st)
