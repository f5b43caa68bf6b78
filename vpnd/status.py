"""`vpnctl status` as a human table, in the spirit of Cisco's `show crypto isakmp sa`
followed by `show crypto ipsec sa`: first one line per connection and IKE SA, then one
block per IPsec (child) SA with its SPIs, transform and counters."""

from __future__ import annotations

import logging
import time

# -- connection states (docs/daemon.md "Connection states") ------------------------------
#   up          at least one IPsec SA installed (it can send)
#   connecting  a negotiation is running (IKE SA being set up, or a CHILD_SA being created)
#   ike-only    IKE SA established, no IPsec SA, nothing being negotiated (CHILD_SA refused,
#               deleted by the peer, or a childless IKE SA, RFC 6023, also with a trap);
#               last_error says why when there was an error
#   idle        no IPsec SA, a trap is installed: traffic starts the negotiation (`start: trap`,
#               dpd `hold`/`restart` after the peer died); last_error says what failed before
#   failed      the last attempt failed and nothing retries it by itself (last_error says why)
#   down        not started (`start: none`/`start: start` before its first attempt, `vpnctl down`)
STATES = ("up", "connecting", "ike-only", "idle", "failed", "down")

IKE_LIVE = frozenset({"ESTABLISHED", "REKEYING", "REKEYED"})
IKE_GONE = frozenset({"DELETING", "DEAD", "FAILED", "REPLACED", "NONE", "DELETED"})
ATTEMPT_GRACE = 5.0  # s: an attempt asked for counts as "connecting" this long without an IKE SA


def connection_state(*, installed: int, ike_states: list, attempt: bool, attempt_age: float,
                     last_error: dict | None, trap: bool, admin_down: bool,
                     childless: bool = False) -> str:
    """The state of one IKE connection from what the daemon and the cores know.

    installed: IPsec SAs with an outbound side in the data plane; ike_states: the states of
    its IKE SAs; attempt: a negotiation was asked for (initiate, acquire, restart) and has
    neither succeeded nor failed since; attempt_age: how long ago; childless: an
    established IKE SA of it was set up without a CHILD_SA (RFC 6023)."""
    if installed:
        return "up"
    if admin_down:
        return "idle" if trap else "down"
    established = any(s in IKE_LIVE for s in ike_states)
    pending = any(s not in IKE_LIVE and s not in IKE_GONE for s in ike_states)
    if established:
        if attempt:
            return "connecting"
        if trap and last_error is None and not childless:
            return "idle"
        return "ike-only"
    if pending or (attempt and attempt_age < ATTEMPT_GRACE):
        return "connecting"
    if trap:
        return "idle"  # the next packet negotiates again (last_error says what failed)
    if last_error is not None:
        return "failed"
    return "down"


def error_reason(kind: str, message: str) -> str:
    """A stable reason word for a failure event: the event kind, made precise where a
    generic "failed"/"error" names the peer's notify (RFC 7296 3.10.1, RFC 2408 3.14.1)."""
    if kind not in ("failed", "error"):
        return kind
    m = message.upper().replace("-", "_")
    for needle, reason in (("NO_PROPOSAL_CHOSEN", "no_proposal"), ("TS_UNACCEPTABLE", "ts_unacceptable"),
                           ("AUTHENTICATION_FAILED", "auth_failed"), ("INVALID_KE", "invalid_ke"),
                           ("INVALID_ID_INFORMATION", "invalid_id")):
        if needle in m:
            return reason
    if "NOT ANSWER" in m or "NO ANSWER" in m or "TIMED OUT" in m or "NOT ANSWERED" in m:
        return "timeout"
    return kind


def last_error_entry(kind: str, message: str, wall: float | None = None) -> dict:
    wall = time.time() if wall is None else wall
    return {"reason": error_reason(kind, message), "message": message,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall)), "at": wall}


def _table(headers: list[str], rows: list[list]) -> list[str]:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in cells]


def _ip(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0] if endpoint and ":" in endpoint else (endpoint or "-")


def _last_error(c: dict) -> str:
    e = c.get("last_error")
    if not e:
        return "-"
    age = e.get("age_s")
    return f"{e.get('reason', '?')} ({age}s ago)" if age is not None else str(e.get("reason", "?"))


