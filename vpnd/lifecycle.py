"""The daemon's start-up and shutdown steps that are not glue: reading the config for the
kernel (TUN MTU, source addresses), logging, and dropping root (issue 8.13).

vpnd/daemon.py calls these; they hold no state of their own."""

from __future__ import annotations

import dataclasses
import os

from vpnd import logfmt
from vpnd.control import ControlServer
from vpnd.net.tun import link_mtu_towards, source_address_towards

log = logfmt.logger("daemon")

DEFAULT_OUTER_MTU = 1500


class StartupError(Exception):
    """A start-up step failed; the message is one line for the user."""


# -- reading the config (vpnd.config: field names are the YAML keys of the contract) ------

def conn_transforms(conn) -> list[dict]:
    """Every transform a connection may use (all alternatives), for the worst-case TUN MTU."""
    # an IKE connection may find a NAT and move ESP into UDP: count the UDP header
    encap = bool(conn.encap) or conn.manual is None
    # an IPv6 outer header is 20 bytes longer (a %any peer counts as its local address's)
    ipv6 = ":" in str(conn.local or "") or ":" in str(conn.peer or "")
    out = []
    for p in conn.esp:
        for e in p.encryption or (None,):
            for i in p.integrity or (None,):
                for a in p.ah_integrity or (None,):
                    out.append({"encryption": e, "integrity": i, "ah_integrity": a,
                                "udp_encap": encap and a is None, "mode": conn.mode,
                                "ipv6": ipv6})
    if not conn.esp:
        for p in conn.ah:
            for a in p.integrity:
                out.append({"encryption": None, "integrity": None, "ah_integrity": a,
                            "udp_encap": False, "mode": conn.mode, "ipv6": ipv6})
    return out


def compute_mtu(config) -> tuple[int, int]:
    """(tun_mtu, outer_mtu): configured or 'auto' from the outer interface's MTU."""
    d = config.daemon
    peers = [str(c.peer) for c in config.connections
             if c.peer and str(c.peer) != "%any"]
    outer = [m for m in (link_mtu_towards(p) for p in peers) if m]
    outer_mtu = min(outer) if outer else DEFAULT_OUTER_MTU
    mtu = d.mtu
    if mtu in (None, "auto", 0):
        from vpnd.esp.overhead import max_inner_size
        sizes = [max_inner_size(outer_mtu, **t) for c in config.connections for t in conn_transforms(c)]
        mtu = min(sizes) if sizes else outer_mtu - 80
        mtu = max(576, mtu)
    return int(mtu), outer_mtu


def with_local_addresses(config):
    """The config with `local` filled in from the routing table where it is not set.

    The sans-IO IKE core cannot ask the kernel which source address reaches a peer, but
    needs it (NAT_DETECTION_SOURCE_IP hashes it, RFC 7296 2.23; the outer header of ESP).
    """
    conns = []
    for c in config.connections:
        if not c.local and c.peer and c.peer != "%any":
            src = source_address_towards(str(c.peer))
            if src:
                c = dataclasses.replace(c, local=src)
        conns.append(c)
    return dataclasses.replace(config, connections=tuple(conns))


def mss(setting, tun_mtu: int) -> int | None:
    """daemon.mss_clamp: None/off, "auto" = what fits the TUN (IPv4 + TCP headers, 40 bytes)."""
    if setting == "auto":
        return tun_mtu - 40
    return int(setting) if setting else None


def log_level(name) -> int:
    return logfmt.level_of(name)


def setup_logging(level: str = "info", per_subsystem=(), fmt: str = "text") -> None:
    """One handler on stderr (vpnd/logfmt.py: subsystems, SA context, journald, JSON)."""
    logfmt.setup(level, per_subsystem, fmt)


def drop_privileges(d) -> None:
    """Become daemon.user with only NET_ADMIN, NET_RAW, NET_BIND_SERVICE (issue 8.13)."""
    from vpnd.net import privileges
    user = getattr(d.config.daemon, "user", None)
    try:
        target = privileges.resolve(user)
    except (KeyError, ValueError):
        raise StartupError(f"daemon.user: no such user {user!r}") from None
    if target is None and os.geteuid() == 0:
        if user is None:
            log.warning("running as root: create the system user %r (or set daemon.user) "
                        "so that vpnd drops root after start-up", privileges.DEFAULT_USER)
        return
    if target is not None and os.geteuid() == 0 and d.control is not None:
        try:
            d.control.hand_over(target.uid)
        except OSError as e:  # only the socket's removal at exit depends on it
            log.warning("control socket: cannot hand it to %s: %s", target.name,
                        e.strerror or e)
    # Capabilities are per thread: a thread alive during the switch keeps none. The
    # netlink worker starts again after it (inheriting ours) on its next call.
    from vpnd.net import netlink
    netlink.shutdown()
    privileges.preload()  # later imports must not need files the user cannot read
    try:
        log.info("%s", privileges.drop(target))
    except privileges.PrivilegeError as e:
        raise StartupError(str(e)) from None
    stdlib = os.path.dirname(os.__file__)
    if not os.access(stdlib, os.R_OK | os.X_OK):
        log.warning("Python's library %s is not readable as uid %d: a module vpnd has not "
                    "loaded yet cannot be imported (install Python outside /root)",
                    stdlib, os.geteuid())
    for path in files_to_reread(d):
        if not os.access(path, os.R_OK):
            log.warning("reload will fail: %s cannot be read as uid %d; give it the group "
                        "vpnd runs as (chgrp, chmod 640)", path, os.geteuid())

def files_to_reread(d) -> list[str]:
    paths = [d.config_path] if d.config_path else []
    for c in d._conns():
        a = c.auth
        if c.psk_file:
            paths.append(c.psk_file)
        if a is not None:
            paths += [p for p in (a.cert, a.key, a.peer_pubkey, *a.ca) if p]
    return list(dict.fromkeys(paths))


async def start_control(d) -> None:
    """The control socket (vpnctl), first: a start-up failure can be reported to it."""
    conf = d.config.daemon
    path = conf.control_socket
    d.control = ControlServer(path, d, group=conf.control_group)
    try:
        await d.control.start()
    except OSError as e:
        d.control = None
        raise StartupError(f"cannot open control socket {path}: {e.strerror or e}") from None


async def start_metrics(d) -> None:
    """daemon.metrics: the Prometheus endpoint in this loop (vpnd/metrics.py)."""
    where = getattr(d.config.daemon, "metrics", None)
    if not where:
        return
    from vpnd import metrics
    try:
        d.metrics = await metrics.start(d, where)
    except OSError as e:
        raise StartupError(f"cannot open metrics endpoint {where}: {e.strerror or e}") from None
    log.info("metrics on %s", where)


async def stop_metrics(d) -> None:
    if d.metrics is not None:
        await d.metrics.close()
        d.metrics = None
