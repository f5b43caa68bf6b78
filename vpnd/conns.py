"""`vpnctl conns` (the configured connections, like `swanctl --list-conns` or IOS `show
crypto map`) and `vpnctl down --peer ADDR | --all` (IOS `clear crypto sa peer ADDR` /
`clear crypto sa`).

`conns` describes the running configuration: proposals, traffic selectors, identities,
authentication method (never the PSK or a key), DPD, lifetimes. `down --peer/--all` is
`vpnctl down NAME` for each connection with an SA to that peer (or any SA), at once.
"""

from __future__ import annotations

import asyncio
import json
import sys

from vpnd.control import CommandError


def _s(v):
    return None if v is None else str(v)


def describe_conn(c) -> dict:
    auth = getattr(c, "auth", None)
    out = {
        "name": c.name,
        "keying": "manual" if c.manual is not None else f"ikev{c.version}",
        "version": c.version,
        "local": _s(c.local) or "%defaultroute", "peer": _s(c.peer),
        "mode": c.mode, "start": c.start,
        "local_ts": [str(n) for n in c.local_ts] or ["(outer address)"],
        "remote_ts": [str(n) for n in c.remote_ts] or ["(peer address)"],
    }
    if c.manual is None:
        out.update({
            "auth": auth.method if auth is not None else None,
            "local_id": _s(c.local_id) or "(local address)",
            "remote_id": _s(c.remote_id) or "(peer address)",
            "aggressive": bool(c.aggressive),
            "ike": [str(p) for p in c.ike],
            "childless": c.childless if c.version == 2 else None,  # RFC 6023 (IKEv2 only)
            "dpd": {"interval": c.dpd.interval, "retry": c.dpd.retry, "mode": c.dpd.mode,
                    "action": c.dpd.action},
            "lifetime": {"ike": c.lifetime.ike, "seconds": c.lifetime.seconds,
                         "kilobytes": c.lifetime.kilobytes},
        })
        if auth is not None and auth.method != "psk":
            out["cert"] = _s(auth.cert)
            out["ca"] = [str(x) for x in auth.ca]
    out.update({
        "esp": [str(p) for p in c.esp], "ah": [str(p) for p in c.ah],
        "comp": c.comp, "idle_time": c.idle_time, "replay_window": c.replay_window,
        "per_host": bool(c.per_host), "encap": bool(c.encap), "nat_keepalive": c.nat_keepalive,
        "rri": bool(c.rri.enabled), "updown": getattr(c, "updown", None),
    })
    return out


def describe(handler) -> dict:
    out = []
    filters = getattr(getattr(handler, "dp", None), "filters", {})
    for c in handler.config.connections:
        d = describe_conn(c)
        ag = getattr(c, "access_group", None)
        if ag is not None:
            # each entry with its match count (IOS `show access-lists`)
            flt = filters.get(c.name)
            snap = flt.snapshot() if flt is not None else {}
            d["access_group"] = {
                k: snap.get(k) or {"entries": [{"entry": a.text, "matches": 0} for a in aces],
                                   "implicit_deny": 0, "permitted": 0, "denied": 0}
                for k, aces in (("in", ag.inbound), ("out", ag.outbound)) if aces}
        out.append(d)
    return {"connections": out}


def format_conns(result: dict) -> str:
    lines = []
    for c in result.get("connections", []):
        lines.append(f"{c['name']}: {c['keying']}, {c['mode']}, {c['local']}...{c['peer']}, start {c['start']}")
        if c["keying"] != "manual":
            lines.append(f"  local:  {c['local_id']} uses {c['auth']} authentication")
            lines.append(f"  remote: {c['remote_id']}{', aggressive mode' if c['aggressive'] else ''}")
            lines.append(f"  ike:    {', '.join(c['ike'])}  lifetime {c['lifetime']['ike']} s"
                         + (f", childless {c['childless']}" if c.get("childless") not in (None, "allow") else ""))
            d = c["dpd"]
            lines.append(f"  dpd:    " + (f"every {d['interval']} s ({d['mode']}), retry {d['retry']} s, "
                                         f"action {d['action']}" if d["interval"] else "off"))
        child = c["esp"] or [f"ah-{p}" for p in c["ah"]]
        lines.append(f"  child:  {', '.join(child)}" + (f", comp {c['comp']}" if c["comp"] else ""))
        if c["keying"] != "manual":
            lt = c["lifetime"]
            lines.append(f"          lifetime {lt['seconds']} s / {lt['kilobytes']} KB, "
                         f"idle {c['idle_time'] or 'never'}, replay window {c['replay_window']}"
                         f"{', per host' if c['per_host'] else ''}")
        lines.append(f"  ts:     {' '.join(c['local_ts'])} === {' '.join(c['remote_ts'])}")
        if c.get("updown"):
            lines.append(f"  updown: {c['updown']}")
        for key, what in (("out", "before encryption"), ("in", "after decryption")):
            acl = (c.get("access_group") or {}).get(key)
            if acl:
                lines.append(f"  access-group {key} ({what}): permitted {acl['permitted']}, "
                             f"denied {acl['denied']}")
                for e in acl["entries"]:
                    lines.append(f"      {e['entry']} ({e['matches']} matches)")
                lines.append(f"      (implicit deny: {acl['implicit_deny']} matches)")
    return "\n".join(lines) + ("\n" if lines else "no connections\n")


# -- down --peer / --all -------------------------------------------------------------------

def targets(handler, peer: str | None) -> list[str]:
    """Connections with an SA (IKE or IPsec), to `peer` when given."""
    st = handler.status()
    names = []
    for c in st.get("connections", []):
        if not (c.get("ike_sas") or c.get("child_sas")):
            continue
        if peer is None:
            names.append(c["name"])
            continue
        addrs = {str(c.get("peer"))}
        addrs |= {ch.action.remote[0] for ch in handler.children.values() if ch.connection == c["name"]}
        for sa in st.get("ike_sas", []):
            if sa.get("connection") == c["name"] or sa.get("name") == c["name"]:
                addrs.add(str(sa.get("remote", "")).rsplit("[", 1)[0])
        if peer in addrs:
            names.append(c["name"])
    return names


async def down_many(handler, req: dict, timeout: float = 15.0) -> dict:
    names = targets(handler, None if req.get("all") else req["peer"])
    if not names:
        raise CommandError("no SA " + ("to " + req["peer"] if req.get("peer") else "is up"))
    results = await asyncio.gather(*(handler.cmd_down(n, timeout=timeout) for n in names),
                                   return_exceptions=True)
    out, failed = [], []
    for n, r in zip(names, results):
        if isinstance(r, BaseException):
            failed.append(f"{n}: {r}")
            out.append({"connection": n, "state": "failed", "error": str(r)})
        else:
            out.append(r)
    if failed and len(failed) == len(names):
        raise CommandError("; ".join(failed))
    return {"down": out}


# -- vpnctl conns --------------------------------------------------------------------------

def register(sub) -> None:
    c = sub.add_parser("conns", help="list the configured connections (proposals, selectors, "
                                     "identities, DPD, lifetimes)")
    c.add_argument("--json", action="store_true", help="print them as JSON")


def main(args, parser) -> int:
    from vpnd.control import vpnctl_request
    code, result = vpnctl_request(args, {"command": "conns"}, timeout=30)
    if code:
        return code
    result = result or {}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(format_conns(result))
    return 0
