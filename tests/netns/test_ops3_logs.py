"""issue 11, "logs an engineer can debug with", against strongSwan: vpnd (gwa) and charon
(gwb) set up a tunnel, rekey the CHILD_SA and the IKE SA, and charon tears it down, with
vpnd at `log_level: {default: debug, control: info}`.

Each IKE message vpnd logs as `parsed ...` must be one that charon logged as `generating
...` (same exchange, role, message ID and payload list, notify names aside), and the other
way round; vpnd's `sending packet ... (N bytes)` lines match charon's `received packet`
sizes. Every line is vpnd's own (no third-party noise), names its subsystem, and the IKE
lines name their SA (`site[3]`). Neither the PSK nor any SA key (read with `vpnctl keys
--wireshark` while the SAs were up) appears in the log."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .charon import psk_connection, psk_secret, swanctl_conf
from .topology import LAN_A, LAN_B, WAN_B, Topology
from .vpnd_proc import ike_config, vpnd_starter

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]

PSK = "log acceptance key 8d0c6f1e2b"
BIN = Path(sys.executable).parent
LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d vpnd\[\d+\] (DEBUG|INFO|WARNING|ERROR) "
                  r"\[(daemon|ike|esp|net|control|updown)\] (?:(\S+(?: \S+\{\d+\})?): )?(.*)")
MSG = re.compile(r"(parsed|generating) (\w+) (request|response) (\d+) \[ (.*?) ?\]")
PKT = re.compile(r"(sending|received) packet: from (\S+)\[(\d+)\] to (\S+)\[(\d+)\] \((\d+) bytes\)")


@pytest.fixture
def log3_topo():
    with Topology(prefix="log3") as t:
        yield t


@pytest.fixture
def vpnds(request):
    with vpnd_starter(request) as make:
        yield make


def _labels(text: str) -> tuple:
    """A payload list with notify names left out (vpnd's and strongSwan's short names of
    some notifies differ; the payload types, their order and count must not)."""
    return tuple("N" if x.startswith("N(") else x for x in text.split())


def messages(lines, verb: str) -> list[tuple]:
    out = []
    for ln in lines:
        m = MSG.search(ln)
        if m and m.group(1) == verb:
            out.append((m.group(2), m.group(3), int(m.group(4)), _labels(m.group(5))))
    return out


def packets(lines, verb: str) -> list[int]:
    return [int(m.group(6)) for m in (PKT.search(ln) for ln in lines) if m and m.group(1) == verb]


def charon_conf(version: int, topo) -> str:
    conn = psk_connection(local=WAN_B, remote=topo.gwa_public, local_ts=LAN_B, remote_ts=LAN_A,
                          ike="aes128-sha256-modp2048", esp="aes128-sha256-modp2048", version=version,
                          child="site", remote_id="%any")
    return swanctl_conf({"site": conn}, {"ike-site": psk_secret(PSK)})


def wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out: {what}")


def sa_keys(sock) -> list[str]:
    """Every key `vpnctl keys --wireshark` prints (ESP and IKE SA keys), as hex."""
    r = subprocess.run([str(BIN / "vpnctl"), "--socket", str(sock), "keys", "--wireshark"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    keys = {k.lower() for k in re.findall(r"0x([0-9a-fA-F]{16,})", r.stdout)}
    keys |= {k.lower() for k in re.findall(r"\b([0-9a-fA-F]{32,})\b", r.stdout)}
    return sorted(keys)


@pytest.mark.parametrize("version", [2, 1])
def test_log_lines_of_a_real_exchange_with_strongswan(log3_topo, make_charon, vpnds, version):
    topo = log3_topo
    ch = make_charon(topo, "gwb")
    ch.load(charon_conf(version, topo))
    conf = ike_config(topo, "gwa", version=version, psk=PSK, local=topo.gwa_wan, peer=WAN_B, lts=LAN_A,
                      rts=LAN_B, ike="aes128-sha256-modp2048", esp="aes128-sha256-modp2048", start="none",
                      daemon_extra="allow_key_export: true")
    conf = conf.replace("  log_level: debug\n", "  log_level: {default: debug, control: info}\n", 1)
    v = vpnds(topo, "gwa", conf)

    assert v.ctl("up", name="site")["ok"], v.log()[-4000:]
    ch.wait_child("site")
    topo.wait_ping("hosta", topo.hostb_ip, timeout=10)
    keys = sa_keys(v.sock)
    assert v.ctl("rekey", name="site")["ok"], v.log()[-4000:]
    keys += sa_keys(v.sock)
    if version == 2:
        assert v.ctl("rekey", name="site", ike=True)["ok"], v.log()[-4000:]
        keys += sa_keys(v.sock)
    assert len(keys) >= 4, keys
    # every message so far has arrived: what each side sent, the other side parsed
    wait(lambda: len(messages(ch.log().splitlines(), "parsed")) >= len(messages(v.log().splitlines(), "generating"))
         and len(messages(v.log().splitlines(), "parsed")) >= len(messages(ch.log().splitlines(), "generating")),
         15, "both sides parsed what the other sent")
    up_ours, up_theirs = v.log().splitlines(), ch.log().splitlines()
    ch.swanctl("--terminate", "--ike", "site")
    wait(lambda: not v.status()["ike_sas"], 20, "vpnd saw the IKE SA deleted")
    ours, theirs = v.log().splitlines(), ch.log().splitlines()

    # 1. the message lines, checked against what charon says it sent and received (in the
    # teardown, a Delete of ours may cross charon's and be dropped there without a line)
    parsed, generated = messages(ours, "parsed"), messages(ours, "generating")
    assert sorted(messages(up_ours, "parsed")) == sorted(messages(up_theirs, "generating")), up_theirs
    assert sorted(messages(up_ours, "generating")) == sorted(messages(up_theirs, "parsed")), up_theirs
    assert sorted(parsed) == sorted(messages(theirs, "generating")), theirs
    assert sorted(packets(up_ours, "sending")) == sorted(packets(up_theirs, "received"))
    assert sorted(packets(ours, "received")) == sorted(packets(theirs, "sending"))
    text = "\n".join(ours)
    if version == 2:
        exchanges = {"IKE_SA_INIT", "IKE_AUTH", "CREATE_CHILD_SA", "INFORMATIONAL"}
        assert re.search(r"generating IKE_SA_INIT request 0 \[ SA KE No N\(NATD_S_IP\) N\(NATD_D_IP\)", text)
        assert re.search(r"parsed IKE_AUTH response 1 \[ IDr AUTH (N\(\w+\) )*SA TSi TSr", text), text
        assert re.search(r"generating CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\) SA No KE TSi TSr \]", text)
        assert re.search(r"parsed INFORMATIONAL request \d+ \[ D \]", text)
    else:
        exchanges = {"ID_PROT", "QUICK_MODE", "INFORMATIONAL_V1"}
        assert re.search(r"parsed ID_PROT response 0 \[ SA V( V)* \]", text), text
        assert re.search(r"generating QUICK_MODE request \d+ \[ HASH SA No KE ID ID \]", text)
        assert re.search(r"parsed QUICK_MODE response \d+ \[ HASH SA No KE ID ID", text)
        assert re.search(r"parsed INFORMATIONAL_V1 request \d+ \[ HASH D \]", text)
    assert {m[0] for m in parsed + generated} == exchanges
    assert re.search(r"sending packet: from 10\.\d+\.\d+\.\d+\[500\] to 10\.\d+\.\d+\.\d+\[500\] "
                     r"\(\d+ bytes\)", text)

    # 2. every line vpnd's, with its subsystem; the IKE lines name their SA
    sas = set()
    for ln in ours:
        m = LINE.fullmatch(ln)
        assert m, f"not a vpnd line: {ln!r}"
        level, sub, where, msg = m.groups()
        if sub == "control":
            assert level != "DEBUG", ln  # control: info
        if MSG.search(msg) or msg.startswith("sending packet"):
            assert where and re.fullmatch(r"site\[\d+\]", where), ln
            sas.add(where)
    assert len(sas) >= (2 if version == 2 else 1), sas  # the IKE rekey made a new SA
    assert re.search(r"\[esp\] site\[\d+\] site\{\d+\}: SA installed", text)
    assert re.search(r"\[ike\] site\[\d+\]( site\{\d+\})?: .*(established|installed)", text)
    assert re.search(r"\[ike\] site\[\d+\]( site\{\d+\})?: .*deleted \(.+\)", text)

    # 3. secrets: neither the PSK nor an SA key, in any case
    low = text.lower()
    assert PSK.lower() not in low and PSK.encode().hex() not in low
    for k in keys:
        assert k not in low, "an SA key is in the log"
