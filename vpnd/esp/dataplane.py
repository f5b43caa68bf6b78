"""The data plane: SPD + SAD + ESP/AH encapsulation, no I/O, no clock, no logging.

    dp = DataPlane(outer_mtu=1500, mss_clamp=None)
    dp.now = loop.time()          # set by the caller before a burst (last-used stamps)
    dp.add_inbound(sa)  /  dp.add_inbound([esp_sa, ah_sa], local_ts=..., remote_ts=...)
    dp.add_outbound(policy_id, local_ts, remote_ts, [esp_sa] | [esp_sa, ah_sa] | [ah_sa] | [])
    dp.encap(ip_packet)  -> Out | None
    dp.decap(data, proto, src, sport) -> inner packet | None

Out is one of
    ("raw", dst_ip, ip_packet)            send with IP_HDRINCL / IPV6_HDRINCL (the outer
                                          header is IPv4 or IPv6, as the SA's addresses)
    ("udp", (dst_ip, dst_port), esp, (src_ip, src_port))
                                          ESP in UDP (RFC 3948), send on the NAT-T socket
                                          from the SA's local address (IP_PKTINFO)
    ("tun", icmp_packet)                  write back into the TUN (too big, RFC 1191/4443);
                                          sent from icmp_source / icmp6_source if set, else
                                          from the oversized packet's destination address
    ("many", [Out, ...])                  a non-DF packet pre-fragmented (RFC 4459 5.1)

decap `proto` is 50 or 51 for raw sockets (`data` is the whole IPv4 packet as the raw
socket returns it, or an IPv6 packet whose header net/sockets.py rebuilt) or 17 for ESP-in-UDP (`data` is the ESP packet after the marker check,
see natt.classify_udp4500).

Events (dp.events, a deque the caller drains):
    ("soft_expire", sa) ("hard_expire", sa)       lifetime in bytes/packets, seq exhaustion
    ("unknown_spi", protocol, spi, src)           at most once per second per (proto, spi, src)
    ("acquire", policy_id, packet)                packet matched a policy without SAs (trap)
"""

from __future__ import annotations

import collections
import ipaddress
import struct

from vpnd.esp.ah import AH_HDR, ah_length, zero_mutable
from vpnd.esp.ipv4 import (
    DF, IPV4_HDR, OUTER_TTL, PROTO_AH, PROTO_ESP, PROTO_IPIP, PROTO_IPV6, PROTO_NONE,
    PROTO_TCP, PROTO_UDP, checksum, clamp_mss, ecn_egress_ce, fragment, icmp6_packet_too_big,
    icmp_frag_needed, rebuild_header,
)
from vpnd.esp.ipcomp import MAX_IP_PACKET, PROTO_IPCOMP
from vpnd.esp.ipv6 import zero_mutable6
from vpnd.esp.overhead import max_inner
from vpnd.esp.sa import SA, seq_allocator
from vpnd.esp.spd import SPD, Policy, addr_in, parse_selectors, selectors_v4, selectors_v6

import hmac as _hmac

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_II = struct.Struct("!II")
_from_bytes = int.from_bytes
_MISS = object()

DP_COUNTER_NAMES = ("no_policy", "unknown_spi", "malformed", "policy_drops", "too_big",
                    "fragmented", "acquires", "expired_drops", "link_local", "blocked",
                    "filtered")


def _link_local(pkt, ver: int) -> bool:
    """Traffic that never leaves the link and that no tunnel carries: IPv6 from the
    unspecified or a link-local address (MLD, router/neighbour solicitation, RFC 4291 2.5)
    or to a multicast group; IPv4 to multicast or the limited broadcast."""
    if ver == 6:
        return (pkt[8] == 0xFE and pkt[9] & 0xC0 == 0x80) or pkt[24] == 0xFF or \
            pkt[8:24] == bytes(16)
    return pkt[16] & 0xF0 == 0xE0 or pkt[16:20] == b"\xff\xff\xff\xff"


def _source(hdr):
    """The source address field of an outer IPv4 or IPv6 header."""
    return hdr[8:24] if hdr[0] >> 4 == 6 else hdr[12:16]


def _outer_ce(hdr) -> bool:
    """The outer header is marked CE (ECN, RFC 6040): IPv4 TOS or IPv6 traffic class."""
    if hdr[0] >> 4 == 6:
        return (hdr[1] >> 4) & 3 == 3
    return hdr[1] & 3 == 3


