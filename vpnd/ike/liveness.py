"""Retransmission and dead peer detection: one rule for IKEv1 and IKEv2 (issues 7.9, 9).

Sans-IO: pure functions of the configuration; the cores apply them with their own `now`.

Timers come from the configuration (`daemon.timers`, vpnd/configschema.py Timers), the
same for both versions; the defaults are given here in brackets.

Retransmission (RFC 7296 2.1; IKEv1 uses the same policy): a request is sent again
retransmit_base [2 s] after it was sent, then after twice that, four times, ...
(exponential back-off); after retransmit_tries [5] retransmissions and one more wait the
exchange has failed: 2 + 4 + 8 + 16 + 32 + 64 = 126 s with the defaults.

Half-open negotiations: one that is not established half_open [30 s] after it began is
given up, unless we are its initiator and still retransmitting our request (then the
retransmission schedule above bounds it, and the failure says "no answer"). It bounds a
responder waiting for the initiator's next message (IKEv2 IKE_AUTH; IKEv1 message 3 or
5). Until issue 9 IKEv1 used 60 s and cut its own initiators' retransmissions at it.

Dead peer detection, `dpd: {interval: I, retry: R}`, read as Cisco IOS reads
`crypto isakmp keepalive I R` ("retry: seconds between retries when a keepalive fails;
when 5 aggressive messages are missed, the peer is considered down"):
- after I seconds without anything authenticated (or, on-demand, while we send into the
  tunnel and nothing comes back) one probe goes out: IKEv1 an R-U-THERE (RFC 3706), IKEv2
  an empty INFORMATIONAL request (RFC 7296 2.4);
- unanswered, it is retried every R seconds (IKEv1: a new R-U-THERE; IKEv2: the same
  request retransmitted, the window being 1), DPD_RETRIES (5) times;
- R seconds after the last retry, still without an answer, the peer is dead: at the first
  probe + (DPD_RETRIES + 1) x R, so at most I + 6 x R after the peer fell silent.
  {interval: 2, retry: 2}: probes at 2, 4, 6, 8, 10, 12 s, dead at 14 s, in both versions.
- IKEv2 requests other than the probe (rekeys, deletes) on an established SA keep the
  RFC back-off but within the same budget: whatever was asked, a peer that answers nothing
  for (DPD_RETRIES + 1) x R seconds is dead.
"""

from __future__ import annotations

DPD_RETRIES = 5  # retried probes before the peer is dead (Cisco's "5 aggressive messages")


def retransmit_timeouts(timers) -> list[float]:
    """The wait after the first send and after each retransmission: base x 2^i."""
    return [timers.retransmit_base * 2**i for i in range(timers.retransmit_tries + 1)]


def retransmit_wait(tries_done: int, timers) -> float:
    """The wait after the send that follows `tries_done` retransmissions."""
    return timers.retransmit_base * 2**tries_done


def retransmissions_exhausted(tries_done: int, timers) -> bool:
    return tries_done >= timers.retransmit_tries


def half_open_expired(created: float, now: float, timers, *, retransmitting: bool) -> bool:
    """Give up a negotiation that is not established yet (see the module docstring);
    `retransmitting`: we initiated it and our request is still on its retransmission
    schedule."""
    return not retransmitting and now >= created + timers.half_open


def half_open_due(created: float, timers) -> float:
    """When half_open_expired() becomes true (for the cores' next_timer)."""
    return created + timers.half_open


def dpd_retry(dpd) -> float:
    """Seconds between retried probes (config allows 1..100; never 0)."""
    return float(max(1, dpd.retry or 1))


def dpd_probe_timeouts(dpd) -> list[float]:
    """IKEv2: the wait after the probe and after each of its DPD_RETRIES retransmissions."""
    return [dpd_retry(dpd)] * (DPD_RETRIES + 1)


def dpd_dead_after(dpd) -> float:
    """Seconds from the first unanswered probe until the peer is dead."""
    return (DPD_RETRIES + 1) * dpd_retry(dpd)


def dpd_dead_bound(dpd) -> float:
    """Latest time, after the peer fell silent, at which it is declared dead (periodic)."""
    return dpd.interval + dpd_dead_after(dpd)


def dpd_peer_dead(retries_done: int) -> bool:
    """IKEv1: the probe timer fired again; `retries_done` counts that firing."""
    return retries_done > DPD_RETRIES


def within(timeouts: list[float], budget: float) -> list[float]:
    """Cut a retransmission schedule so that it ends after `budget` seconds in all."""
    out, total = [], 0.0
    for x in timeouts:
        if total + x > budget:
            break
        out.append(x)
        total += x
    if total < budget:
        out.append(budget - total)
    return out


def dpd_schedule(dpd) -> tuple[list[float], float]:
    """(times of the probes, time the peer is dead), counted from the moment the peer fell
    silent, for a peer that never answers again (periodic mode). For docs and tests."""
    first = float(dpd.interval)
    r = dpd_retry(dpd)
    return [first + i * r for i in range(DPD_RETRIES + 1)], first + dpd_dead_after(dpd)
