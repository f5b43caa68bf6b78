"""Our own addresses changed (links, addresses, routes; net/addrwatch.py): the IKE core is
told once they settle, so that MOBIKE (RFC 4555) can move IKEv2 SAs, and IKEv2 connections
without `local:` start their next IKE SA from the address the kernel uses now."""

from __future__ import annotations

import dataclasses

from vpnd import logfmt
from vpnd import lifecycle
from vpnd.net.addrwatch import AddressWatch, local_addresses
from vpnd.net.tun import source_address_towards

log = logfmt.logger("daemon")

ADDRESS_SETTLE = 0.3  # seconds after an address/route change before MOBIKE looks


def start(d) -> None:
    """Watch our addresses when there is IKE (without it, SAs stay put)."""
    if d.io.udp_needs()[0]:
        try:
            d.addrwatch = AddressWatch()
        except OSError as e:
            log.warning("cannot watch address changes (MOBIKE off): %s", e.strerror)


def stop(d) -> None:
    if d.addrwatch is not None:
        d.addrwatch.close()
        d.addrwatch = None


def on_addr_event(d) -> None:
    """Links, addresses or routes changed: look once they settle (an address removal
    comes with its routes' removals, a new uplink with several messages)."""
    try:
        if d.addrwatch.drain() and d._addr_timer is None:
            d._addr_timer = d.loop.call_later(ADDRESS_SETTLE, addresses_check, d)
    except Exception:
        d._internal_error("error reading address changes")


def addresses_check(d) -> None:
    """Tell the IKE core our addresses now and which of them reaches each peer whose
    path it decides (MOBIKE initiator)."""
    d._addr_timer = None
    if d.ike is None:
        return
    try:
        now = d._now()
        addrs = local_addresses(d.tun.index if d.tun is not None else None)
        sources = {p: source_address_towards(p) for p in d.ike.mobike_peers()}
        d._run_actions(d.ike.addresses_changed(addrs, sources, now))
        refresh_local_addresses(d, now)
    except Exception:
        d._internal_error("error handling address changes")


def refresh_local_addresses(d, now: float) -> None:
    """IKEv2 connections without `local:` start their next IKE SA (a restart after DPD,
    a re-initiation) from the address the kernel uses towards the peer now, not from
    one that went away. IKEv1 ones keep theirs (an IKEv1 SA cannot move: a change
    would tear it down)."""
    fresh = lifecycle.with_local_addresses(d.config)
    current = {c.name: c for c in d.ike.config.connections}
    conns = tuple(c if c.version == 2 or c.name not in current else current[c.name]
                  for c in fresh.connections)
    if any(current.get(c.name) is None or current[c.name].local != c.local for c in conns):
        d._run_actions(d.ike.reload(dataclasses.replace(fresh, connections=conns), now))
