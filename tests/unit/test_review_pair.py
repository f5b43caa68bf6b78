"""Two daemons in one process. The status object against the contract's schema, and
no secret in any output: two daemons (the real glue, IkeManager and DataPlane; no
kernel) negotiate IKEv2 and IKEv1 with log_level debug, rekey, tear down, answer status;
manual-keyed connections install. Then every log line (all levels), the status object,
the human status table, error replies and reprs are searched for the PSK, the manual keys,
every CHILD_SA key and every IKE SA key (SK_*, SKEYID_*), in hex either case, base64 and
raw bytes."""

import base64
import gc
import json
import logging

import pytest

from vpnd import esp
from vpnd.config import ConfigError, parse_config
from vpnd.daemon import CommandError, Daemon, setup_logging
from vpnd.sadb import SATable
from vpnd.status import format_status

PSK = "rvw secret PSK d41d8cd98f00b204"
MANUAL_KEYS = {"enc_in": "a1" * 16, "auth_in": "b2" * 32, "enc_out": "c3" * 16, "auth_out": "d4" * 32}


def config(me, peer, lts, rts, version, start, inbound, outbound):
    return parse_config({
        "daemon": {"log_level": "debug"},
        "connections": {
            "ike": {"version": version, "local": me, "peer": peer, "psk": PSK,
                    "local_ts": [lts], "remote_ts": [rts], "ike": "aes128-sha256-modp2048",
                    "esp": "aes128-sha256-modp2048", "start": start},
            "dead": {"version": version, "local": me, "peer": "10.200.0.9", "psk": PSK,
                     "local_ts": ["10.7.0.0/16"], "remote_ts": ["10.8.0.0/16"], "start": "none"},
            "man": {"local": me, "peer": peer, "esp": "aes128-sha256",
                    "local_ts": ["10.5.0.0/16" if start == "start" else "10.6.0.0/16"],
                    "remote_ts": ["10.6.0.0/16" if start == "start" else "10.5.0.0/16"],
                    "manual": {"inbound": {"esp": {"spi": inbound, "enc_key": MANUAL_KEYS[
                        "enc_in" if start == "start" else "enc_out"], "auth_key": MANUAL_KEYS[
                        "auth_in" if start == "start" else "auth_out"]}},
                        "outbound": {"esp": {"spi": outbound, "enc_key": MANUAL_KEYS[
                            "enc_out" if start == "start" else "enc_in"], "auth_key": MANUAL_KEYS[
                            "auth_out" if start == "start" else "auth_in"]}}}}}})


class Wire:
    ike_port = 500
    send_errors = 0

    def __init__(self):
        self.q = []

    def send_ike(self, data, local, remote):
        self.q.append((data, local, remote))


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record):
        self.lines.append(self.format(record))  # with tracebacks, as the daemon would print


def pump(a, b, rounds=40):
    for _ in range(rounds):
        for d in (a, b):
            d._run_actions(d.ike.handle_timer(d._now()), rearm=False)
        for src, dst in ((a, b), (b, a)):
            q, src.wire.q = src.wire.q, []
            for data, local, remote in q:
                dst._ike_receive(data, remote, local)


def start_pair(version):
    """gwa (start: start) and gwb (start: none), negotiated; plus a manual connection each."""
    a = Daemon(config("10.200.0.1", "10.200.0.2", "10.1.0.0/16", "10.2.0.0/16", version, "start",
                      0x1001, 0x1002))
    b = Daemon(config("10.200.0.2", "10.200.0.1", "10.2.0.0/16", "10.1.0.0/16", version, "none",
                      0x1002, 0x1001))
    for d in (a, b):
        d.dp = esp.DataPlane()
        d.wire = Wire()
        d._apply_static_routes = lambda: None
    for d in (b, a):
        d._apply_connections(initial=True)
        d._start_ike()
    pump(a, b)
    return a, b


def ike_keys_alive() -> list[bytes]:
    """SK_* (IKEv2) and SKEYID_* (IKEv1) of the IKE SAs that exist now."""
    out = []
    for obj in gc.get_objects():
        if type(obj).__name__ in ("IkeKeys", "Phase1Keys"):
            out += [v for v in vars(obj).values() if isinstance(v, bytes) and len(v) >= 8]
    return out


def forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), repr(secret)[2:-1],
            secret.hex(":"), secret.hex(" ")]


@pytest.fixture
def capture():
    setup_logging("debug")
    h = Capture()
    root = logging.getLogger()
    root.addHandler(h)
    yield h
    root.removeHandler(h)
    for old in list(root.handlers):
        if old is not h:
            root.removeHandler(old)
    root.setLevel(logging.WARNING)


