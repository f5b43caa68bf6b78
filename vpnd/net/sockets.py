"""The daemon's wire: UDP for IKE and ESP-in-UDP, raw sockets for ESP/AH.

- UDP listen:ike_port carries IKE only.
- UDP listen:natt_port carries IKE, NAT keepalives and ESP, told apart by the first bytes
  (RFC 3948 section 2.2-2.3, esp.classify_udp4500): 4 zero bytes (the non-ESP marker) = IKE,
  a single 0xff byte = NAT keepalive, else ESP whose first 4 bytes are its non-zero SPI.
- Raw sockets for IP protocols 50 (ESP) and 51 (AH) receive whole IPv4 packets (the
  engine needs the outer header for AH's ICV and for the peer's address).
- One IPPROTO_RAW socket (IP_HDRINCL implied) sends the full IPv4 packets the engine builds.

All sockets are non-blocking; receive functions read bursts until EAGAIN.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from vpnd.esp.natt import NON_ESP_MARKER
from vpnd.ike.actions import NAT_KEEPALIVE
from vpnd.net.routes import SOCKET_MARK

IPPROTO_ESP = 50
IPPROTO_AH = 51
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SOL_UDP = 17
UDP_SEGMENT = 103

SO_MARK = getattr(socket, "SO_MARK", 36)
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
BUFFER_SIZE = 4 << 20

RECV_SIZE = 65535
MAX_BURST = 64



class SocketError(Exception):
    """A socket could not be opened (message is for humans)."""


def _buffer(s: socket.socket, force_opt: int, opt: int, size: int = BUFFER_SIZE) -> None:
    """A socket buffer of `size`: beyond net.core.[rw]mem_max with CAP_NET_ADMIN, else capped."""
    try:
        s.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, opt, size)


def _udp_socket(addr: str, port: int, what: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        s.setblocking(False)
        s.bind((addr, port))
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise SocketError(f"cannot listen on {addr}:{port} ({what}): address already in use") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise SocketError(f"cannot listen on {addr}:{port} ({what}): permission denied") from None
        raise SocketError(f"cannot listen on {addr}:{port} ({what}): {e.strerror}") from None
    return s


def _raw_socket(proto: int, bind_addr: str | None, what: str) -> socket.socket:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise SocketError(f"cannot open raw {what} socket: permission denied (needs CAP_NET_RAW)") from None
        raise SocketError(f"cannot open raw {what} socket: {e.strerror}") from None
    try:
        s.setblocking(False)
        if bind_addr:
            s.bind((bind_addr, 0))
    except OSError as e:
        s.close()
        raise SocketError(f"cannot bind raw {what} socket to {bind_addr}: {e.strerror}") from None
    return s


def _mark(s: socket.socket) -> None:
    """Our own packets skip the transport-mode steering rule (net/routes.py)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, SOCKET_MARK)
    except OSError:
        pass  # without CAP_NET_ADMIN; transport mode steering then cannot be used


def local_address(ancdata, default: str) -> str:
    """The destination address of a received datagram, from its IP_PKTINFO."""
    for level, ctype, cdata in ancdata:
        if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
            return socket.inet_ntoa(cdata[8:12])  # ipi_addr: the header's destination
    return default