def format_status(st: dict) -> str:
    out: list[str] = []
    conns = st.get("connections", [])
    ike_sas = st.get("ike_sas", [])

    out.append("connections")
    rows = [[c.get("name", "?"), c.get("keying", f"ikev{c.get('version', '?')}"), c.get("peer", "-"),
             c.get("state", "?"), c.get("ike_sas", 0), c.get("child_sas", 0), _last_error(c)]
            for c in conns]
    out += ["  " + line for line in _table(["name", "keying", "peer", "state", "ike", "ipsec",
                                            "last error"], rows)]
    if not conns:
        out.append("  (none configured)")

    out.append("")
    out.append("IKE SAs (isakmp sa)")
    rows = []
    for sa in ike_sas:
        if sa.get("keying") == "manual":
            continue
        rows.append([_ip(sa.get("remote", "")), _ip(sa.get("local", "")), sa.get("state", "?"),
                     # a shared IKE SA names every connection it carries (docs/daemon.md)
                     ",".join(sa.get("connections") or [sa.get("connection", "?")]), f"v{sa.get('version', '?')}",
                     "yes" if sa.get("nat_detected") else "no",
                     f"{sa.get('spi_i', '-')}/{sa.get('spi_r', '-')}", sa.get("proposal", "-"),
                     sa.get("rekey_in_s", "-")])
    if rows:
        out += ["  " + line for line in _table(
            ["dst", "src", "state", "conn", "ver", "nat", "spi_i/spi_r", "proposal", "rekey_s"], rows)]
    else:
        out.append("  (none)")

    out.append("")
    out.append("IPsec SAs (ipsec sa)")
    n = 0
    for sa in ike_sas:
        for ch in sa.get("child_sas", []):
            n += 1
            keyed = "manual keys" if sa.get("keying") == "manual" else f"IKE SA {sa.get('spi_i', '-')}"
            out.append(f"  {ch.get('name', sa.get('connection', '?'))}: "
                       f"local {_ip(sa.get('local', ''))} peer {_ip(sa.get('remote', ''))} ({keyed})")
            out.append(f"    local  ident: {', '.join(ch.get('local_ts', [])) or '-'}")
            out.append(f"    remote ident: {', '.join(ch.get('remote_ts', [])) or '-'}")
            out.append(f"    state {ch.get('state', '?')}, {ch.get('protocol', 'esp')} {ch.get('mode', '?')} mode"
                       f"{', UDP-encapsulated' if ch.get('udp_encap') else ''}, transform {ch.get('proposal', '-')}")
            out.append(f"    inbound  spi 0x{ch.get('spi_in', '-')}: #pkts decaps {ch.get('packets_in', 0)}, "
                       f"#bytes {ch.get('bytes_in', 0)}")
            out.append(f"    outbound spi 0x{ch.get('spi_out', '-')}: #pkts encaps {ch.get('packets_out', 0)}, "
                       f"#bytes {ch.get('bytes_out', 0)}")
            if ch.get("ipcomp"):     # RFC 3173: CPIs and what the compressor did
                out.append(f"    compression {ch['ipcomp']}, cpi in 0x{ch.get('cpi_in', '-')} "
                           f"out 0x{ch.get('cpi_out', '-')}: #compressed {ch.get('ipcomp_compressed', 0)}, "
                           f"#not compressed {ch.get('ipcomp_uncompressed', 0)}, "
                           f"#decompressed {ch.get('ipcomp_decompressed', 0)}, "
                           f"#decompress errors {ch.get('ipcomp_errors', 0)}")
            rekey = ch.get("rekey_in_s", 0)
            out.append(f"    #replay drops {ch.get('replay_drops', 0)}, #auth failures {ch.get('auth_failures', 0)}"
                       + (f", rekey in {rekey}s" if rekey else ""))
    if not n:
        out.append("  (none)")
    d = st.get("daemon")
    if d:
        out.append("")
        # drop and error counters, only those that moved
        extra = [f"{k.removeprefix('dp_')} {v}" for k, v in d.items()
                 if ((k.startswith("dp_") and k != "dp_link_local") or k in ("decap_drops", "natt_invalid", "send_errors", "ike_drops",
                                              "loop_errors", "tun_read_errors")) and v]
        out.append(f"daemon: tun {d.get('tun')} mtu {d.get('mtu')}, uptime {d.get('uptime_s', 0)}s, "
                   f"routes {', '.join(d.get('routes', [])) or '-'}")
        out.append("  drops: " + (", ".join(extra) if extra else "none"))
    return "\n".join(out) + "\n"


# -- the daemon's status document (Daemon.status) -----------------------------------------

