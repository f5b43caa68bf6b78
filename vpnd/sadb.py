"""The SA table: which CHILD_SAs are installed, which one sends for each policy, the
fail-closed guard policy of each connection and the packets that wait for a negotiation.

Sans-IO, like the IKE cores: it takes the cores' child actions (InstallChildSA,
ActivateOutbound, RetireChildSA, DeleteChildSA, UpdateChildAddresses, vpnd/ike/actions.py),
the data plane's acquires and the clock, and returns what the data-plane / kernel side must
do (the ops below, carried out in order by vpnd/dpdriver.py against esp.DataPlane and
net.routes) followed by notes for logs, updown scripts and waiting commands. Its state is
plain data (the actions, whose keys are bytes; strings, numbers, tuples): a table can be
pickled and shipped to another process, and the data plane's SA objects are not in it.

Make-before-break (RFC 7296 2.8, RFC 2409 5.5 / 9): a rekeyed child's successor is installed
inbound first; its outbound side takes over the policy of the child it `replaces` (the
policy keeps its place in the SPD); the replaced child keeps receiving until the core
deletes it, or until the time a RetireChildSA gave.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from vpnd.ike.actions import (ActivateOutbound, DeleteChildSA, InstallChildSA, RetireChildSA,
                              UpdateChildAddresses)
from vpnd.net.routes import RouteOptions

ACQUIRE_QUEUE = 32  # packets kept per connection while a trap negotiation runs
ACQUIRE_RETRY = 10.0  # seconds after which traffic asks for a stalled negotiation again


def networks(v) -> tuple:
    return tuple(ipaddress.ip_network(str(n), strict=False) for n in (v or ()))


# -- what the data-plane / kernel side must do (vpnd/dpdriver.py) -------------------------

@dataclass(frozen=True)
class AddInbound:
    """Receive on the inbound SAs of `action` (one bundle). Selectors given: decapsulated
    packets must match them (RFC 4301 5.2 step 4)."""
    action: InstallChildSA
    local_ts: tuple | None
    remote_ts: tuple | None


@dataclass(frozen=True)
class AddOutbound:
    """Install (or replace in place) the outbound policy `policy_id`, sending on the
    outbound SAs of `action`."""
    policy_id: object
    action: InstallChildSA


@dataclass(frozen=True)
class RemoveInbound:
    protocol: str
    spi: int


@dataclass(frozen=True)
class RemoveOutbound:
    policy_id: object


@dataclass(frozen=True)
class AddTrap:
    """A policy without SAs: matching packets become acquires (DataPlane events)."""
    policy_id: object
    local_ts: tuple
    remote_ts: tuple


@dataclass(frozen=True)
class AddBlock:
    """A policy whose packets are dropped (counted)."""
    policy_id: object
    local_ts: tuple
    remote_ts: tuple


@dataclass(frozen=True)
class MoveOutbound:
    """The peer moved: the SAs of this policy get new outer addresses in place."""
    policy_id: object
    local: str
    remote: str
    encap: tuple | None


@dataclass(frozen=True)
class Readdress:
    """New outer addresses for a child's SAs of one direction that no policy of its own
    carries (inbound SAs, for status; outbound SAs not sending yet)."""
    child_id: int
    outbound: bool
    local: str
    remote: str
    encap: tuple | None


@dataclass(frozen=True)
class AddRoute:
    network: object
    opts: RouteOptions


@dataclass(frozen=True)
class RemoveRoute:
    network: object
    opts: RouteOptions


@dataclass(frozen=True)
class Steer:
    """Transport mode: this host's traffic to `peer` into the TUN."""
    peer: str
    local: str
    opts: RouteOptions


@dataclass(frozen=True)
class Unsteer:
    peer: str


@dataclass(frozen=True)
class SendQueued:
    """Packets that waited for the connection's first SA: encapsulate and send them now."""
    connection: str
    packets: tuple


# -- notes for the daemon (logs, updown, waiting commands, status) -----------------------

@dataclass(frozen=True)
class ChildInstalled:
    child: "Child"


@dataclass(frozen=True)
class OutboundActivated:
    child: "Child"


@dataclass(frozen=True)
class ChildRemoved:
    child: "Child"
    quiet: bool
    last: bool  # no other SA of its connection is left


@dataclass(frozen=True)
class InstallFailed:
    connection: str
    child_id: int
    reason: str


DP_OPS = (AddInbound, AddOutbound, RemoveInbound, RemoveOutbound, AddTrap, AddBlock,
          MoveOutbound, Readdress, SendQueued)
ROUTE_OPS = (AddRoute, RemoveRoute, Steer, Unsteer)
NOTES = (ChildInstalled, OutboundActivated, ChildRemoved, InstallFailed)


