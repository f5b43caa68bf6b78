"""ISAKMP policies (phase 1) and IPsec transform sets (phase 2): building the SA payloads we
offer and choosing from the ones we are offered.

Phase 1: every combination of one configured proposal's alternatives becomes one transform
of a single ISAKMP proposal, in configured order (the seed's `crypto isakmp policy SEQ`
ordering). The responder walks its own policies in order and takes the first offered
transform that matches one (RFC 2409 5: exactly one transform is returned).

Phase 2 (RFC 2407 4.5, RFC 2408 4.2): one proposal number per configured transform set; an
ESP+AH bundle is an AH and an ESP proposal payload with the same number.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpnd import proposals as props
from vpnd.crypto import ciphers
from vpnd.ike import ipcomp
from vpnd.ike.v1 import constants as C
from vpnd.textsafe import safe
from vpnd.ike.v1.payloads import SA, Proposal, Transform, attr_int, life_attr


class PolicyError(Exception):
    pass


# -- phase 1 ------------------------------------------------------------------------------


@dataclass(frozen=True)
class P1Policy:
    enc: str
    hash: str
    group: str
    auth: int
    lifetime: int  # seconds

    def describe(self) -> str:
        return props.describe_ike(self.enc, self.hash, "prf" + self.hash, self.group)

    def same_algorithms(self, other: "P1Policy") -> bool:
        return (self.enc, self.hash, self.group, self.auth) == (other.enc, other.hash, other.group, other.auth)


def p1_policies(proposals, auth: int, lifetime: int) -> list[P1Policy]:
    """Our ISAKMP policies in order; `lifetime` is the connection's ISAKMP SA lifetime,
    which a policy's own `lifetime` (Cisco `crypto isakmp policy N` / `lifetime S`) replaces
    for that policy (issue 7.4)."""
    out: list[P1Policy] = []
    for p in proposals:
        life = getattr(p, "lifetime", None) or lifetime
        hashes = list(p.integrity) or [prf[3:] for prf in p.prf]
        for enc in p.encryption:
            if enc not in C.P1_ENC_IDS:
                continue  # IKEv1 has no AEAD ISAKMP SA
            for h in hashes:
                if h not in C.P1_HASH_IDS:
                    continue
                for g in p.dh:
                    if g in C.GROUP_IDS:
                        pol = P1Policy(enc, h, g, auth, life)
                        if pol not in out:
                            out.append(pol)
    return out


def p1_transform(pol: P1Policy, number: int) -> Transform:
    enc_id, keylen = C.P1_ENC_IDS[pol.enc]
    attrs: list = [(C.P1_ENC, enc_id)]
    if keylen:
        attrs.append((C.P1_KEY_LENGTH, keylen))
    attrs += [(C.P1_HASH, C.P1_HASH_IDS[pol.hash]), (C.P1_AUTH, pol.auth),
              (C.P1_GROUP, C.GROUP_IDS[pol.group])]
    attrs += life_attr(C.P1_LIFE_TYPE, C.P1_LIFE_DURATION, C.LIFE_SECONDS, pol.lifetime)
    return Transform(number, C.KEY_IKE, attrs)


def p1_sa(policies: list[P1Policy]) -> SA:
    ts = [p1_transform(p, i + 1) for i, p in enumerate(policies)]
    return SA([Proposal(1, C.PROTO_ISAKMP, b"", ts)])


_ENC_BY_ID = {(5, None): "3des", (1, None): "des", (7, 128): "aes128", (7, 192): "aes192",
              (7, 256): "aes256"}
_HASH_BY_ID = {v: k for k, v in C.P1_HASH_IDS.items()}


def p1_parse(t: Transform) -> P1Policy | None:
    """The policy a phase-1 transform describes, or None if we cannot do it."""
    if t.transform_id != C.KEY_IKE:
        return None
    a = t.attrs
    enc_id = attr_int(a, C.P1_ENC)
    keylen = attr_int(a, C.P1_KEY_LENGTH)
    if enc_id == 7 and keylen is None:
        keylen = 128  # RFC 3602 / strongSwan: AES without key length is AES-128
    enc = _ENC_BY_ID.get((enc_id, keylen if enc_id == 7 else None))
    h = _HASH_BY_ID.get(attr_int(a, C.P1_HASH))
    g = C.GROUP_NAMES.get(attr_int(a, C.P1_GROUP))
    auth = attr_int(a, C.P1_AUTH)
    life = 0
    # life type/duration pairs: a duration belongs to the type before it (RFC 2409 A)
    cur = None
    for k, v in a:
        if k == C.P1_LIFE_TYPE:
            cur = v
        elif k == C.P1_LIFE_DURATION and cur == C.LIFE_SECONDS:
            life = v if isinstance(v, int) else int.from_bytes(v[:8], "big")
    if not (enc and h and g and auth in C.AUTH_NAMES):
        return None
    return P1Policy(enc, h, g, auth, life or 28800)


def own_lifetime(chosen: P1Policy, own: list[P1Policy]) -> int:
    """The initiator's side of a chosen transform: the lifetime of the first of our policies
    with its algorithms, shortened by the responder's answer (RFC 2409 5: the shorter)."""
    mine = next((p for p in own if p.same_algorithms(chosen)), None)
    if mine is None:
        return chosen.lifetime
    return min(chosen.lifetime, mine.lifetime) if chosen.lifetime else mine.lifetime


