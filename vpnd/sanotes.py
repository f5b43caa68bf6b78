"""What the daemon does when the SA table (vpnd/sadb.py) reports a change: the log lines of
SAs installed, moved and removed, the connections' updown scripts (not for a rekey), the
waiting `vpnctl up/down` commands, the connection's attempt and last error, and systemd's
STATUS= line."""

from __future__ import annotations

import logging

from vpnd import sadb
from vpnd.ike.actions import hostport

log = logging.getLogger("vpnd")


def on_note(d, n) -> None:
    """One note of the SA table (vpnd/sadb.py NOTES), after its ops were carried out."""
    if isinstance(n, sadb.ChildInstalled):
        child = n.child
        act = child.action
        log.info("%s: SA installed, %s, SPIs in %s out %s%s", act.connection,
                 act.proposal, "/".join(f"{k.spi:08x}" for k in act.inbound),
                 "/".join(f"{k.spi:08x}" for k in act.outbound),
                 " (UDP-encapsulated)" if act.udp_encap else "")
        if act.outbound and not child.manual:
            d._succeeded(act.connection)
        updown(d, "up", child, d._conn(act.connection))
        d.systemd.changed()
        d._wake(act.connection, "up")
    elif isinstance(n, sadb.OutboundActivated):
        act = n.child.action
        d._succeeded(act.connection)
        d.systemd.changed()
        log.info("%s: outbound traffic moved to SPI %s", act.connection,
                 "/".join(f"{k.spi:08x}" for k in act.outbound))
    elif isinstance(n, sadb.ChildRemoved):
        child = n.child
        if not n.quiet:
            log.info("%s: SA deleted (SPIs in %s)", child.connection,
                     "/".join(f"{k.spi:08x}" for k in child.inbound))
            updown(d, "down", child, d._conn(child.connection))
        d.systemd.changed()
        if n.last:
            d._wake(child.connection, "down")
    elif isinstance(n, sadb.InstallFailed):
        log.error("%s: cannot install SA: %s", n.connection, n.reason)
        # refused by the data plane half-way: what went in comes out again
        d._table(d.sadb.delete(n.child_id, quiet=True))
        if d.ike is not None:
            d.ike.install_failed(n.child_id)


def updown(d, verb: str, child, conn) -> None:
    """updown: of the connection, unless a rekey (another SA of the same selectors)."""
    from vpnd.updown import is_rekey
    if conn is not None and conn.updown and not is_rekey(d.children, child):
        d.updown.child_event(verb, conn, child.action, d.tun.name if d.tun else "")


def moved(d, a) -> None:
    """UpdateChildAddresses carried out (NAT mapping changed, MOBIKE): one log line."""
    child = d.children.get(a.child_id)
    if child is not None:
        act = child.action
        log.info("%s: SPIs in %s now %s -> %s%s", act.connection,
                 "/".join(f"{k.spi:08x}" for k in act.inbound), hostport(a.local),
                 hostport(a.remote), " (UDP-encapsulated)" if a.udp_encap else "")