def collect(d) -> dict:
    """The daemon's status: the engines' entries (IkeManager.status) with the data plane's
    counters merged in by child id, each connection's state and last error, and the
    daemon's own counters."""
    now = d._now()
    conns_out, ike_sas = [], []
    ike_status = None
    if d.ike is not None:
        try:
            ike_status = d.ike.status(now)
        except Exception:
            logging.getLogger("vpnd.daemon").exception("IKE status failed")
    by_spi_in = {}
    for child in d.children.values():
        if child.inbound:
            by_spi_in[f"{child.inbound[0].spi:08x}"] = child
    ike_conn_entries = {}
    if ike_status:
        for e in ike_status.get("connections", []):
            ike_conn_entries[e.get("name")] = e
        for sa in ike_status.get("ike_sas", []):
            for ch in sa.get("child_sas", []):
                child = d.children.get(ch.get("child_id")) or by_spi_in.get(str(ch.get("spi_in", "")))
                if child is not None:
                    ch.update(child_counters(d, child, now))
                else:  # not installed here (yet): the contract's counters are still numbers
                    for k in ("bytes_in", "packets_in", "bytes_out", "packets_out",
                              "replay_drops", "auth_failures"):
                        ch.setdefault(k, 0)
            ike_sas.append(sa)
    for c in d._conns():
        name = c.name
        peer = str(c.peer)
        if c.manual is not None:
            conns_out.append(ike_conn_entries.get(name) or {
                "name": name, "version": c.version, "peer": peer, "state": "down",
                "ike_sas": 0, "child_sas": 0, "keying": "manual", "last_error": None})
        else:
            entry = ike_conn_entries.get(name)
            if entry is None:
                n = sum(1 for ch in d.children.values() if ch.connection == name)
                entry = {"name": name, "version": c.version, "peer": peer, "ike_sas": 0,
                         "child_sas": n}
            entry.update(_conn_state(d, c, ike_sas, now))
            conns_out.append(entry)
    for e in conns_out:     # access_group counters (the entries': vpnctl conns)
        flt = d.dp.filters.get(e["name"]) if d.dp is not None else None
        if flt is not None:
            e["access_group"] = {k: {"permitted": a.permitted, "denied": a.denied}
                                 for k, a in (("in", flt.inbound), ("out", flt.outbound))
                                 if a is not None}
    out = {"connections": conns_out, "ike_sas": ike_sas}
    out["daemon"] = {"tun": d.tun.name if d.tun else None,
                     "mtu": d.tun.mtu if d.tun else None,
                     "uptime_s": int(time.monotonic() - d.started_at),
                     "routes": d.routes.installed() if d.routes else [],
                     "udp_ports": d.wire.udp_ports() if hasattr(d.wire, "udp_ports") else [],
                     **d.counters, "send_errors": d.wire.send_errors if d.wire else 0,
                     "tun_read_errors": getattr(d.tun, "read_errors", 0) if d.tun else 0,
                     "ike_drops": int(getattr(d.ike, "drops", 0) or 0),
                     "monitors": len(d.monitor.subscribers),  # vpnctl monitor clients
                     **_dp_counters(d)}
    return out

def _conn_state(d, conn, ike_sas: list, now: float) -> dict:
    """state and last_error of an IKE connection (vpnd/status.py connection_state)."""
    name = conn.name
    mine = [c for c in d.children.values() if c.connection == name]
    installed = sum(1 for c in mine if c.outbound)
    ike_states = [str(sa.get("state", "")) for sa in ike_sas
                  if sa.get("connection") == name and sa.get("keying") != "manual"]
    childless = any(sa.get("childless") and sa.get("connection") == name for sa in ike_sas)
    asked = d._attempt.get(name)
    attempt = asked is not None or any(not c.outbound for c in mine)
    err = d._last_error.get(name)
    state = connection_state(
        installed=installed, ike_states=ike_states, attempt=attempt,
        attempt_age=now - asked if asked is not None else 0.0, last_error=err,
        trap=d.sadb.guards.get(name) == "trap", admin_down=name in d.sadb.admin_down,
        childless=childless)
    if err is not None:
        err = {k: v for k, v in err.items() if k != "at"}
        err["age_s"] = max(0, int(time.time() - d._last_error[name]["at"]))
    return {"state": state, "last_error": err}

def _dp_counters(d) -> dict:
    c = getattr(d.dp, "counters", None)
    if c is None:
        return {}
    if isinstance(c, dict):
        items = c.items()
    else:
        items = ((k, getattr(c, k)) for k in dir(c) if not k.startswith("_"))
    return {f"dp_{k}": v for k, v in items if isinstance(v, int) and not isinstance(v, bool)}

def child_counters(d, child, now: float) -> dict:
    objs = d.driver.sas.get(child.child_id)  # the data plane's SA objects of the child
    sas_in, sas_out = (objs.inbound, objs.outbound) if objs is not None else ([], [])
    inn = sas_in[0] if sas_in else None
    out = sas_out[0] if sas_out else None
    return {"bytes_in": _counter(inn, "bytes_in"), "packets_in": _counter(inn, "packets_in"),
            "bytes_out": _counter(out, "bytes_out"), "packets_out": _counter(out, "packets_out"),
            "replay_drops": sum(_counter(s, "replay_drops") for s in sas_in),
            "auth_failures": sum(_counter(s, "auth_failures") for s in sas_in),
            # beyond the contract: the other per-SA drop reasons of the data plane
            **{k: sum(_counter(s, k) for s in sas_in + sas_out)
               for k in ("malformed", "pad_errors", "policy_drops", "expired_drops")},
            **_ipcomp_status(inn, out)}


def _ipcomp_status(inn, out) -> dict:
    """IPComp's CPIs and counters for a child's status entry (nothing without IPComp)."""
    ci = getattr(inn, "ipcomp", None)
    co = getattr(out, "ipcomp", None)
    if ci is None and co is None:
        return {}
    return {"ipcomp": (ci or co).algorithm,
            "cpi_in": f"{ci.cpi:04x}" if ci else "-", "cpi_out": f"{co.cpi:04x}" if co else "-",
            "ipcomp_compressed": co.compressed if co else 0,
            "ipcomp_uncompressed": co.uncompressed if co else 0,
            "ipcomp_decompressed": ci.decompressed if ci else 0,
            "ipcomp_errors": ci.decompress_errors if ci else 0}


def _counter(sa, name: str) -> int:
    return 0 if sa is None else int(getattr(sa, name, 0) or 0)