def p1_select(offered: SA, own: list[P1Policy]) -> tuple[Transform, P1Policy] | None:
    cands = []
    for prop in offered.proposals:
        if prop.protocol != C.PROTO_ISAKMP:
            continue
        for t in prop.transforms:
            pol = p1_parse(t)
            if pol:
                cands.append((t, pol))
    for mine in own:
        for t, pol in cands:
            if pol.same_algorithms(mine):
                lifetime = min(pol.lifetime, mine.lifetime) if pol.lifetime else mine.lifetime
                return t, P1Policy(pol.enc, pol.hash, pol.group, pol.auth, lifetime)
    return None


def describe_offer(sa: SA) -> str:
    """Human list of what a peer offered, for the NO-PROPOSAL-CHOSEN log line."""
    out = []
    for prop in sa.proposals:
        for t in prop.transforms:
            if prop.protocol == C.PROTO_ISAKMP:
                pol = p1_parse(t)
                out.append(f"{pol.describe()}/{C.AUTH_NAMES[pol.auth]}" if pol else f"transform {t.transform_id} {t.attrs}")
            else:
                ch = _p2_parse_transform(prop.protocol, t)
                out.append(ch.describe() if ch else f"proto {prop.protocol} transform {t.transform_id}")
    # peer-supplied (attribute values are raw bytes): escaped and bounded (issue 8.4)
    return safe(", ".join(out) or "nothing", 600)


# -- phase 2 ------------------------------------------------------------------------------


@dataclass(frozen=True)
class P2Transform:
    """One protocol's choice inside a phase-2 proposal."""

    protocol: int  # PROTO_ESP / PROTO_AH
    enc: str | None
    integ: str | None
    esn: bool
    group: str | None
    mode: str
    udp: bool
    life_s: int
    life_kb: int

    def describe(self) -> str:
        if self.protocol == C.PROTO_AH:
            return "AH:" + props.describe_child(None, self.integ, self.group, self.esn)
        return props.describe_child(self.enc, self.integ, self.group, self.esn)

    def algorithms(self):
        return (self.protocol, self.enc, self.integ, self.esn, self.group)

    def key_sizes(self) -> tuple[int, int]:
        ek = ciphers.cipher_key_size(self.enc) if self.enc else 0
        ik = ciphers.integrity_key_size(self.integ) if self.integ else 0
        return ek, ik


def encap_value(mode: str, udp: bool, natt: str | None) -> int:
    if not udp:
        return C.ENCAP_TUNNEL if mode == "tunnel" else C.ENCAP_TRANSPORT
    if natt == "rfc":
        return C.ENCAP_UDP_TUNNEL if mode == "tunnel" else C.ENCAP_UDP_TRANSPORT
    return C.ENCAP_UDP_TUNNEL_DRAFT if mode == "tunnel" else C.ENCAP_UDP_TRANSPORT_DRAFT


