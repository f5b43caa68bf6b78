"""One line per IKE message in and out, for both versions, as strongSwan users read them:

    parsed IKE_AUTH response 1 [ IDr AUTH SA TSi TSr ]
    generating QUICK_MODE request 3612397315 [ HASH SA No KE ID ID ]
    sending packet: from 10.0.0.1[500] to 10.0.0.2[500] (312 bytes)

The cores build these only while their `trace` flag is on (the daemon sets it when the
`ike` or `net` subsystem logs at debug) and hand them out as `actions.Trace`. Everything
here reads payload *types* and notify *types* only: no payload body (keys, nonces, IDs
that a peer chose) ever reaches a trace line.
"""

from __future__ import annotations

import struct

from vpnd.ike.actions import Address, Trace
from vpnd.ike.v2 import constants as c

# IKEv2 payload types (RFC 7296 3.2, RFC 7383 2.5) -> label
V2_PAYLOADS = {33: "SA", 34: "KE", 35: "IDi", 36: "IDr", 37: "CERT", 38: "CERTREQ", 39: "AUTH",
               40: "No", 41: "N", 42: "D", 43: "V", 44: "TSi", 45: "TSr", 46: "SK", 47: "CP",
               48: "EAP", 49: "GSPM", 53: "EF"}

# IKEv2 notify types (RFC 7296 3.10.1 and the RFCs after it, IANA "IKEv2 Notify Message Types").
# Status types get short labels (the common ones appear in every exchange); error types are
# spelled out, they are what an operator looks for.
V2_NOTIFIES = {
    **c.NOTIFY_NAMES,                               # the error types, named where they are defined
    42: "USE_ASSIGNED_HoA",
    16384: "INIT_CONTACT", 16385: "SET_WINSIZE", 16386: "ADD_TS_POSS", 16387: "IPCOMP_SUP",
    16388: "NATD_S_IP", 16389: "NATD_D_IP", 16390: "COOKIE", 16391: "USE_TRANSP",
    16392: "HTTP_CERT_LOOK", 16393: "REKEY_SA", 16394: "ESP_TFC_PAD_N", 16395: "NON_FIRST_FRAG",
    16396: "MOBIKE_SUP", 16397: "ADD_4_ADDR", 16398: "ADD_6_ADDR", 16399: "NO_ADD_ADDR",
    16400: "UPD_SA_ADDR", 16401: "COOKIE2", 16402: "NO_NATS_ALLOWED", 16403: "AUTH_LFT",
    16404: "MULT_AUTH", 16405: "AUTH_FOLLOWS", 16406: "REDIR_SUP", 16407: "REDIR",
    16408: "REDIR_FROM", 16417: "EAP_ONLY", 16418: "CHILDLESS", 16419: "QUICK_CRASH_DETECT",
    16420: "MSGID_SYN_SUP", 16421: "REPLAY_CTR_SYN_SUP", 16422: "MSGID_SYN",
    16423: "REPLAY_CTR_SYN", 16430: "FRAG_SUP", 16431: "HASH_ALG",
}

# IKEv1 / ISAKMP payload types (RFC 2408 3.1, RFC 3947, the NAT-T drafts' numbers)
V1_PAYLOADS = {1: "SA", 2: "P", 3: "T", 4: "KE", 5: "ID", 6: "CERT", 7: "CERTREQ", 8: "HASH",
               9: "SIG", 10: "No", 11: "N", 12: "D", 13: "V", 14: "ATTR", 20: "NAT-D", 21: "NAT-OA",
               130: "NAT-D", 131: "NAT-OA", 132: "FRAG"}

# IKEv1 notify types (RFC 2408 3.14.1, RFC 2407 4.6.3, RFC 3706)
V1_NOTIFIES = {
    1: "INVALID_PAYLOAD_TYPE", 2: "DOI_NOT_SUPPORTED", 3: "SITUATION_NOT_SUPPORTED",
    4: "INVALID_COOKIE", 5: "INVALID_MAJOR_VERSION", 6: "INVALID_MINOR_VERSION",
    7: "INVALID_EXCHANGE_TYPE", 8: "INVALID_FLAGS", 9: "INVALID_MESSAGE_ID",
    10: "INVALID_PROTOCOL_ID", 11: "INVALID_SPI", 12: "INVALID_TRANSFORM_ID",
    13: "ATTRIBUTES_NOT_SUPPORTED", 14: "NO_PROPOSAL_CHOSEN", 15: "BAD_PROPOSAL_SYNTAX",
    16: "PAYLOAD_MALFORMED", 17: "INVALID_KEY_INFORMATION", 18: "INVALID_ID_INFORMATION",
    19: "INVALID_CERT_ENCODING", 20: "INVALID_CERTIFICATE", 21: "CERT_TYPE_UNSUPPORTED",
    22: "INVALID_CERT_AUTHORITY", 23: "INVALID_HASH_INFORMATION", 24: "AUTHENTICATION_FAILED",
    25: "INVALID_SIGNATURE", 26: "ADDRESS_NOTIFICATION", 27: "NOTIFY_SA_LIFETIME",
    28: "CERTIFICATE_UNAVAILABLE", 29: "UNSUPPORTED_EXCHANGE_TYPE", 30: "UNEQUAL_PAYLOAD_LENGTHS",
    16384: "CONNECTED", 24576: "RESPONDER_LIFETIME", 24577: "REPLAY_STATUS",
    24578: "INITIAL_CONTACT", 36136: "DPD", 36137: "DPD_ACK",
}

