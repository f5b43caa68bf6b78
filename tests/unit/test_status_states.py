"""Issue 7.7: `vpnctl status` says what each connection is doing, and its last error.

Two daemons in one process (real glue, IkeManager, DataPlane; no kernel), a fake clock:
a refused CHILD_SA (traffic selectors that do not match) in IKEv2 and IKEv1, a deletion by
idle_time, `vpnctl down`, a peer that never answers."""

import asyncio

import pytest

from vpnd import esp
from vpnd.config import parse_config
from vpnd.daemon import Daemon
from vpnd.status import connection_state, error_reason, format_status

PSK = "states test PSK 0123456789"


class Wire:
    ike_port = 500
    send_errors = 0

    def __init__(self):
        self.q = []

    def send_ike(self, data, local, remote):
        self.q.append((data, local, remote))


def config(me, peer, lts, rts, version, start, **extra):
    return parse_config({"connections": {"ike": {
        "version": version, "local": me, "peer": peer, "psk": PSK, "local_ts": [lts],
        "remote_ts": [rts], "ike": "aes128-sha256-modp2048", "esp": "aes128-sha256", "start": start,
        **extra}}})


def pair(version, b_rts="10.1.0.0/16", a_start="start", **extra):
    clock = [1000.0]
    a = Daemon(config("10.200.0.1", "10.200.0.2", "10.1.0.0/16", "10.2.0.0/16", version, a_start, **extra))
    b = Daemon(config("10.200.0.2", "10.200.0.1", "10.2.0.0/16", b_rts, version, "none", **extra))
    for d in (a, b):
        d.dp = esp.DataPlane()
        d.wire = Wire()
        d._apply_static_routes = lambda: None
        d._now = lambda: clock[0]
        d._apply_connections(initial=True)
    b._start_ike()
    a._start_ike()
    return a, b, clock


def pump(a, b, rounds=30, deliver=True):
    for _ in range(rounds):
        for d in (a, b):
            d._run_actions(d.ike.handle_timer(d._now()), rearm=False)
        for src, dst in ((a, b), (b, a)):
            q, src.wire.q = src.wire.q, []
            if deliver:
                for data, local, remote in q:
                    dst._ike_receive(data, remote, local)


def conn(d):
    (c,) = d.status()["connections"]
    return c


@pytest.mark.parametrize("version", [2, 1])
def test_refused_child_sa_is_ike_only_with_its_error(version):
    a, b, clock = pair(version, b_rts="10.9.0.0/16")
    pump(a, b)
    c = conn(a)
    assert c["ike_sas"] >= 1 and c["child_sas"] == 0
    assert c["state"] == "ike-only", c
    # IKEv2: TS_UNACCEPTABLE; IKEv1: the peer's INVALID-ID-INFORMATION (RFC 2407 4.6.3)
    assert c["last_error"]["reason"] == ("ts_unacceptable" if version == 2 else "invalid_id"), c
    assert c["last_error"]["time"].endswith("Z") and isinstance(c["last_error"]["age_s"], int)
    assert "ike-only" in format_status(a.status())


@pytest.mark.parametrize("version", [2, 1])
def test_up_then_idle_time_deletion_is_idle_not_connecting(version):
    a, b, clock = pair(version, a_start="trap", idle_time=10)
    a._run_actions(a.ike.initiate("ike", clock[0]), rearm=False)
    pump(a, b)
    c = conn(a)
    assert c["state"] == "up" and c["last_error"] is None
    clock[0] += 30  # no traffic: idle_time deletes the CHILD_SA
    pump(a, b)
    c = conn(a)
    assert c["child_sas"] == 0 and c["state"] == "idle", c


def test_unanswered_attempt_is_connecting_then_failed_with_timeout():
    a, b, clock = pair(2, a_start="none")
    a._note_attempt("ike")
    a._run_actions(a.ike.initiate("ike", clock[0]), rearm=False)
    pump(a, b, rounds=1, deliver=False)
    assert conn(a)["state"] == "connecting"
    for _ in range(40):  # retransmissions run out
        clock[0] += 20
        pump(a, b, rounds=1, deliver=False)
    c = conn(a)
    assert c["state"] == "failed" and c["last_error"]["reason"] == "timeout", c


def test_success_clears_the_last_error_and_down_is_down():
    a, b, clock = pair(2, a_start="none")
    a._note_attempt("ike")
    a._run_actions(a.ike.initiate("ike", clock[0]), rearm=False)
    pump(a, b, rounds=1, deliver=False)
    for _ in range(40):
        clock[0] += 20
        pump(a, b, rounds=1, deliver=False)
    assert conn(a)["last_error"] is not None
    a._run_actions(a.ike.initiate("ike", clock[0]), rearm=False)
    a._note_attempt("ike")
    pump(a, b)
    c = conn(a)
    assert c["state"] == "up" and c["last_error"] is None

    async def down():
        a.loop = asyncio.get_running_loop()
        a._now = lambda: clock[0]
        task = asyncio.ensure_future(a.cmd_down("ike", timeout=5))
        for _ in range(50):
            await asyncio.sleep(0)
            pump(a, b, rounds=1)
            if task.done():
                break
        await task

    asyncio.run(down())
    assert conn(a)["state"] == "down"


def test_state_rules():
    base = dict(installed=0, ike_states=[], attempt=False, attempt_age=0.0, last_error=None,
                trap=False, admin_down=False)
    st = lambda **kw: connection_state(**{**base, **kw})  # noqa: E731
    err = {"reason": "timeout"}
    assert st() == "down" and st(trap=True) == "idle"
    assert st(installed=1, last_error=err) == "up"
    assert st(ike_states=["CONNECTING"]) == "connecting"
    assert st(ike_states=["CONNECTING"], last_error=err) == "connecting"  # a retry runs
    assert st(attempt=True, attempt_age=1.0) == "connecting"
    assert st(attempt=True, attempt_age=60.0, last_error=err) == "failed"
    assert st(ike_states=["ESTABLISHED"]) == "ike-only"
    assert st(ike_states=["ESTABLISHED"], attempt=True) == "connecting"
    assert st(ike_states=["ESTABLISHED"], trap=True) == "idle"
    assert st(ike_states=["ESTABLISHED"], trap=True, last_error=err) == "ike-only"
    assert st(last_error=err) == "failed"
    assert st(last_error=err, trap=True) == "idle"  # the trap retries on traffic
    assert st(admin_down=True, last_error=err, ike_states=["DELETING"]) == "down"
    assert error_reason("failed", "IKE_SA_INIT failed: peer answered NO_PROPOSAL_CHOSEN") == "no_proposal"
    assert error_reason("error", "peer reports INVALID-ID-INFORMATION") == "invalid_id"
    assert error_reason("failed", "IKE_SA x could not be established: 10.0.0.1 does not answer") == "timeout"
    assert error_reason("auth_failed", "x") == "auth_failed"