def _p2_attrs(x: P2Transform, natt: str | None) -> list:
    attrs: list = []
    if x.life_s:
        attrs += life_attr(C.P2_LIFE_TYPE, C.P2_LIFE_DURATION, C.LIFE_SECONDS, x.life_s)
    if x.life_kb:
        attrs += life_attr(C.P2_LIFE_TYPE, C.P2_LIFE_DURATION, C.LIFE_KILOBYTES, x.life_kb)
    if x.group:
        attrs.append((C.P2_GROUP, C.GROUP_IDS[x.group]))
    attrs.append((C.P2_ENCAP, encap_value(x.mode, x.udp, natt)))
    if x.integ:
        attrs.append((C.P2_AUTH_ALG, C.AUTH_ALG_IDS[x.integ]))
    if x.enc in C.ESP_KEY_BITS:
        attrs.append((C.P2_KEY_LENGTH, C.ESP_KEY_BITS[x.enc]))
    if x.esn:
        attrs.append((C.P2_ESN, 1))
    return attrs


def _transform_id(x: P2Transform) -> int:
    if x.protocol == ipcomp.PROTO_IPCOMP_V1:
        return ipcomp.TRANSFORM_IDS[x.enc]      # enc holds the compression algorithm
    if x.protocol == C.PROTO_AH:
        return C.AH_TRANSFORM_IDS[x.integ]
    return C.ESP_TRANSFORM_IDS[x.enc]


def _life(attrs) -> tuple[int, int]:
    s = kb = 0
    cur = None
    for k, v in attrs:
        if k == C.P2_LIFE_TYPE:
            cur = v
        elif k == C.P2_LIFE_DURATION:
            val = v if isinstance(v, int) else int.from_bytes(v[:8], "big")
            if cur == C.LIFE_SECONDS:
                s = val
            elif cur == C.LIFE_KILOBYTES:
                kb = val
    return s, kb


_ESP_BY_ID = {(2, None): "des", (3, None): "3des", (11, None): "null", (12, 128): "aes128",
              (12, 192): "aes192", (12, 256): "aes256", (20, 128): "aes128gcm16",
              (20, 192): "aes192gcm16", (20, 256): "aes256gcm16"}
_AH_BY_ID = {v: k for k, v in C.AH_TRANSFORM_IDS.items()}


def _p2_parse_transform(protocol: int, t: Transform) -> P2Transform | None:
    a = t.attrs
    enc_mode = attr_int(a, C.P2_ENCAP, C.ENCAP_TUNNEL)
    if enc_mode not in C.ENCAP_MODES:
        return None
    mode, udp = C.ENCAP_MODES[enc_mode]
    group = None
    gid = attr_int(a, C.P2_GROUP)
    if gid is not None:
        group = C.GROUP_NAMES.get(gid)
        if group is None:
            return None
    auth = attr_int(a, C.P2_AUTH_ALG)
    integ = C.AUTH_ALG_NAMES.get(auth) if auth is not None else None
    if auth is not None and integ is None:
        return None
    esn = attr_int(a, C.P2_ESN, 0) == 1
    life_s, life_kb = _life(a)
    if protocol == C.PROTO_AH:
        name = _AH_BY_ID.get(t.transform_id)
        if name is None or (integ and integ != name):
            return None
        return P2Transform(protocol, None, name, esn, group, mode, udp, life_s, life_kb)
    if protocol != C.PROTO_ESP:
        return None
    keylen = attr_int(a, C.P2_KEY_LENGTH)
    if t.transform_id in (12, 20) and keylen is None:
        keylen = 128
    enc = _ESP_BY_ID.get((t.transform_id, keylen if t.transform_id in (12, 20) else None))
    if enc is None:
        return None
    aead = enc in props.AEAD
    if aead and integ:
        return None
    if not aead and not integ:
        return None  # ESP without integrity is refused (RFC 4303 3.2)
    return P2Transform(protocol, enc, integ, esn, group, mode, udp, life_s, life_kb)


