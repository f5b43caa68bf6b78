"""IKEv2: vpnd against strongSwan's charon (kernel-libipsec) in network namespaces.

vpnd runs in gwa, charon in gwb; hosta (10.1.0.10) and hostb (10.2.0.10) talk through the
tunnel. Each test checks what both sides say (vpnctl status, swanctl --list-sas) and then
traffic: ping and a checksummed TCP transfer in both directions.
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import time
from pathlib import Path

import pytest

from .charon import ike_closed, swanctl_conf
from .topology import GW_LAN_B, LAN_A, LAN_B, Topology, WAN_B
from .vpnd_proc import FAST_TIMERS, Vpnd, ike_config, vpnd_starter

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]

PSK = "ikev2 interop key 0123456789"
PREFIX = os.environ.get("IK2_PREFIX", "ik2")  # parallel runs by several engineers: own names

PAIRS = [
    ("aes128-sha256-modp2048", "aes128-sha256"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-ecp384"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
]


@pytest.fixture
def ik2_topo():
    with Topology(prefix=PREFIX) as t:
        yield t


@pytest.fixture
def ik2_topo_nat():
    with Topology(prefix=PREFIX, nat=True) as t:
        yield t


@pytest.fixture
def vpnds(request):
    with vpnd_starter(request) as make:
        yield make


def vpnd_conf(topo, role: str, *, start: str = "start", **kw) -> str:
    return ike_config(topo, role, version=2, psk=PSK, start=start, **kw)


def vpnd_gwa(topo, vpnds, *, ike: str, esp: str, **kw) -> Vpnd:
    """The vpnd in gwa: connection "site" to gwb's WAN address, LAN_A <-> LAN_B."""
    return vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                        ike=ike, esp=esp, **kw))


def wait_child(v: Vpnd, name: str = "site", timeout: float = 20, *, not_spi: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            st = v.status()
        except Exception:
            st = None
        last = st
        for sa in (st or {}).get("ike_sas", []):
            for ch in sa["child_sas"]:
                if ch["name"] == name and ch["state"] == "INSTALLED" and ch["spi_in"] != not_spi:
                    return {"ike": sa, "child": ch}
        time.sleep(0.1)
    raise AssertionError(f"no INSTALLED child {name} in {v.role} within {timeout}s: {json.dumps(last)}\n{v.log()[-6000:]}")


def charon_psk(ch, *, ike: str, esp: str, gwa: str, local_ts: str = LAN_B, remote_ts: str = LAN_A,
               remote_id: str = "%any", start_action: str = "none", extra=None, child_extra=None):
    """charon in gwb: PSK connection "site" to vpnd at `gwa`, any identity unless `remote_id`."""
    ch.load_psk(PSK, local=WAN_B, remote=gwa, local_ts=local_ts, remote_ts=remote_ts, ike=ike, esp=esp,
                remote_id=remote_id, start_action=start_action, esp_extra=child_extra or {},
                **(extra or {}))


@pytest.mark.parametrize("ike,esp", PAIRS, ids=[p[0] for p in PAIRS])
def test_psk_vpnd_initiator(ik2_topo, make_charon, vpnds, ike, esp):
    topo = ik2_topo
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, start="none")
    t0 = time.monotonic()
    assert v.ctl("up", name="site")["ok"]
    print(f"vpnd->strongSwan {ike}/{esp}: IKE_SA_INIT to installed CHILD_SA in "
          f"{(time.monotonic() - t0) * 1000:.0f} ms (vpnctl up)")
    got = wait_child(v)
    sas = ch.wait_child("site")
    assert got["child"]["spi_out"] in sas and got["child"]["spi_in"] in sas
    assert got["ike"]["proposal"]
    topo.check_traffic()


@pytest.mark.parametrize("ike,esp", PAIRS, ids=[p[0] for p in PAIRS])
def test_psk_vpnd_responder(ik2_topo, make_charon, vpnds, ike, esp):
    topo = ik2_topo
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, start="none")
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    t0 = time.monotonic()
    ch.initiate("site")
    print(f"strongSwan->vpnd {ike}/{esp}: swanctl --initiate returned after "
          f"{(time.monotonic() - t0) * 1000:.0f} ms")
    got = wait_child(v)
    assert got["ike"]["initiator"] is False
    topo.check_traffic()


