"""IPComp from the config to the data plane: manual keying (`comp:`, Cisco's comp-lzs,
`manual: inbound: {ipcomp: {cpi: ...}}`), InstallChildSA.ipcomp from an IKE core, and the
status counters.  No kernel: two daemons' DataPlanes talk to each other directly."""

import copy
import ipaddress
import struct

import pytest

from vpnd import esp
from vpnd.config import ConfigError, parse_config
from vpnd.daemon import Daemon
from vpnd.ike.manual import install_action as manual_install_action
from vpnd.ike.actions import ChildKeys, InstallChildSA, IPCompParams, UpdateChildAddresses
from vpnd.status import format_status

A, B = "10.200.0.1", "10.200.0.2"
KEY16, KEY20 = "00112233445566778899aabbccddeeff", "0123456789abcdef0123456789abcdef01234567"
TEXT = b"compress me, compress me, compress me, please. " * 25


def packet(src="10.1.0.10", dst="10.2.0.10", payload=TEXT) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return hdr + payload


def manual_conf(local, peer, lts, rts, spi_in, spi_out, cpi_in=None, cpi_out=None, **extra):
    def direction(spi, cpi):
        d = {"esp": {"spi": spi, "enc_key": KEY16, "auth_key": KEY20},
             "ah": {"spi": spi + 1, "key": KEY20}}
        if cpi is not None:
            d["ipcomp"] = {"cpi": cpi}
        return d
    c = {"peer": peer, "local": local, "local_ts": [lts], "remote_ts": [rts],
         # the seed's transform set in vpnd's Cisco words
         "esp": "ah-sha-hmac esp-aes esp-sha-hmac comp-lzs",
         "manual": {"inbound": direction(spi_in, cpi_in), "outbound": direction(spi_out, cpi_out)}}
    c.update(extra)
    return {"connections": {"m": c}}


def daemon_for(cfg):
    d = Daemon(parse_config(cfg))
    d.dp = esp.DataPlane()
    d._apply_static_routes = lambda: None
    return d


def test_seed_transform_set_gives_lzs_and_well_known_cpis():
    cfg = manual_conf(A, B, "10.1.0.0/16", "10.2.0.0/16", 0x1000, 0x2000)
    conn = parse_config(cfg).connections[0]
    assert conn.comp == "lzs"
    act = manual_install_action(conn, 1)
    assert act.ipcomp == IPCompParams("lzs", 3, 3)       # RFC 3173 3.3: CPI = transform ID


@pytest.mark.parametrize("comp", [None, "deflate"])
def test_manual_pair_compresses_and_counts(comp):
    extra = {} if comp is None else {"comp": comp, "esp": "ah-sha-hmac esp-aes esp-sha-hmac"}
    a = daemon_for(manual_conf(A, B, "10.1.0.0/16", "10.2.0.0/16", 0x1000, 0x2000,
                               0x4000, 0x5000, **extra))
    b = daemon_for(manual_conf(B, A, "10.2.0.0/16", "10.1.0.0/16", 0x2000, 0x1000,
                               0x5000, 0x4000, **extra))
    for d in (a, b):
        d._start_ike()  # the manual engine installs its SA pair
    pkt = packet()
    out = a.dp.encap(pkt)
    assert out[0] == "raw" and len(out[2]) < len(pkt)
    assert b.dp.decap(out[2], 51, A, None) == pkt
    small = packet(payload=b"hi")
    assert b.dp.decap(a.dp.encap(small)[2], 51, A, None) == small
    st_a = a.status()["ike_sas"][0]["child_sas"][0]
    st_b = b.status()["ike_sas"][0]["child_sas"][0]
    assert st_a["ipcomp"] == (comp or "lzs")
    assert (st_a["cpi_in"], st_a["cpi_out"]) == ("4000", "5000")
    assert st_a["ipcomp_compressed"] == 1 and st_a["ipcomp_uncompressed"] == 1
    assert st_b["ipcomp_decompressed"] == 1 and st_b["ipcomp_errors"] == 0
    text = format_status(a.status())
    assert f"compression {comp or 'lzs'}, cpi in 0x4000 out 0x5000: #compressed 1" in text


def test_config_errors_name_the_key():
    base = manual_conf(A, B, "10.1.0.0/16", "10.2.0.0/16", 0x1000, 0x2000, 0x4000, 0x5000)
    cases = [
        (lambda c: c.update(comp="deflate"), "connections.m.comp: 'deflate' contradicts comp-lzs"),
        (lambda c: c.update(comp="zip"), "connections.m.comp: 'zip' is not one of"),
        (lambda c: c["manual"]["inbound"]["ipcomp"].update(cpi=200),
         "connections.m.manual.inbound.ipcomp.cpi: IPComp CPI 200 out of range"),
        (lambda c: c.update(esp="ah-sha-hmac esp-aes esp-sha-hmac"),
         "connections.m.manual.inbound.ipcomp: the connection does not compress"),
    ]
    for change, message in cases:
        cfg = copy.deepcopy(base)
        change(cfg["connections"]["m"])
        with pytest.raises(ConfigError) as e:
            parse_config(cfg)
        assert any(p.startswith(message) for p in e.value.problems), e.value.problems
    cfg = copy.deepcopy(base)
    cfg["connections"]["m"].update(comp="none", esp="ah-sha-hmac esp-aes esp-sha-hmac")
    for d in cfg["connections"]["m"]["manual"].values():
        del d["ipcomp"]
    assert parse_config(cfg).connections[0].comp is None


def install(child_id, spi_in, spi_out, replaces=None, remote=(B, 500), ipcomp=None):
    key = bytes(range(20))
    return InstallChildSA(
        connection="m", child_id=child_id, ike_id=1, mode="tunnel", local=(A, 500),
        remote=remote, udp_encap=remote[1] == 4500, esn=False, replay_window=64,
        local_ts=(ipaddress.ip_network("10.1.0.0/16"),),
        remote_ts=(ipaddress.ip_network("10.2.0.0/16"),),
        inbound=(ChildKeys(spi_in, "esp", "aes128gcm16", None, key),),
        outbound=(ChildKeys(spi_out, "esp", "aes128gcm16", None, key),),
        proposal="AES_GCM_16-128", replaces=replaces, ipcomp=ipcomp)


def test_negotiated_ipcomp_survives_rekey_and_peer_move():
    d = daemon_for({"connections": {"m": {
        "peer": B, "local": A, "psk": "a test key of some length", "comp": "deflate",
        "local_ts": ["10.1.0.0/16"], "remote_ts": ["10.2.0.0/16"], "start": "none"}}})
    p = IPCompParams("deflate", 0x4100, 0x5100)
    d._run_actions([install(1, 0x1111, 0x2222, ipcomp=p)], rearm=False)
    ipc = d.driver.sas[1].outbound[0].ipcomp
    assert ipc.cpi == 0x5100 and d.driver.sas[1].inbound[0].ipcomp.cpi == 0x4100
    d.dp.encap(packet())
    d._run_actions([UpdateChildAddresses(1, (A, 4500), ("10.200.0.99", 4500), True)], rearm=False)
    assert d.driver.sas[1].outbound[0].ipcomp is ipc              # counters carried over
    out = d.dp.encap(packet())
    assert out[0] == "udp" and ipc.compressed == 2
    # a rekey without IPComp (the peer no longer offered it): plain ESP
    d._run_actions([install(2, 0x3333, 0x4444, replaces=1)], rearm=False)
    assert d.driver.sas[2].outbound[0].ipcomp is None
    assert d.dp.encap(packet())[0] == "raw"
