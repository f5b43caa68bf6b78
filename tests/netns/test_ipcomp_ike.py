"""IPComp negotiated by IKE (issue 12), in network namespaces:

- IKEv1 vpnd <-> vpnd with the seed's transform set `ah-sha-hmac esp-aes esp-sha-hmac
  comp-lzs` in vpnd's Cisco words (the issue's acceptance line): LZS agreed in Quick Mode.
- IKEv2 vpnd <-> vpnd with `comp: deflate` (IPCOMP_SUPPORTED in IKE_AUTH).
- IKEv2 and IKEv1 against strongSwan with `ipcomp = yes` (swanctl's name for `compress`),
  both roles: charon's kernel-libipsec has no IPComp ("unable to allocate a CPI from kernel,
  IPComp disabled"), so it neither offers nor accepts it; vpnd must then run plain ESP (IKEv1:
  charon takes our second proposal number, the one without IPCOMP).

Compressible ping and a checksummed compressible transfer, and the counters in status.
"""
from __future__ import annotations

import pytest

from .test_ikev1_strongswan import (PSK, _charon, check_traffic, topo, vpnd_conf, vpnds,  # noqa: F401
                                    wait_child)
from .test_ipcomp import compressible_transfer
from .charon import psk_connection, psk_secret, swanctl_conf
from .topology import HOST_A, HOST_B, LAN_A, LAN_B, WAN_B

pytestmark = [pytest.mark.netns]

SEED = "ah-sha-hmac esp-aes esp-sha-hmac comp-lzs"


def _v2_conf(text: str) -> str:
    return text.replace("    version: 1\n", "    version: 2\n")


def _pair(topo, vpnds, *, ike, esp, extra="", version=1):
    fix = (lambda t: t) if version == 1 else _v2_conf
    b = vpnds(topo, "gwb", fix(vpnd_conf(topo, "gwb", local=WAN_B, peer=topo.gwa_public, lts=LAN_B,
                                         rts=LAN_A, ike=ike, esp=esp, extra=extra)))
    a = vpnds(topo, "gwa", fix(vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A,
                                         rts=LAN_B, ike=ike, esp=esp, start="start", extra=extra)))
    return a, b


def _wait_any_child(v, version):
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for sa in v.status().get("ike_sas", []):
            if sa.get("version") == version:
                for ch in sa.get("child_sas", []):
                    if ch.get("state") == "INSTALLED" and "bytes_in" in ch:
                        return ch
        time.sleep(0.1)
    raise AssertionError(f"no child in {v.role}:\n{v.log()[-4000:]}")


def _traffic_and_counters(topo, a, b, alg, version):
    topo.wait_ping("hosta", HOST_B, timeout=15)
    for src, dst in (("hosta", HOST_B), ("hostb", HOST_A)):
        r = topo.ping(src, dst, count=3, size=1000, pattern="61626364", interval=0.1, timeout=3)
        assert r.returncode == 0, r.stdout
    res = compressible_transfer(topo, "hosta", "hostb", HOST_B, n=300_000)
    assert '"up_ok": true' in res and '"down_ok": true' in res, res
    ca, cb = _wait_any_child(a, version), _wait_any_child(b, version)
    assert ca["ipcomp"] == cb["ipcomp"] == alg
    assert ca["cpi_out"] == cb["cpi_in"] and cb["cpi_out"] == ca["cpi_in"]
    for ch in (ca, cb):
        assert ch["ipcomp_compressed"] > 50 and ch["ipcomp_decompressed"] > 50
        assert ch["ipcomp_errors"] == 0


def test_ikev1_seed_transform_set_with_comp_lzs(topo, vpnds):
    a, b = _pair(topo, vpnds, ike="aes128-sha1-modp2048", esp=SEED)
    wait_child(a), wait_child(b)
    _traffic_and_counters(topo, a, b, "lzs", 1)


def test_ikev2_deflate_between_vpnds(topo, vpnds):
    a, b = _pair(topo, vpnds, ike="aes128-sha256-modp2048", esp="aes128gcm16", extra="comp: deflate",
                 version=2)
    _traffic_and_counters(topo, a, b, "deflate", 2)


@pytest.mark.strongswan
@pytest.mark.parametrize("version", [2, 1], ids=["ikev2", "ikev1"])
@pytest.mark.parametrize("vpnd_initiates", [True, False], ids=["vpnd-initiator", "vpnd-responder"])
def test_strongswan_compress_yes_falls_back(topo, make_charon, vpnds, vpnd_initiates, version):
    ike, esp = "aes128-sha256-modp2048", ("aes128gcm16" if version == 2 else "aes128-sha256")
    ch = _charon(make_charon, topo)
    conn = psk_connection(local=WAN_B, remote=topo.gwa_public, local_ts=LAN_B, remote_ts=LAN_A,
                          ike=ike, esp=esp, version=version, child="site",
                          esp_extra={"ipcomp": "yes"})
    conn["remote"]["id"] = "%any"
    ch.load(swanctl_conf({"site": conn}, {"ike-site": psk_secret(PSK)}))
    text = vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B, ike=ike,
                     esp=esp, extra="comp: deflate")
    v = vpnds(topo, "gwa", _v2_conf(text) if version == 2 else text)
    if vpnd_initiates:
        r = v.ctl("up", name="site")
        assert r["ok"], (r, v.log()[-4000:])
    else:
        ch.swanctl("--initiate", "--child", "site", "--timeout", "20")
    ch.wait_child("site")
    got = _wait_any_child(v, version)
    assert "ipcomp" not in got              # plain ESP: strongSwan did not agree to IPComp
    # charon's kernel-libipsec has no IPComp: it cannot get a CPI and says so, for our offer
    # (vpnd initiating) and for its own `ipcomp = yes` (it then offers none)
    lines = [ln for ln in ch.log().splitlines() if "IPComp" in ln or "IPCOMP" in ln]
    print("charon on IPComp:", *lines[:6], sep="\n  ")
    assert any("unable to allocate a CPI" in ln for ln in lines), lines
    if vpnd_initiates and version == 2:
        # charon parsed our notify as IPCOMP_SUPPORTED in the IKE_AUTH request
        assert any("parsed IKE_AUTH request" in ln and "N(IPCOMP_SUP)" in ln for ln in lines), lines
    check_traffic(topo, mbytes=1)