# --------------------------------------------------------------------------- certificates

def _pki(tmp: Path, kind: str, intermediates: bool = False):
    """CA + gw-a + gw-b certificates (RSA or ECDSA P-256/P-384) made with `cryptography`;
    with `intermediates`, each gateway's certificate comes from its own intermediate CA
    under the root ("mid-a", "mid-b"): gw-a.pem holds gw-a's certificate and mid-a's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        if kind == "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP384R1() if kind == "ecdsa384" else ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpnd interop"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject, pub, issuer, signer, ca):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject.get_attributes_for_oid(
                NameOID.COMMON_NAME)[0].value + ".example.com")]), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = key()
    ca = build(name("interop CA"), ca_key.public_key(), name("interop CA"), ca_key, True)
    out = {"ca": tmp / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for gw in ("gw-a", "gw-b"):
        k = key()
        issuer, issuer_key, chain = ca, ca_key, b""
        if intermediates:
            issuer_key = key()
            issuer = build(name(f"mid{gw[2:]}"), issuer_key.public_key(), ca.subject, ca_key, True)
            chain = issuer.public_bytes(serialization.Encoding.PEM)
            out[f"mid{gw[2:]}"] = tmp / f"mid{gw[2:]}.pem"
            out[f"mid{gw[2:]}"].write_bytes(chain)
        crt = build(name(gw), k.public_key(), issuer.subject, issuer_key, False)
        (tmp / f"{gw}.pem").write_bytes(crt.public_bytes(serialization.Encoding.PEM)
                                        + (chain if gw == "gw-a" else b""))
        (tmp / f"{gw}.key").write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        out[gw] = (tmp / f"{gw}.pem", tmp / f"{gw}.key")
    return out


DN_A = "C=CH, O=vpnd interop, CN=gw-a"
DN_B = "C=CH, O=vpnd interop, CN=gw-b"


def charon_cert(ch, pki, *, ike, esp, gwa):
    import shutil

    shutil.copy(pki["ca"], ch.swanctl_dir / "x509ca" / "ca.pem")
    if "mid-b" in pki:  # charon's own intermediate; mid-a it must get from vpnd
        shutil.copy(pki["mid-b"], ch.swanctl_dir / "x509ca" / "mid-b.pem")
    shutil.copy(pki["gw-b"][0], ch.swanctl_dir / "x509" / "gw-b.pem")
    shutil.copy(pki["gw-b"][1], ch.swanctl_dir / "pkcs8" / "gw-b.key")
    conn = {"version": 2, "local_addrs": WAN_B, "remote_addrs": gwa, "proposals": ike,
            "local": {"auth": "pubkey", "certs": "gw-b.pem", "id": f'"{DN_B}"'},
            "remote": {"auth": "pubkey", "id": f'"{DN_A}"'},
            "children": {"site": {"local_ts": LAN_B, "remote_ts": LAN_A, "esp_proposals": esp,
                                  "start_action": "none"}}}
    ch.load(swanctl_conf({"site": conn}))


@pytest.mark.parametrize("kind", ["rsa", "ecdsa256", "ecdsa384"])
@pytest.mark.parametrize("vpnd_initiates", [True, False], ids=["vpnd-init", "vpnd-resp"])
def test_certificates(ik2_topo, make_charon, vpnds, kind, vpnd_initiates):
    topo = ik2_topo
    pki = _pki(Path(topo.workdir), kind)
    ike, esp = PAIRS[0]
    auth = (f"    auth: {{cert: {pki['gw-a'][0]}, key: {pki['gw-a'][1]}, ca: {pki['ca']}}}\n"
            f"    remote_id: \"{DN_B}\"")
    ch = make_charon(topo, "gwb")
    charon_cert(ch, pki, ike=ike, esp=esp, gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, auth=auth, start="start" if vpnd_initiates else "none")
    if not vpnd_initiates:
        ch.initiate("site")
    got = wait_child(v)
    assert got["ike"]["remote_id"] == DN_B
    sas = ch.wait_child("site")
    assert DN_A in sas
    topo.check_traffic(mbytes=1)


@pytest.mark.parametrize("vpnd_initiates", [True, False], ids=["vpnd-init", "vpnd-resp"])
def test_certificates_through_intermediate_cas(ik2_topo, make_charon, vpnds, vpnd_initiates):
    """Each gateway's certificate comes from its own intermediate CA; both trust the root
    only. vpnd sends mid-a in a second CERT payload (charon does not have it) and accepts
    charon's mid-b the same way (RFC 7296 3.6, issue 8.10)."""
    topo = ik2_topo
    pki = _pki(Path(topo.workdir), "ecdsa256", intermediates=True)
    ike, esp = PAIRS[0]
    auth = (f"    auth: {{cert: {pki['gw-a'][0]}, key: {pki['gw-a'][1]}, ca: {pki['ca']}}}\n"
            f"    remote_id: \"{DN_B}\"")
    ch = make_charon(topo, "gwb")
    charon_cert(ch, pki, ike=ike, esp=esp, gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, auth=auth, start="start" if vpnd_initiates else "none")
    if not vpnd_initiates:
        ch.initiate("site")
    got = wait_child(v)
    assert got["ike"]["remote_id"] == DN_B
    assert DN_A in ch.wait_child("site")
    topo.check_traffic(mbytes=1)


