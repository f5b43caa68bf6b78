"""Our address on a connection before an exchange tells it, for both IKE versions.

The daemon fills `local` from the routing table (daemon.with_local_addresses); without a
route, or in a core driven by tests, the address is `local`, else the one address
daemon.listen names, else the wildcard of the peer's family (so that an IPv6 peer is never
given 0.0.0.0 as the address it talks to)."""

from __future__ import annotations

WILDCARDS = ("", "%any", "0.0.0.0", "::")


def wildcard_for(peer) -> str:
    return "::" if ":" in str(peer or "") else "0.0.0.0"


def local_for(conn, listen) -> str:
    if conn.local:
        return str(conn.local)
    listen = str(listen or "")
    if listen not in WILDCARDS and (":" in listen) == (":" in str(conn.peer or "")):
        return listen
    return wildcard_for(conn.peer)
