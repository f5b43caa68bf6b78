"""The daemon's wire: UDP for IKE and ESP-in-UDP, raw sockets for ESP/AH, IPv4 and IPv6.

- UDP listen:ike_port carries IKE only.
- UDP listen:natt_port carries IKE, NAT keepalives and ESP, told apart by the first bytes
  (RFC 3948 section 2.2-2.3, esp.classify_udp4500): 4 zero bytes (the non-ESP marker) = IKE,
  a single 0xff byte = NAT keepalive, else ESP whose first 4 bytes are its non-zero SPI.
- Raw sockets for IP protocols 50 (ESP) and 51 (AH) receive whole IPv4 packets (the
  engine needs the outer header for AH's ICV and for the peer's address). A raw IPv6
  socket hands over the payload only: its header is rebuilt here from the source, the
  destination (IPV6_PKTINFO) and the traffic class (IPV6_TCLASS, for ECN), so that the
  data plane sees an IPv6 packet as it sees an IPv4 one.
- One IPPROTO_RAW socket per family (IP_HDRINCL / IPV6_HDRINCL implied) sends the full
  packets the engine builds.

`listen` (daemon.listen): `%any` = both families on their wildcards (strongSwan's default),
`0.0.0.0` = every IPv4 address only, `::` = every IPv6 address only, else that address.
The IPv6 sockets are IPV6_V6ONLY: IPv4 never arrives as a mapped address.

All sockets are non-blocking; receive functions read bursts until EAGAIN.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from vpnd.esp.ipv6 import header6
from vpnd.esp.natt import NON_ESP_MARKER
from vpnd.ike.actions import NAT_KEEPALIVE
from vpnd.net.routes import SOCKET_MARK

IPPROTO_ESP = 50
IPPROTO_AH = 51
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPV6_RECVTCLASS = getattr(socket, "IPV6_RECVTCLASS", 66)
IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
SOL_UDP = 17
UDP_SEGMENT = 103

SO_MARK = getattr(socket, "SO_MARK", 36)
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
BUFFER_SIZE = 4 << 20

RECV_SIZE = 65535
MAX_BURST = 64
ANY = "%any"


def listen_addresses(listen: str) -> list[tuple[int, str]]:
    """[(family, bind address)] that daemon.listen stands for (see the module docstring)."""
    if listen in (ANY, ""):
        return [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    if ipaddress.ip_address(listen).version == 6:
        return [(socket.AF_INET6, listen)]
    return [(socket.AF_INET, listen)]


def family_of(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _wildcard(addr: str) -> bool:
    return addr in ("0.0.0.0", "::")


class SocketError(Exception):
    """A socket could not be opened (message is for humans)."""


def _buffer(s: socket.socket, force_opt: int, opt: int, size: int = BUFFER_SIZE) -> None:
    """A socket buffer of `size`: beyond net.core.[rw]mem_max with CAP_NET_ADMIN, else capped."""
    try:
        s.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, opt, size)


def _udp_socket(family: int, addr: str, port: int, what: str) -> socket.socket:
    shown = f"[{addr}]:{port}" if family == socket.AF_INET6 else f"{addr}:{port}"
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        s.setblocking(False)
        s.bind((addr, port))
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise SocketError(f"cannot listen on {shown} ({what}): address already in use") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise SocketError(f"cannot listen on {shown} ({what}): permission denied") from None
        raise SocketError(f"cannot listen on {shown} ({what}): {e.strerror}") from None
    return s


def _raw_socket(family: int, proto: int, bind_addr: str | None, what: str) -> socket.socket:
    try:
        s = socket.socket(family, socket.SOCK_RAW, proto)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise SocketError(f"cannot open raw {what} socket: permission denied (needs CAP_NET_RAW)") from None
        raise SocketError(f"cannot open raw {what} socket: {e.strerror}") from None
    try:
        s.setblocking(False)
        if family == socket.AF_INET6 and proto != socket.IPPROTO_RAW:
            # the header a raw IPv6 socket strips: its destination and traffic class
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
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
    """The destination address of a received datagram, from its IP_PKTINFO/IPV6_PKTINFO."""
    for level, ctype, cdata in ancdata:
        if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
            return socket.inet_ntoa(cdata[8:12])  # ipi_addr: the header's destination
        if level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO and len(cdata) >= 16:
            return socket.inet_ntop(socket.AF_INET6, cdata[:16])  # ipi6_addr
    return default


class WireSockets:
    """UDP 500/4500, raw ESP/AH receive, raw send, per address family of `listen`.
    close() releases everything.

    `ike`/`natt`/`esp_raw`/`ah_raw` are the first family's sockets (IPv4 unless listen is
    IPv6); udp_sockets() and raw_sockets() list those of every family."""

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
        self.binds = listen_addresses(listen)       # [(family, address)]
        self.families = [f for f, _ in self.binds]
        self._all: list[socket.socket] = []
        self.by_port: dict = {}       # port -> socket of the first family (what IKE sends on)
        self._udp: dict = {}          # (family, port) -> socket
        self._raw_in: list = []       # [(socket, protocol)]
        self._send_raw: dict = {}     # family -> IPPROTO_RAW socket
        self.send_errors = 0
        try:
            for family, addr in self.binds:
                bind = None if _wildcard(addr) else addr
                name = "IPv6 " if family == socket.AF_INET6 else ""
                for proto, what in ((IPPROTO_ESP, "ESP"), (IPPROTO_AH, "AH")):
                    s = self._keep(_raw_socket(family, proto, bind, name + what))
                    # room for bursts on the data path (IPPROTO_RAW only sends on Linux)
                    _buffer(s, SO_RCVBUFFORCE, socket.SO_RCVBUF)
                    self._raw_in.append((s, proto))
                out = self._keep(_raw_socket(family, socket.IPPROTO_RAW, None,
                                             "IPv6 send" if name else "IPv4 send"))
                _buffer(out, SO_SNDBUFFORCE, socket.SO_SNDBUF)
                _mark(out)
                self._send_raw[family] = out
            first = self.families[0]
            self.esp_raw = next(s for s, p in self._raw_in if p == IPPROTO_ESP and s.family == first)
            self.ah_raw = next(s for s, p in self._raw_in if p == IPPROTO_AH and s.family == first)
            self.send_raw = self._send_raw[first]
            self.open_udp(ike=ike, natt=natt)
        except BaseException:
            self.close()
            raise

    @property
    def ike(self) -> socket.socket | None:
        return self._udp.get((self.families[0], self.ike_port)) if self._udp else None

    @property
    def natt(self) -> socket.socket | None:
        return self._udp.get((self.families[0], self.natt_port)) if self._udp else None

    def open_udp(self, *, ike: bool, natt: bool) -> None:
        """Open or close UDP ike_port and natt_port (every family); SocketError when a port
        cannot be bound (what was open stays open)."""
        for family, addr in self.binds:
            for port, want, what in ((self.natt_port, natt, "NAT-T"), (self.ike_port, ike, "IKE")):
                key = (family, port)
                if want and key not in self._udp:
                    s = self._keep(_udp_socket(family, addr, port, what))
                    # a hub's rekey storm or a flood arrives in bursts: a full queue drops the
                    # configured peers' messages with the attackers' (default ~200 KiB)
                    _buffer(s, SO_RCVBUFFORCE, socket.SO_RCVBUF)
                    if port == self.natt_port:
                        _buffer(s, SO_SNDBUFFORCE, socket.SO_SNDBUF)
                    _mark(s)
                    self._udp[key] = s
                elif not want and key in self._udp:
                    self._drop(self._udp.pop(key))
        self.by_port = {p: s for (f, p), s in self._udp.items() if f == self.families[0]}

    def _drop(self, s: socket.socket) -> None:
        if s in self._all:
            self._all.remove(s)
        s.close()

    def udp_ports(self) -> list[int]:
        return sorted({p for _, p in self._udp})

    def udp_sockets(self) -> list[tuple[socket.socket, str]]:
        """[(socket, "ike" | "natt")] of every family, open now."""
        return [(s, "natt" if p == self.natt_port else "ike") for (_, p), s in self._udp.items()]

    def raw_sockets(self) -> list[tuple[socket.socket, int]]:
        """[(socket, IP protocol)] receiving ESP and AH, every family."""
        return list(self._raw_in)

    def _keep(self, s: socket.socket) -> socket.socket:
        self._all.append(s)
        return s

    def close(self) -> None:
        for s in self._all:
            s.close()
        self._all.clear()
        self._udp = {}
        self._raw_in = []
        self._send_raw = {}
        self.by_port = {}

    # -- receive -------------------------------------------------------------------------

    def recv_udp(self, sock: socket.socket, limit: int = MAX_BURST):
        """[(data, (src_ip, src_port), ancdata)] until EAGAIN or `limit`; local_address()
        reads the local address from ancdata (only IKE needs it: ESP skips the parse)."""
        out = []
        v6 = sock.family == socket.AF_INET6
        try:
            for _ in range(limit):
                data, anc, _flags, addr = sock.recvmsg(RECV_SIZE, 64)
                out.append((data, addr[:2] if v6 else addr, anc))
        except BlockingIOError:
            pass
        except OSError:  # ICMP errors surface here as ECONNREFUSED and similar: not fatal
            pass
        return out

    @staticmethod
    def recv_raw(sock: socket.socket, limit: int = MAX_BURST):
        """[(ip_packet, src_ip)] until EAGAIN or `limit`; IPv6 packets get their header
        rebuilt (module docstring)."""
        if sock.family == socket.AF_INET6:
            return _recv_raw6(sock, limit)
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

    def send_ip(self, dst: str, packet: bytes) -> None:
        """A whole IPv4 or IPv6 packet (the data plane's "raw" output) to `dst`."""
        try:
            self._send_raw[family_of(dst)].sendto(packet, (dst, 0))
        except (OSError, KeyError):  # KeyError: that family is not listened on
            self.send_errors += 1

    def _udp_for(self, family: int, port: int) -> socket.socket | None:
        return self._udp.get((family, port))

    def _pktinfo(self, family: int, src_ip: str | None) -> list:
        """IP_PKTINFO / IPV6_PKTINFO choosing the source address, needed only when bound to
        the wildcard."""
        if not src_ip or _wildcard(src_ip):
            return []
        bound = next((a for f, a in self.binds if f == family), None)
        if bound is None or not _wildcard(bound):
            return []
        try:
            if family == socket.AF_INET6:
                return [(socket.IPPROTO_IPV6, IPV6_PKTINFO,
                         struct.pack("=16sI", socket.inet_pton(socket.AF_INET6, src_ip), 0))]
            return [(socket.IPPROTO_IP, IP_PKTINFO,
                     struct.pack("=I4s4s", 0, socket.inet_aton(src_ip), b"\x00" * 4))]
        except OSError:  # an address of the other family: let the kernel choose
            return []

    def send_esp_udp(self, addr, data: bytes, src_ip: str | None = None) -> None:
        family = family_of(addr[0])
        sock = self._udp_for(family, self.natt_port)
        if sock is None:
            self.send_errors += 1
            return
        try:
            if src_ip:
                sock.sendmsg([data], self._pktinfo(family, src_ip), 0, addr)
            else:
                sock.sendto(data, addr)
        except OSError:
            self.send_errors += 1

    def send_esp_udp_run(self, addr, datagrams: list[bytes], src_ip: str | None = None) -> None:
        """Send ESP-in-UDP datagrams to one peer; equal-size runs go out with one
        UDP_SEGMENT sendmsg (all but the last must have the segment's size; the kernel
        splits them into datagrams)."""
        family = family_of(addr[0])
        sock = self._udp_for(family, self.natt_port)
        if len(datagrams) == 1 or not self.gso or sock is None:
            for d in datagrams:
                self.send_esp_udp(addr, d, src_ip)
            return
        size = len(datagrams[0])
        anc = self._pktinfo(family, src_ip)
        anc.append((SOL_UDP, UDP_SEGMENT, struct.pack("=H", size)))
        try:
            sock.sendmsg([b"".join(datagrams)], anc, 0, addr)
        except OSError:
            for d in datagrams:
                self.send_esp_udp(addr, d, src_ip)

    def send_ike(self, data: bytes, local, remote) -> None:
        """Send an IKE message from local=(ip, port) to remote; on the NAT-T port with marker."""
        family = family_of(remote[0])
        sock = self._udp_for(family, local[1]) or self._udp_for(family, self.ike_port) \
            or self._udp_for(family, self.natt_port)
        if sock is None:  # no IKE configured, or not on this family: no socket to send from
            self.send_errors += 1
            return
        natt = sock is self._udp.get((family, self.natt_port))
        if natt and data != NAT_KEEPALIVE:  # a NAT keepalive goes bare (RFC 3948 2.3)
            data = NON_ESP_MARKER + data
        try:
            sock.sendmsg([data], self._pktinfo(family, local[0]), 0, tuple(remote))
        except OSError:
            self.send_errors += 1

    def send_keepalive(self, remote) -> None:
        """NAT keepalive: one 0xff byte on the NAT-T port (RFC 3948 section 2.3)."""
        try:
            self._udp[(family_of(remote[0]), self.natt_port)].sendto(NAT_KEEPALIVE, tuple(remote))
        except (OSError, KeyError):  # KeyError: no NAT-T socket open
            self.send_errors += 1


def _recv_raw6(sock: socket.socket, limit: int):
    """A raw IPv6 socket's payloads with their IPv6 header rebuilt: source from the
    address, destination from IPV6_PKTINFO, traffic class from IPV6_TCLASS."""
    out = []
    proto = sock.proto
    inet_pton = socket.inet_pton
    try:
        for _ in range(limit):
            data, anc, _flags, addr = sock.recvmsg(RECV_SIZE, 128)
            dst = b""
            tclass = 0
            for level, ctype, cdata in anc:
                if level == socket.IPPROTO_IPV6:
                    if ctype == IPV6_PKTINFO and len(cdata) >= 16:
                        dst = cdata[:16]
                    elif ctype == IPV6_TCLASS and len(cdata) >= 4:
                        tclass = struct.unpack("=i", cdata[:4])[0]
            if len(dst) != 16 or len(data) > 0xFFFF:
                continue
            out.append((header6(inet_pton(socket.AF_INET6, addr[0]), dst, proto, len(data),
                                tclass) + data, addr[0]))
    except BlockingIOError:
        pass
    except OSError:
        pass
    return out
