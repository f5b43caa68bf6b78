"""Reverse route injection (the seed's `reverse-route`): kernel routes to the remote subnets.

Routes point into the TUN device, so that traffic for remote_ts reaches the data plane:
- default: `DST dev TUN`;
- `next_hop`: `DST via NEXT_HOP dev TUN onlink` (Cisco `reverse-route remote-peer NEXT-HOP`:
  the route names that next hop, e.g. for redistribution, and still leads into the tunnel);
- `metric`: the route's priority (`ip route ... metric N`);
- `tag`: the route's protocol number (1-255; `ip route show proto TAG` lists exactly vpnd's
  routes of that tag, and routing daemons such as FRR/BIRD can redistribute kernel routes by
  protocol). Without a tag the routes carry proto `static` (4), like Cisco's RRI routes;
- `static`: routes are installed at start-up, before any SA exists;
- `remote_peer` (Cisco `reverse-route remote-peer`): the subnet routes name the peer as their
  next hop (`via PEER dev TUN onlink`), and a host route to the peer goes via the outer
  interface and gateway the kernel uses for it now (not added when next_hop is set).

Routes are reference counted: several child SAs of one connection (make-before-break
rekeys, per-host SAs) share one route, removed when the last goes. Only routes this
manager installed are ever removed; a route that already existed is left alone.
"""

from __future__ import annotations

import ipaddress
import logging

from pyroute2.netlink.exceptions import NetlinkError

from vpnd.net import netlink

log = logging.getLogger("vpnd.net.routes")

RTPROT_STATIC = 4
RTNH_F_ONLINK = 4
EEXIST = 17
ESRCH = 3
ENOENT = 2

# Transport mode protects the gateways' own traffic to the peer's outer address, the same
# address our ESP and IKE packets go to. A policy rule steers locally generated packets to
# the peer into table STEER_TABLE (a host route into the TUN); our own sockets carry
# SOCKET_MARK and a rule before it sends them to the main table, so they never loop.
SOCKET_MARK = 0x7670
STEER_TABLE = 2220
PREF_OWN = 2220
PREF_STEER = 2221
MAIN_TABLE = 254


class RouteOptions:
    """The rri options of one connection, read from its config (attributes or a dict)."""

    def __init__(self, enabled=True, next_hop=None, metric=None, tag=None, static=False,
                 remote_peer=False, oif=None, table=None, prefsrc=None):
        self.enabled = bool(enabled)
        self.next_hop = str(next_hop) if next_hop else None
        self.metric = int(metric) if metric not in (None, "") else None
        self.tag = int(tag) if tag not in (None, "") else None
        self.static = bool(static)
        self.remote_peer = bool(remote_peer)
        self.oif = oif  # None: the TUN device; else an outer interface index (peer host route)
        self.table = table  # None: main
        self.prefsrc = prefsrc  # source address for this host's packets on the route

    def replace(self, **kw) -> "RouteOptions":
        d = dict(self.__dict__)
        d.update(kw)
        return RouteOptions(**d)

    @classmethod
    def from_config(cls, rri) -> "RouteOptions":
        if rri is None:
            return cls()
        if isinstance(rri, dict):
            get = rri.get
        else:
            def get(k, d=None):
                return getattr(rri, k, d)
        return cls(get("enabled", True), get("next_hop"), get("metric"), get("tag"),
                   get("static", False), get("remote_peer", False))

    def key(self) -> tuple:
        return (self.next_hop, self.metric, self.tag, self.oif, self.table, self.prefsrc)


