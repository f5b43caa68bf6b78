"""Childless IKE SAs (RFC 6023) between vpnd (gwa) and strongSwan 5.9.8 (gwb), both roles.

- vpnd initiates with `childless: force`: IKE_AUTH without a CHILD_SA (charon announced
  support, its default `allow`), the CHILD_SA follows with CREATE_CHILD_SA; traffic flows.
- charon initiates an IKE SA alone (`swanctl --initiate --ike`): vpnd shows it `ike-only`
  with no child; `vpnctl up` then creates the CHILD_SA on that IKE SA with CREATE_CHILD_SA.
- charon with `childless = force` initiates a CHILD_SA: childless IKE_AUTH, then its
  CREATE_CHILD_SA to vpnd.
- vpnd with `childless: never` answers charon's childless IKE_AUTH with INVALID_SYNTAX.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from vpnd.status import format_status

from .test_ikev2_strongswan import PSK, charon_psk, vpnd_gwa, wait_child
from .topology import Topology
from .vpnd_proc import vpnd_starter

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]

PREFIX = os.environ.get("CHL_PREFIX", "chl3")
IKE, ESP = "aes128-sha256-modp2048", "aes128-sha256-modp2048"  # PFS: the CHILD_SA's own DH


@pytest.fixture
def topo():
    with Topology(prefix=PREFIX) as t:
        yield t


@pytest.fixture
def vpnds(request):
    with vpnd_starter(request) as make:
        yield make


def conn_entry(v, name="site") -> dict:
    return next(c for c in v.status()["connections"] if c["name"] == name)


def wait_for(what, fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.1)


def vpnd_ike_sa(v) -> dict | None:
    sas = v.status()["ike_sas"]
    return sas[0] if sas and sas[0]["state"] == "ESTABLISHED" else None


def test_vpnd_initiates_childless_then_create_child_sa(topo, make_charon, vpnds):
    ch = make_charon(topo, "gwb", debug=2)
    charon_psk(ch, ike=IKE, esp=ESP, gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike=IKE, esp=ESP, start="none", extra="childless: force")
    r = v.ctl("up", name="site")
    assert r["ok"], r
    got = wait_child(v)
    assert got["ike"]["childless"] is True and got["ike"]["initiator"] is True
    sas = ch.wait_child("site")
    assert got["child"]["spi_in"] in sas and got["child"]["spi_out"] in sas
    log = ch.log()
    # charon's view: no CHILD_SA in IKE_AUTH, then a CREATE_CHILD_SA with a KE (PFS)
    init_out = [ln for ln in log.splitlines() if "generating IKE_SA_INIT response" in ln]
    assert init_out and "N(CHDLESS_SUP)" in init_out[0], init_out
    auth_in = [ln for ln in log.splitlines() if "parsed IKE_AUTH request" in ln]
    assert auth_in and " SA " not in auth_in[0] and "TSi" not in auth_in[0], auth_in
    assert any("parsed CREATE_CHILD_SA request" in ln and "KE" in ln for ln in log.splitlines())
    assert "established without a CHILD_SA" in v.log()
    topo.check_traffic()


def test_charon_ike_only_then_vpnctl_up_creates_the_child(topo, make_charon, vpnds):
    v = vpnd_gwa(topo, vpnds, ike=IKE, esp=ESP, start="none")
    ch = make_charon(topo, "gwb", debug=2)
    charon_psk(ch, ike=IKE, esp=ESP, gwa=topo.gwa_public)
    ch.swanctl("--initiate", "--ike", "site", "--timeout", "20", timeout=25)
    sa = wait_for("vpnd's IKE SA", lambda: vpnd_ike_sa(v))
    assert sa["childless"] is True and sa["child_sas"] == [] and sa["initiator"] is False
    c = wait_for("ike-only", lambda: (lambda e: e if e["state"] == "ike-only" else None)(conn_entry(v)))
    assert c["last_error"] is None and c["child_sas"] == 0, c
    assert "ike-only" in format_status(v.status())
    # the CHILD_SA now, from our side, on charon's IKE SA (no second IKE SA)
    r = v.ctl("up", name="site")
    assert r["ok"], r
    got = wait_child(v)
    assert got["ike"]["spi_i"] == sa["spi_i"]
    assert len(v.status()["ike_sas"]) == 1
    ch.wait_child("site")
    assert any("parsed CREATE_CHILD_SA request" in ln for ln in ch.log().splitlines())
    assert conn_entry(v)["state"] == "up"
    topo.check_traffic()


def test_charon_childless_force_initiator(topo, make_charon, vpnds):
    v = vpnd_gwa(topo, vpnds, ike=IKE, esp=ESP, start="none")
    ch = make_charon(topo, "gwb", debug=2)
    charon_psk(ch, ike=IKE, esp=ESP, gwa=topo.gwa_public, extra={"childless": "force"})
    ch.initiate("site")
    got = wait_child(v)
    assert got["ike"]["childless"] is True and got["ike"]["initiator"] is False
    topo.check_traffic()


def test_vpnd_never_answers_a_childless_ike_auth_with_invalid_syntax(topo, make_charon, vpnds):
    v = vpnd_gwa(topo, vpnds, ike=IKE, esp=ESP, start="none", extra="childless: never")
    ch = make_charon(topo, "gwb", debug=2)
    charon_psk(ch, ike=IKE, esp=ESP, gwa=topo.gwa_public)
    out = ch.swanctl("--initiate", "--ike", "site", "--timeout", "20", timeout=25, check=False)
    log = ch.log()
    # we announced nothing (IKE_SA_INIT response without N(CHILDLESS_IKEV2_SUP...)), and
    # answered its childless IKE_AUTH with INVALID_SYNTAX alone
    init_resp = [ln for ln in log.splitlines() if "parsed IKE_SA_INIT response" in ln]
    assert init_resp and "CHDLESS_SUP" not in init_resp[0], init_resp  # charon's short name
    assert any("parsed IKE_AUTH response" in ln and "N(INVAL_SYN)" in ln for ln in log.splitlines()), out
    c = wait_for("the last error", lambda: (lambda e: e if e["last_error"] else None)(conn_entry(v)))
    assert "childless: never" in c["last_error"]["message"], c
    assert v.status()["ike_sas"] == [] or all(s["state"] != "ESTABLISHED" for s in v.status()["ike_sas"])
    assert PSK not in json.dumps(v.status()) and PSK not in v.log()