class DataPlane:
    def __init__(self, outer_mtu: int = 1500, mss_clamp: int | None = None,
                 icmp_source: str | None = None, icmp6_source: str | None = None):
        self.events: collections.deque = collections.deque()
        self.now: float | None = None
        self.mss_clamp = mss_clamp
        self.icmp_source = ipaddress.IPv4Address(icmp_source).packed if icmp_source else None
        self.icmp6_source = ipaddress.IPv6Address(icmp6_source).packed if icmp6_source else None
        self.sad: dict = {}                 # (proto number, spi) -> SA
        self._esp_sad: dict = {}            # spi -> ESP SA (the same SAs, for the hot path)
        self.spd = SPD()
        self._outer_mtu = outer_mtu
        self._unknown_seen: dict = {}
        self.filters: dict = {}             # connection name -> esp.acl.ConnFilter
        for name in DP_COUNTER_NAMES:
            setattr(self, name, 0)

    # -- configuration -------------------------------------------------------------------

    @property
    def outer_mtu(self) -> int:
        return self._outer_mtu

    @outer_mtu.setter
    def outer_mtu(self, value: int) -> None:
        self._outer_mtu = value
        for p in self.spd.policies.values():
            p.max_inner = self._max_inner(p.bundle, p.outer_mtu)

    @property
    def counters(self) -> dict:
        return {name: getattr(self, name) for name in DP_COUNTER_NAMES}

    def add_inbound(self, sa_or_bundle, local_ts=None, remote_ts=None) -> None:
        """Install inbound SA(s).  A list [esp_sa, ah_sa] is an ESP+AH bundle: its ESP
        packets are accepted only inside that AH.  local_ts/remote_ts, when given, are
        checked against every decapsulated packet (RFC 4301 5.2 step 4)."""
        bundle = list(sa_or_bundle) if isinstance(sa_or_bundle, (list, tuple)) else [sa_or_bundle]
        sel_l = parse_selectors(local_ts) if local_ts is not None else None
        sel_r = parse_selectors(remote_ts) if remote_ts is not None else None
        ah_sa = next((s for s in bundle if s.protocol == "ah"), None)
        for sa in bundle:
            if sa.version == 6 and sa.mode == "transport":
                raise ValueError("transport mode over IPv6 outer addresses is not supported")
        for sa in bundle:
            sa.events = self.events
            if sel_l is not None and sel_r is not None:
                sa.local_ts = (selectors_v4(sel_l), selectors_v6(sel_l))
                sa.remote_ts = (selectors_v4(sel_r), selectors_v6(sel_r))
                if len(sel_l) == len(sel_r) == 1 and sel_l[0][0] == sel_r[0][0] == 4:
                    sa.sel_fast = sa.remote_ts[0][0] + sa.local_ts[0][0]
            if sa.protocol == "esp" and ah_sa is not None:
                sa.require_ah = ah_sa
            flt = self.filters.get(sa.conn)
            sa.acl = flt.inbound if flt is not None else None
            self.sad[(PROTO_ESP if sa.protocol == "esp" else PROTO_AH, sa.spi)] = sa
            if sa.protocol == "esp":
                self._esp_sad[sa.spi] = sa

    def remove_inbound(self, protocol, spi: int) -> SA | None:
        proto = {"esp": PROTO_ESP, "ah": PROTO_AH}.get(protocol, protocol)
        if proto == PROTO_ESP:
            self._esp_sad.pop(spi, None)
        return self.sad.pop((proto, spi), None)

    def add_block(self, policy_id, local_ts, remote_ts) -> None:
        """A policy whose packets are dropped (counted in `blocked`): traffic of a configured
        connection that has no SA and must not start a negotiation never leaves in clear."""
        p = Policy(policy_id, local_ts, remote_ts, ())
        p.block = True
        p.encap = self._make_sender(p)
        self.spd.add(p)

    def add_outbound(self, policy_id, local_ts, remote_ts, bundle,
                     outer_mtu: int | None = None) -> None:
        """Install (or replace) an outbound policy.  bundle: SAs applied inner to outer,
        [esp], [ah], [esp, ah]; empty or None = trap policy (acquire events).
        outer_mtu: the path MTU towards this peer, if it differs from the DataPlane's."""
        bundle = list(bundle or ())
        protos = [s.protocol for s in bundle]
        if protos not in ([], ["esp"], ["ah"], ["esp", "ah"]):
            raise ValueError(f"unsupported bundle {protos}: use [esp], [ah] or [esp, ah]")
        if len(bundle) == 2 and bundle[0].encap:
            raise ValueError("AH cannot be UDP-encapsulated (RFC 3948 covers ESP only)")
        for sa in bundle:
            if sa.version == 6 and sa.mode == "transport":
                # the packet's own IPv6 header would stay outside (extension headers and
                # all): not built here; tunnel mode carries IPv4 and IPv6 inside IPv6
                raise ValueError("transport mode over IPv6 outer addresses is not supported")
            sa.events = self.events
        p = Policy(policy_id, local_ts, remote_ts, bundle)
        p.outer_mtu = outer_mtu
        p.max_inner = self._max_inner(p.bundle, outer_mtu)
        p.encap = self._make_sender(p)
        self.spd.add(p)

    def move_outbound(self, policy_id, local: str, remote: str,
                      encap: tuple[int, int] | None) -> None:
        """A peer moved (NAT mapping change): the policy's SAs get new outer addresses in
        place (SA.set_addresses: all their state kept) and its sender is rebuilt; the
        policy keeps its place in the SPD."""
        p = self.spd.policies.get(policy_id)
        if p is None or not p.bundle:
            return
        bundle = p.bundle
        if ipaddress.ip_address(local).version == 6 and bundle[0].mode == "transport":
            raise ValueError("transport mode over IPv6 outer addresses is not supported")
        if len(bundle) == 2 and encap and bundle[0].protocol == "esp":
            raise ValueError("AH cannot be UDP-encapsulated (RFC 3948 covers ESP only)")
        for sa in bundle:
            sa.set_addresses(local, remote, encap if sa.protocol == "esp" else None)
        p.max_inner = self._max_inner(bundle, p.outer_mtu)
        p.encap = self._make_sender(p)

    def remove_outbound(self, policy_id) -> None:
        self.spd.remove(policy_id)

    def set_filter(self, conn: str, flt) -> None:
        """A connection's access_group (esp.acl.ConnFilter, None = none): applied at once
        to its installed SAs and policies (a reload changes it under running tunnels)."""
        if flt is None:
            self.filters.pop(conn, None)
        else:
            self.filters[conn] = flt
        inbound = flt.inbound if flt is not None else None
        for sa in self.sad.values():
            if sa.conn == conn:
                sa.acl = inbound
        for p in self.spd.policies.values():
            if self._policy_conn(p) == conn:
                p.encap = self._make_sender(p)

    @staticmethod
    def _policy_conn(pol):
        if pol.bundle:
            return pol.bundle[0].conn
        pid = pol.policy_id
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "trap":
            return pid[1]
        return None

    def _max_inner(self, bundle, outer_mtu: int | None = None) -> int:
        if not bundle:
            return 0
        esp = next((s for s in bundle if s.protocol == "esp"), None)
        ah = next((s for s in bundle if s.protocol == "ah"), None)
        return max_inner(outer_mtu or self._outer_mtu,
                         esp=(esp.iv_size, esp.block, esp.icv_size) if esp else None,
                         ah_icv=ah.icv_size if ah else None,
                         udp=bool(esp and esp.encap), mode=bundle[0].mode,
                         ipv6=bundle[0].version == 6)

    # -- outbound ------------------------------------------------------------------------

    def encap(self, pkt):
        """A packet read from the TUN -> Out | None (dropped and counted)."""
        try:
            return self._encap(pkt)
        except (IndexError, struct.error, ValueError, TypeError):
            # Defensive, like decap: the checks are explicit, this catches what they miss.
            self.malformed += 1
            return None

    def _encap(self, pkt):
        n = len(pkt)
        if n < 20:
            self.malformed += 1
            return None
        ver = pkt[0] >> 4
        spd = self.spd
        if ver == 4:
            key = pkt[12:20]
            pol = spd.cache.get(key, _MISS)
            if pol is _MISS:
                pol = self._spd_miss(key, 4, spd.lookup4)
        elif ver == 6 and n >= 40:
            key = pkt[8:40]
            pol = spd.cache.get(key, _MISS)
            if pol is _MISS:
                pol = self._spd_miss(key, 16, spd.lookup6)
        else:
            self.malformed += 1
            return None
        if pol is None:
            if _link_local(pkt, ver):
                self.link_local += 1  # the kernel's own chatter on the TUN, not a policy drop
            else:
                self.no_policy += 1
            return None
        return pol.encap(pkt)

    def _spd_miss(self, key, half: int, lookup):
        """SPD lookup of an address pair not in the cache (key: source then destination
        address, `half` bytes each); the answer, also None, is cached."""
        cache = self.spd.cache
        if len(cache) >= self.spd.CACHE_MAX:
            cache.clear()
        pol = cache[key] = lookup(_from_bytes(key[:half], "big"), _from_bytes(key[half:], "big"))
        return pol

    def encap_many(self, packets) -> list:
        """encap() over a burst; "many" results are flattened.  The SPD cache hit of
        IPv4 packets is inlined here (one Python call less per packet)."""
        out = []
        append = out.append
        cache = self.spd.cache          # a burst cannot change the SPD: same dict throughout
        get = cache.get
        for pkt in packets:
            try:
                pol = get(pkt[12:20]) if len(pkt) >= 20 and pkt[0] >> 4 == 4 else None
                r = pol.encap(pkt) if pol is not None else self._encap(pkt)
            except (IndexError, struct.error, ValueError, TypeError):
                self.malformed += 1
                continue
            if r is not None:
                if r[0] == "many":
                    out.extend(r[1])
                else:
                    append(r)
        return out

    def _make_sender(self, pol: Policy):
        """A closure pkt -> Out | None for the policy, behind its connection's `out`
        access list if it has one (a denied packet does not start a negotiation either)."""
        send = self._bundle_sender(pol)
        flt = self.filters.get(self._policy_conn(pol)) if self.filters and not pol.block \
            else None
        if flt is None or flt.outbound is None:
            return send
        check = flt.outbound.permit
        dp = self

        def filtered(pkt):
            if check(pkt):
                return send(pkt)
            dp.filtered += 1
            return None
        return filtered

    def _bundle_sender(self, pol: Policy):
        """A closure pkt -> Out | None specialised for the policy's bundle."""
        dp = self
        bundle = pol.bundle
        events = self.events
        if not bundle and pol.block:
            def block(pkt):
                dp.blocked += 1
                return None
            return block
        if not bundle:
            pid = pol.policy_id

            def trap(pkt):
                dp.acquires += 1
                events.append(("acquire", pid, bytes(pkt)))
                return None
            return trap

        esp = bundle[0] if bundle[0].protocol == "esp" else None
        ah = bundle[-1] if bundle[-1].protocol == "ah" else None
        first = bundle[0]
        tunnel = first.mode == "tunnel"
        remote = first.remote
        udp_dst = (remote, esp.encap[1]) if esp is not None and esp.encap else None
        udp_src = (first.local, esp.encap[0]) if udp_dst is not None else None
        seal = esp.esp_seal if esp is not None else None
        esp_outer = esp.outer if esp is not None else None
        hlen = first.outer.header_len
        ah_outer = ah.outer if ah is not None else None
        u16 = _U16.unpack_from
        v6 = first.version == 6
        # AH over IPv6: ICV and header padded to 64 bits (RFC 4302 3.3.3.2.1)
        ah_len = ah_length(ah.icv_size, v6) if ah is not None else 0
        ah_pad = bytes(max(ah_len - 12, 0))     # zeroed ICV (+ alignment padding)
        ah_icv = ah.ah_icv if ah is not None else None
        ah_spi = ah.spi if ah is not None else 0
        policy_ok = self._outbound_transport_ok
        # IPComp (RFC 3173) on the innermost SA: applied before ESP/AH on output; in tunnel
        # mode the whole inner packet is compressed (next header 4/41), in transport mode
        # the packet's payload (next header: its protocol).  compress() leaves a packet
        # that does not shrink as it is (RFC 3173 2.2).
        comp = first.ipcomp.compress if first.ipcomp is not None else None

        def too_big(pkt, ver, n):
            """ICMP for DF/IPv6 packets, pre-fragmentation otherwise; None = go ahead."""
            mtu = pol.max_inner
            if ver == 4:
                if u16(pkt, 6)[0] & DF:
                    dp.too_big += 1
                    # Default source: the packet's own destination.  The gateway's outer
                    # address would be dropped by Linux as a martian (a local source coming
                    # in on the TUN); hosts accept the error from any source (RFC 1191).
                    src = dp.icmp_source or bytes(pkt[16:20])
                    return ("tun", icmp_frag_needed(pkt, mtu, src))
                frags = fragment(pkt, mtu)
                if not frags:
                    dp.malformed += 1
                    return ()
                dp.fragmented += 1
                outs = [send(f) for f in frags]
                outs = [o for o in outs if o is not None]
                return ("many", outs) if outs else ()
            dp.too_big += 1
            src = dp.icmp6_source or bytes(pkt[24:40])
            return ("tun", icmp6_packet_too_big(pkt, max(mtu, 1280), src))

        def count_out(sa, n):
            sa.packets_out += 1
            sa.bytes_out += n
            sa.last_out = dp.now
            if sa.bytes_out >= sa._limit_bytes or sa.packets_out >= sa._limit_packets:
                sa._limit_hit()

        ah_seq = seq_allocator(ah) if ah is not None else None

        def ah_tunnel(payload, nh, tos, frag):
            """AH over a fresh outer header (AH alone, or outside ESP in a bundle).  The
            ICV covers that header with TOS, flags/offset, TTL, checksum zeroed
            (RFC 4302 3.3.3.1.1.1); the ID is immutable and covered."""
            seq = ah_seq()
            if seq < 0:
                return None
            o = ah_outer
            ident = o.next_ident()
            total = o.header_len + ah_len + len(payload)
            head = AH_HDR.pack(nh, ah_len // 4 - 2, 0, ah_spi, seq & 0xFFFFFFFF)
            zhdr = o.zeroed(total, PROTO_AH) if v6 else o.zeroed(total, PROTO_AH, ident)
            icv = ah_icv(b"".join((zhdr, head, ah_pad, payload)), seq)
            return b"".join((o.build(tos, total, frag, ident), head, icv, ah_pad[len(icv):],
                             payload))

        def ah_transport(hdr, payload, nh):
            """AH after the packet's own header, options kept (mutable ones zeroed for
            the ICV only)."""
            seq = ah_seq()
            if seq < 0:
                return None
            ihl = len(hdr)
            total = ihl + ah_len + len(payload)
            head = AH_HDR.pack(nh, ah_len // 4 - 2, 0, ah_spi, seq & 0xFFFFFFFF)
            z = bytearray(zero_mutable(hdr))
            z[9] = PROTO_AH
            z[2:4] = _U16.pack(total)
            icv = ah_icv(b"".join((z, head, ah_pad, payload)), seq)
            return b"".join((rebuild_header(hdr, PROTO_AH, total), head, icv,
                             ah_pad[len(icv):], payload))

        def esp_body(payload, nh, n):
            """ESP of `payload`, counted on the SA; None (counted) when the SA cannot send."""
            body = seal(payload, nh)
            if body is None:
                dp.expired_drops += 1
                return None
            count_out(esp, n)
            return body

        def ah_out(packet, n):
            """The AH-protected packet as a raw send, counted; None when AH cannot send."""
            if packet is None:
                dp.expired_drops += 1
                return None
            count_out(ah, n)
            return ("raw", remote, packet)

        def send(pkt):
            n = len(pkt)
            ver = pkt[0] >> 4
            if ver == 4:
                tot = u16(pkt, 2)[0]
                ihl = (pkt[0] & 0x0F) * 4
                if tot > n or ihl < 20 or tot < ihl:
                    dp.malformed += 1
                    return None
                if tot < n:
                    pkt = pkt[:tot]
                    n = tot
                tos = pkt[1]
                frag = u16(pkt, 6)[0] & DF        # DF copied from the inner packet
                inner_nh = PROTO_IPIP
            else:
                tot = 40 + u16(pkt, 4)[0]
                if tot > n:
                    dp.malformed += 1
                    return None
                if tot < n:
                    pkt = pkt[:tot]
                    n = tot
                tos = ((pkt[0] & 0x0F) << 4) | (pkt[1] >> 4)
                frag = 0
                inner_nh = PROTO_IPV6
            if dp.mss_clamp and ((ver == 4 and pkt[9] == PROTO_TCP) or
                                 (ver == 6 and pkt[6] == PROTO_TCP)):
                pkt = clamp_mss(pkt, dp.mss_clamp)
            if n > pol.max_inner:
                r = too_big(pkt, ver, n)
                if r is not None:
                    return r or None
            if tunnel:
                payload, nh = comp(pkt, inner_nh) if comp is not None else (pkt, inner_nh)
                if esp is not None:
                    body = esp_body(payload, nh, n)
                    if body is None:
                        return None
                    if ah is None:
                        if udp_dst is not None:
                            return ("udp", udp_dst, body, udp_src)
                        return ("raw", remote,
                                esp_outer.build(tos, hlen + len(body), frag) + body)
                    payload, nh = body, PROTO_ESP
                return ah_out(ah_tunnel(payload, nh, tos, frag), n)

            # transport mode: the packet's own IPv4 header stays outside (RFC 4303 3.1.1)
            if ver != 4 or not policy_ok(pkt, first):
                dp.policy_drops += 1
                return None
            ihl = (pkt[0] & 0x0F) * 4
            hdr = pkt[:ihl]
            payload, nh = comp(pkt[ihl:], pkt[9]) if comp is not None else (pkt[ihl:], pkt[9])
            if esp is not None:
                body = esp_body(payload, nh, n)
                if body is None:
                    return None
                if ah is None:
                    if udp_dst is not None:
                        return ("udp", udp_dst, body, udp_src)
                    return ("raw", remote, rebuild_header(hdr, PROTO_ESP, ihl + len(body)) + body)
                payload, nh = body, PROTO_ESP
            return ah_out(ah_transport(hdr, payload, nh), n)

        if not (tunnel and esp is not None and ah is None) or comp is not None or \
                (v6 and udp_dst is None):
            return send

        # The common case inline: ESP tunnel mode, inner IPv4 that fits, no MSS to clamp.
        # Anything else goes through `send` above, which handles every case.
        outer = esp_outer
        base = outer.base if not v6 else 0     # (IPv6 here: ESP in UDP only)
        src_b, dst_b = outer.src, outer.dst
        hdr_pack = IPV4_HDR.pack

        # ESP length for an inner packet of n bytes: header, IV, padded payload, ICV
        esp_fixed = 8 + esp.iv_size + esp.icv_size
        bmask = esp.block - 1

        def send_esp_tunnel(pkt):
            n = len(pkt)
            if (n < 20 or pkt[0] >> 4 != 4 or (pkt[2] << 8 | pkt[3]) != n
                    or n > pol.max_inner or (dp.mss_clamp and pkt[9] == PROTO_TCP)):
                return send(pkt)
            if udp_dst is not None:
                body = seal(pkt, PROTO_IPIP)
                if body is None:
                    dp.expired_drops += 1
                    return None
                out = ("udp", udp_dst, body, udp_src)
            else:
                # the outer header first, so that seal() joins it in its one copy
                tos = pkt[1]
                frag = (pkt[6] & 0x40) << 8             # DF copied from the inner packet
                total = 20 + esp_fixed + ((n + 2 + bmask) & ~bmask)
                ident = (outer.ident + 1) & 0xFFFF
                c = base + tos + total + ident + frag
                c = (c & 0xFFFF) + (c >> 16)
                c = (c & 0xFFFF) + (c >> 16)
                body = seal(pkt, PROTO_IPIP, hdr_pack(0x45, tos, total, ident, frag, OUTER_TTL,
                                                      PROTO_ESP, ~c & 0xFFFF, src_b, dst_b))
                if body is None:
                    dp.expired_drops += 1
                    return None
                outer.ident = ident
                out = ("raw", remote, body)
            esp.packets_out += 1
            esp.bytes_out += n
            esp.last_out = dp.now
            if esp.bytes_out >= esp._limit_bytes or esp.packets_out >= esp._limit_packets:
                esp._limit_hit()
            return out

        return send_esp_tunnel

    @staticmethod
    def _outbound_transport_ok(pkt, sa) -> bool:
        """Transport mode protects the gateways' own traffic: src/dst must be the SA's
        addresses (RFC 4301 4.1), except the local one behind a NAT with UDP encap."""
        return pkt[16:20] == sa.remote_packed and (pkt[12:16] == sa.local_packed or
                                                   sa.encap is not None)

    # -- inbound -------------------------------------------------------------------------

    def decap(self, data, proto: int, src: str | None = None, sport: int | None = None):
        """A received ESP/AH packet -> the inner IP packet for the TUN, or None (counted).
        Never raises on malformed input.

        The common case (ESP, tunnel mode, inner IPv4, raw without IP options or UDP) is
        handled inline here; everything else, and every irregular packet, takes the
        general path (_decap), which also does the counting of drops."""
        try:
            if proto == PROTO_ESP:
                if (len(data) < 48 or data[0] != 0x45
                        or (data[2] << 8 | data[3]) != len(data)):
                    return self._decap(data, proto, src, sport)
                sa = self._esp_sad.get(_U32.unpack_from(data, 20)[0])
                off = 20
            elif proto == PROTO_UDP:
                if len(data) < 28:
                    return self._decap(data, proto, src, sport)
                sa = self._esp_sad.get(_U32.unpack_from(data, 0)[0])
                off = 0
            else:
                return self._decap(data, proto, src, sport)
            if sa is None or sa.require_ah is not None or sa.expired:
                return self._decap(data, proto, src, sport)
            mv = memoryview(data)
            r = sa.esp_open(mv[off:] if off else mv)
            if r is None:
                return None
            pkt, nh = r
            n = len(pkt)
            if (nh != PROTO_IPIP or n < 20 or pkt[0] >> 4 != 4
                    or (pkt[2] << 8 | pkt[3]) != n):
                return self._deliver(sa, pkt, nh, mv[:20] if off else None, src)
            if off and data[1] & 3 == 3:
                return self._deliver(sa, pkt, nh, mv[:20], src)     # CE-marked outer
            sf = sa.sel_fast
            if sf is not None:
                if (_from_bytes(pkt[12:16], "big") & sf[1] != sf[0]
                        or _from_bytes(pkt[16:20], "big") & sf[3] != sf[2]):
                    sa.policy_drops += 1
                    self.policy_drops += 1
                    return None
            elif sa.local_ts is not None and not self._selectors_ok(sa, pkt):
                sa.policy_drops += 1
                self.policy_drops += 1
                return None
            sa.packets_in += 1
            sa.bytes_in += n
            sa.last_in = self.now
            if sa.bytes_in >= sa._limit_bytes or sa.packets_in >= sa._limit_packets:
                sa._limit_hit()
            acl = sa.acl
            if acl is not None and not acl.permit(pkt):
                self.filtered += 1                 # access_group `in` (after decryption)
                return None
            if self.mss_clamp and pkt[9] == PROTO_TCP:
                pkt = clamp_mss(pkt, self.mss_clamp)
            return pkt
        except (IndexError, struct.error, ValueError, TypeError):
            # Defensive: all length checks are explicit, this only catches what they miss.
            self.malformed += 1
            return None

    def decap_many(self, items) -> list:
        """[(data, proto, src, sport), ...] -> list of inner packets (drops left out)."""
        out = []
        decap = self.decap
        for data, proto, src, sport in items:
            r = decap(data, proto, src, sport)
            if r is not None:
                out.append(r)
        return out

    def _decap(self, data, proto, src, sport):
        mv = memoryview(data)
        if proto == PROTO_UDP:
            if len(mv) < 8:
                self.malformed += 1
                return None
            return self._esp_in(mv, None, src, None)
        n = len(mv)
        if n >= 48 and mv[0] >> 4 == 6:
            return self._decap6(mv, n)
        if n < 20 or mv[0] >> 4 != 4:
            self.malformed += 1
            return None
        ihl = (mv[0] & 0x0F) * 4
        tot = _U16.unpack_from(mv, 2)[0]
        if ihl < 20 or tot < ihl + 8 or tot > n:
            self.malformed += 1
            return None
        if tot < n:
            mv = mv[:tot]
        p = mv[9]
        if p == PROTO_ESP:
            return self._esp_in(mv[ihl:], mv[:ihl], None, None)
        if p == PROTO_AH:
            return self._ah_in(mv, ihl)
        self.malformed += 1
        return None

    def _decap6(self, mv, n):
        """ESP/AH under an IPv6 outer header.  The socket layer rebuilt that header from
        what the kernel told (net/sockets.py: a raw IPv6 socket delivers only the payload),
        so it is 40 bytes with ESP or AH as next header, no extension headers."""
        tot = 40 + _U16.unpack_from(mv, 4)[0]
        if tot > n:
            self.malformed += 1
            return None
        if tot < n:
            mv = mv[:tot]
        p = mv[6]
        if p == PROTO_ESP:
            return self._esp_in(mv[40:], mv[:40], None, None)
        if p == PROTO_AH:
            return self._ah_in(mv, 40)
        self.malformed += 1
        return None

    def _unknown(self, proto, spi, src_packed_or_str):
        self.unknown_spi += 1
        src = src_packed_or_str
        if isinstance(src, memoryview):
            src = str(ipaddress.ip_address(bytes(src)))
        key = (proto, spi, src)
        seen = self._unknown_seen
        last = seen.get(key, _MISS)
        now = self.now
        if last is _MISS or (now is not None and last is not None and now - last >= 1.0):
            if len(seen) > 4096:
                seen.clear()
            seen[key] = now
            self.events.append(("unknown_spi", "esp" if proto == PROTO_ESP else "ah", spi, src))

    def _esp_in(self, esp, hdr, src, via_ah):
        """ESP at `esp` (memoryview from the SPI).  hdr: outer IPv4 header (raw) or None
        (UDP: `src` is the sender).  via_ah: the AH SA it came in, if any."""
        spi = _U32.unpack_from(esp, 0)[0]
        sa = self.sad.get((PROTO_ESP, spi))
        if sa is None:
            self._unknown(PROTO_ESP, spi, _source(hdr) if hdr is not None else src)
            return None
        if sa.require_ah is not via_ah:
            sa.policy_drops += 1
            self.policy_drops += 1
            return None
        if sa.expired:
            sa.expired_drops += 1
            return None
        r = sa.esp_open(esp)
        if r is None:
            return None
        payload, nh = r
        return self._deliver(sa, payload, nh, hdr, src)

    def _ah_in(self, mv, ihl):
        n = len(mv)
        if n < ihl + 12:
            self.malformed += 1
            return None
        nh, plen, _res, spi, seq_lo = AH_HDR.unpack_from(mv, ihl)
        sa = self.sad.get((PROTO_AH, spi))
        if sa is None:
            self._unknown(PROTO_AH, spi, _source(mv))
            return None
        alen = (plen + 2) * 4
        icv_size = sa.icv_size
        if alen < 12 + icv_size or ihl + alen > n:
            sa.malformed += 1
            return None
        if sa.expired:
            sa.expired_drops += 1
            return None
        seq = sa.replay_seq(seq_lo)
        if seq < 0:
            sa.replay_drops += 1
            return None
        hdr = mv[:ihl]
        payload = mv[ihl + alen:]
        icv = mv[ihl + 12:ihl + 12 + icv_size]
        zhdr = zero_mutable6(hdr) if hdr[0] >> 4 == 6 else zero_mutable(hdr)
        zdata = b"".join((zhdr, mv[ihl:ihl + 12], bytes(alen - 12), payload))
        if not _hmac.compare_digest(sa.ah_icv(zdata, seq), icv):
            sa.auth_failures += 1
            return None
        sa.replay_commit(seq)
        if nh == PROTO_ESP:
            # ESP+AH bundle: the ESP inside is checked against its own SA next; the outer
            # header (for transport mode) is the one AH authenticated, proto now ESP.
            inner = self._esp_in(payload, hdr, None, sa)
            if inner is not None:
                self._count_in(sa, len(inner))
            return inner
        return self._deliver(sa, bytes(payload), nh, hdr, None)

    def _count_in(self, sa, n):
        sa.packets_in += 1
        sa.bytes_in += n
        sa.last_in = self.now
        if sa.bytes_in >= sa._limit_bytes or sa.packets_in >= sa._limit_packets:
            sa._limit_hit()

    def _deliver(self, sa, payload, nh, hdr, src):
        """Rebuild/validate the inner packet, check selectors, count, clamp."""
        if nh == PROTO_IPCOMP:
            # RFC 3173: decompressed after ESP/AH on input, by the IPComp SA of the bundle;
            # the output may not exceed an IP packet (a bomb is dropped and counted)
            ipc = sa.ipcomp
            if ipc is None:
                sa.policy_drops += 1
                self.policy_drops += 1
                return None
            limit = MAX_IP_PACKET if sa.mode == "tunnel" else \
                MAX_IP_PACKET - (len(hdr) if hdr is not None else 20)
            r = ipc.decompress(payload, limit)
            if r is None:
                return None
            payload, nh = r
        if nh == PROTO_IPIP or nh == PROTO_IPV6:
            n = len(payload)
            if nh == PROTO_IPIP:
                if n < 20 or payload[0] >> 4 != 4:
                    sa.malformed += 1
                    return None
                tot = _U16.unpack_from(payload, 2)[0]
            else:
                if n < 40 or payload[0] >> 4 != 6:
                    sa.malformed += 1
                    return None
                tot = 40 + _U16.unpack_from(payload, 4)[0]
            if tot > n:
                sa.malformed += 1
                return None
            pkt = payload[:tot] if tot < n else payload     # TFC padding (RFC 4303 2.7)
            if hdr is not None and _outer_ce(hdr):
                pkt = ecn_egress_ce(pkt)
                if pkt is None:
                    sa.policy_drops += 1                    # CE on a not-ECT packet
                    return None
        elif nh == PROTO_NONE:
            sa.dummy_drops += 1                            # dummy packet (RFC 4303 2.6)
            return None
        else:
            if sa.mode == "tunnel":
                sa.policy_drops += 1
                self.policy_drops += 1
                return None
            payload = bytes(payload)
            if hdr is not None and hdr[0] >> 4 == 6:
                sa.policy_drops += 1        # transport mode over IPv6 is not installed
                self.policy_drops += 1
                return None
            if hdr is not None:
                ihl = len(hdr)
                pkt = rebuild_header(hdr, nh, ihl + len(payload)) + payload
            else:
                # ESP-in-UDP transport: the header is gone, rebuild it from the addresses
                pkt = self._udp_transport_packet(sa, src, nh, payload)
                if pkt is None:
                    return None
        if sa.local_ts is not None and not self._selectors_ok(sa, pkt):
            sa.policy_drops += 1
            self.policy_drops += 1
            return None
        if type(pkt) is not bytes:
            pkt = bytes(pkt)
        self._count_in(sa, len(pkt))
        acl = sa.acl
        if acl is not None and not acl.permit(pkt):
            self.filtered += 1                     # access_group `in` (after decryption)
            return None
        if self.mss_clamp:
            pkt = clamp_mss(pkt, self.mss_clamp)
        return pkt

    @staticmethod
    def _selectors_ok(sa, pkt) -> bool:
        if pkt[0] >> 4 == 4:
            s = _from_bytes(pkt[12:16], "big")
            d = _from_bytes(pkt[16:20], "big")
            return addr_in(s, sa.remote_ts[0]) and addr_in(d, sa.local_ts[0])
        s = _from_bytes(pkt[8:24], "big")
        d = _from_bytes(pkt[24:40], "big")
        return addr_in(s, sa.remote_ts[1]) and addr_in(d, sa.local_ts[1])

    @staticmethod
    def _udp_transport_packet(sa, src, nh, payload):
        """RFC 3948 3.1.2: after NAT the TCP/UDP checksum no longer matches the addresses,
        so the receiver recomputes it over the header it rebuilds."""
        src_b = ipaddress.IPv4Address(src).packed if src else sa.remote_packed
        dst_b = sa.local_packed
        total = 20 + len(payload)
        if total > 0xFFFF:
            sa.malformed += 1
            return None
        if nh in (PROTO_TCP, PROTO_UDP):
            off = 16 if nh == PROTO_TCP else 6
            if len(payload) >= off + 2:
                p = bytearray(payload)
                p[off:off + 2] = b"\x00\x00"
                pseudo = src_b + dst_b + bytes((0, nh)) + _U16.pack(len(p))
                c = checksum(pseudo + bytes(p))
                if nh == PROTO_UDP and c == 0:
                    c = 0xFFFF
                p[off:off + 2] = _U16.pack(c)
                payload = bytes(p)
        hdr = bytearray(IPV4_HDR.pack(0x45, 0, total, 0, 0, OUTER_TTL, nh, 0, src_b, dst_b))
        hdr[10:12] = _U16.pack(checksum(hdr))
        return bytes(hdr) + payload