class RouteManager:
    """Installs and removes routes into one TUN device; remembers what it installed."""

    def __init__(self, tun_index: int):
        self.tun_index = tun_index
        # (dst, *RouteOptions.key()) -> number of holders; only routes we added
        self._refs: dict[tuple, int] = {}
        self._foreign: dict[tuple, int] = {}  # routes that existed before us: counted, never removed
        self._steered: dict[str, int] = {}   # transport-mode peer -> holders
        self._steer_opts: dict[str, RouteOptions] = {}

    def _spec(self, dst: str, opts: RouteOptions) -> dict:
        spec = {"dst": dst, "oif": opts.oif or self.tun_index,
                "proto": opts.tag if opts.tag is not None else RTPROT_STATIC}
        if opts.metric is not None:
            spec["priority"] = opts.metric
        if opts.table is not None:
            spec["table"] = opts.table
        if opts.prefsrc:
            spec["prefsrc"] = opts.prefsrc
        if opts.next_hop:
            spec["gateway"] = opts.next_hop
            if opts.oif is None:  # a next hop "behind" the TUN: reachable by definition
                spec["flags"] = RTNH_F_ONLINK
        return spec

    def add(self, network, opts: RouteOptions) -> None:
        dst = str(ipaddress.ip_network(network, strict=False))
        key = (dst,) + opts.key()
        if key in self._refs:
            self._refs[key] += 1
            return
        if key in self._foreign:
            self._foreign[key] += 1
            return
        try:
            spec = self._spec(dst, opts)
            netlink.call(lambda ipr: ipr.route("add", **spec))
        except NetlinkError as e:
            if e.code == EEXIST:
                log.warning("route %s already exists and is not vpnd's: left as it is", dst)
                self._foreign[key] = 1
                return
            log.error("cannot add route %s: %s", dst, e.args[-1] if e.args else e)
            return
        except Exception as e:  # netlink thread timeout, socket errors: a log line, not a crash
            log.error("cannot add route %s: %s", dst, e or type(e).__name__)
            return
        self._refs[key] = 1
        log.info("route %s added via %s", dst, opts.next_hop or "tunnel")

    def remove(self, network, opts: RouteOptions) -> None:
        dst = str(ipaddress.ip_network(network, strict=False))
        key = (dst,) + opts.key()
        if key in self._foreign:
            self._foreign[key] -= 1
            if self._foreign[key] <= 0:
                del self._foreign[key]
            return
        n = self._refs.get(key)
        if n is None:
            return
        if n > 1:
            self._refs[key] = n - 1
            return
        del self._refs[key]
        self._delete(dst, opts)

    def _delete(self, dst: str, opts: RouteOptions) -> None:
        try:
            spec = self._spec(dst, opts)
            netlink.call(lambda ipr: ipr.route("del", **spec))
            log.info("route %s removed", dst)
        except NetlinkError as e:
            if e.code != ESRCH:  # already gone (e.g. with the TUN device): nothing to do
                log.warning("cannot remove route %s: %s", dst, e.args[-1] if e.args else e)
        except Exception as e:
            log.warning("cannot remove route %s: %s", dst, e or type(e).__name__)

    def installed(self) -> list[str]:
        return (sorted(k[0] for k in self._refs if k[5] is None)
                + [f"{p}/32 (transport)" for p in sorted(self._steered)])

    # -- transport mode ------------------------------------------------------------------

    def steer(self, peer: str, local: str, opts: RouteOptions) -> None:
        """Send this host's own traffic to `peer` (except vpnd's sockets) into the TUN, from
        the SA's local address (the TUN has none the kernel could pick)."""
        n = self._steered.get(peer, 0)
        self._steered[peer] = n + 1
        if n:
            return
        if len(self._steered) == 1:
            self._rule("add", priority=PREF_OWN, fwmark=SOCKET_MARK, fwmask=0xFFFFFFFF,
                       table=MAIN_TABLE)
        self._steer_opts[peer] = opts.replace(table=STEER_TABLE, next_hop=None, oif=None, prefsrc=local)
        self.add(f"{peer}/32", self._steer_opts[peer])
        self._rule("add", priority=PREF_STEER, dst=peer, dst_len=32, iifname="lo", table=STEER_TABLE)
        log.info("transport mode: traffic of this host to %s goes through the tunnel", peer)

    def unsteer(self, peer: str) -> None:
        n = self._steered.get(peer)
        if n is None:
            return
        if n > 1:
            self._steered[peer] = n - 1
            return
        del self._steered[peer]
        self._rule("del", priority=PREF_STEER, dst=peer, dst_len=32, iifname="lo", table=STEER_TABLE)
        self.remove(f"{peer}/32", self._steer_opts.pop(peer))
        if not self._steered:
            self._rule("del", priority=PREF_OWN, fwmark=SOCKET_MARK, fwmask=0xFFFFFFFF,
                       table=MAIN_TABLE)

    def _rule(self, cmd: str, **spec) -> None:
        try:
            netlink.call(lambda ipr: ipr.rule(cmd, **spec))
        except NetlinkError as e:
            # a rule left by a vpnd that was killed is adopted (add) or already gone (del)
            if not (cmd == "add" and e.code == EEXIST) and not (cmd == "del" and e.code in (ENOENT, ESRCH)):
                log.warning("cannot %s policy rule %s: %s", cmd, spec, e.args[-1] if e.args else e)
        except Exception as e:
            log.warning("cannot %s policy rule %s: %s", cmd, spec, e or type(e).__name__)

    def remove_all(self) -> None:
        for peer in list(self._steered):
            self._steered[peer] = 1
            self.unsteer(peer)
        for key in list(self._refs):
            dst, next_hop, metric, tag, oif, table, prefsrc = key
            self._delete(dst, RouteOptions(True, next_hop, metric, tag, oif=oif, table=table,
                                           prefsrc=prefsrc))
        self._refs.clear()
        self._foreign.clear()

    def close(self) -> None:
        self.remove_all()