# --------------------------------------------------------------------------- rekeying

@pytest.mark.parametrize("who", ["vpnd", "charon", "vpnd-responder"])
def test_rekeys_under_20pps_ping_lose_nothing(ik2_topo, make_charon, vpnds, who):
    """CHILD_SA and IKE SA rekeys (short lifetimes) while hosta pings hostb 20 times a second.
    who: the side whose lifetimes drive the rekeys; "vpnd-responder": charon set the tunnel
    up and vpnd, the original responder, rekeys."""
    topo = ik2_topo
    ike, esp = PAIRS[1]  # with PFS: every child rekey carries a KE
    ch = make_charon(topo, "gwb")
    # no randomisation (rand_time 0), so both rekeys fall inside the 25 s of pinging
    extra = {"rekey_time": "14s", "reauth_time": "0", "rand_time": "0s", "over_time": "30s"} \
        if who == "charon" else {}
    child_extra = {"rekey_time": "6s", "life_time": "30s", "rand_time": "0s"} if who == "charon" else {}
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public, extra=extra, child_extra=child_extra)
    life = "lifetime: {ike: 18, seconds: 8}" if who.startswith("vpnd") else ""
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, extra=life,
                 start="none" if who == "vpnd-responder" else "start")
    if who == "vpnd-responder":
        ch.initiate("site")
    first = wait_child(v)
    assert first["ike"]["initiator"] is (who != "vpnd-responder")
    topo.wait_ping("hosta", topo.hostb_ip)
    sent, got, out = topo.ping_counts("hosta", topo.hostb_ip, count=500, interval=0.05)
    now = wait_child(v)
    assert now["child"]["spi_in"] != first["child"]["spi_in"], "no CHILD_SA rekey happened"
    assert now["ike"]["spi_i"] != first["ike"]["spi_i"], "no IKE SA rekey happened"
    assert sent == 500 and got == 500, out
    # make-before-break on vpnd's side: no ESP packet met it without the SA it was sent on
    assert "with unknown SPI" not in v.log(), v.log()[-3000:]
    assert len(v.status()["ike_sas"]) == 1
    topo.check_traffic(mbytes=1)


def test_vpnctl_rekey_child_and_ike(ik2_topo, make_charon, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[2]
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp)
    first = wait_child(v)
    assert v.ctl("rekey", name="site", ike=False)["ok"]
    second = wait_child(v, not_spi=first["child"]["spi_in"])
    assert v.ctl("rekey", name="site", ike=True)["ok"]
    third = wait_child(v)
    assert third["ike"]["spi_i"] != first["ike"]["spi_i"]
    sas = ch.list_sas()
    assert second["child"]["spi_in"] in sas and third["ike"]["spi_i"] in sas
    topo.check_traffic(mbytes=1)


