"""The kinds of Event the engines report (vpnd/ike/actions.py Event.kind), one list.

An Event's kind is an EventKind: a StrEnum, so it compares equal to, prints and serialises
as its name ("child_up") for logs, status, metrics and `vpnctl monitor`, but an Event of a
kind not listed here cannot be made (ValueError at the engine that made it), and the
daemon's failure handling is a set of members, not of strings that could be misspelt.
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    # IKE SAs
    IKE_CONNECTING = "ike_connecting"  # a negotiation starts (also the cores' own restarts)
    IKE_UP = "ike_up"
    IKE_DOWN = "ike_down"
    IKE_REKEYED = "ike_rekeyed"  # after an IKE SA rekey, also when the peer's rekey won
    IKE_DELETED = "ike_deleted"
    IKE_DUPLICATE = "ike_duplicate"  # one of two IKE SAs both ends set up at once goes
    IKE_CHILDLESS = "ike_childless"  # IKE SA set up without a CHILD_SA (RFC 6023)
    DELETE_UNANSWERED = "delete_unanswered"  # our Delete got no answer: the SA was removed
    NAT = "nat"  # NAT detected / peer moved
    IKE_MOVED = "ike_moved"  # MOBIKE (RFC 4555): the IKE SA and its CHILD_SAs moved
    MOBIKE_NO_PATH = "mobike_no_path"  # MOBIKE: no address pair reaches the peer
    MOBIKE_REFUSED = "mobike_refused"  # MOBIKE: an address update refused
    # CHILD_SAs / IPsec SAs
    CHILD_UP = "child_up"
    CHILD_DOWN = "child_down"
    CHILD_OUTBOUND = "child_outbound"  # a rekeyed CHILD_SA now carries outbound traffic
    CHILD_EXPIRE = "child_expire"
    CHILD_DUPLICATE = "child_duplicate"  # crossing CREATE_CHILD_SAs: the redundant one goes
    REKEY_COLLISION = "rekey_collision"
    IPCOMP_REFUSED = "ipcomp_refused"
    INVALID_SPI = "invalid_spi"
    # failures (FAILURES below: a waiting vpnctl up/rekey fails with the message)
    AUTH_FAILED = "auth_failed"
    NO_PROPOSAL = "no_proposal"
    TS_UNACCEPTABLE = "ts_unacceptable"
    FAILED = "failed"  # attempt unanswered or refused by the peer, CHILD_SA refused
    TIMEOUT = "timeout"
    PEER_DEAD = "peer_dead"
    REKEY_FAILED = "rekey_failed"
    ERROR = "error"  # internal failures; commands that cannot work
    # unauthenticated input (issue 8; summarised by limits.LogSummary)
    INVALID_KE = "invalid_ke"
    BAD_KE = "bad_ke"
    NO_CONFIG = "no_config"
    HALF_OPEN_LIMIT = "half_open_limit"
    HALF_OPEN_EVICTED = "half_open_evicted"
    HALF_OPEN_TIMEOUT = "half_open_timeout"
    AM_RATE = "am_rate"  # IKEv1 Aggressive Mode message 1 over its rate
    INVALID_MAJOR_VERSION = "invalid_major_version"
    UNSUPPORTED_CRITICAL = "unsupported_critical"
    SUPPRESSED = "suppressed"  # a summary of the above
    DROP = "drop"  # malformed input, rate-limited
    RETRANSMIT = "retransmit"


# events that end a negotiation: a waiting `vpnctl up/rekey` fails with the message, the
# connection's last_error is set, queued trap packets are dropped
FAILURES = frozenset({EventKind.AUTH_FAILED, EventKind.NO_PROPOSAL, EventKind.ERROR,
                      EventKind.FAILED, EventKind.PEER_DEAD, EventKind.TIMEOUT,
                      EventKind.TS_UNACCEPTABLE, EventKind.REKEY_FAILED})

# logged at debug level (one per message or retransmission)
QUIET = frozenset({EventKind.DROP, EventKind.RETRANSMIT})
