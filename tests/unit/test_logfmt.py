"""Issue 11, "logs an engineer can debug with" (vpnd/logfmt.py, vpnd/ike/trace.py): levels
per subsystem, the SA context of each line, journald and JSON forms, and one line per IKE
message in and out of two real daemons (the daemon glue with both IKE cores, no kernel)."""

import io
import json
import logging
import os
import re
import sys

import pytest

from vpnd import logfmt
from vpnd.config import ConfigError, parse_config
from vpnd.ike import trace
from vpnd.ike.actions import Trace

sys.path.insert(0, os.path.dirname(__file__))
import test_review_pair as pair  # noqa: E402  (two daemons in one process)


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers = list(root.handlers)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    logfmt.apply_levels("info")
    root.setLevel(logging.WARNING)


def _daemon(extra):
    return parse_config({"daemon": dict(extra, allow_empty=True), "connections": {}}).daemon


# -- configuration ----------------------------------------------------------------------

def test_log_level_string_and_mapping():
    assert (_daemon({"log_level": "debug"}).log_level, _daemon({"log_level": "debug"}).log_subsystems) \
        == ("debug", ())
    d = _daemon({"log_level": {"default": "info", "ike": "debug", "esp": "warning", "net": "info",
                               "control": "info"}, "log_format": "json"})
    assert d.log_level == "info"
    assert dict(d.log_subsystems) == {"ike": "debug", "esp": "warning", "net": "info", "control": "info"}
    assert d.log_format == "json"
    assert _daemon({"log_level": {"ike": "debug"}}).log_level == "info"  # default's default


def test_log_level_errors_name_the_key_path():
    with pytest.raises(ConfigError) as e:
        parse_config({"daemon": {"log_level": {"default": "loud", "iek": "debug", "esp": 3},
                                 "log_format": "xml", "log_subsystems": []},
                      "connections": {}})
    assert e.value.problems == [
        "daemon.log_subsystems: unknown key",
        "daemon.log_level.iek: unknown key (did you mean 'ike'?)",
        "daemon.log_level.default: 'loud' is not one of: debug, info, warning, error",
        "daemon.log_level.esp: 3 is not one of: debug, info, warning, error",
        "daemon.log_format: 'xml' is not one of: text, json",
    ]


# -- levels -----------------------------------------------------------------------------

def test_levels_per_subsystem_and_no_third_party_debug():
    logfmt.apply_levels("info", (("ike", "debug"), ("esp", "warning")))
    assert logging.getLogger("vpnd.ike").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("vpnd.ike.anything").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("vpnd.esp").isEnabledFor(logging.INFO)
    assert logging.getLogger("vpnd.net.routes").isEnabledFor(logging.INFO)
    assert not logging.getLogger("vpnd.net").isEnabledFor(logging.DEBUG)
    assert logfmt.wants_trace()
    logfmt.apply_levels("debug")
    for other in ("pyroute2", "pyroute2.netlink", "asyncio", "urllib3"):
        assert not logging.getLogger(other).isEnabledFor(logging.INFO), other
    assert logging.getLogger("vpnd.control").isEnabledFor(logging.DEBUG)
    logfmt.apply_levels("info")
    assert not logfmt.wants_trace()


# -- formats ----------------------------------------------------------------------------

def _record(msg, level=logging.INFO, name="vpnd.ike", **extra):
    rec = logging.LogRecord(name, level, __file__, 1, msg, (), None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_text_lines_name_connection_and_sa():
    fmt = logfmt.TextFormatter()
    line = fmt.format(_record("parsed IKE_AUTH response 1 [ IDr AUTH SA TSi TSr ]", logging.DEBUG,
                              **logfmt.ctx("site-b", 3)))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d vpnd\[\d+\] DEBUG \[ike\] site-b\[3\]: "
                        r"parsed IKE_AUTH response 1 \[ IDr AUTH( N\(\w+\))* SA TSi TSr( N\(\w+\))* \]", line), line
    assert "[esp] site-b[3] site-b{7}: SA installed" in fmt.format(
        _record("SA installed", name="vpnd.esp", **logfmt.ctx("site-b", 3, 7)))
    assert "[daemon] vpnd ready" in fmt.format(_record("vpnd ready", name="vpnd.daemon"))
    assert "[net] route" in fmt.format(_record("route 10.2.0.0/16 added", name="vpnd.net.routes"))
    # a forged second record in peer data stays on the line
    assert "\n" not in fmt.format(_record("id a\n2030-01-01 vpnd[1] INFO FORGED"))


