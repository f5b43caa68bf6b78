"""updown: (vpnd/updown.py): --check of the key, the strongSwan environment, and the
runner's timeout kill."""
from __future__ import annotations

import asyncio
import ipaddress
import logging

import pytest

from vpnd.cli import vpnd_main
from vpnd.ike.actions import ChildKeys, InstallChildSA
from vpnd.updown import Updown, environment

CONF = """daemon: {{tun: vpnd0}}
connections:
  site:
    peer: 10.200.0.2
    local: 10.200.0.1
    psk: "a-long-secret-psk-value"
    local_ts: [10.1.0.0/16]
    remote_ts: [10.2.0.0/16]
    {extra}
"""


def _check(tmp_path, extra, capsys):
    p = tmp_path / "vpnd.yaml"
    p.write_text(CONF.format(extra=extra))
    p.chmod(0o600)
    rc = vpnd_main(["--config", str(p), "--check"])
    return rc, capsys.readouterr().err


def test_check_updown_key(tmp_path, capsys):
    script = tmp_path / "up.sh"
    script.write_text("#!/bin/sh\n")
    rc, err = _check(tmp_path, f"updown: {tmp_path}/missing.sh", capsys)
    assert rc == 1 and "connections.site.updown:" in err and "does not exist" in err
    script.chmod(0o644)
    rc, err = _check(tmp_path, f"updown: {script}", capsys)
    assert rc == 1 and "connections.site.updown:" in err and "not executable" in err
    script.chmod(0o755)
    rc, err = _check(tmp_path, "updown: up.sh\n    updown_timeout: 2.5", capsys)  # relative
    assert rc == 0, err
    rc, err = _check(tmp_path, f"updown: {script}\n    updown_timeout: 0", capsys)
    assert rc == 1 and "connections.site.updown_timeout:" in err


def _act(mode="tunnel", v6=False, encap=False):
    k = ChildKeys(protocol="esp", spi=0x1234, encryption="aes128gcm16", integrity=None,
                  enc_key=b"\x11" * 20, auth_key=b"")
    loc = ("2001:db8::1", 4500) if v6 else ("10.200.0.1", 4500)
    rem = ("2001:db8::2", 4500) if v6 else ("10.200.0.2", 4500)
    lts = (ipaddress.ip_network("2001:db8:1::/48"),) if v6 else (ipaddress.ip_network("10.1.0.0/16"),)
    rts = (ipaddress.ip_network("2001:db8:2::/48"),) if v6 else (ipaddress.ip_network("10.2.0.0/16"),)
    if mode == "transport":
        lts = rts = ()
    return InstallChildSA(connection="site", child_id=7, ike_id=3, mode=mode, local=loc, remote=rem,
                          udp_encap=encap, esn=False, replay_window=64, local_ts=lts, remote_ts=rts,
                          inbound=(k,), outbound=(k,), proposal="AES_GCM_16-128")


def test_environment_names_and_no_keys():
    act = _act(encap=True)
    env = environment("up", None, act, "vpnd0", act.local_ts[0], act.remote_ts[0])
    assert env["PLUTO_VERB"] == "up-client" and env["PLUTO_REQID"] == "7" and env["PLUTO_UNIQUEID"] == "3"
    assert env["PLUTO_MY_CLIENT"] == "10.1.0.0/16" and env["PLUTO_PEER_CLIENT_MASK"] == "255.255.0.0"
    assert env["PLUTO_UDP_ENC"] == "4500" and env["PLUTO_INTERFACE"] == "vpnd0"
    assert env["PLUTO_MY_ID"] == "10.200.0.1" and env["PLUTO_PEER_ID"] == "10.200.0.2"
    assert not any("1111" in v for v in env.values())
    t = _act(mode="transport", v6=True)
    env = environment("down", None, t, "vpnd0", None, None)
    assert env["PLUTO_VERB"] == "down-host-v6" and env["PLUTO_PEER_CLIENT"] == "2001:db8::2/128"


class _Conn:
    def __init__(self, script, timeout):
        self.updown, self.updown_timeout = script, timeout
        self.local_id = self.remote_id = None


def test_runner_kills_at_timeout_and_logs_output(tmp_path, caplog):
    script = tmp_path / "hang.sh"
    script.write_text("#!/bin/sh\necho \"hello $PLUTO_VERB\"\nsleep 1000 &\nexec sleep 1000\n")
    script.chmod(0o755)
    caplog.set_level(logging.INFO, logger="vpnd.updown")

    async def go():
        u = Updown()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        u.child_event("up", _Conn(str(script), 0.5), _act(), "vpnd0")
        assert loop.time() - t0 < 0.2  # queued, not run inline
        for _ in range(200):
            if u.timeouts:
                break
            await asyncio.sleep(0.05)
        assert u.timeouts == 1 and u.runs == 1
        u.close()
    asyncio.run(go())
    text = caplog.text
    assert "site: updown up-client: hello up-client" in text
    assert "killed after 0.5 s" in text
