"""SA payload proposals from configured proposals, and the responder's choice (RFC 7296 2.7,
3.3.6). The responder picks by its own preference order: its proposals first, then within a
proposal its algorithm order."""

from __future__ import annotations

from dataclasses import dataclass

from vpnd import proposals as cfgprop
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2.payloads import Proposal, Transform


@dataclass(frozen=True)
class Chosen:
    """The single algorithm of each kind that was agreed on."""

    protocol: str
    encryption: str | None  # None for AH
    integrity: str | None = None
    prf: str | None = None
    dh: str | None = None
    esn: bool = False

    def describe(self) -> str:
        if self.protocol == "ike":
            return cfgprop.describe_ike(self.encryption, self.integrity, self.prf, self.dh)
        return cfgprop.describe_child(self.encryption, self.integrity, self.dh, self.esn)


def _default_prf(p: cfgprop.Proposal) -> tuple[str, ...]:
    if p.prf:
        return p.prf
    # strongSwan derives the PRF from the integrity algorithm when none is given
    return tuple("prf" + i for i in p.integrity) or ("prfsha256",)


def to_sa(props, protocol: str, spi: bytes, *, with_dh: bool = True, only_dh: str | None = None) -> list[Proposal]:
    """One SA-payload proposal per configured proposal (numbered from 1).

    `with_dh=False` strips DH transforms (the CHILD_SA created in IKE_AUTH has no KE, 1.2).
    `only_dh` puts that group first (after INVALID_KE_PAYLOAD, or to match our KE payload)."""
    out: list[Proposal] = []
    for p in props:
        t: list[Transform] = []
        for e in p.encryption:
            tid, kl = c.ENCR_IDS[e]
            t.append(Transform(c.TT_ENCR, tid, kl))
        if protocol == "ike":
            t += [Transform(c.TT_PRF, c.PRF_IDS_BY_NAME[x]) for x in _default_prf(p)]
        t += [Transform(c.TT_INTEG, c.INTEG_IDS[i]) for i in p.integrity]
        if with_dh and p.dh:
            groups = list(p.dh)
            if only_dh in groups:
                groups.remove(only_dh)
                groups.insert(0, only_dh)
            t += [Transform(c.TT_DH, c.DH_IDS[g]) for g in groups]
        if protocol != "ike":
            t += [Transform(c.TT_ESN, 1 if e else 0) for e in (p.esn or (False,))]
        out.append(Proposal(len(out) + 1, c.PROTO_IDS[protocol], spi, t))
    return out


def _names(p: Proposal) -> dict[int, list]:
    """Transform type -> canonical names in the order given; unknown ids map to None."""
    out: dict[int, list] = {}
    for t in p.transforms:
        if t.type == c.TT_ENCR:
            name = c.ENCR_NAMES.get((t.id, t.key_length))
        elif t.type == c.TT_PRF:
            name = c.PRF_NAMES.get(t.id)
        elif t.type == c.TT_INTEG:
            name = "none" if t.id == 0 else c.INTEG_NAMES.get(t.id)
        elif t.type == c.TT_DH:
            name = "none" if t.id == 0 else c.DH_NAMES.get(t.id)
        elif t.type == c.TT_ESN:
            name = {0: False, 1: True}.get(t.id)
        else:
            continue  # unknown transform type or unknown attribute (3.3.6): ignore
        out.setdefault(t.type, []).append(name)
    return out


def _pick(ours: list, theirs: list, prefer=None):
    if prefer is not None and prefer in ours and prefer in theirs:
        return prefer
    for x in ours:
        if x is not None and x in theirs:
            return x
    return None


