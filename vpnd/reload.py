"""Reloading the config (SIGHUP, `vpnctl reload`): read and check it off the loop, keep the
old one on any problem, then hand the new one to every part of the daemon -- the daemon
section (log level, MTU), the SA table, the UDP ports, the engines (IKE connections and
manual SAs added, changed, removed), routes and guards."""

from __future__ import annotations


from vpnd import lifecycle, logfmt, routesync
from vpnd.control import CommandError
from vpnd.net import notify
from vpnd.net.tun import TunError

log = logfmt.logger("daemon")


def on_sighup(d):
    if d.loop is not None and d.loop.is_running():
        d._reload_task = d.loop.create_task(_sighup_async(d))
        return
    try:
        reload(d)
    except CommandError:
        pass  # reload() logged why; the old config keeps running
    except Exception:  # a signal handler's exception would only reach the loop
        log.exception("reload on SIGHUP failed part-way")

async def _sighup_async(d):
    try:
        await reload_async(d)
    except CommandError:
        pass  # logged; the old config keeps running
    except Exception:
        log.exception("reload on SIGHUP failed part-way")

async def reload_async(d) -> dict:
    """reload(), with the file reading and checking in a thread: a big or slow config
    (certificates, keys, up to 1 MiB of YAML) does not stall the data plane (issue 8.8)."""
    notify.reloading()
    try:
        new = await d.loop.run_in_executor(None, load_new, d)
        return apply_new(d, new)
    finally:
        notify.ready()
        d.systemd.changed()  # the number of connections may have changed

def reload(d) -> dict:
    notify.reloading()
    try:
        return apply_new(d, load_new(d))
    finally:
        notify.ready()
        d.systemd.changed()  # the number of connections may have changed

def load_new(d):
    """The checked new config, or CommandError (logged); runs in a worker thread."""
    from vpnd.config import ConfigError, load_config
    if not d.config_path:
        raise CommandError("no config file to reload")
    try:
        new = load_config(d.config_path)
    except ConfigError as e:
        for p in e.problems:
            log.error("reload: %s", p)
        raise CommandError("reload failed: invalid config, still running the old one: "
                           + "; ".join(e.problems)) from None
    except OSError as e:
        log.error("reload: cannot read %s: %s", d.config_path, e.strerror)
        raise CommandError(f"reload failed: cannot read {d.config_path}: {e.strerror}") from None
    except Exception as e:  # a checker bug: the old config keeps running
        log.error("reload: internal error while checking %s (%s)", d.config_path,
                  type(e).__name__)
        raise CommandError("reload failed: internal error while checking the config, "
                           "still running the old one") from None
    return new

def apply_new(d, new) -> dict:
    for w in getattr(new, "warnings", ()):
        log.warning("reload: %s", w)
    _daemon_section(d, new)
    old_names = {c.name for c in d._conns() if c.manual is None}
    d.config = new
    d.sadb.set_config(new)
    d.io.sync_udp(open_only=True)
    routesync.sync_ipv6(d)
    routesync.apply_filters(d, {c.name: c for c in d._conns()})
    if d.ike is not None:
        now = d._now()
        # manual SAs removed or changed go, new or changed ones come (vpnd/ike/manual.py)
        d._run_actions(d.ike.reload(lifecycle.with_local_addresses(new), now))
        for c in d._conns():  # new `start: start` connections come up now
            if c.manual is None and c.start == "start" and c.name not in old_names:
                d._note_attempt(c.name)
                d._run_actions(d.ike.initiate(c.name, now))
    else:
        d._start_ike()
    d._apply_static_routes()
    d.io.sync_udp()
    log.info("reloaded %s: %d connection(s)", d.config_path, len(d._conns()))
    return {"reloaded": True, "connections": [c.name for c in d._conns()]}

def _daemon_section(d, new):
    old_d, new_d = d.config.daemon, new.daemon
    logfmt.apply_levels(new_d.log_level, new_d.log_subsystems)
    if new_d.log_format != old_d.log_format:
        logfmt.reformat(new_d.log_format)
    if d.ike is not None:
        d.ike.trace = logfmt.wants_trace()
    for key in ("tun", "listen", "ike_port", "natt_port", "control_socket", "metrics"):
        if getattr(old_d, key) != getattr(new_d, key):
            log.warning("reload: daemon.%s changed; it takes effect on restart", key)
    if d.tun is not None:  # the MTU follows the daemon.mtu key and, for auto, the transforms
        old_cfg = d.config
        d.config = new
        try:
            mtu, outer = lifecycle.compute_mtu(d.config)
            if mtu != d.tun.mtu:
                d.tun.set_mtu_and_up(mtu)
                log.info("TUN %s MTU now %d", d.tun.name, mtu)
            d.dp.outer_mtu = outer
            d.dp.mss_clamp = lifecycle.mss(new_d.mss_clamp, mtu)
        except TunError as e:
            log.error("reload: %s", e)
        finally:
            d.config = old_cfg
