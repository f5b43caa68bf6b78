"""Typed events and actions (issue 9): an Event's kind is an EventKind; a misspelt kind
cannot be made, so it cannot slip past the daemon's failure handling; what is not an
action is reported by the daemon, not ignored."""

import json

import pytest

from vpnd.config import parse_config
from vpnd.daemon import Daemon
from vpnd.ike.actions import Event
from vpnd.ike.events import FAILURES, EventKind


def test_kind_is_checked_where_the_event_is_made():
    ev = Event("child_up", "site", "up")
    assert ev.kind is EventKind.CHILD_UP and ev.kind == "child_up"
    assert json.dumps({"kind": ev.kind}) == '{"kind": "child_up"}' and f"{ev.kind}" == "child_up"
    with pytest.raises(ValueError):
        Event("auth_fialed", "site", "AUTHENTICATION_FAILED")  # would have been logged at info
    assert Event(EventKind.PEER_DEAD, None, "x").kind in FAILURES


def daemon():
    d = Daemon(parse_config({"connections": {"site": {
        "peer": "10.200.0.2", "local": "10.200.0.1", "psk": "a test key of some length",
        "local_ts": ["10.1.0.0/16"], "remote_ts": ["10.2.0.0/16"], "start": "none"}}}))
    return d


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_every_failure_kind_ends_a_waiting_command_and_sets_last_error(kind):
    d = daemon()
    failed = []
    d._fail = lambda conn, msg: failed.append((conn, msg))
    d._run_actions([Event(kind, "site", f"{kind} happened")], rearm=False)
    assert failed == [("site", f"{kind} happened")]
    assert d._last_error["site"]["message"] == f"{kind} happened"


def test_a_non_action_is_an_internal_error():
    d = daemon()
    d._run_actions([("InstallChildSA", 1)], rearm=False)  # not an action object
    assert d.counters["loop_errors"] == 1


def test_every_kind_the_engines_name_is_an_event_kind():
    """A kind written as a literal anywhere in vpnd/ (Event(...), engine.event(...), the
    unauthenticated-input summaries, IKEv1's Phase1Failed) must be an EventKind: a new one
    is added to vpnd/ike/events.py, or the engine raises when it reports it."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "vpnd"
    where = {"Event": 0, "event": 0, "_event": 0, "_unauth_event": 0, "unauth_event": 3,
             "Phase1Failed": 2}
    known = {k.value for k in EventKind}
    unknown = []
    for path in root.rglob("*.py"):
        for n in ast.walk(ast.parse(path.read_text())):
            if not isinstance(n, ast.Call):
                continue
            f = n.func
            idx = where.get(f.id if isinstance(f, ast.Name) else getattr(f, "attr", None))
            if idx is not None and len(n.args) > idx and isinstance(n.args[idx], ast.Constant) \
                    and isinstance(n.args[idx].value, str) and n.args[idx].value not in known:
                unknown.append((str(path.relative_to(root)), n.lineno, n.args[idx].value))
    assert not unknown, unknown