@dataclass
class Child:
    """One installed CHILD_SA / IPsec SA pair (plain data)."""
    action: InstallChildSA  # as negotiated; `outbound` empty while it only receives
    installed_at: float
    manual: bool = False
    policy_id: object = None  # the outbound policy it sends on (a replaced child has none)
    routes: list = field(default_factory=list)  # (network, RouteOptions) it holds
    steered: str | None = None  # transport mode: the peer steered into the TUN for it
    retire_at: float | None = None  # its inbound SAs go then (RetireChildSA)
    last_in: float = 0.0
    last_out: float = 0.0

    @property
    def child_id(self) -> int:
        return self.action.child_id

    @property
    def connection(self) -> str:
        return self.action.connection

    @property
    def inbound(self) -> tuple:
        return self.action.inbound

    @property
    def outbound(self) -> tuple:
        """The outbound keys once it sends (empty while inbound only)."""
        return self.action.outbound

    @property
    def local_ts(self) -> tuple:
        return self.action.local_ts

    @property
    def remote_ts(self) -> tuple:
        return self.action.remote_ts

    @property
    def retiring(self) -> bool:
        return self.retire_at is not None


def rri_routes(conn, remote_ts, peer: str, outer_path: Callable | None = None) -> list:
    """The (network, RouteOptions) pairs reverse route injection installs for `conn`.
    outer_path(peer) -> (ifindex, gateway) | None: the kernel's path to the peer outside
    the TUN (Cisco `reverse-route remote-peer` adds a host route along it)."""
    opts = RouteOptions.from_config(conn.rri)
    if not opts.enabled:
        return []
    out = []
    if opts.remote_peer and not opts.next_hop and peer and peer != "%any":
        path = outer_path(peer) if outer_path is not None else None
        if path is not None:
            out.append((f"{peer}/32", opts.replace(oif=path[0], next_hop=path[1])))
        opts = opts.replace(next_hop=peer)
    return [(net, opts) for net in remote_ts] + out


