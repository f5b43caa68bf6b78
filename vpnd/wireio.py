"""The daemon's I/O readers and hot path: the TUN device, the raw ESP/AH sockets and the UDP
sockets (IKE, NAT-T) as loop readers, packets moved in bursts (no task and no log line per
packet): TUN -> DataPlane.encap -> wire, wire -> DataPlane.decap -> TUN. IKE datagrams go to
the daemon (Daemon._ike_receive), data plane events to Daemon._drain_events."""

from __future__ import annotations


from vpnd import logfmt
from vpnd import addrsync
from vpnd.esp.natt import NON_ESP_MARKER, classify_udp4500
from vpnd.net.sockets import SocketError, local_address
from vpnd.net.tun import TunGone

log = logfmt.logger("net")


def _any_of(addr) -> str:
    """The wildcard of a peer address's family (a datagram without PKTINFO)."""
    return "::" if ":" in addr[0] else "0.0.0.0"


class WireIO:
    """Readers on the daemon's file descriptors (d: the Daemon, for its tun, wire, dp,
    loop and counters)."""

    def __init__(self, d):
        self.d = d
        self._udp_readers: dict = {}

    def attach(self):
        lp = self.d.loop
        lp.add_reader(self.d.tun.fileno(), self.on_tun)
        for sock, proto in self.d.wire.raw_sockets():  # ESP and AH, IPv4 and IPv6
            lp.add_reader(sock.fileno(), self.on_raw, sock, proto)
        if self.d.addrwatch is not None:
            lp.add_reader(self.d.addrwatch.fileno(), addrsync.on_addr_event, self.d)
        self.sync_udp_readers()

    def udp_needs(self, config=None) -> tuple[bool, bool]:
        """(UDP ike_port, UDP natt_port) needed: IKE only for IKE connections (Cisco's `no
        crypto isakmp enable` when all are manual); NAT-T also for manual `encap: true`."""
        conns = self.d._conns(config)
        ike = any(c.manual is None for c in conns)
        return ike, ike or any(c.manual is not None and c.encap for c in conns)

    def sync_udp_readers(self) -> None:
        """Readers on exactly the UDP sockets that are open now."""
        if self.d.loop is None or self.d.wire is None:
            return
        readers = self._udp_readers
        want = {}
        for sock, kind in self.d.wire.udp_sockets():  # every family
            want[sock.fileno()] = (self.on_natt if kind == "natt" else self.on_ike_socket, sock)
        for fd, cb in list(readers.items()):
            if want.get(fd) != cb:
                try:
                    self.d.loop.remove_reader(fd)
                except (ValueError, OSError):
                    pass
                del readers[fd]
        for fd, cb in want.items():
            if fd not in readers:
                self.d.loop.add_reader(fd, *cb)
                readers[fd] = cb
        self._udp_readers = readers

    def sync_udp(self, open_only: bool = False) -> None:
        """On a reload: open the IKE / NAT-T ports the new configuration needs (an IKE
        connection added to a manual-only one) before the IKE core sends, close those it
        no longer needs after the core's Deletes went out."""
        if self.d.wire is None:
            return
        ike, natt = self.udp_needs()
        if open_only:
            ike, natt = ike or self.d.wire.ike is not None, natt or self.d.wire.natt is not None
        before = self.d.wire.udp_ports()
        for sock, kind in self.d.wire.udp_sockets():  # readers off before their sockets close
            fd = sock.fileno()
            if fd in self._udp_readers and not (natt if kind == "natt" else ike):
                self.d.loop.remove_reader(fd)
                del self._udp_readers[fd]
        try:
            self.d.wire.open_udp(ike=ike, natt=natt)
        except SocketError as e:
            log.error("reload: %s", e)
        self.sync_udp_readers()
        if self.d.wire.udp_ports() != before:
            log.info("UDP ports now %s", ", ".join(map(str, self.d.wire.udp_ports())) or "none")

    def tun_gone(self, e: TunGone) -> None:
        """The TUN device was deleted under us: poll would report it readable for ever."""
        self.d.loop.remove_reader(self.d.tun.fileno())
        log.error("%s: stopping (a restart creates it again)", e)
        self.d.exit_code = 2  # not 1: systemd's Restart=on-failure brings vpnd back
        self.d.stop()

    def detach(self):
        if self.d.loop is None:
            return
        wire = self.d.wire
        socks = [s for s, _ in wire.raw_sockets() + wire.udp_sockets()] if wire is not None else []
        for obj in [self.d.tun, self.d.addrwatch, *socks]:
            if obj is not None:
                try:
                    self.d.loop.remove_reader(obj.fileno())
                except (ValueError, OSError):
                    pass

    # -- hot path ----------------------------------------------------------------------

    def on_tun(self):
        try:
            pkts = self.d.tun.read_burst()
            if not pkts:
                return
            self.d.counters["tun_in"] += len(pkts)
            self.d.dp.now = self.d.loop.time()
            self.send_outputs(self.d.dp.encap_many(pkts))
            if self.d.dp.events:
                self.d._drain_events()
        except TunGone as e:
            self.tun_gone(e)
        except Exception:  # nothing from outside reaches the event loop: the burst is dropped
            self.d._internal_error("error reading the TUN device (burst dropped)")

    def send_outputs(self, outs):
        """Carry out the data plane's results: runs of equal-size ESP-in-UDP datagrams to
        one peer leave in one UDP_SEGMENT send, raw packets one by one."""
        wire = self.d.wire
        send_ip = wire.send_ip
        run: list = []
        run_dst = run_src = None
        run_len = 0
        tun_out = 0
        for out in outs:
            kind = out[0]
            if kind == "raw":
                send_ip(out[1], out[2])
            elif kind == "udp":
                data = out[2]
                dst = out[1]
                src = out[3][0] if len(out) > 3 and out[3] else None
                if run:
                    if dst == run_dst and src == run_src and len(data) == run_len and len(run) < 32:
                        run.append(data)
                        continue
                    wire.send_esp_udp_run(run_dst, run, run_src)
                run = [data]
                run_dst, run_src, run_len = dst, src, len(data)
            elif kind == "tun":
                self.d.tun.write(out[1])
                tun_out += 1
        if run:
            wire.send_esp_udp_run(run_dst, run, run_src)
        self.d.counters["wire_out"] += len(outs) - tun_out
        if tun_out:
            self.d.counters["tun_out"] += tun_out

    def on_raw(self, sock, proto):
        try:
            pkts = self.d.wire.recv_raw(sock)
            if not pkts:
                return
            self.d.counters["wire_in"] += len(pkts)
            self.d.dp.now = self.d.loop.time()
            decap = self.d.dp.decap
            inners = []
            for data, src in pkts:
                inner = decap(data, proto, src, 0)  # never raises: drops are counted
                if inner is not None:
                    inners.append(inner)
            self.d.tun.write_many(inners)  # TCP runs coalesced (GRO, esp/offload.py)
            delivered = len(inners)
            self.d.counters["tun_out"] += delivered
            self.d.counters["decap_drops"] += len(pkts) - delivered
            if self.d.dp.events:
                self.d._drain_events()
        except Exception:  # nothing from outside reaches the event loop: the burst is dropped
            self.d._internal_error("error reading a raw socket (burst dropped)")

    def on_natt(self, sock=None):
        try:
            items = self.d.wire.recv_udp(sock or self.d.wire.natt)
            if not items:
                return
            self.d.dp.now = self.d.loop.time()
            decap = self.d.dp.decap
            inners = []
            append = inners.append
            esp_in = 0
            counters = self.d.counters
            for data, addr, anc in items:
                # ESP (RFC 3948 2.2: a non-zero SPI where IKE has its marker, 8 bytes at
                # least) is the common case: decided without a call; the rest by
                # classify_udp4500
                if len(data) >= 8 and data[:4] != NON_ESP_MARKER:
                    esp_in += 1
                    inner = decap(data, 17, addr[0], addr[1])
                    if inner is not None:
                        append(inner)
                    continue
                kind = classify_udp4500(data)
                if kind == "ike":
                    port = self.d.wire.natt_port
                    self.d._ike_receive(data[4:], (local_address(anc, _any_of(addr)), port), addr)
                elif kind == "keepalive":
                    counters["keepalives_in"] += 1
                else:  # "bad": what is left of "esp" was decided above
                    counters["natt_invalid"] += 1
            if esp_in:
                delivered = len(inners)
                counters["wire_in"] += esp_in
                counters["tun_out"] += delivered
                counters["decap_drops"] += esp_in - delivered
            self.d.tun.write_many(inners)
            if self.d.dp.events:
                self.d._drain_events()
        except Exception:  # nothing from outside reaches the event loop: the burst is dropped
            self.d._internal_error("error reading the NAT-T socket (burst dropped)")

    def on_ike_socket(self, sock=None):
        try:
            port = self.d.wire.ike_port
            for data, addr, anc in self.d.wire.recv_udp(sock or self.d.wire.ike, 16):
                self.d._ike_receive(data, (local_address(anc, _any_of(addr)), port), addr)
        except Exception:  # nothing from outside reaches the event loop: the burst is dropped
            self.d._internal_error("error reading the IKE socket (burst dropped)")
