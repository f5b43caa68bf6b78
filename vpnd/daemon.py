"""The daemon: glue between the kernel (net/), the data plane (esp/) and the IKE core (ike/).

It owns no protocol logic. Packets move in bursts from file-descriptor readiness callbacks
(no task and no log line per packet): TUN → DataPlane.encap → wire, wire → DataPlane.decap
→ TUN. The IKE core is sans-IO: the daemon feeds it datagrams and one loop timer, and
carries out the actions it returns. Manual keying connections (the seed's ipsec-manual
crypto maps) are an engine behind the same façade (vpnd/ike/manual.py), whose
InstallChildSA actions go through the same SA table (vpnd/sadb.py) as the IKE cores'.
"""

from __future__ import annotations

import asyncio
import signal
import time

from vpnd import addrsync, dpdriver, lifecycle, logfmt, routesync, sadb, sanotes
from vpnd import reload as reloading
from vpnd import status as statusdoc
from vpnd.commands import Commands
from vpnd.control import CommandError
from vpnd.ike.actions import CHILD_ACTIONS, Event, SendDatagram, Trace, UpdateChildAddresses
from vpnd.lifecycle import StartupError, setup_logging  # noqa: F401  (imported from here)
from vpnd.net import notify
from vpnd.net.addrwatch import AddressWatch
from vpnd.net.routes import RouteManager
from vpnd.net.sockets import SocketError, WireSockets
from vpnd.net.tun import Tun, TunError, source_address_towards
from vpnd.sadb import ACQUIRE_QUEUE, ACQUIRE_RETRY  # noqa: F401  (tests read them here)
from vpnd.wireio import WireIO

log = logfmt.logger("daemon")
ike_log = logfmt.logger("ike")
esp_log = logfmt.logger("esp")
net_log = logfmt.logger("net")
_TRACE_LOG = {"ike": ike_log, "net": net_log}