# --------------------------------------------------------------------------- NAT, DPD

def test_nat_traversal_with_keepalives(ik2_topo_nat, make_charon, vpnds):
    topo = ik2_topo_nat
    ike, esp = PAIRS[0]
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa="%any")
    cap = topo.capture("gwb", "wan", "natt.pcap", "udp port 4500")
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, extra="nat_keepalive: 2")
    got = wait_child(v)
    assert got["ike"]["nat_detected"] and got["ike"]["nat_local"]
    assert got["ike"]["remote"] == f"{WAN_B}:4500" and got["child"]["udp_encap"]
    sas = ch.list_sas()
    assert "10.200.0.254[4500]" in sas, sas
    assert "remote host is behind NAT" in ch.log()  # NAT seen on both sides
    topo.check_traffic(mbytes=1)
    # a keepalive (nat_keepalive: 2 s) on the wire: polled in the capture, not slept for
    cap.wait_for("nat-keep-alive", "udp and ip[2:2] = 29")
    cap.stop()


def test_dpd_dead_peer_and_restart(ik2_topo, make_charon, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[0]
    interval, retry = 3, 2
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    # compressed retransmission: the restarted connection reaches the new charon sooner
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, daemon_extra=FAST_TIMERS,
                 extra=f"dpd: {{interval: {interval}, retry: {retry}, mode: periodic, action: restart}}")
    wait_child(v)
    topo.check_traffic(mbytes=0.5)
    ch.kill()
    t0 = time.monotonic()
    # the one rule of both versions (vpnd/ike/liveness.py): probe after `interval`, retried
    # every `retry` s 5 times, dead `retry` s after the last: interval + 6 x retry at most
    bound = interval + 6 * retry
    while "is dead" not in v.log():
        assert time.monotonic() - t0 < bound + 2, v.log()[-3000:]
        time.sleep(0.1)
    dead_after = time.monotonic() - t0
    print(f"peer declared dead after {dead_after:.1f}s (bound {bound}s)")
    assert dead_after <= bound + 1  # + scheduling slack under load
    with ike_closed(topo, "gwb"):  # vpnd's restart must not meet a charon without config
        ch2 = make_charon(topo, "gwb")
        charon_psk(ch2, ike=ike, esp=esp, gwa=topo.gwa_public)
    wait_child(v, timeout=40)
    topo.check_traffic(mbytes=0.5)


# --------------------------------------------------------------------------- more cases

def test_nat_vpnd_responder_any_peer_by_identity(ik2_topo_nat, make_charon, vpnds):
    """charon behind the NAT initiates; vpnd answers on a %any connection matched by FQDN."""
    from .topology import NAT_INSIDE_A

    topo = ik2_topo_nat
    ike, esp = PAIRS[2]
    ch = make_charon(topo, "gwa")
    ch.load_psk(PSK, local=NAT_INSIDE_A, remote=WAN_B, local_ts=LAN_A, remote_ts=LAN_B, ike=ike, esp=esp,
                local_id="@branch.example.com", remote_id=WAN_B)
    conf = vpnd_conf(topo, "gwb", local=WAN_B, peer='"%any"', lts=LAN_B, rts=LAN_A, ike=ike, esp=esp,
                     start="none", extra='remote_id: "@branch.example.com"')
    v = vpnds(topo, "gwb", conf)
    ch.initiate("site")
    got = wait_child(v)
    assert got["ike"]["nat_remote"] and got["ike"]["remote"] == "10.200.0.254:4500"
    assert got["ike"]["remote_id"] == "@branch.example.com" and got["child"]["udp_encap"]
    assert "local host is behind NAT" in ch.log()
    topo.check_traffic(mbytes=1)


