"""IkeManager: the one façade the daemon talks to (docs/internals.md).

It owns one engine per IKE version and the manual-keying engine (vpnd/ike/manual.py),
dispatches datagrams by the version in the header (RFC 7296 2.5 / RFC 2408 3.1) and commands
by the connection (`manual:`, else its `version`), and merges their status into the
contract's JSON shape. Child ids are unique across all engines.

IKEv1 hook: `vpnd.ike.v1.core.Ikev1Core` when present (same methods as the v2 engine, with
`receive_datagram`, `status_ike_sas` and `connection_status`); without it IKEv1 datagrams
are dropped (counted) and IKEv1 connections report an error event.
"""

from __future__ import annotations

import itertools
import os

from vpnd.crypto.credentials import CredentialStore
from vpnd.ike import codec
from vpnd.ike.actions import Address, Event
from vpnd.ike.manual import ManualEngine
from vpnd.ike.peers import PeerRules
from vpnd.ike.v2.engine import Ikev2Engine


def _load_v1():
    try:
        from vpnd.ike.v1.core import Ikev1Core  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Ikev1Core


class IkeManager:
    def __init__(self, config, *, now: float, rng=os.urandom, wallclock=None):
        self.config = config
        self._ids = itertools.count(1)
        ids = self._ids.__next__
        # certificates and keys read once for both versions; the engines read no file
        creds = CredentialStore.from_config(config)
        self.v2 = Ikev2Engine(config, now=now, rng=rng, ids=ids, wallclock=wallclock, credentials=creds)
        v1cls = _load_v1()
        self.v1 = v1cls(config, now=now, rng=rng, new_id=ids, wallclock=wallclock,
                        credentials=creds) if v1cls is not None else None
        self.manual = ManualEngine(config, now=now, new_id=ids)
        self.drops = 0
        # the rules across versions and connections (INITIAL_CONTACT, duplicates, admin down)
        self.rules = PeerRules()
        self.rules.v2 = self.v2
        self.rules.v1 = self.v1
        for e in self._engines():
            e.peers = self.rules

    @property
    def trace(self) -> bool:
        """One debug line per IKE message and packet (actions.Trace, vpnd/ike/trace.py)."""
        return self.v2.trace

    @trace.setter
    def trace(self, on: bool) -> None:
        for e in self._engines():
            e.trace = bool(on)

    def _call(self, version: int | None, fn, *args, **kw) -> list:
        """Run one core call; actions it caused in the other core follow its own."""
        with self.rules.running(version):
            out = fn(*args, **kw)
        return out + self.rules.take()

    def _version(self, e) -> int | None:
        if e is self.manual:
            return None
        return 1 if e is self.v1 and e is not None else 2

    def _engines(self):
        return [e for e in (self.v2, self.v1, self.manual) if e is not None]

    def _for(self, name: str):
        for conn in self.config.connections:
            if conn.name == name:
                if conn.manual is not None:
                    return self.manual
                if conn.version == 1:
                    return self.v1
                return self.v2
        return self.v2

    def start(self, now: float) -> list:
        """What comes up without a negotiation at start: the manual connections' SAs."""
        return self.manual.start(now)

    def install_failed(self, child_id: int) -> None:
        """The SA table refused a child's keys (logged by the daemon)."""
        self.manual.install_failed(child_id)

    def _no_v1(self, name: str) -> list:
        return [Event("error", name, "IKEv1 is not available in this build")]

    def receive(self, data: bytes, local: Address, remote: Address, now: float) -> list:
        version = codec.peek_version(data)
        if version is not None and version >= 2:  # > 2: answered INVALID_MAJOR_VERSION (RFC 7296 2.5)
            return self._call(2, self.v2.receive, data, local, remote, now)
        if version == 1 and self.v1 is not None:
            try:
                return self._call(1, self.v1.receive_datagram, data, local, remote, now)
            except Exception as e:  # the v1 engine should not raise; keep the daemon alive
                return [Event("error", None, f"IKEv1 engine failed: {type(e).__name__}: {e}")]
        self.drops += 1
        return []

    def initiate(self, connection: str, now: float) -> list:
        e = self._for(connection)
        if e is None:
            return self._no_v1(connection)
        if e is self.manual:
            return e.initiate(connection, now)
        self.rules.set_up(connection)  # `up` ends an administrative down
        return self._call(self._version(e), e.initiate, connection, now)

    def terminate(self, connection: str, now: float) -> list:
        e = self._for(connection)
        if e is None:
            return self._no_v1(connection)
        if e is self.manual:
            return e.terminate(connection, now)
        # an operator's down is final: nothing re-initiates it by itself (issue 7.2)
        self.rules.set_down(connection)
        return self._call(self._version(e), e.terminate, connection, now)

    def rekey(self, connection: str, now: float, *, ike: bool = False) -> list:
        e = self._for(connection)
        if e is None:
            return self._no_v1(connection)
        return self._call(self._version(e), e.rekey, connection, now, ike=ike)

    def acquire(self, connection: str, packet: bytes, now: float) -> list:
        e = self._for(connection)
        if e is None:
            return self._no_v1(connection)
        if e is self.manual:
            return e.acquire(connection, packet, now)
        self.rules.set_up(connection)  # start: trap -- a trapped packet brings it up again
        return self._call(self._version(e), e.acquire, connection, packet, now)

    def child_expiring(self, child_id: int, hard: bool, now: float) -> list:
        out: list = []
        for e in self._engines():
            out += self._call(self._version(e), e.child_expiring, child_id, hard, now)
        return out

    def child_activity(self, child_id: int, last_in: float, last_out: float) -> None:
        for e in self._engines():
            e.child_activity(child_id, last_in, last_out)

    def unknown_spi(self, spi: int, remote: Address, now: float) -> list:
        out: list = []
        for e in self._engines():
            out += self._call(self._version(e), e.unknown_spi, spi, remote, now)
        return out

    def mobike_peers(self) -> set[str]:
        """Peer addresses whose route the daemon looks up for MOBIKE (IKEv2 only)."""
        return self.v2.mobike_peers()

    def addresses_changed(self, addrs, sources: dict, now: float) -> list:
        """Our local addresses changed (net/addrwatch.py): MOBIKE moves IKEv2 SAs."""
        return self._call(2, self.v2.addresses_changed, addrs, sources, now)

    def next_timer(self) -> float | None:
        times = [t for t in (e.next_timer() for e in self._engines()) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list:
        out: list = []
        for e in self._engines():
            out += self._call(self._version(e), e.handle_timer, now)
        return out

    def reload(self, config, now: float) -> list:
        self.config = config
        names = {c.name for c in config.connections}
        self.rules.admin_down &= names  # a removed connection's down state goes with it
        creds = CredentialStore.from_config(config)  # the files as they are now
        out: list = []
        for e in self._engines():
            out += self._call(self._version(e), e.reload, config, now, credentials=creds)
        return out

    def status(self, now: float) -> dict:
        ike_sas: list[dict] = self.v2.status(now)
        if self.v1 is not None:
            ike_sas += self.v1.status_ike_sas(now)
        ike_sas += self.manual.status_ike_sas(now)
        conns = []
        for conn in self.config.connections:
            if conn.manual is not None:
                conns.append({"name": conn.name, "version": conn.version, "peer": str(conn.peer),
                              **self.manual.connection_status(conn.name)})
                continue
            if conn.version == 1 and self.v1 is not None:
                conns.append({"name": conn.name, "version": 1, "peer": conn.peer,
                              **self.v1.connection_status(conn.name)})
                continue
            # an IKE SA may carry the children of several connections (one IKE SA per peer)
            mine = [s for s in ike_sas if s["connection"] == conn.name or conn.name in s.get("connections", ())]
            children = sum(1 for s in mine for ch in s["child_sas"] if ch.get("name", conn.name) == conn.name)
            installed = any(ch["state"] == "INSTALLED" and ch.get("name", conn.name) == conn.name
                            for s in mine for ch in s["child_sas"])
            state = "up" if installed else ("connecting" if mine else "down")
            conns.append({"name": conn.name, "version": conn.version, "peer": conn.peer, "state": state,
                          "ike_sas": len(mine), "child_sas": children})
        return {"connections": conns, "ike_sas": ike_sas}