def test_journal_form_has_priority_and_no_timestamp():
    fmt = logfmt.TextFormatter(journal=True)
    assert fmt.format(_record("retransmit 1", logging.DEBUG, **logfmt.ctx("site-b", 3))) == \
        "<7>[ike] site-b[3]: retransmit 1"
    assert fmt.format(_record("auth failed", logging.WARNING)) == "<4>[ike] auth failed"
    assert fmt.format(_record("x", logging.ERROR)).startswith("<3>")
    try:
        raise ValueError("boom")
    except ValueError:
        rec = _record("internal error", logging.ERROR)
        rec.exc_info = sys.exc_info()
    lines = fmt.format(rec).split("\n")
    assert len(lines) > 2 and all(x.startswith("<3>") for x in lines), lines


def test_journal_stream_detection(tmp_path, monkeypatch):
    f = open(tmp_path / "stream", "w")
    other = open(tmp_path / "other", "w")
    st = os.fstat(f.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert logfmt.journal_stream(f)
    assert not logfmt.journal_stream(other)  # inherited variable, stderr elsewhere
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert not logfmt.journal_stream(f)
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not logfmt.journal_stream(f)
    # setup() picks the journal form for such a stream
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    logfmt.setup("info", stream=f)
    logfmt.logger("daemon").warning("hello")
    f.flush()
    assert (tmp_path / "stream").read_text() == "<4>[daemon] hello\n"
    f.close()
    other.close()


def test_json_lines():
    stream = io.StringIO()
    logfmt.setup("debug", fmt="json", stream=stream)
    logfmt.logger("ike").debug("parsed %s", "IKE_AUTH response 1 [ IDr AUTH ]", extra=logfmt.ctx("site-b", 3, 7))
    logfmt.logger("daemon").info("peer id \x1b[2J")
    first, second = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert set(first) == {"time", "level", "subsystem", "connection", "ike_sa", "child_sa", "message"}
    assert (first["level"], first["subsystem"], first["connection"], first["ike_sa"], first["child_sa"],
            first["message"]) == ("debug", "ike", "site-b", 3, 7, "parsed IKE_AUTH response 1 [ IDr AUTH ]")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["connection"] is None and second["message"] == "peer id \\x1b[2J"
    logfmt.reformat("text")
    logfmt.logger("daemon").info("now text")
    assert "INFO [daemon] now text" in stream.getvalue().splitlines()[-1]


# -- the IKE message lines -------------------------------------------------------------

def test_trace_chain_reads_types_only():
    # IKEv1 notify R-U-THERE inside a HASH + N chain; IKEv2 chain ending in SK
    n = bytes([0, 0, 0, 12 + 8 + 4]) + bytes(4) + bytes([1, 8]) + (36136).to_bytes(2, "big") + bytes(8) + b"seq!"
    h = bytes([11, 0, 0, 8]) + b"hash"
    assert trace.chain(h + n, 8, 0, 1) == ["HASH", "N(DPD)"]
    assert trace.chain(h + n[:-3], 8, 0, 1) == ["HASH", "N(truncated)"]
    sk = bytes([0, 0, 0, 8]) + b"abcd"
    nat = bytes([46, 0, 0, 8]) + bytes([0, 0]) + (16388).to_bytes(2, "big")
    assert trace.chain(nat + sk, 41, 0, 2) == ["N(NATD_S_IP)", "SK"]
    assert trace.message("parsed", 35, 2, True, 1, ["IDr", "AUTH"]) == "parsed IKE_AUTH response 1 [ IDr AUTH ]"
    assert trace.message("generating", 32, 1, False, 7, ["HASH"]) == "generating QUICK_MODE request 7 [ HASH ]"
    assert trace.packet(True, ("10.0.0.1", 500), ("10.0.0.2", 4500), 312) == \
        "sending packet: from 10.0.0.1[500] to 10.0.0.2[4500] (312 bytes)"
    assert trace.packet(False, ("10.0.0.1", 500), ("10.0.0.2", 500), 80) == \
        "received packet: from 10.0.0.2[500] to 10.0.0.1[500] (80 bytes)"


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def lines(self, sub=None):
        return [(r.getMessage(), logfmt.context(r)) for r in self.records
                if sub is None or logfmt.subsystem(r) == sub]


def _exchange(version, level="debug", per_subsystem=()):
    logfmt.setup(level, per_subsystem, stream=io.StringIO())
    rec = Records()
    logging.getLogger().addHandler(rec)
    a, b = pair.start_pair(version)
    now = a._now()
    a._run_actions(a.ike.rekey("ike", now))
    pair.pump(a, b)
    a._run_actions(a.ike.rekey("ike", now, ike=True))
    pair.pump(a, b)
    a._run_actions(a.ike.terminate("ike", a._now()))
    pair.pump(a, b)
    return rec


def _has(lines, pattern, where=None):
    rx = re.compile(pattern)
    found = [(m, w) for m, w in lines if rx.fullmatch(m) and (where is None or re.fullmatch(where, w))]
    assert found, f"no line {pattern!r} ({where}) in:\n" + "\n".join(f"{w}: {m}" for m, w in lines)
    return found


def test_ikev2_messages_in_and_out():
    rec = _exchange(2)
    ike, net = rec.lines("ike"), rec.lines("net")
    sa = r"ike\[\d+\]"
    _has(ike, r"generating IKE_SA_INIT request 0 \[ SA KE No N\(NATD_S_IP\) N\(NATD_D_IP\) N\(HASH_ALG\)( N\(\w+\))* \]", sa)
    _has(ike, r"parsed IKE_SA_INIT request 0 \[ SA KE No N\(NATD_S_IP\) N\(NATD_D_IP\) N\(HASH_ALG\)( N\(\w+\))* \]", sa)
    _has(ike, r"parsed IKE_SA_INIT response 0 \[ SA KE No .*\]", sa)
    _has(ike, r"generating IKE_AUTH request 1 \[ IDi AUTH N\(INIT_CONTACT\)( N\(\w+\))* SA TSi TSr( N\(\w+\))* \]", sa)
    _has(ike, r"parsed IKE_AUTH response 1 \[ IDr AUTH( N\(\w+\))* SA TSi TSr( N\(\w+\))* \]", sa)
    _has(ike, r"generating CREATE_CHILD_SA request 2 \[ N\(REKEY_SA\) SA No KE TSi TSr \]", sa)
    _has(ike, r"parsed CREATE_CHILD_SA response 2 \[ SA No KE TSi TSr \]", sa)
    _has(ike, r"generating CREATE_CHILD_SA request \d+ \[ SA No KE \]", sa)  # the IKE SA rekey
    _has(ike, r"parsed INFORMATIONAL request \d+ \[ D \]", sa)
    _has(net, r"sending packet: from 10\.200\.0\.1\[500\] to 10\.200\.0\.2\[500\] \(\d+ bytes\)", sa)
    _has(net, r"received packet: from 10\.200\.0\.1\[500\] to 10\.200\.0\.2\[500\] \(\d+ bytes\)", sa)
    # state changes, with the SA and the reason
    _has(ike, r"IKE_SA ike\[\d+\] established between .*", sa)
    _has(ike, r"CHILD_SA ike\{\d+\} established .*", sa + r" ike\{\d+\}")
    _has(ike, r"IKE_SA ike\[\d+\] rekeyed to \[\d+\]", sa)
    _has(ike, r"IKE_SA ike\[\d+\] deleted \(.+\)", sa)
    _has(rec.lines("esp"), r"SA installed, .*", sa + r" ike\{\d+\}")
    _names_its_sa(ike + net)


def test_ikev1_messages_in_and_out():
    rec = _exchange(1)
    ike, net = rec.lines("ike"), rec.lines("net")
    sa = r"ike\[\d+\]"
    _has(ike, r"generating ID_PROT request 0 \[ SA V( V)* \]", sa)
    _has(ike, r"parsed ID_PROT request 0 \[ SA V( V)* \]", sa)
    _has(ike, r"parsed ID_PROT response 0 \[ SA V( V)* \]", sa)
    _has(ike, r"parsed ID_PROT request 0 \[ KE No NAT-D NAT-D \]", sa)
    _has(ike, r"generating ID_PROT request 0 \[ ID HASH N\(INITIAL_CONTACT\) \]", sa)
    _has(ike, r"parsed ID_PROT response 0 \[ ID HASH \]", sa)
    _has(ike, r"generating QUICK_MODE request \d+ \[ HASH SA No KE ID ID \]", sa)
    _has(ike, r"parsed QUICK_MODE request \d+ \[ HASH SA No KE ID ID \]", sa)
    _has(ike, r"generating QUICK_MODE response \d+ \[ HASH SA No KE ID ID \]", sa)
    _has(ike, r"parsed QUICK_MODE response \d+ \[ HASH SA No KE ID ID \]", sa)
    _has(ike, r"generating QUICK_MODE request \d+ \[ HASH \]", sa)  # message 3
    _has(ike, r"parsed QUICK_MODE request \d+ \[ HASH \]", sa)
    _has(ike, r"generating INFORMATIONAL_V1 request \d+ \[ HASH D \]", sa)
    _has(ike, r"parsed INFORMATIONAL_V1 request \d+ \[ HASH D \]", sa)
    _has(net, r"sending packet: from 10\.200\.0\.2\[500\] to 10\.200\.0\.1\[500\] \(\d+ bytes\)", sa)
    _has(ike, r"ISAKMP SA established with .*", sa)
    _has(ike, r"IPsec SA .* installed .*", sa + r" ike\{\d+\}")
    _names_its_sa(ike + net)


def _names_its_sa(lines):
    """Every line names its SA; only a datagram that matches no SA (here: the answer to
    the last Delete, after the SA went) cannot."""
    for m, w in lines:
        assert w or m.startswith("received packet: "), m


def test_no_message_lines_unless_ike_or_net_log_debug():
    rec = _exchange(2, "info", (("esp", "debug"), ("control", "debug")))
    assert not [m for m, _ in rec.lines() if m.startswith(("parsed ", "generating ", "sending packet"))]
    a, _ = pair.start_pair(2)
    assert a.ike.trace is False
    assert not any(isinstance(x, Trace) for x in a.ike.rekey("ike", a._now()))
    logfmt.apply_levels("info", (("net", "debug"),))
    rec2 = _exchange(2, "info", (("net", "debug"),))
    assert not [m for m, _ in rec2.lines("ike") if m.startswith(("parsed ", "generating "))]
    assert [m for m, _ in rec2.lines("net") if m.startswith("sending packet")]


def test_reload_applies_log_levels(tmp_path):
    from vpnd.config import load_config
    from vpnd.daemon import Daemon
    path = tmp_path / "vpnd.yaml"
    body = ("  control_socket: /tmp/log3-not-used.sock\n  allow_empty: true\nconnections: {}\n")
    path.write_text("daemon:\n  log_level: info\n" + body)
    logfmt.setup_from(load_config(path).daemon)
    d = Daemon(load_config(path), str(path))
    d._apply_connections = lambda *a, **k: None  # no kernel here
    assert not logfmt.enabled("ike")
    path.write_text("daemon:\n  log_level: {default: warning, ike: debug}\n  log_format: json\n" + body)
    d.reload()
    assert logfmt.enabled("ike") and not logfmt.enabled("esp", logging.INFO)
    assert any(isinstance(h.formatter, logfmt.JsonFormatter) for h in logging.getLogger().handlers)


def test_vpnctl_commands_are_logged_by_the_control_subsystem():
    import asyncio
    from vpnd.control import CommandError, dispatch

    class Handler:
        async def cmd_up(self, name, timeout=30):
            return {"up": name}

        async def cmd_down_many(self, req, timeout=15):
            raise CommandError("no connection has an SA to 10.9.9.9")

        def status(self):
            return {}

    logfmt.setup("info", stream=io.StringIO())
    rec = Records()
    logging.getLogger().addHandler(rec)
    asyncio.run(dispatch(Handler(), {"command": "up", "name": "site-b"}))
    asyncio.run(dispatch(Handler(), {"command": "down", "all": False, "peer": "10.9.9.9"}))
    asyncio.run(dispatch(Handler(), {"command": "status"}))  # debug: not at info
    assert rec.lines("control") == [("vpnctl up site-b", "site-b"), ("vpnctl down --peer 10.9.9.9", ""),
                                    ("vpnctl down: no connection has an SA to 10.9.9.9", "")]


def test_ikev2_retransmitted_request_is_said():
    logfmt.setup("debug", stream=io.StringIO())
    rec = Records()
    logging.getLogger().addHandler(rec)
    a, b = pair.start_pair(2)
    a._run_actions(a.ike.rekey("ike", a._now()))
    q, a.wire.q = a.wire.q, []
    for data, local, remote in q + q:  # the request, then its retransmission
        b._ike_receive(data, remote, local)
    _has(rec.lines("ike"), r"received retransmit of request 2, retransmitting response", r"ike\[\d+\]")
    assert len([m for m, _ in rec.lines("ike") if m.startswith("generating CREATE_CHILD_SA response 2")]) == 1


@pytest.mark.parametrize("version", [2, 1])
def test_datagrams_that_parse_as_nothing_cost_no_line_at_debug(version):
    """Issue 8's bound on log lines per attacker packet holds at debug too: a datagram is
    logged (`received packet`) only with its `parsed` line."""
    logfmt.setup("debug", stream=io.StringIO())
    a, b = pair.start_pair(version)
    rec = Records()
    logging.getLogger().addHandler(rec)
    hdr = bytes(range(16)) + bytes([33 if version == 2 else 1, 0x20 if version == 2 else 0x10,
                                    35 if version == 2 else 2, 0x08 if version == 2 else 0])
    for i in range(200):
        junk = hdr + bytes(4) + (60).to_bytes(4, "big") + i.to_bytes(32, "big")
        src = ("198.51.100.7", 500) if i % 2 else ("10.200.0.1", 500)  # unknown source / the peer
        b._ike_receive(junk, src, ("10.200.0.2", 500))
    lines = [m for m, _ in rec.lines()]
    assert not [m for m in lines if m.startswith(("received packet", "parsed"))], lines
    assert len(lines) <= 4, lines  # rate-limited drop reports at most