def test_trap_first_packet_starts_tunnel(ik2_topo, make_charon, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[0]
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, start="trap")
    time.sleep(0.5)
    assert v.status()["ike_sas"] == []
    r = topo.ping("hosta", topo.hostb_ip, count=1, timeout=5)
    assert r.returncode == 0, r.stdout.decode()  # the triggering packet was queued, not lost
    wait_child(v)
    topo.check_traffic(mbytes=1)


def test_ts_narrowing_by_strongswan(ik2_topo, make_charon, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[0]
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public, local_ts="10.2.0.0/24", remote_ts="10.1.0.0/24")
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp)
    got = wait_child(v)
    assert got["child"]["local_ts"] == ["10.1.0.0/24"] and got["child"]["remote_ts"] == ["10.2.0.0/24"]
    topo.check_traffic(mbytes=0.5)


@pytest.mark.parametrize("what", ["esp", "ts", "ike"])
def test_failures_are_logged_with_reason(ik2_topo, make_charon, vpnds, what):
    topo = ik2_topo
    ch = make_charon(topo, "gwb")
    charon_psk(ch, gwa=topo.gwa_public, local_ts="10.77.0.0/16" if what == "ts" else LAN_B,
               ike="aes256-sha512-ecp521" if what == "ike" else PAIRS[0][0],
               esp="aes256gcm16" if what == "esp" else "aes128-sha256")
    v = vpnd_gwa(topo, vpnds, ike=PAIRS[0][0], esp="aes128-sha256", start="none")
    r = v.ctl("up", name="site")
    assert not r["ok"]
    log = v.log()
    want = {"esp": ["NO_PROPOSAL_CHOSEN", "aes128"], "ts": ["TS_UNACCEPTABLE", "10.1.0.0/16"],
            "ike": ["NO_PROPOSAL_CHOSEN", "modp2048"]}[what]
    assert all(w in log for w in want), log[-3000:]
    assert what != "ike" or v.status()["ike_sas"] == []
    if what == "ike":
        # and as responder: vpnd names both sides' proposals
        ch.swanctl("--initiate", "--child", "site", "--timeout", "5", check=False, timeout=15)
        log = v.log()
        assert "no acceptable proposal" in log and "ecp521" in log and "modp2048" in log, log[-3000:]


def test_invalid_ke_retry_against_strongswan(ik2_topo, make_charon, vpnds):
    topo = ik2_topo
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike="aes128-sha256-modp2048", esp="aes128-sha256", gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike="aes128-sha256-ecp256-modp2048", esp="aes128-sha256")
    got = wait_child(v)
    assert got["ike"]["proposal"].endswith("MODP_2048")
    assert "retrying IKE_SA_INIT" in v.log()
    topo.check_traffic(mbytes=0.5)


def test_delete_both_ways(ik2_topo, make_charon, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[0]
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, start="none")
    assert v.ctl("up", name="site")["ok"]
    ch.wait_child("site")
    assert v.ctl("down", name="site")["ok"]
    deadline = time.monotonic() + 5
    while "site" in ch.list_sas() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "ESTABLISHED" not in ch.list_sas()
    assert v.ctl("up", name="site")["ok"]
    ch.wait_child("site")
    ch.terminate("site")
    deadline = time.monotonic() + 5
    while v.status()["ike_sas"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert v.status()["ike_sas"] == []
    assert v.status()["connections"][0]["state"] == "down"


def test_several_subnets_per_side(ik2_topo, make_charon, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[1]
    topo.ip("gwb", "addr add 10.22.0.1/16 dev lan")  # charon routes need a local source in each TS
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public, local_ts=f"{LAN_B},10.22.0.0/16",
               remote_ts=f"{LAN_A},10.11.0.0/16")
    v = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B,
                                     lts=f"{LAN_A}, 10.11.0.0/16", rts=f"{LAN_B}, 10.22.0.0/16", ike=ike, esp=esp))
    got = wait_child(v)
    assert sorted(got["child"]["remote_ts"]) == ["10.2.0.0/16", "10.22.0.0/16"]
    topo.check_traffic(mbytes=0.5)


