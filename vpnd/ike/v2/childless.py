"""Childless IKE SAs (RFC 6023): the rules of a connection's `childless` setting, in one place
for the IKE_SA_INIT and IKE_AUTH modules of both roles.

The values and what they do are strongSwan's (`connections.<conn>.childless`; 5.9.8 has
allow, force and never, 6.0 added prefer):

- allow (default): as responder we announce support and accept a childless IKE_AUTH; as
  initiator we put the first CHILD_SA into IKE_AUTH as usual.
- prefer: as allow, but as initiator we leave the CHILD_SA out of IKE_AUTH when the
  responder announced support, and create it with CREATE_CHILD_SA right after.
- force: only childless IKE SAs, both roles: as initiator we fail when the responder did not
  announce support; as responder we refuse an IKE_AUTH that carries a CHILD_SA.
- never: we do not announce support and refuse a childless IKE_AUTH (as initiator we
  always create the first CHILD_SA in IKE_AUTH).

RFC 6023 3: the responder that supports it sends CHILDLESS_IKEV2_SUPPORTED in its
IKE_SA_INIT response; only then may the initiator leave SA, TSi and TSr out of IKE_AUTH.
A responder that gets an IKE_AUTH without them but does not accept that treats it as a
malformed message (the payloads are mandatory in RFC 7296 1.2): INVALID_SYNTAX, and the
IKE SA is not created (RFC 7296 2.21.2). strongSwan answers the same.
"""

from __future__ import annotations

from vpnd.ike.v2.payloads import SA, TSi, TSr

RFC = "RFC 6023"


def announce(conns) -> bool:
    """Responder: send CHILDLESS_IKEV2_SUPPORTED if any connection still possible for this
    peer accepts a childless IKE_AUTH (the one chosen at IKE_AUTH decides then)."""
    return any(c.childless != "never" for c in conns)


def initiate_childless(conn, peer_supports: bool) -> bool:
    """Initiator: leave the CHILD_SA out of IKE_AUTH?"""
    mode = conn.childless
    return peer_supports and mode in ("prefer", "force")


def initiator_refusal(conn, peer_supports: bool) -> str | None:
    """Initiator, after IKE_SA_INIT: why this IKE SA cannot go on (force without support)."""
    if conn.childless == "force" and not peer_supports:
        return (f"{conn.name} has childless: force but the peer did not announce "
                f"CHILDLESS_IKEV2_SUPPORTED ({RFC})")
    return None


def is_childless(payloads: list) -> bool:
    """An IKE_AUTH request without SA, TSi and TSr (RFC 6023 3). One or two of them alone
    is no childless request but a malformed one."""
    return not any(isinstance(p, (SA, TSi, TSr)) for p in payloads)


def responder_refusal(conn, childless: bool) -> str | None:
    """Responder, once the peer is authenticated: why its IKE_AUTH is refused (answered
    INVALID_SYNTAX, as strongSwan does), or None."""
    mode = conn.childless
    if childless and mode == "never":
        return f"the peer initiated a childless IKE_SA but {conn.name} has childless: never ({RFC})"
    if not childless and mode == "force":
        return f"the peer did not initiate a childless IKE_SA but {conn.name} has childless: force ({RFC})"
    return None