def p2_choices(proposal, *, mode: str, udp: bool, life_s: int, life_kb: int) -> list[list[P2Transform]]:
    """Expand one configured esp/ah proposal into alternative transform lists. Each entry is a
    list: [esp] / [ah] / [ah, esp] for a bundle (AH first, as RFC 2408 4.2's example)."""
    group = proposal.dh[0] if proposal.dh else None
    out = []
    esns = proposal.esn or (False,)
    if proposal.protocol == "ah":
        for integ in proposal.integrity:
            for esn in esns:
                out.append([P2Transform(C.PROTO_AH, None, integ, esn, group, mode, udp, life_s, life_kb)])
        return out
    integs = [None] if proposal.aead else list(proposal.integrity)
    esp = [P2Transform(C.PROTO_ESP, enc, integ, esn, group, mode, udp, life_s, life_kb)
           for enc in proposal.encryption for integ in integs for esn in esns
           if enc in C.ESP_TRANSFORM_IDS]
    if proposal.ah_integrity:
        ah = [P2Transform(C.PROTO_AH, None, i, False, group, mode, udp, life_s, life_kb)
              for i in proposal.ah_integrity]
        return [[a, e] for a in ah for e in esp]
    return [[e] for e in esp]


def _ipcomp_transform(comp: str, like: P2Transform) -> P2Transform:
    """The IPCOMP transform that goes with an ESP/AH one: same mode and lifetimes."""
    return P2Transform(ipcomp.PROTO_IPCOMP_V1, comp, None, False, None, like.mode, like.udp,
                       like.life_s, like.life_kb)


def p2_sa(offer_sets: list[list[list[P2Transform]]], spis: dict[int, bytes], natt: str | None,
          comp: tuple[str, int] | None = None) -> SA:
    """SA payload for Quick Mode message 1. `offer_sets`: per configured proposal, its
    alternative bundles; each configured proposal gets its own proposal number with all its
    alternatives as transforms (per protocol).  comp = (algorithm, our CPI): each proposal is
    offered first with an IPCOMP proposal of the same number (RFC 2409 5.5, RFC 2407 4.4.1:
    the CPI in a 2-octet SPI field), then again without, for peers that do not compress."""
    out: list[Proposal] = []
    if comp is not None:
        for num, alts in enumerate(offer_sets, start=1):
            x = _ipcomp_transform(comp[0], alts[0][0])
            out.append(Proposal(num, x.protocol, ipcomp.encode_v1_spi(comp[1]),
                                [Transform(1, _transform_id(x), _p2_attrs(x, natt))]))
        plain = p2_sa(offer_sets, spis, natt).proposals
        n = len(offer_sets)
        return SA(_with_ipcomp(out, plain) +
                  [Proposal(p.number + n, p.protocol, p.spi, p.transforms) for p in plain])
    for num, alts in enumerate(offer_sets, start=1):
        protos = [x.protocol for x in alts[0]]
        for pi, proto in enumerate(protos):
            seen = []
            for alt in alts:
                x = alt[pi]
                if x not in seen:
                    seen.append(x)
            ts = [Transform(i + 1, _transform_id(x), _p2_attrs(x, natt)) for i, x in enumerate(seen)]
            out.append(Proposal(num, proto, spis[proto], ts))
    return SA(out)


def _with_ipcomp(ipc: list[Proposal], plain: list[Proposal]) -> list[Proposal]:
    """Each proposal number's ESP/AH proposals followed by its IPCOMP one."""
    out = []
    for p in ipc:
        out += [q for q in plain if q.number == p.number] + [p]
    return out


def p2_sa_answer(chosen: list[P2Transform], numbers: list[int], spis: dict[int, bytes],
                 natt: str | None, prop_number: int,
                 comp: tuple[str, int, int] | None = None) -> SA:
    """comp = (algorithm, our CPI, the IPCOMP transform number we took) when we accept it."""
    out = [Proposal(prop_number, x.protocol, spis[x.protocol],
                    [Transform(n, _transform_id(x), _p2_attrs(x, natt))])
           for x, n in zip(chosen, numbers)]
    if comp is not None:
        x = _ipcomp_transform(comp[0], chosen[0])
        out.append(Proposal(prop_number, x.protocol, ipcomp.encode_v1_spi(comp[1]),
                            [Transform(comp[2], _transform_id(x), _p2_attrs(x, natt))]))
    return SA(out)


def p2_ipcomp(sa: SA, number: int, comp: str | None) -> tuple[int, int] | None:
    """The IPCOMP proposal of proposal `number` if it offers our algorithm `comp`:
    (peer's CPI, transform number), else None."""
    tid = ipcomp.TRANSFORM_IDS.get(comp) if comp else None
    for p in sa.proposals:
        if p.number == number and p.protocol == ipcomp.PROTO_IPCOMP_V1 and tid is not None:
            cpi = ipcomp.decode_v1_spi(p.spi)
            if cpi is None:
                return None
            for t in p.transforms:
                if t.transform_id == tid:
                    return cpi, t.number
    return None