def test_initial_contact_after_vpnd_restart(ik2_topo, make_charon, vpnds):
    """vpnd dies without a word and comes back: its INITIAL_CONTACT makes charon drop the
    stale IKE/CHILD SAs (RFC 7296 2.4)."""
    topo = ik2_topo
    ike, esp = PAIRS[0]
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    conf = vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B, ike=ike, esp=esp)
    v = vpnds(topo, "gwa", conf)
    first = wait_child(v)
    v.stop(sig=signal.SIGKILL)
    v2 = vpnds(topo, "gwa", conf)
    second = wait_child(v2)
    assert second["ike"]["spi_i"] != first["ike"]["spi_i"]
    time.sleep(0.5)
    sas = ch.list_sas()
    assert first["ike"]["spi_i"] not in sas and second["ike"]["spi_i"] in sas, sas
    assert sas.count("ESTABLISHED") == 1, sas
    topo.check_traffic(mbytes=0.5)


def test_per_host_trap_and_idle_time(ik2_topo, make_charon, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[0]
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, start="trap", extra="per_host: true\nidle_time: 4")
    # charon's libipsec routes need a local source inside its TS: talk to gwb's LAN address
    assert topo.ping("hosta", GW_LAN_B, count=1, timeout=5).returncode == 0
    got = wait_child(v)
    assert got["child"]["local_ts"] == ["10.1.0.10/32"] and got["child"]["remote_ts"] == ["10.2.0.1/32"]
    sas = ch.list_sas()
    assert "local  10.2.0.1/32" in sas and "remote 10.1.0.10/32" in sas, sas
    topo.tcp_transfer("hosta", "gwb", GW_LAN_B, mbytes=0.5)
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        if not any(s["child_sas"] for s in v.status()["ike_sas"]):
            break
        time.sleep(0.2)
    assert not any(s["child_sas"] for s in v.status()["ike_sas"]), "idle CHILD_SA not deleted"
    assert topo.ping("hosta", GW_LAN_B, count=1, timeout=5).returncode == 0  # trap again


def test_dpd_on_demand_with_traffic(ik2_topo, make_charon, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[1]
    interval, retry = 3, 2
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp,
                 extra=f"dpd: {{interval: {interval}, retry: {retry}, mode: on-demand, action: clear}}")
    wait_child(v)
    topo.wait_ping("hosta", topo.hostb_ip)
    pinger = topo.popen("hosta", ["ping", "-n", "-q", "-i", "0.2", topo.hostb_ip])
    time.sleep(1)
    ch.kill()
    t0 = time.monotonic()
    try:
        while "is dead" not in v.log():  # vpnd/ike/liveness.py: interval + 6 x retry at most
            assert time.monotonic() - t0 < interval + 6 * retry + 2, v.log()[-3000:]
            time.sleep(0.1)
    finally:
        topo.stop(pinger)
    print(f"on-demand DPD: peer declared dead after {time.monotonic() - t0:.1f}s")
    time.sleep(1)
    assert v.status()["ike_sas"] == []  # action clear: nothing re-initiated


