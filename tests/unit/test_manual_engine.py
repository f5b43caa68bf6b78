"""Manual keying as an engine behind the IkeManager façade (vpnd/ike/manual.py): start,
up/down, reload of changed/removed/added connections, status, and refused keys."""

import copy

from vpnd.config import parse_config
from vpnd.ike.actions import DeleteChildSA, Event, InstallChildSA
from vpnd.ike.manager import IkeManager

KEY16, KEY20 = "11" * 16, "22" * 20


def manual(spi_in, spi_out, **kw):
    c = {"peer": "10.200.0.2", "local": "10.200.0.1", "esp": "aes128-sha1",
         "local_ts": ["10.1.0.0/16"], "remote_ts": ["10.2.0.0/16"],
         "manual": {"inbound": {"esp": {"spi": spi_in, "enc_key": KEY16, "auth_key": KEY20}},
                    "outbound": {"esp": {"spi": spi_out, "enc_key": KEY16, "auth_key": KEY20}}}}
    c.update(kw)
    return c


BASE = {"connections": {
    "m1": manual(0x1001, 0x2001),
    "m2": manual(0x1002, 0x2002, local_ts=["10.3.0.0/16"], remote_ts=["10.4.0.0/16"]),
    "ike": {"peer": "10.200.0.2", "local": "10.200.0.1", "psk": "a test key of some length",
            "local_ts": ["10.5.0.0/16"], "remote_ts": ["10.6.0.0/16"], "start": "none"}}}


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def test_start_installs_every_manual_connection_and_nothing_else():
    m = IkeManager(parse_config(BASE), now=0.0)
    out = m.start(0.0)
    assert sorted(a.connection for a in of(out, InstallChildSA)) == ["m1", "m2"]
    a1 = next(a for a in out if a.connection == "m1")
    assert a1.inbound[0].spi == 0x1001 and a1.outbound[0].spi == 0x2001 and a1.ike_id == 0
    assert m.start(1.0) == []  # already in
    st = m.status(2.0)
    conns = {c["name"]: c for c in st["connections"]}
    assert conns["m1"]["state"] == "up" and conns["m1"]["keying"] == "manual"
    assert conns["ike"]["state"] == "down" and "keying" not in conns["ike"]
    entry = next(s for s in st["ike_sas"] if s["connection"] == "m1")
    assert entry["state"] == "MANUAL" and entry["established_s"] == 2
    assert entry["child_sas"][0]["child_id"] == a1.child_id
    assert entry["child_sas"][0]["spi_in"] == "00001001"


def test_up_and_down_through_the_facade():
    m = IkeManager(parse_config(BASE), now=0.0)
    first = {a.connection: a for a in m.start(0.0)}
    out = m.terminate("m1", 1.0)
    assert out == [DeleteChildSA(first["m1"].child_id)]
    assert m.terminate("m1", 1.0) == []
    assert m.status(1.0)["connections"][0]["state"] == "down"
    # down is kept over a reload until `up`
    assert of(m.reload(parse_config(BASE), 2.0), InstallChildSA) == []
    (again,) = m.initiate("m1", 3.0)
    assert again.connection == "m1" and again.child_id != first["m1"].child_id
    assert m.initiate("m1", 3.0) == []  # already up
    (ev,) = m.rekey("m1", 4.0)
    assert isinstance(ev, Event) and ev.kind == "error" and "no rekey" in ev.message


def test_reload_removes_changed_and_removed_adds_new():
    m = IkeManager(parse_config(BASE), now=0.0)
    first = {a.connection: a for a in m.start(0.0)}
    new = copy.deepcopy(BASE)
    del new["connections"]["m2"]
    new["connections"]["m1"]["manual"]["outbound"]["esp"]["spi"] = 0x3001  # changed keys
    new["connections"]["m3"] = manual(0x1003, 0x2003, local_ts=["10.7.0.0/16"], remote_ts=["10.8.0.0/16"])
    out = m.reload(parse_config(new), 1.0)
    deletes = [a.child_id for a in of(out, DeleteChildSA)]
    assert sorted(deletes) == sorted([first["m1"].child_id, first["m2"].child_id])
    installs = {a.connection: a for a in of(out, InstallChildSA)}
    assert sorted(installs) == ["m1", "m3"] and installs["m1"].outbound[0].spi == 0x3001
    # every delete comes before the installs (the same SPIs may come back)
    assert max(out.index(a) for a in of(out, DeleteChildSA)) < min(out.index(a) for a in of(out, InstallChildSA))
    assert m.reload(parse_config(new), 2.0) == []  # unchanged: nothing


def test_refused_keys_are_not_up():
    m = IkeManager(parse_config(BASE), now=0.0)
    out = {a.connection: a for a in m.start(0.0)}
    m.install_failed(out["m2"].child_id)  # the SA table refused them (and logged why)
    states = {c["name"]: c["state"] for c in m.status(1.0)["connections"]}
    assert states["m2"] == "down" and states["m1"] == "up"
    assert [a.connection for a in m.initiate("m2", 2.0)] == ["m2"]  # `up` tries again


def test_engine_calls_of_the_daemon_are_harmless_for_manual_children():
    m = IkeManager(parse_config(BASE), now=0.0)
    (a1, _) = m.start(0.0)
    assert m.child_expiring(a1.child_id, True, 1.0) == []
    assert m.acquire("m1", b"packet", 1.0) == []
    m.child_activity(a1.child_id, 1.0, 1.0)
    assert m.handle_timer(5.0) == []