def select(ours: list[Proposal], theirs: list[Proposal], *, ke_group: str | None = None):
    """Responder choice. Returns (their proposal, Chosen) or None for NO_PROPOSAL_CHOSEN.

    `ke_group`: the group of the peer's KE payload, preferred when acceptable so that
    INVALID_KE_PAYLOAD is sent only when needed (2.7)."""
    for mine in ours:
        mn = _names(mine)
        for peer in theirs:
            if peer.protocol != mine.protocol:
                continue
            pn = _names(peer)
            got: dict[int, object] = {}
            ok = True
            for tt in (c.TT_ENCR, c.TT_PRF, c.TT_INTEG, c.TT_DH, c.TT_ESN):
                a = [x for x in mn.get(tt, []) if x != "none"]
                b = [x for x in pn.get(tt, []) if x != "none"]
                if not a and not b:
                    continue
                if not a:
                    # peer offers e.g. PFS; acceptable only if it also offers NONE (3.3.3)
                    if "none" in pn.get(tt, []):
                        continue
                    ok = False
                    break
                if not b and "none" in pn.get(tt, []) and tt != c.TT_DH:
                    ok = False
                    break
                x = _pick(a, b, ke_group if tt == c.TT_DH else None)
                if x is None:
                    ok = False
                    break
                got[tt] = x
            proto = c.PROTO_NAMES[mine.protocol]
            if not ok or (c.TT_ENCR not in got and proto != "ah") or (proto == "ah" and c.TT_INTEG not in got):
                continue
            if proto == "ike" and (c.TT_PRF not in got or c.TT_DH not in got):
                continue
            return peer, Chosen(proto, got.get(c.TT_ENCR), got.get(c.TT_INTEG), got.get(c.TT_PRF),
                                got.get(c.TT_DH), bool(got.get(c.TT_ESN, False)))
    return None


def encode_chosen(ch: Chosen, num: int, spi: bytes) -> Proposal:
    """The one-transform-per-type proposal of a response."""
    t = []
    if ch.encryption:
        tid, kl = c.ENCR_IDS[ch.encryption]
        t.append(Transform(c.TT_ENCR, tid, kl))
    if ch.prf:
        t.append(Transform(c.TT_PRF, c.PRF_IDS_BY_NAME[ch.prf]))
    if ch.integrity:
        t.append(Transform(c.TT_INTEG, c.INTEG_IDS[ch.integrity]))
    if ch.dh:
        t.append(Transform(c.TT_DH, c.DH_IDS[ch.dh]))
    if ch.protocol != "ike":
        t.append(Transform(c.TT_ESN, 1 if ch.esn else 0))
    return Proposal(num, c.PROTO_IDS[ch.protocol], spi, t)


def accept_response(offered: list[Proposal], answer: list[Proposal]) -> tuple[Proposal, Chosen] | None:
    """Initiator: the responder's single proposal must be a subset of one we offered (2.7)."""
    if len(answer) != 1:
        return None
    a = answer[0]
    an = _names(a)
    if any(len(v) != 1 or v[0] is None for v in an.values()):
        return None
    for mine in offered:
        if mine.num != a.num or mine.protocol != a.protocol:
            continue
        mn = _names(mine)
        for tt, (val,) in an.items():
            if val == "none" and tt in (c.TT_INTEG, c.TT_DH):
                continue
            if val not in mn.get(tt, []):
                return None
        for tt in mn:
            if tt not in an and tt != c.TT_DH and not (tt == c.TT_INTEG and an.get(c.TT_ENCR, [None])[0] in cfgprop.AEAD):
                return None
        g = lambda tt: (an.get(tt) or [None])[0]  # noqa: E731
        integ = g(c.TT_INTEG)
        dh = g(c.TT_DH)
        proto = c.PROTO_NAMES[a.protocol]
        if proto == "ike" and (g(c.TT_PRF) is None or dh in (None, "none")):
            return None
        # PFS: if we asked for a group, the responder must pick one (3.3.3)
        if proto != "ike" and mn.get(c.TT_DH) and dh in (None, "none"):
            return None
        return a, Chosen(proto, g(c.TT_ENCR), None if integ == "none" else integ, g(c.TT_PRF),
                         None if dh == "none" else dh, bool(g(c.TT_ESN)))
    return None


def describe_offer(props: list[Proposal]) -> str:
    """For the NO_PROPOSAL_CHOSEN log line: every proposal in strongSwan-like words."""
    out = []
    for p in props:
        n = _names(p)
        words = [str(x) for tt in (c.TT_ENCR, c.TT_INTEG, c.TT_PRF, c.TT_DH) for x in n.get(tt, [])]
        if c.TT_ESN in n and n[c.TT_ESN] != [False]:
            words += ["esn" if e else "noesn" for e in n[c.TT_ESN]]
        out.append(f"{c.PROTO_NAMES.get(p.protocol, p.protocol)}:" + "-".join(words))
    return ", ".join(out)