# -- kill switch (daemon.kill_switch) -----------------------------------------------------
# Blackhole routes to the remote subnets, behind the TUN routes (highest metric): while
# vpnd runs its TUN routes win; when vpnd is stopped or killed (the kernel removes the TUN
# and its routes with the last file descriptor) the blackholes stay, so traffic for the
# remote subnets is dropped instead of following the default route in clear. They carry
# protocol KILL_SWITCH_PROTO: `ip route show proto 118 type blackhole` lists them,
# `ip route flush proto 118 type blackhole` removes them.
KILL_SWITCH_PROTO = 118
KILL_SWITCH_METRIC = 0xFFFFFFFE


def _kill_switch_routes(ipr) -> set[str]:
    out = set()
    for fam in (2, 10):
        for r in ipr.route("dump", family=fam, proto=KILL_SWITCH_PROTO):
            if r.get("type") == 6 and r.get("proto") == KILL_SWITCH_PROTO:  # RTN_BLACKHOLE
                out.add(f"{r.get_attr('RTA_DST') or ('::' if fam == 10 else '0.0.0.0')}/{r['dst_len']}")
    return out


def kill_switch_sync(networks) -> None:
    """Exactly these blackhole routes (adopting those a previous run left)."""
    want = {str(ipaddress.ip_network(n, strict=False)) for n in networks}

    def do(ipr):
        have = _kill_switch_routes(ipr)
        for dst in sorted(want - have):
            ipr.route("replace", dst=dst, type="blackhole", proto=KILL_SWITCH_PROTO,
                      priority=KILL_SWITCH_METRIC)
        for dst in sorted(have - want):
            ipr.route("del", dst=dst, type="blackhole", proto=KILL_SWITCH_PROTO,
                      priority=KILL_SWITCH_METRIC)
        return sorted(want)
    try:
        done = netlink.call(do)
        if done:
            log.info("kill switch: blackhole routes for %s (stay when vpnd stops)", ", ".join(done))
    except Exception as e:
        log.error("kill switch: cannot install blackhole routes: %s", e or type(e).__name__)


def kill_switch_clear() -> None:
    kill_switch_sync(())