def _groups(sa: SA) -> list[tuple[int, list[Proposal]]]:
    groups: list[tuple[int, list[Proposal]]] = []
    for p in sa.proposals:
        if groups and groups[-1][0] == p.number:
            groups[-1][1].append(p)
        else:
            groups.append((p.number, [p]))
    return groups


def p2_select(offered: SA, own_sets: list[list[list[P2Transform]]], comp: str | None = None):
    """Responder choice: (chosen transforms, their transform numbers, peer SPIs by protocol,
    proposal number) or None. Own order first; lifetimes are taken from the offer."""
    groups = _groups(offered)
    # IPComp (an IPCOMP proposal inside the proposal number): taken only with our own
    # algorithm, preferred when we compress; a number with IPComp we cannot do is skipped
    # whole (the protocols of one number are a bundle, RFC 2408 4.2)
    passes = (True, False) if comp else (False,)
    for with_comp in passes:
        for alts in own_sets:
            r = _p2_select_alts(offered, groups, alts, with_comp, comp)
            if r is not None:
                return r
    return None


def _p2_select_alts(offered: SA, groups, alts, with_comp: bool, comp: str | None):
    for alt in alts:
        want = [x.algorithms() for x in alt]
        for number, plist in groups:
            has_comp = any(p.protocol == ipcomp.PROTO_IPCOMP_V1 for p in plist)
            if has_comp != with_comp or (has_comp and p2_ipcomp(offered, number, comp) is None):
                continue
            plist = [p for p in plist if p.protocol != ipcomp.PROTO_IPCOMP_V1]
            if sorted(p.protocol for p in plist) != sorted(x.protocol for x in alt):
                continue
            chosen, nums, spis = [], [], {}
            for p in plist:
                if len(p.spi) != 4:
                    break
                idx = [i for i, x in enumerate(alt) if x.protocol == p.protocol][0]
                hit = None
                for t in p.transforms:
                    x = _p2_parse_transform(p.protocol, t)
                    if x and x.algorithms() == want[idx] and x.mode == alt[idx].mode:
                        hit = (x, t.number)
                        break
                if not hit:
                    break
                chosen.append(hit[0])
                nums.append(hit[1])
                spis[p.protocol] = p.spi
            else:
                return chosen, nums, spis, number
    return None


def p2_parse_answer(sa: SA, offered: SA) -> tuple[list[P2Transform], dict[int, bytes]]:
    """Initiator: the responder's single choice, which must be one of our transforms."""
    if not sa.proposals:
        raise PolicyError("empty SA in Quick Mode response")
    number = sa.proposals[0].number
    ours = {(p.number, p.protocol): p for p in offered.proposals}
    chosen, spis = [], {}
    for p in sa.proposals:
        if p.protocol == ipcomp.PROTO_IPCOMP_V1 and p.number == number:
            continue            # see p2_answer_ipcomp
        if p.number != number or len(p.transforms) != 1 or len(p.spi) != 4:
            raise PolicyError("responder returned more than one choice")
        mine = ours.get((p.number, p.protocol))
        if mine is None:
            raise PolicyError("responder chose a proposal we did not offer")
        x = _p2_parse_transform(p.protocol, p.transforms[0])
        if x is None:
            raise PolicyError("responder chose an unsupported transform")
        offered_x = [_p2_parse_transform(p.protocol, t) for t in mine.transforms]
        if x.algorithms() not in [o.algorithms() for o in offered_x if o]:
            raise PolicyError("responder chose a transform we did not offer")
        chosen.append(x)
        spis[p.protocol] = p.spi
    return chosen, spis


def p2_answer_ipcomp(sa: SA, offered: SA, comp: str | None) -> int | None:
    """Initiator: the peer's CPI when the responder took one of our proposals with IPComp
    (its answer then holds an IPCOMP proposal of that number with our transform); else None."""
    if not comp or not sa.proposals:
        return None
    number = sa.proposals[0].number
    if not any(p.number == number and p.protocol == ipcomp.PROTO_IPCOMP_V1 for p in offered.proposals):
        return None
    got = p2_ipcomp(sa, number, comp)
    return got[0] if got is not None else None