class WireSockets:
    """UDP 500/4500, raw ESP/AH receive, raw IPv4 send. close() releases everything."""

    # UDP_SEGMENT for runs of ESP-in-UDP datagrams; VPND_NO_GSO=1 turns it off (to measure)
    gso = os.environ.get("VPND_NO_GSO") != "1"

    def __init__(self, listen: str, ike_port: int, natt_port: int, *, ike: bool = True,
                 natt: bool = True):
        """ike/natt: whether UDP ike_port / natt_port are opened now (Cisco's `no crypto
        isakmp enable`: a manual-keying-only configuration opens no IKE port; the NAT-T port
        only if a manual connection sends ESP in UDP). open_udp() changes it later."""
        self.listen = listen
        self.ike_port = ike_port
        self.natt_port = natt_port
        self._all: list[socket.socket] = []
        self.ike: socket.socket | None = None
        self.natt: socket.socket | None = None
        self.by_port: dict = {}
        self.send_errors = 0
        try:
            bind = None if listen in ("0.0.0.0", "") else listen
            self.esp_raw = self._keep(_raw_socket(IPPROTO_ESP, bind, "ESP"))
            self.ah_raw = self._keep(_raw_socket(IPPROTO_AH, bind, "AH"))
            self.send_raw = self._keep(_raw_socket(socket.IPPROTO_RAW, None, "IPv4 send"))
            # room for bursts on the data path (IPPROTO_RAW only sends on Linux)
            for s in (self.esp_raw, self.ah_raw):
                _buffer(s, SO_RCVBUFFORCE, socket.SO_RCVBUF)
            _buffer(self.send_raw, SO_SNDBUFFORCE, socket.SO_SNDBUF)
            _mark(self.send_raw)
            self.open_udp(ike=ike, natt=natt)
        except BaseException:
            self.close()
            raise

    def open_udp(self, *, ike: bool, natt: bool) -> None:
        """Open or close UDP ike_port and natt_port; SocketError when a port cannot be bound
        (what was open stays open)."""
        if natt and self.natt is None:
            s = self._keep(_udp_socket(self.listen, self.natt_port, "NAT-T"))
            _buffer(s, SO_RCVBUFFORCE, socket.SO_RCVBUF)
            _buffer(s, SO_SNDBUFFORCE, socket.SO_SNDBUF)
            _mark(s)
            self.natt = s
        if ike and self.ike is None:
            s = self._keep(_udp_socket(self.listen, self.ike_port, "IKE"))
            # a hub's rekey storm or a flood arrives in bursts: a full queue drops the
            # configured peers' messages with the attackers' (default ~200 KiB: ~200 messages)
            _buffer(s, SO_RCVBUFFORCE, socket.SO_RCVBUF)
            _mark(s)
            self.ike = s
        if not ike and self.ike is not None:
            self._drop(self.ike)
            self.ike = None
        if not natt and self.natt is not None:
            self._drop(self.natt)
            self.natt = None
        self.by_port = {p: s for p, s in ((self.ike_port, self.ike), (self.natt_port, self.natt))
                        if s is not None}

    def _drop(self, s: socket.socket) -> None:
        if s in self._all:
            self._all.remove(s)
        s.close()

    def udp_ports(self) -> list[int]:
        return sorted(self.by_port)

    def _keep(self, s: socket.socket) -> socket.socket:
        self._all.append(s)
        return s

    def close(self) -> None:
        for s in self._all:
            s.close()
        self._all.clear()
        self.ike = self.natt = None
        self.by_port = {}

    # -- receive -------------------------------------------------------------------------

    def recv_udp(self, sock: socket.socket, limit: int = MAX_BURST):
        """[(data, (src_ip, src_port), ancdata)] until EAGAIN or `limit`; local_address()
        reads the local address from ancdata (only IKE needs it: ESP skips the parse)."""
        out = []
        try:
            for _ in range(limit):
                data, anc, _flags, addr = sock.recvmsg(RECV_SIZE, 64)
                out.append((data, addr, anc))
        except BlockingIOError:
            pass
        except OSError:  # ICMP errors surface here as ECONNREFUSED and similar: not fatal
            pass
        return out

    @staticmethod
    def recv_raw(sock: socket.socket, limit: int = MAX_BURST):
        """[(ipv4_packet, src_ip)] until EAGAIN or `limit`."""
        out = []
        try:
            for _ in range(limit):
                data, addr = sock.recvfrom(RECV_SIZE)
                out.append((data, addr[0]))
        except BlockingIOError:
            pass
        except OSError:
            pass
        return out

    # -- send ----------------------------------------------------------------------------

    def send_ipv4(self, dst: str, packet: bytes) -> None:
        try:
            self.send_raw.sendto(packet, (dst, 0))
        except OSError:
            self.send_errors += 1

    def _pktinfo(self, src_ip: str | None) -> list:
        """IP_PKTINFO choosing the source address, needed only when bound to the wildcard."""
        if not src_ip or src_ip == "0.0.0.0" or self.listen not in ("0.0.0.0", ""):
            return []
        return [(socket.IPPROTO_IP, IP_PKTINFO,
                 struct.pack("=I4s4s", 0, socket.inet_aton(src_ip), b"\x00" * 4))]

    def send_esp_udp(self, addr, data: bytes, src_ip: str | None = None) -> None:
        if self.natt is None:
            self.send_errors += 1
            return
        try:
            if src_ip:
                self.natt.sendmsg([data], self._pktinfo(src_ip), 0, addr)
            else:
                self.natt.sendto(data, addr)
        except OSError:
            self.send_errors += 1

    def send_esp_udp_run(self, addr, datagrams: list[bytes], src_ip: str | None = None) -> None:
        """Send ESP-in-UDP datagrams to one peer; equal-size runs go out with one
        UDP_SEGMENT sendmsg (all but the last must have the segment's size; the kernel
        splits them into datagrams)."""
        if len(datagrams) == 1 or not self.gso or self.natt is None:
            for d in datagrams:
                self.send_esp_udp(addr, d, src_ip)
            return
        size = len(datagrams[0])
        anc = self._pktinfo(src_ip)
        anc.append((SOL_UDP, UDP_SEGMENT, struct.pack("=H", size)))
        try:
            self.natt.sendmsg([b"".join(datagrams)], anc, 0, addr)
        except OSError:
            for d in datagrams:
                self.send_esp_udp(addr, d, src_ip)

    def send_ike(self, data: bytes, local, remote) -> None:
        """Send an IKE message from local=(ip, port) to remote; on the NAT-T port with marker."""
        sock = self.by_port.get(local[1]) or self.ike or self.natt
        if sock is None:  # no IKE configured: no socket to send from
            self.send_errors += 1
            return
        if sock is self.natt and data != NAT_KEEPALIVE:  # a NAT keepalive goes bare (RFC 3948 2.3)
            data = NON_ESP_MARKER + data
        try:
            sock.sendmsg([data], self._pktinfo(local[0]), 0, tuple(remote))
        except OSError:
            self.send_errors += 1

    def send_keepalive(self, remote) -> None:
        """NAT keepalive: one 0xff byte on the NAT-T port (RFC 3948 section 2.3)."""
        try:
            self.natt.sendto(NAT_KEEPALIVE, tuple(remote))
        except (OSError, AttributeError):  # AttributeError: no NAT-T socket open
            self.send_errors += 1