@pytest.mark.parametrize("version", [2, 1])
def test_no_key_in_logs_status_or_errors(version, capture, monkeypatch):
    child_keys = []
    orig = SATable.apply

    def spy(self, act, now):
        for k in getattr(act, "inbound", ()) + getattr(act, "outbound", ()):
            child_keys.extend(x for x in (k.enc_key, k.auth_key) if x)
        return orig(self, act, now)

    monkeypatch.setattr(SATable, "apply", spy)
    a, b = start_pair(version)
    outputs = []
    ike_keys = ike_keys_alive()
    assert any(c.connection == "ike" for c in a.children.values()), "\n".join(capture.lines[-30:])
    now = a._now()
    a._run_actions(a.ike.rekey("ike", now))
    pump(a, b)
    a._run_actions(a.ike.rekey("ike", now, ike=True))
    pump(a, b)
    ike_keys += ike_keys_alive()
    for d in (a, b):
        st = d.status()
        outputs += [json.dumps(st), format_status(st), repr(d.children), repr(d.config)]
        outputs += [repr(s) for c in d.children.values() for s in c.inbound + c.outbound]
    # debug lines: malformed IKE datagrams, an ESP packet with an unknown SPI
    a._ike_receive(b"\x00" * 8 + b"\x11" * 20, ("10.200.0.1", 500), ("10.200.0.2", 500))
    a._ike_receive(a.wire.q[0][0][:40] if a.wire.q else b"\x01" * 40, ("10.200.0.1", 500), ("10.200.0.2", 500))
    a.dp.decap(b"\xde\xad\xbe\xef" + bytes(40), 17, "10.200.0.2", 4500)
    a._drain_events()
    # a data-plane failure is logged with its traceback: no key in it either
    class BrokenTun:
        def read_burst(self):
            raise ValueError("x")

    a.tun = BrokenTun()
    a.io.on_tun()
    a.tun = None
    a._run_actions(a.ike.terminate("ike", a._now()))
    pump(a, b)
    try:
        parse_config({"connections": {"x": {"peer": "10.0.0.2", "psk": "0x" + PSK, "esp": "aes128-sha256",
                                             "manual": {"inbound": {"esp": {"spi": 0x100, "enc_key": PSK}}}}}})
    except ConfigError as e:
        outputs += e.problems
    try:
        a._require("missing " + PSK[:0])
    except CommandError as e:
        outputs.append(str(e))
    assert child_keys and ike_keys
    text = "\n".join(capture.lines + outputs)
    assert "DEBUG" in text  # debug logging was on
    assert PSK not in text and PSK.encode().hex() not in text
    for k in list(MANUAL_KEYS.values()):
        assert k not in text and k.upper() not in text
    for secret in child_keys + ike_keys:
        for f in forms(secret):
            assert f not in text, f"key material {secret.hex()[:8]}... appears in the output"


HEX = set("0123456789abcdef")
COUNTERS = ("bytes_in", "packets_in", "bytes_out", "packets_out", "replay_drops", "auth_failures")


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


@pytest.mark.parametrize("version", [2, 1])
def test_status_object_matches_the_contract(version):
    """Key names and types of the contract's `vpnctl status --json` example, through JSON."""
    a, b = start_pair(version)
    for d in (a, b):
        st = json.loads(json.dumps(d.status()))
        assert set(st) >= {"connections", "ike_sas"}
        conns = {c["name"]: c for c in st["connections"]}
        assert set(conns) == {"ike", "dead", "man"}  # every configured one, also while down
        for c in conns.values():
            assert {"name", "version", "peer", "state", "ike_sas", "child_sas"} <= set(c)
            assert c["version"] == version or c["name"] == "man"
            assert isinstance(c["peer"], str) and isinstance(c["state"], str)
            assert is_int(c["ike_sas"]) and is_int(c["child_sas"])
        assert conns["ike"]["state"] == "up" and conns["ike"]["child_sas"] >= 1
        assert conns["dead"]["state"] == "down" and conns["dead"]["child_sas"] == 0
        assert conns["man"]["state"] == "up"
        ike = [sa for sa in st["ike_sas"] if sa["connection"] == "ike"]
        assert ike
        for sa in ike:
            assert sa["state"] == "ESTABLISHED" and sa["version"] == version
            for k in ("local", "remote"):
                ip, port = sa[k].rsplit(":", 1)
                # IKEv2 with MOBIKE (default) runs on 4500 from IKE_AUTH on (RFC 4555 3.3)
                assert ip.startswith("10.200.0.") and port == ("4500" if version == 2 else "500")
            assert isinstance(sa["nat_detected"], bool) and isinstance(sa["initiator"], bool)
            assert len(sa["spi_i"]) == 16 and set(sa["spi_i"]) <= HEX and set(sa["spi_r"]) <= HEX
            assert sa["proposal"] == "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
            assert is_int(sa["established_s"]) and is_int(sa["rekey_in_s"])
            for ch in sa["child_sas"]:
                assert ch["name"] == "ike" and ch["state"] == "INSTALLED"
                assert (ch["mode"], ch["protocol"], ch["udp_encap"]) == ("tunnel", "esp", False)
                assert len(ch["spi_in"]) == 8 and set(ch["spi_in"] + ch["spi_out"]) <= HEX
                assert ch["proposal"].startswith("AES_CBC-128/HMAC_SHA2_256_128")
                assert isinstance(ch["local_ts"], list) and isinstance(ch["remote_ts"], list)
                assert all(is_int(ch[k]) for k in COUNTERS) and is_int(ch["rekey_in_s"])
        man = [sa for sa in st["ike_sas"] if sa["connection"] == "man"]
        assert [ch["state"] for sa in man for ch in sa["child_sas"]] == ["INSTALLED"]
        assert all(is_int(ch[k]) for sa in man for ch in sa["child_sas"] for k in COUNTERS)
        assert all(is_int(v) for k, v in st["daemon"].items() if k not in ("tun", "mtu", "routes", "udp_ports"))
