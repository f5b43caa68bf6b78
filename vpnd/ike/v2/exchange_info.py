"""INFORMATIONAL (RFC 7296 1.4): Delete payloads both ways (1.4.1, simultaneous deletes),
liveness checks (2.4) and the INVALID_SPI notify (2.21.3)."""

from __future__ import annotations

import struct

from vpnd.ike import liveness
from vpnd.ike.addresses import WILDCARDS
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2 import mobike
from vpnd.ike.v2.payloads import Delete, Notify
from vpnd.ike.v2.sa import ChildSa, IkeSa



class DeleteChildTask:
    exchange = c.INFORMATIONAL

    def __init__(self, child: ChildSa):
        self.child = child

    def ready(self, e, sa: IkeSa) -> bool:
        return self.child.child_id in sa.children

    def build(self, e, sa: IkeSa, now: float) -> list:
        self.child.state = "DELETING"
        return [Delete(c.PROTO_IDS[self.child.protocol], [struct.pack("!I", self.child.spi_in)])]

    def on_response(self, e, sa: IkeSa, payloads: list, now: float) -> None:
        e.remove_child(sa, self.child, "deleted", now)


class DeleteSpiTask:
    """Delete of a CHILD_SA already removed here (its connection went down while the IKE SA
    stays for other connections): the answer changes nothing."""

    exchange = c.INFORMATIONAL

    def __init__(self, protocol: str, spi_in: int):
        self.protocol, self.spi_in = protocol, spi_in

    def ready(self, e, sa: IkeSa) -> bool:
        return sa.state == "ESTABLISHED"

    def build(self, e, sa: IkeSa, now: float) -> list:
        return [Delete(c.PROTO_IDS[self.protocol], [struct.pack("!I", self.spi_in)])]

    def on_response(self, e, sa: IkeSa, payloads: list, now: float) -> None:
        pass


class DeleteIkeTask:
    exchange = c.INFORMATIONAL

    def ready(self, e, sa: IkeSa) -> bool:
        return True

    def build(self, e, sa: IkeSa, now: float) -> list:
        return [Delete(c.PROTO_IKE)]

    def timeouts(self, e, sa: IkeSa) -> list[float]:
        return [2.0, 4.0]  # do not hold a dying SA long

    def on_response(self, e, sa: IkeSa, payloads: list, now: float) -> None:
        e.kill_ike(sa, now, "rekeyed" if sa.rekeyed_to else "deleted")


class DpdTask:
    """An empty INFORMATIONAL request: the peer must answer (2.4)."""

    exchange = c.INFORMATIONAL

    def ready(self, e, sa: IkeSa) -> bool:
        return sa.state == "ESTABLISHED"

    def build(self, e, sa: IkeSa, now: float) -> list:
        return []

    def timeouts(self, e, sa: IkeSa) -> list[float]:
        """The probe retransmitted every `retry` s, 5 times (vpnd/ike/liveness.py)."""
        return liveness.dpd_probe_timeouts(sa.conn.dpd)

    def on_response(self, e, sa: IkeSa, payloads: list, now: float) -> None:
        pass


class InvalidSpiTask:
    exchange = c.INFORMATIONAL

    def __init__(self, spi: int):
        self.spi = spi

    def ready(self, e, sa: IkeSa) -> bool:
        return sa.state == "ESTABLISHED"

    def build(self, e, sa: IkeSa, now: float) -> list:
        return [Notify(c.N_INVALID_SPI, struct.pack("!I", self.spi), c.PROTO_ESP)]

    def on_response(self, e, sa: IkeSa, payloads: list, now: float) -> None:
        pass


def responder(e, sa: IkeSa, h, payloads: list, now: float) -> None:
    mid = h.message_id
    local, remote = sa.request_path or (sa.local, sa.remote)
    # RFC 4555: COOKIE2 and NAT_DETECTION_* echoed, UPDATE_SA_ADDRESSES moves the SA
    extra = mobike.on_request(e, sa, payloads, local, remote, now)
    # answered where the request came from (a path check of the peer's, 3.7)
    path = None if (local[0] in WILDCARDS or (tuple(local), tuple(remote)) == (sa.local, sa.remote)) \
        else (tuple(local), tuple(remote))
    deletes = [p for p in payloads if isinstance(p, Delete)]
    if any(d.protocol == c.PROTO_IKE for d in deletes):
        e.respond(sa, c.INFORMATIONAL, mid, extra, now, path)
        col = sa.ike_collision
        if col is not None and col["sa"].ike_id in e.sas and sa.rekeyed_to is None:
            # the peer completed its rekey of this SA while ours was stuck: its SA wins (2.8.2)
            sa.rekeyed_to = col["sa"].ike_id
            e.event("ike_rekeyed", sa.conn.name, f"IKE_SA {sa.conn.name}[{sa.ike_id}] rekeyed to "
                                                 f"[{col['sa'].ike_id}] by the peer")
        if sa.state == "REKEYED" or sa.rekeyed_to is not None:
            e.kill_ike(sa, now, "rekeyed")
        else:
            e.event("ike_deleted", sa.conn.name, f"peer deleted IKE_SA {sa.conn.name}[{sa.ike_id}]")
            e.kill_ike(sa, now, "deleted by peer")
        return
    answer: list = []
    for d in deletes:
        ours = []
        for raw in d.spis:
            child = e.find_child_by_out(sa, struct.unpack("!I", raw)[0])
            if child is None:
                continue
            if child.state != "DELETING":
                ours.append(struct.pack("!I", child.spi_in))  # 1.4.1: answer with our half
            e.remove_child(sa, child, "deleted by peer", now)
        if ours:
            answer.append(Delete(d.protocol, ours))
    for n in payloads:
        if isinstance(n, Notify) and n.type == c.N_INVALID_SPI and len(n.data) == 4:
            spi = struct.unpack("!I", n.data)[0]
            child = e.find_child_by_out(sa, spi)
            if child is not None:
                # the peer lost this SA (e.g. restarted its data plane): replace it
                e.event("invalid_spi", sa.conn.name, f"peer reports SPI {spi:08x} invalid; re-creating the CHILD_SA")
                conn = e.child_conn(sa, child)
                e.remove_child(sa, child, "peer reported INVALID_SPI")
                e.recreate_child(sa, conn)
    e.respond(sa, c.INFORMATIONAL, mid, answer + extra, now, path)