@pytest.mark.parametrize("ike_sa", [False, True], ids=["child", "ike"])
def test_rekey_crossing_strongswan(ik2_topo, make_charon, vpnds, ike_sa):
    """vpnd's CREATE_CHILD_SA request is held back (nftables in gwa drops IKE requests of
    exchange 36 on the NAT-T port) while charon rekeys the same SA; then vpnd's retransmit
    gets through. Both sides must end with one IKE SA and one CHILD_SA, traffic flowing."""
    import threading

    topo = ik2_topo
    ike, esp = PAIRS[0]
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp)
    first = wait_child(v)
    assert first["ike"]["remote"].endswith(":4500")  # libipsec: always NAT-T
    # UDP payload: 4-byte non-ESP marker, then the IKE header: exchange at byte 22, flags at 23
    rules = ("table inet ik2hold {\n chain out {\n  type filter hook output priority 0;\n"
             "  udp dport 4500 @th,240,8 36 @th,248,8 & 0x20 == 0 counter drop\n }\n}\n")
    topo.run("gwa", ["nft", "-f", "-"], input=rules.encode())
    result = {}
    t = threading.Thread(target=lambda: result.update(r=v.ctl("rekey", name="site", ike=ike_sa)))
    t.start()
    time.sleep(0.5)
    ch.swanctl("--rekey", "--ike" if ike_sa else "--child", "site")
    time.sleep(1.0)
    held = topo.run("gwa", ["nft", "list", "table", "inet", "ik2hold"]).stdout.decode()
    topo.run("gwa", ["nft", "delete", "table", "inet", "ik2hold"])
    assert "packets 0 " not in held, held
    t.join(timeout=70)
    time.sleep(6)  # vpnd's retransmission (2 s, then 4 s) reaches charon and is answered
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        st = v.status()
        sas = ch.list_sas()
        if len(st["ike_sas"]) == 1 and len(st["ike_sas"][0]["child_sas"]) == 1 \
                and sas.count("ESTABLISHED") == 1 and sas.count("INSTALLED") == 1:
            break
        time.sleep(0.3)
    st = v.status()
    assert len(st["ike_sas"]) == 1, st
    assert [c["state"] for c in st["ike_sas"][0]["child_sas"]] == ["INSTALLED"], st
    sas = ch.list_sas()
    assert sas.count("ESTABLISHED") == 1 and sas.count("INSTALLED") == 1, sas
    now = wait_child(v)
    if ike_sa:
        assert now["ike"]["spi_i"] != first["ike"]["spi_i"]
    else:
        assert now["child"]["spi_in"] != first["child"]["spi_in"]
    log = v.log()
    assert ("by the peer" in log) if ike_sa else ("rekeyed by the peer meanwhile" in log or "collision" in log), \
        log[-3000:]
    topo.check_traffic(mbytes=0.5)


def test_initial_contact_from_restarted_charon(ik2_topo, make_charon, vpnds):
    """charon crashes and initiates again at once: vpnd drops the stale SAs on its
    INITIAL_CONTACT instead of keeping two tunnels."""
    topo = ik2_topo
    ike, esp = PAIRS[2]
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, start="none")
    def load(c):
        # charon sends INITIAL_CONTACT only towards a definite identity, not %any
        charon_psk(c, ike=ike, esp=esp, gwa=topo.gwa_public, remote_id=topo.gwa_wan)

    ch = make_charon(topo, "gwb")
    load(ch)
    ch.initiate("site")
    first = wait_child(v)
    ch.kill()
    ch2 = make_charon(topo, "gwb")
    load(ch2)
    ch2.initiate("site")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sas = v.status()["ike_sas"]
        if len(sas) == 1 and sas[0]["spi_i"] != first["ike"]["spi_i"] and sas[0]["child_sas"]:
            break
        time.sleep(0.2)
    sas = v.status()["ike_sas"]
    assert len(sas) == 1 and sas[0]["spi_i"] != first["ike"]["spi_i"], sas
    assert "INITIAL_CONTACT" in ch2.log() or "INIT_CONTACT" in ch2.log()
    topo.check_traffic(mbytes=0.5)


def test_rsa_certificates_through_nat(ik2_topo_nat, make_charon, vpnds):
    """IKE_AUTH with RSA certificates exceeds one MTU: IP fragments through the masquerade."""
    topo = ik2_topo_nat
    pki = _pki(Path(topo.workdir), "rsa")
    ike, esp = PAIRS[0]
    ch = make_charon(topo, "gwb")
    charon_cert(ch, pki, ike=ike, esp=esp, gwa="%any")
    auth = (f"    auth: {{cert: {pki['gw-a'][0]}, key: {pki['gw-a'][1]}, ca: {pki['ca']}}}\n"
            f"    remote_id: \"{DN_B}\"")
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, auth=auth)
    got = wait_child(v)
    assert got["ike"]["nat_local"] and got["ike"]["remote_id"] == DN_B
    topo.check_traffic(mbytes=0.5)
