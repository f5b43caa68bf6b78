"""systemd integration beyond READY=1: `STATUS=` kept current as tunnels go up and down, and
the service watchdog (sd_watchdog_enabled(3)).

With `WatchdogSec=` in the unit, systemd passes WATCHDOG_USEC (and WATCHDOG_PID) and kills
the service when no `WATCHDOG=1` arrives within that time. The ping is a timer of the event
loop itself, sent at half the interval: a wedged loop (a handler that never returns, a
deadlock) stops the pings and systemd restarts vpnd (Restart=on-failure).
"""

from __future__ import annotations

import logging
import os

from vpnd.net import notify

log = logging.getLogger("vpnd.daemon.watchdog")


def watchdog_interval(environ=None) -> float | None:
    """Seconds between required pings, or None when no watchdog is asked for (or it is
    for another process: WATCHDOG_PID names the main PID)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        v = int(usec)
    except ValueError:
        return None
    return v / 1e6 if v > 0 else None


def status_text(daemon) -> str:
    """"2/3 connections up, 2 SAs" (a connection is up while one of its SAs can send)."""
    names = [c.name for c in daemon.config.connections]
    up = {c.connection for c in daemon.children.values() if c.outbound}
    n_up = sum(1 for n in names if n in up)
    return f"{n_up}/{len(names)} connections up, {len(daemon.children)} SAs"


class Systemd:
    def __init__(self, daemon):
        self.daemon = daemon
        self.loop = None
        self.interval = None
        self._ping = None
        self._pending = None
        self._last_status = None
        self.pings = 0

    def start(self, loop) -> None:
        """After READY=1: the first STATUS= and the watchdog timer."""
        self.loop = loop
        self.update_now()
        self.interval = watchdog_interval()
        if self.interval:
            log.info("systemd watchdog: a ping every %.3g s (WatchdogSec=%.3g)",
                     self.interval / 2, self.interval)
            self._tick()

    def _tick(self) -> None:
        notify.sd_notify("WATCHDOG=1")
        self.pings += 1
        self._ping = self.loop.call_later(self.interval / 2, self._tick)

    def changed(self) -> None:
        """An SA came or went: one STATUS= for however many changes this loop iteration."""
        if self.loop is None or self._pending is not None:
            return
        self._pending = self.loop.call_soon(self.update_now)

    def update_now(self) -> None:
        self._pending = None
        try:
            text = status_text(self.daemon)
        except Exception:  # never let a status line break the daemon
            return
        if text != self._last_status:
            self._last_status = text
            notify.sd_notify(f"STATUS={text}")

    def stop(self) -> None:
        for h in (self._ping, self._pending):
            if h is not None:
                h.cancel()
        self._ping = self._pending = None
        self.loop = None
