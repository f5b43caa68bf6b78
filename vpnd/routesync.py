"""Routes, rules and policies that follow the config rather than the SAs (fail closed,
issue 8.6): the static RRI routes and transport-mode steering of every connection, the
kill switch, the guard policies (through the SA table), IPv6 on the TUN device, the
access_group filters, and the start-up warning about IP forwarding."""

from __future__ import annotations


from vpnd import logfmt
from vpnd import sadb
from vpnd.net.routes import RouteOptions, kill_switch_clear, kill_switch_sync
from vpnd.net.tun import outer_path, source_address_towards

log = logfmt.logger("daemon")
_networks = sadb.networks


def warn_forwarding(d) -> None:
    """Tunnel mode routes for subnets: say so once at start when the kernel does not."""
    from vpnd.net import forwarding
    try:
        for line in forwarding.warnings(d._conns()):
            log.warning("%s", line)
    except Exception:  # a check, never a reason not to start
        log.debug("could not check IP forwarding", exc_info=True)


def sync_ipv6(d) -> None:
    set_ipv6 = getattr(d.tun, "set_ipv6", None)
    if set_ipv6 is not None:  # before routes: IPv6 routes need IPv6 on the device
        set_ipv6(needs_ipv6(d))


def apply_filters(d, conns: dict) -> None:
    """access_group lists into the data plane; unchanged ones keep their counters."""
    from vpnd.esp.acl import ConnFilter
    if d.dp is None:
        return
    for name in list(d.dp.filters):
        c = conns.get(name)
        if c is None or c.access_group is None:
            d.dp.set_filter(name, None)
    for name, c in conns.items():
        ag = c.access_group
        if ag is None:
            continue
        old = d.dp.filters.get(name)
        if old is None or old.spec != (ag.inbound, ag.outbound):
            d.dp.set_filter(name, ConnFilter(ag.inbound, ag.outbound))


def needs_ipv6(d) -> bool:
    """Whether any connection carries IPv6 through the TUN (else the device has IPv6
    off, so the kernel sends no link-local chatter into it, issue 7.11)."""
    for c in d._conns():
        nets = _networks(c.local_ts) + _networks(c.remote_ts)
        if any(n.version == 6 for n in nets):
            return True
        if c.mode == "transport" and ":" in str(c.peer or ""):
            return True
    return False


def outer_path_of(d, peer: str):
    """The kernel's path to `peer` outside the TUN: (ifindex, gateway) or None."""
    path = outer_path(peer)
    if path is not None and path[0] != (d.tun.index if d.tun else None):
        return path
    return None


def apply(d) -> None:
    """Fail closed (issue 8.6): every configured connection's traffic reaches the TUN for
    as long as the daemon runs, SA or not. Tunnel mode: the routes to its remote subnets
    (rri, unless rri.enabled is false); transport mode: the rules steering this host's
    traffic to the peer. In the data plane a guard policy per connection (behind its
    SAs' policies) traps or drops what no SA carries. With daemon.kill_switch, blackhole
    routes for the remote subnets stay behind when vpnd stops or dies."""
    if d.dp is not None:
        d._table(d.sadb.sync_guards())  # removed connections' guards go too
    if d.routes is None:
        return
    want = []
    steers = {}
    kill = []
    for c in d._conns():
        opts = RouteOptions.from_config(c.rri)
        if c.mode == "tunnel":
            nets = [n for n in _networks(c.remote_ts) if n.prefixlen > 0]  # never a default route
            want.extend(sadb.rri_routes(c, nets, str(c.peer), lambda peer: outer_path_of(d, peer)))
            kill.extend(nets)
        elif opts.enabled and str(c.peer) not in ("%any", "None"):
            peer = str(c.peer)
            local = str(c.local) if c.local else source_address_towards(peer)
            if local:
                steers[c.name] = (peer, local, opts)
    for net, opts in want:  # add before removing: a route that stays is never dropped
        d.routes.add(net, opts)
    for net, opts in d._static_routes:
        d.routes.remove(net, opts)
    d._static_routes = want
    for name, (peer, local, opts) in steers.items():
        if name not in d._steers:
            d.routes.steer(peer, local, opts)
    for name, peer in list(d._steers.items()):
        if name not in steers or steers[name][0] != peer:
            d.routes.unsteer(peer)
    d._steers = {name: v[0] for name, v in steers.items()}
    if getattr(d.config.daemon, "kill_switch", False):
        kill_switch_sync(kill)
    else:
        kill_switch_clear()