class Daemon:
    def __init__(self, config, config_path: str | None = None):
        self.config = config
        self.config_path = config_path
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tun: Tun | None = None
        self.wire: WireSockets | None = None
        self.io = WireIO(self)  # the readers and hot path (vpnd/wireio.py)
        self.addrwatch: AddressWatch | None = None  # our addresses, for MOBIKE (addrsync.py)
        self._addr_timer = None  # their changes settle (addrsync.ADDRESS_SETTLE)
        # the data plane and routes (set by setup) behind the SA table's driver
        self.driver = dpdriver.Driver(send_queued=self._send_queued)
        # the CHILD_SAs, guards and acquire queues (sans-IO, vpnd/sadb.py)
        self.sadb = sadb.SATable(config, check=dpdriver.check)
        self.ike = None  # vpnd.ike.manager.IkeManager (IKEv1, IKEv2, manual keying)
        self.control = None
        self.metrics = None  # vpnd.metrics.MetricsServer with daemon.metrics
        from vpnd.monitor import Monitor
        self.monitor = Monitor()  # vpnctl monitor's subscribers (vpnd/monitor.py)
        from vpnd.updown import Updown
        self.updown = Updown()  # connections' updown: scripts (vpnd/updown.py)
        from vpnd.watchdog import Systemd
        self.systemd = Systemd(self)  # STATUS= as tunnels change, WATCHDOG=1 (vpnd/watchdog.py)
        self._static_routes: list = []
        self._steers: dict[str, str] = {}  # transport-mode name -> peer steered into the TUN
        self.timer = EngineTimer(self)  # the engines' one loop timer
        self.commands = Commands(self)  # vpnctl up/down/rekey/reload and their waiters
        self._stop = None
        # what `status` says of each connection (vpnd/status.py connection_state)
        self._attempt: dict[str, float] = {}  # name -> when a negotiation was asked for
        self._last_error: dict[str, dict] = {}  # name -> status.last_error_entry, until success
        self.started_at = time.monotonic()
        self.counters = {"tun_in": 0, "tun_out": 0, "wire_in": 0, "wire_out": 0,
                         "decap_drops": 0, "natt_invalid": 0, "keepalives_in": 0,
                         "loop_errors": 0}
        self.exit_code = 0
        self._last_error_log = -1e9
        self._rearm_due = False  # an _arm_timer() is scheduled (_arm_timer_soon)

    @property
    def children(self) -> dict:
        """The installed CHILD_SAs (vpnd/sadb.py Child, plain data), by child id."""
        return self.sadb.children

    @property
    def dp(self):
        """The data plane (esp.DataPlane façade) the SA table's driver installs into."""
        return self.driver.dp

    @dp.setter
    def dp(self, value) -> None:
        self.driver.dp = value

    @property
    def routes(self):
        return self.driver.routes

    @routes.setter
    def routes(self, value) -> None:
        self.driver.routes = value
        self.sadb.routes = value is not None

    # -- life cycle ----------------------------------------------------------------------

    def _now(self) -> float:
        """The clock of the IKE core and of SA ages: the loop's monotonic time."""
        return self.loop.time() if self.loop is not None else time.monotonic()

    def _conns(self, config=None):
        return tuple((config or self.config).connections)

    def setup(self) -> None:
        """Everything that touches the kernel; on failure, undoes what it did and raises."""
        from vpnd import esp
        d = self.config.daemon
        try:
            tun_mtu, outer_mtu = lifecycle.compute_mtu(self.config)
            self.dp = esp.DataPlane(outer_mtu=outer_mtu, mss_clamp=lifecycle.mss(d.mss_clamp, tun_mtu))
            self.tun = Tun(d.tun, tun_mtu)
            need_ike, need_natt = self.io.udp_needs()
            self.wire = WireSockets(str(d.listen), int(d.ike_port), int(d.natt_port),
                                    ike=need_ike, natt=need_natt)
            self.routes = RouteManager(self.tun.index)
            self.sadb.source_towards = source_address_towards
            self.sadb.outer_path = lambda peer: routesync.outer_path_of(self, peer)
            self._outer_mtu = outer_mtu
            addrsync.start(self)  # MOBIKE follows our addresses (RFC 4555)
        except (TunError, SocketError) as e:
            self.teardown()
            raise StartupError(str(e)) from None
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Delete SAs, remove our routes and the TUN device; idempotent."""
        self._table(self.sadb.delete_all(quiet=True))
        if self.routes is not None:
            self.routes.close()
            self.routes = None
        if self.wire is not None:
            self.wire.close()
            self.wire = None
        addrsync.stop(self)
        if self.tun is not None:
            self.tun.close()
            self.tun = None

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stop = self.loop.create_future()
        started = False
        try:
            await lifecycle.start_control(self)
            await lifecycle.start_metrics(self)
            self.setup()
            log.info("TUN %s up, MTU %d (outer MTU %d)", self.tun.name, self.tun.mtu, self._outer_mtu)
            self.io.attach()
            for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                                 (signal.SIGHUP, self._sighup)):
                self.loop.add_signal_handler(sig, handler)
            self._apply_connections(initial=True)
            routesync.warn_forwarding(self)
            self._arm_timer()
            lifecycle.drop_privileges(self)  # set-up is done: root is not needed any more
            started = True
            # READY=1 only now: manual SAs and their routes are installed (Type=notify)
            notify.ready(f"{len(self.children)} SAs installed")
            self.systemd.start(self.loop)
            log.info("vpnd ready: %d connection(s), %d SA(s) installed",
                     len(self._conns()), len(self.children))
            await self._stop
        finally:
            self.systemd.stop()
            if started:
                notify.stopping()
                log.info("stopping: deleting SAs, removing routes and %s",
                         self.tun.name if self.tun else "TUN")
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.loop.remove_signal_handler(sig)
            self.io.detach()
            self.timer.cancel()
            if started:
                self._stop_ike()
            if self.control is not None:
                await self.control.close()
                self.control = None
            await lifecycle.stop_metrics(self)
            self.updown.close()
            self.teardown()
        return self.exit_code

    def stop(self) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    def _internal_error(self, msg: str, *args) -> None:
        """A bug met by input from outside: counted (loop_errors), logged with its traceback
        at most once a second, so that a flood of such input cannot flood the log."""
        self.counters["loop_errors"] += 1
        now = time.monotonic()
        if now - self._last_error_log >= 1.0:
            self._last_error_log = now
            log.exception(msg, *args)

    # -- data plane events ---------------------------------------------------------------

    def _drain_events(self):
        events = self.dp.events
        while events:
            ev = events.popleft()
            try:
                self._handle_dp_event(ev)
            except Exception:
                self._internal_error("error handling data plane event %r", ev[0])

    def _handle_dp_event(self, ev):
        """Events of esp.DataPlane (see its docstring): lifetimes, unknown SPIs, acquires."""
        kind = ev[0]
        now = self._now()
        if kind in ("soft_expire", "hard_expire"):
            hard = kind == "hard_expire"
            child = self.children.get(ev[1].tag)
            if child is None:
                return
            if self.ike is not None:
                self._run_actions(self.ike.child_expiring(child.child_id, hard, now))
        elif kind == "unknown_spi":
            _, protocol, spi, src = ev
            esp_log.debug("%s packet with unknown SPI %08x from %s", protocol.upper(), spi, src)
            if self.ike is not None and protocol == "esp":
                self._run_actions(self.ike.unknown_spi(spi, (src, self.wire.ike_port), now))
        elif kind == "acquire":
            _, policy_id, packet = ev
            if isinstance(policy_id, tuple) and policy_id[0] == "trap":
                self._acquire(policy_id[1], packet, now)

    def _acquire(self, name: str, packet: bytes, now: float):
        """A packet hit the trap policy of `name`: start it, keep the packet until it is up
        (vpnd/sadb.py: asked again after ACQUIRE_RETRY or after a failure)."""
        if self.sadb.acquire(name, packet, now) and self.ike is not None:
            esp_log.info("traffic for the tunnel, initiating", extra=logfmt.ctx(name))
            self.monitor.publish_acquire(name, packet)
            self._note_attempt(name)
            self._run_actions(self.ike.acquire(name, packet, now))

    # -- child SAs: the SA table (vpnd/sadb.py) and its driver (vpnd/dpdriver.py) ----------

    def _table(self, ops) -> None:
        """Carry out the SA table's ops on the data plane and routes, then its notes."""
        for n in self.driver.run(ops):
            sanotes.on_note(self, n)

    def _send_queued(self, packets) -> None:
        self.io.send_outputs(self.dp.encap_many(list(packets)))

    def _restore_guard(self, name: str) -> None:
        """(Re)install the guard policy of `name` behind its SAs (fail closed, issue 8.6)."""
        if self.dp is not None:
            self._table(self.sadb.restore_guard(name))

    def _conn(self, name):
        for c in self._conns():
            if c.name == name:
                return c
        return None

    # -- connections ---------------------------------------------------------------------

    def _apply_connections(self, initial: bool = False):
        """At start: the engines (manual SAs go in, `start: start` connections are
        initiated), then the static/guard routes and policies."""
        routesync.sync_ipv6(self)
        routesync.apply_filters(self, {c.name: c for c in self._conns()})
        if initial:
            self._start_ike()
        self._apply_static_routes()

    def _apply_static_routes(self) -> None:
        """Config-level routes, steering, guards and kill switch (vpnd/routesync.py)."""
        routesync.apply(self)

    # -- the engines: everything IKE and manual keying goes through the IkeManager façade --

    def _start_ike(self):
        """The engines behind the IkeManager façade: manual SAs go in, `start: start`
        connections are initiated."""
        if self.ike is not None or not self._conns():
            return
        from vpnd.ike.manager import IkeManager
        now = self._now()
        self.ike = IkeManager(lifecycle.with_local_addresses(self.config), now=now)
        self.ike.trace = logfmt.wants_trace()
        if self.addrwatch is not None:
            addrsync.addresses_check(self)  # our addresses, for the lists MOBIKE sends (RFC 4555 3.6)
        self._run_actions(self.ike.start(now))
        for c in self._conns():
            if c.manual is None and c.start == "start":
                self._note_attempt(c.name)
                self._run_actions(self.ike.initiate(c.name, now))

    def _stop_ike(self):
        if self.ike is None:
            return
        now = self._now()
        for c in self._conns():
            if c.manual is None:
                try:
                    self._run_actions(self.ike.terminate(c.name, now))
                except Exception:
                    log.exception("error terminating %s", c.name)

    def _ike_receive(self, data: bytes, local, remote):
        if self.ike is None:
            return
        try:
            actions = self.ike.receive(data, local, remote, self._now())
        except Exception:
            self._internal_error("IKE core failed on a datagram from %s:%d (dropped)", *remote)
            return
        self._run_actions(actions)

    def _arm_timer(self) -> None:
        self.timer.arm()

    def _run_actions(self, actions, rearm: bool = True):
        for a in actions or ():
            try:
                if isinstance(a, SendDatagram):
                    self.wire.send_ike(a.data, a.local, a.remote)
                elif isinstance(a, CHILD_ACTIONS):
                    self._table(self.sadb.apply(a, self._now()))
                    if isinstance(a, UpdateChildAddresses):
                        sanotes.moved(self, a)
                elif isinstance(a, Event):
                    self._on_event(a)
                elif isinstance(a, Trace):
                    _TRACE_LOG.get(a.subsystem, ike_log).debug(
                        "%s", a.message, extra=logfmt.ctx(a.connection, a.ike_id))
                else:  # a core returned something that is not an action: a bug, reported
                    raise TypeError(f"not an action: {type(a).__name__}")
            except Exception:  # counted, logged at most once a second; the next action runs
                self._internal_error("error carrying out %s", type(a).__name__)
        if rearm:
            self._arm_timer_soon()

    def _arm_timer_soon(self) -> None:
        """_arm_timer() once this turn of the loop is done: next_timer() looks at every SA,
        so a burst re-arms once (1000 half-open ISAKMP SAs: 20 ms a datagram, issue 8)."""
        if self.loop is None:
            return self._arm_timer()
        if not self._rearm_due:
            self._rearm_due = True
            self.loop.call_soon(self._rearm)

    def _rearm(self) -> None:
        self._rearm_due = False
        self._arm_timer()

    def _on_event(self, ev: Event):
        """An event of the engines (vpnd/sanotes.py): log line; failures end waiting commands."""
        sanotes.on_event(self, ev)

    def _note_attempt(self, name: str) -> None:
        self._attempt[name] = self._now()
        self._set_admin_down(name, False)

    def _succeeded(self, name: str) -> None:
        """An IPsec SA of `name` can send: the attempt is over, its last error forgotten."""
        self._attempt.pop(name, None)
        self._last_error.pop(name, None)
        self._set_admin_down(name, False)

    def _set_admin_down(self, name: str, down: bool) -> None:
        """vpnctl down is final: the guard of `name` (if any) may become a drop."""
        self._table(self.sadb.set_admin_down(name, down))

    # -- control commands (vpnd/commands.py; control.py calls these) -----------------------

    def _wake(self, connection: str, what: str):
        self.commands.waiters.wake(connection, what)

    def _fail(self, connection: str, reason: str):
        self.commands.waiters.fail(connection, reason)

    @property
    def _waiters(self) -> list:
        return self.commands.waiters.items

    def _has_child(self, name: str) -> bool:
        return any(c.connection == name for c in self.children.values())

    def _require(self, name: str):
        return self.commands._require(name)

    async def cmd_up(self, name: str, timeout: float = 30.0) -> dict:
        return await self.commands.up(name, timeout)

    async def cmd_down(self, name: str, timeout: float = 15.0) -> dict:
        return await self.commands.down(name, timeout)

    async def cmd_down_many(self, req: dict, timeout: float = 15.0) -> dict:
        """vpnctl down --peer ADDR / --all (vpnd/conns.py)."""
        from vpnd import conns
        return await conns.down_many(self, req, timeout)

    def cmd_conns(self) -> dict:
        from vpnd import conns
        return conns.describe(self)

    async def cmd_rekey(self, name: str, ike: bool = False, timeout: float = 30.0) -> dict:
        return await self.commands.rekey(name, ike=ike, timeout=timeout)

    async def cmd_reload(self) -> dict:
        return await self.commands.reload()

    # -- reload (vpnd/reload.py) ------------------------------------------------------------

    def _sighup(self):
        reloading.on_sighup(self)

    async def reload_async(self) -> dict:
        return await reloading.reload_async(self)

    def reload(self) -> dict:
        return reloading.reload(self)

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict:
        """The status document (docs/daemon.md): the engines' view merged with the data
        plane's counters (vpnd/status.py)."""
        return statusdoc.collect(self)

    def export_keys(self) -> dict:
        """The control command "keys" (vpnctl keys --wireshark): refused unless allowed."""
        from vpnd import keyexport
        return keyexport.export(self)