class SATable:
    """The daemon's CHILD_SAs, guards and acquire queues (see the module docstring).

    check(action): raises ValueError when the data plane could not take the action's keys
    (made by the daemon from esp.SA); routes: whether routes are ours to install (a kernel
    is there); source_towards(peer) / outer_path(peer): the kernel's answers the table needs
    for transport-mode guards and RRI routes (None: unknown)."""

    def __init__(self, config=None, *, check: Callable | None = None, routes: bool = False,
                 source_towards: Callable | None = None, outer_path: Callable | None = None):
        self.children: dict[int, Child] = {}
        self.guards: dict[str, str] = {}  # connection -> "trap" | "drop"
        self.admin_down: set[str] = set()  # taken down with vpnctl down, until up/traffic
        self.acquire_q: dict[str, tuple[deque, float]] = {}  # name -> (packets, asked at)
        self.check = check
        self.routes = routes
        self.source_towards = source_towards
        self.outer_path = outer_path
        self._conns: dict = {}
        if config is not None:
            self.set_config(config)

    def set_config(self, config) -> None:
        self._conns = {c.name: c for c in config.connections}

    def conn(self, name: str):
        return self._conns.get(name)

    # -- the cores' child actions ----------------------------------------------------------

    def apply(self, action, now: float) -> list:
        """One child action of a core (or of the manual engine)."""
        if isinstance(action, InstallChildSA):
            return self.install(action, now)
        if isinstance(action, ActivateOutbound):
            return self.activate(action)
        if isinstance(action, RetireChildSA):
            return self.retire(action.child_id, action.at)
        if isinstance(action, DeleteChildSA):
            return self.delete(action.child_id)
        if isinstance(action, UpdateChildAddresses):
            return self.update_addresses(action)
        raise TypeError(f"not a child action: {type(action).__name__}")

    def install(self, act: InstallChildSA, now: float, manual: bool = False) -> list:
        """Inbound first, then (with outbound keys) the outbound policy -- that of
        `act.replaces` when it holds one (make-before-break) -- then the RRI routes."""
        ops: list = []
        if act.child_id in self.children:  # the same child again: it is replaced whole
            ops += self.delete(act.child_id, quiet=True)
        try:
            if self.check is not None:
                self.check(act)
        except ValueError as e:
            return ops + [InstallFailed(act.connection, act.child_id, str(e))]
        conn = self.conn(act.connection)
        child = Child(act, now, manual or (conn is not None and conn.manual is not None))
        if act.inbound:
            # inner packets must match the SA's selectors (RFC 4301 5.2 step 4)
            sel = act.mode == "tunnel" and act.local_ts and act.remote_ts
            ops.append(AddInbound(act, act.local_ts if sel else None, act.remote_ts if sel else None))
        if act.outbound:
            self._take_policy(child, act.replaces)
            ops.append(AddOutbound(child.policy_id, act))
            # the guard stays behind the child's policy (per_host children cover only part
            # of it), re-added after it: equal selectors go to the earlier policy
            ops += self.restore_guard(act.connection)
        self.children[act.child_id] = child
        if self.routes and conn is not None:
            if act.mode == "tunnel":
                for net, opts in rri_routes(conn, act.remote_ts, act.remote[0], self.outer_path):
                    ops.append(AddRoute(net, opts))
                    child.routes.append((net, opts))
            elif act.outbound and RouteOptions.from_config(conn.rri).enabled:
                child.steered = act.remote[0]
                ops.append(Steer(act.remote[0], act.local[0], RouteOptions.from_config(conn.rri)))
        ops.append(ChildInstalled(child))
        if act.outbound:
            ops += self._flush(act.connection)
        return ops

    def activate(self, a: ActivateOutbound) -> list:
        """A child installed inbound only now sends: it takes over the policy of
        `a.replaces` if that one still holds it."""
        child = self.children.get(a.child_id)
        if child is None or child.outbound:
            return []
        act = dataclasses.replace(child.action, outbound=a.outbound, replaces=a.replaces)
        try:
            if self.check is not None:
                self.check(act)
        except ValueError as e:
            return [InstallFailed(act.connection, act.child_id, f"outbound SA: {e}")]
        ops: list = []
        self._take_policy(child, a.replaces)
        old = self.children.get(a.replaces) if a.replaces is not None else None
        if old is not None and old.steered:  # transport-mode steering goes along
            child.steered, old.steered = old.steered, None
        elif act.mode == "transport" and self.routes and \
                not any(c.steered == act.remote[0] for c in self.children.values()):
            # a first SA installed inbound-only (IKEv1 Quick Mode responder): the host's own
            # traffic to the peer is steered into the TUN only now that it can be sent
            conn = self.conn(act.connection)
            if conn is not None and RouteOptions.from_config(conn.rri).enabled:
                child.steered = act.remote[0]
                ops.append(Steer(act.remote[0], act.local[0], RouteOptions.from_config(conn.rri)))
        child.action = act
        ops.append(AddOutbound(child.policy_id, act))
        ops += self.restore_guard(act.connection)
        ops.append(OutboundActivated(child))
        ops += self._flush(act.connection)
        return ops

    def _take_policy(self, child: Child, replaces: int | None) -> None:
        old = self.children.get(replaces) if replaces is not None else None
        if old is not None and old.policy_id is not None:
            # make-before-break: traffic moves now; the old inbound SAs stay until the
            # core deletes (or retires) the old child
            child.policy_id, old.policy_id = old.policy_id, None
        else:
            child.policy_id = child.child_id

    def retire(self, child_id: int, at: float) -> list:
        """A replaced child's inbound SAs stay until `at` for packets still on the way."""
        child = self.children.get(child_id)
        if child is not None:
            child.retire_at = at if child.retire_at is None else min(child.retire_at, at)
        return []

    def delete(self, child_id: int, quiet: bool = False) -> list:
        child = self.children.pop(child_id, None)
        if child is None:
            return []
        ops: list = [RemoveInbound(k.protocol, k.spi) for k in child.inbound]
        if child.policy_id is not None:
            ops.append(RemoveOutbound(child.policy_id))
        ops += [RemoveRoute(net, opts) for net, opts in child.routes]
        if child.steered:
            ops.append(Unsteer(child.steered))
        last = not any(c.connection == child.connection for c in self.children.values())
        ops.append(ChildRemoved(child, quiet, last))
        return ops

    def delete_all(self, quiet: bool = True) -> list:
        ops: list = []
        for cid in list(self.children):
            ops += self.delete(cid, quiet=quiet)
        return ops

    def update_addresses(self, a: UpdateChildAddresses) -> list:
        """The peer moved (NAT mapping changed, floated to 4500): the child's SAs get the new
        outer addresses in place (sequence numbers, volume, expiry flags, replay window
        carry on; a rebuilt SA would fire its soft expiry twice)."""
        child = self.children.get(a.child_id)
        if child is None:
            return []
        encap = (a.local[1], a.remote[1]) if a.udp_encap else None
        ops: list = []
        if child.policy_id is not None and child.outbound:
            ops.append(MoveOutbound(child.policy_id, a.local[0], a.remote[0], encap))
        else:  # not sending on its own policy (yet): the SAs alone
            ops.append(Readdress(a.child_id, True, a.local[0], a.remote[0], encap))
        ops.append(Readdress(a.child_id, False, a.local[0], a.remote[0], encap))
        child.action = dataclasses.replace(child.action, local=a.local, remote=a.remote,
                                           udp_encap=a.udp_encap)
        return ops

    # -- timers ----------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        times = [c.retire_at for c in self.children.values() if c.retire_at is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list:
        ops: list = []
        for cid, c in list(self.children.items()):
            if c.retire_at is not None and c.retire_at <= now:
                ops += self.delete(cid)
        return ops

    # -- guards: fail closed (issue 8.6) ---------------------------------------------------

    def guard_kind(self, conn) -> str:
        """What happens to a connection's traffic while it has no SA: "trap" = held, the
        first packet starts a negotiation (strongSwan's trap, a Cisco crypto map); "drop" =
        dropped, no negotiation. Never: sent in clear."""
        if conn.manual is not None or str(conn.peer) in ("%any", "None") or conn.start == "none":
            return "drop"
        if conn.start == "trap":
            return "trap"  # also after vpnctl down: a trapped packet brings it back
        if conn.name in self.admin_down or conn.dpd.action == "clear":
            return "drop"  # down is final; dpd clear: no renegotiation, but no leak either
        return "trap"  # start: start with dpd restart/hold: traffic renegotiates

    def guard_ts(self, conn):
        lts, rts = networks(conn.local_ts), networks(conn.remote_ts)
        if conn.mode == "transport":
            peer = str(conn.peer)
            local = str(conn.local) if conn.local else None
            if not local and not lts and self.routes and self.source_towards is not None \
                    and peer not in ("%any", "None"):
                local = self.source_towards(peer)  # as the steering rule does
            lts = lts or ((ipaddress.ip_network(local),) if local else ())  # /32 or /128
            if not rts and peer not in ("%any", "None"):
                rts = (ipaddress.ip_network(peer, strict=False),)
        return lts, rts

    def restore_guard(self, name: str) -> list:
        """(Re)install the guard policy of `name` as the last policy: packets no child SA of
        it covers are trapped (acquire events) or dropped, never sent in clear."""
        ops: list = [RemoveOutbound(("trap", name)), RemoveOutbound(("drop", name))]
        conn = self.conn(name)
        if conn is None:
            self.guards.pop(name, None)
            return ops
        kind = self.guard_kind(conn)
        lts, rts = self.guard_ts(conn)
        self.guards[name] = kind
        if lts and rts:
            ops.append(AddTrap(("trap", name), lts, rts) if kind == "trap"
                       else AddBlock(("drop", name), lts, rts))
        return ops

    def sync_guards(self) -> list:
        """Every configured connection's guard; those of removed connections go."""
        ops: list = []
        for name in set(self.guards) - set(self._conns):
            ops += self.restore_guard(name)
        for name in self._conns:
            ops += self.restore_guard(name)
        return ops

    def set_admin_down(self, name: str, down: bool) -> list:
        if (name in self.admin_down) == down:
            return []
        if down:
            self.admin_down.add(name)
        else:
            self.admin_down.discard(name)
        if name in self.guards:
            return self.restore_guard(name)  # down is final: its trap (if any) may become a drop
        return []

    # -- acquires --------------------------------------------------------------------------

    def acquire(self, name: str, packet: bytes, now: float) -> bool:
        """A packet hit the trap of `name`: kept until an SA can send it. True: ask the IKE
        core to negotiate now (first packet, or the last ask is older than ACQUIRE_RETRY,
        or it failed)."""
        entry = self.acquire_q.get(name)
        if entry is None or now - entry[1] > ACQUIRE_RETRY:
            q = entry[0] if entry is not None else deque(maxlen=ACQUIRE_QUEUE)
            q.append(packet)
            self.acquire_q[name] = (q, now)
            return True
        entry[0].append(packet)
        return False

    def forget_acquire(self, name: str) -> None:
        """The negotiation failed: the next packet starts anew."""
        self.acquire_q.pop(name, None)

    def _flush(self, name: str) -> list:
        queued = self.acquire_q.pop(name, None)
        return [SendQueued(name, tuple(queued[0]))] if queued and queued[0] else []

    # -- queries ---------------------------------------------------------------------------

    def of(self, name: str) -> list:
        return [c for c in self.children.values() if c.connection == name]

    def sending(self, name: str) -> int:
        """How many SAs of `name` can send."""
        return sum(1 for c in self.children.values() if c.connection == name and c.outbound)

    def live(self) -> list:
        """Children not retiring (a retiring one only still receives)."""
        return [c for c in self.children.values() if c.retire_at is None]
