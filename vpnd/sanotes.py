"""What the daemon does with the engines' events (log line, metrics, monitor, failures) and
when the SA table (vpnd/sadb.py) reports a change: the log lines of
SAs installed, moved and removed, the connections' updown scripts (not for a rekey), the
waiting `vpnctl up/down` commands, the connection's attempt and last error, and systemd's
STATUS= line."""

from __future__ import annotations

import logging

from vpnd import logfmt, sadb
from vpnd.ike.actions import hostport
from vpnd.ike.events import FAILURES, QUIET, EventKind
from vpnd.status import last_error_entry

esp_log = logfmt.logger("esp")
ike_log = logfmt.logger("ike")


def _child_ctx(act) -> dict:
    """Log context of a CHILD_SA's line: `site-b[3] site-b{7}` (manual SAs: no IKE SA)."""
    return logfmt.ctx(act.connection, act.ike_id or None, act.child_id)


def on_note(d, n) -> None:
    """One note of the SA table (vpnd/sadb.py NOTES), after its ops were carried out."""
    if isinstance(n, sadb.ChildInstalled):
        child = n.child
        act = child.action
        esp_log.info("SA installed, %s, SPIs in %s out %s%s", act.proposal,
                     "/".join(f"{k.spi:08x}" for k in act.inbound),
                     "/".join(f"{k.spi:08x}" for k in act.outbound),
                     " (UDP-encapsulated)" if act.udp_encap else "", extra=_child_ctx(act))
        if act.outbound and not child.manual:
            d._succeeded(act.connection)
        updown(d, "up", child, d._conn(act.connection))
        d.systemd.changed()
        d._wake(act.connection, "up")
    elif isinstance(n, sadb.OutboundActivated):
        act = n.child.action
        d._succeeded(act.connection)
        d.systemd.changed()
        esp_log.info("outbound traffic moved to SPI %s", "/".join(f"{k.spi:08x}" for k in act.outbound),
                     extra=_child_ctx(act))
    elif isinstance(n, sadb.ChildRemoved):
        child = n.child
        if not n.quiet:
            esp_log.info("SA deleted (SPIs in %s)", "/".join(f"{k.spi:08x}" for k in child.inbound),
                         extra=_child_ctx(child.action))
            updown(d, "down", child, d._conn(child.connection))
        d.systemd.changed()
        if n.last:
            d._wake(child.connection, "down")
    elif isinstance(n, sadb.InstallFailed):
        esp_log.error("cannot install SA: %s", n.reason, extra=logfmt.ctx(n.connection, None, n.child_id))
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
        ike_log.info("SPIs in %s now %s -> %s%s", "/".join(f"{k.spi:08x}" for k in act.inbound),
                     hostport(a.local), hostport(a.remote), " (UDP-encapsulated)" if a.udp_encap else "",
                     extra=_child_ctx(act))


def on_event(d, ev) -> None:
    """An event of the IKE core: a log line; failures end a waiting vpnctl command."""
    level = (logging.WARNING if ev.kind in FAILURES else
             logging.DEBUG if ev.kind in QUIET else logging.INFO)
    data = ev.data or {}
    ike_log.log(level, "%s", ev.message,
                extra=logfmt.ctx(ev.connection, data.get("ike_id"), data.get("child_id")))
    if d.metrics is not None:
        d.metrics.metrics.on_event(ev.kind, ev.connection)
    d.monitor.on_core_event(ev, d.children)
    if not ev.connection:
        return
    if ev.kind is EventKind.IKE_REKEYED:
        d._wake(ev.connection, "ike_rekeyed")
    elif ev.kind is EventKind.IKE_CONNECTING:  # also the core's own restarts (DPD, rekey)
        d._note_attempt(ev.connection)
    elif ev.kind in FAILURES:
        d.sadb.forget_acquire(ev.connection)  # the next packet starts anew
        d._attempt.pop(ev.connection, None)
        if d._conn(ev.connection) is not None:
            d._last_error[ev.connection] = last_error_entry(ev.kind, ev.message)
        d._fail(ev.connection, ev.message)