# exchange types: IKEv2 (RFC 7296 3.1, RFC 7383) and IKEv1 (RFC 2408 4.1, RFC 2409)
V2_EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL",
                38: "IKE_SESSION_RESUME", 43: "IKE_INTERMEDIATE"}
V1_EXCHANGES = {1: "BASE", 2: "ID_PROT", 3: "AUTH_ONLY", 4: "AGGRESSIVE", 5: "INFORMATIONAL_V1",
                6: "TRANSACTION", 32: "QUICK_MODE"}

MAX_PAYLOADS = 64  # a hostile chain is not walked further (the codec bounds it as well)


def _label(ptype: int, version: int) -> str:
    table = V2_PAYLOADS if version == 2 else V1_PAYLOADS
    return table.get(ptype, f"UNKNOWN({ptype})")


def notify_label(ntype: int, version: int) -> str:
    table = V2_NOTIFIES if version == 2 else V1_NOTIFIES
    return f"N({table.get(ntype, ntype)})"


def v2_payloads(payloads) -> list[str]:
    """Labels of decoded IKEv2 payload objects (vpnd/ike/v2/payloads.py, codec.Encrypted)."""
    out = []
    for p in payloads[:MAX_PAYLOADS]:
        t = p.payload_type
        if t == 41:
            out.append(notify_label(getattr(p, "type", 0), 2))
        elif t == 53 and hasattr(p, "number"):
            out.append(f"EF({p.number}/{getattr(p, 'total', '?')})")
        else:
            out.append(_label(t, 2))
    return out


def chain(data: bytes, first: int, start: int, version: int) -> list[str]:
    """Labels of a payload chain in wire form (`first` = the type of the payload at
    `start`), for messages we hold as bytes (IKEv1 in and out). Stops at the chain's end,
    at a truncated payload or after MAX_PAYLOADS; an IKEv2 SK payload ends the chain."""
    out = []
    t, pos = first, start
    while t and pos + 4 <= len(data) and len(out) < MAX_PAYLOADS:
        nxt, _, plen = struct.unpack_from("!BBH", data, pos)
        if plen < 4 or pos + plen > len(data):
            out.append(_label(t, version) + "(truncated)")
            break
        if t == 11 and version == 1 and plen >= 12:  # DOI(4) proto(1) spi size(1) type(2)
            out.append(notify_label(struct.unpack_from("!H", data, pos + 10)[0], 1))
        elif t == 41 and version == 2 and plen >= 8:  # proto(1) spi size(1) type(2)
            out.append(notify_label(struct.unpack_from("!H", data, pos + 6)[0], 2))
        else:
            out.append(_label(t, version))
        if version == 2 and t in (46, 53):
            break
        pos += plen
        t = nxt
    return out


def exchange_name(exchange: int, version: int) -> str:
    table = V2_EXCHANGES if version == 2 else V1_EXCHANGES
    return table.get(exchange, f"EXCHANGE({exchange})")


def message(verb: str, exchange: int, version: int, response: bool, mid: int, labels) -> str:
    """`parsed IKE_AUTH response 1 [ IDr AUTH SA TSi TSr ]` (verb: parsed | generating)."""
    kind = "response" if response else "request"
    return f"{verb} {exchange_name(exchange, version)} {kind} {mid} [ {' '.join(labels)} ]"


def where(addr: Address) -> str:
    return f"{addr[0]}[{addr[1]}]"


def packet(sending: bool, local: Address, remote: Address, size: int) -> str:
    """`sending packet: from 10.0.0.1[500] to 10.0.0.2[500] (312 bytes)` or `received ...`."""
    if sending:
        return f"sending packet: from {where(local)} to {where(remote)} ({size} bytes)"
    return f"received packet: from {where(remote)} to {where(local)} ({size} bytes)"


def ike(text: str, conn: str | None, ike_id: int | None) -> Trace:
    return Trace("ike", text, conn, ike_id)


def net(text: str, conn: str | None, ike_id: int | None) -> Trace:
    return Trace("net", text, conn, ike_id)


def v1_message(verb: str, header: bytes, body: bytes, first: int, start: int, response: bool) -> str:
    """An IKEv1 message from its header (the datagram's first 28 bytes) and its plain
    payload chain (`body` from `start`, first payload of type `first`)."""
    mid = struct.unpack_from("!I", header, 20)[0]
    return message(verb, header[18], 1, response, mid, chain(body, first, start, 1))


__all__ = ["v2_payloads", "chain", "message", "packet", "ike", "net", "v1_message",
           "exchange_name", "notify_label", "where"]