class EngineTimer:
    """The asyncio side of the engines' and the SA table's clocks: one loop timer, armed at
    the earliest deadline of either (IkeManager.next_timer, SATable.next_timer)."""

    def __init__(self, d):
        self.d = d
        self.handle: asyncio.Handle | None = None
        self.when: float | None = None  # our own deadline: uvloop's call_at may return a
        # plain Handle without when() (deadline due within ~0.5 ms)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def fire(self) -> None:
        d = self.d
        self.handle = None
        self.when = None
        if d.ike is not None:
            try:
                d._run_actions(d.ike.handle_timer(d._now()), rearm=False)
                self.report_activity()
            except Exception:
                d._internal_error("IKE timer handling failed")
        try:
            d._table(d.sadb.handle_timer(d._now()))  # retired SAs whose time came
        except Exception:
            d._internal_error("SA table timer handling failed")
        self.arm()

    def report_activity(self) -> None:
        """Tell the IKE core when each child last saw traffic (idle_time, on-demand DPD)."""
        d = self.d
        for child in d.children.values():
            objs = d.driver.sas.get(child.child_id)
            if objs is None:
                continue
            last_in = max((s.last_in or 0.0 for s in objs.inbound), default=0.0)
            last_out = max((s.last_out or 0.0 for s in objs.outbound), default=0.0)
            if (last_in, last_out) != (child.last_in, child.last_out):
                child.last_in, child.last_out = last_in, last_out
                d.ike.child_activity(child.child_id, last_in, last_out)

    def arm(self) -> None:
        """(Re)arm the one loop timer at the next deadline (at most 1 s away). Never
        raises: a failure here would drop the rest of the caller's burst."""
        d = self.d
        if d.ike is None or d.loop is None:
            return
        try:
            when = d.ike.next_timer()
            retire = d.sadb.next_timer()
            if retire is not None:
                when = retire if when is None else min(when, retire)
        except Exception:  # the one-second tick below keeps the core's timers running
            d._internal_error("IKE next_timer failed")
            when = None
        try:
            # activity reports need a tick even when the core has nothing scheduled
            tick = d._now() + 1.0
            when = tick if when is None else min(float(when), tick)
            if self.handle is not None:
                if self.when is not None and abs(self.when - when) < 1e-3:
                    return
                self.handle.cancel()
                self.handle = None
            self.handle = d.loop.call_at(when, self.fire)
            self.when = when
        except Exception:
            d._internal_error("arming the IKE timer failed")
            if self.handle is None:  # never leave the core without a tick
                self.handle = d.loop.call_later(1.0, self.fire)
                self.when = d._now() + 1.0


def run_daemon(config, config_path: str | None) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop, 1 when start-up failed."""
    logfmt.setup_from(config.daemon)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    for w in getattr(config, "warnings", ()):
        log.warning("%s", w)
    daemon = Daemon(config, config_path)
    try:
        return runner(daemon.run())
    except StartupError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        daemon.teardown()
        return 0
    except Exception:  # a bug: say so, leave nothing behind (run() tore down), exit 1
        log.exception("vpnd stopped by an internal error")
        daemon.teardown()
        return 1


__all__ = ["Daemon", "run_daemon", "StartupError", "CommandError"]
