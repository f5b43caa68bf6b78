"""Bounded rate limits and log summaries for work driven by unauthenticated input
(issue 8: no amplifier, no log flood). Shared by IKEv1 and IKEv2.

Sans-IO like the IKE cores: nothing here reads a clock; callers pass `now` (seconds, any
monotonic origin). Memory is bounded whatever an attacker sends: the key tables are LRU
maps of a fixed maximum size, and distinct sources are counted up to a cap.

- RateLimiter: a token bucket per key (e.g. per peer address). `allow(key, now)` says
  whether one more unit of work (an answer, a notify) may be done now.
- LogSummary: the first occurrence of a kind of message is logged in full; further ones
  within `interval` are only counted, and one summary line per interval reports them
  ("suppressed 29311 'no connection for peer' messages from 10000 sources in the last 10 s").
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

# Default table sizes: large enough for every real peer of a gateway, small enough that a
# full table costs a few hundred kilobytes.
MAX_KEYS = 4096
MAX_SOURCES = 10000


class RateLimiter:
    """A token bucket per key, refilled at `rate` tokens/s up to `burst`; at most `max_keys`
    keys are tracked (least recently used ones are forgotten first).

    Forgetting a key can only make the limiter more generous to that key (it starts again
    with a full bucket), so an attacker who churns the table gains at most `burst` per key
    per eviction; `overall` (tokens/s for all keys together, optional) caps even that.
    """

    def __init__(self, rate: float, burst: float = 1.0, *, max_keys: int = MAX_KEYS,
                 overall: float | None = None, overall_burst: float | None = None):
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst >= 1, max_keys >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict = OrderedDict()  # key -> (tokens, last refill)
        self._overall = None
        if overall is not None:
            self._overall = RateLimiter(overall, overall_burst or max(1.0, overall), max_keys=1)
        self.denied = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key, now: float) -> float:
        got = self._buckets.get(key)
        if got is None:
            return self.burst
        tokens, last = got
        return min(self.burst, tokens + max(0.0, now - last) * self.rate)

    def peek(self, key, now: float) -> bool:
        """Would allow() say yes (without taking a token)?"""
        return self._tokens(key, now) >= 1.0

    def allow(self, key, now: float) -> bool:
        tokens = self._tokens(key, now)
        ok = tokens >= 1.0
        if ok and self._overall is not None and not self._overall.allow(None, now):
            ok = False
        if ok:
            tokens -= 1.0
        else:
            self.denied += 1
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok

    def sweep(self, now: float) -> None:
        """Forget keys whose bucket is full again (they are as if never seen)."""
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.burst]:
            del self._buckets[key]


@dataclass
class _Window:
    start: float
    count: int = 0  # suppressed since start
    sources: set = field(default_factory=set)
    sources_capped: bool = False


class LogSummary:
    """Bounded logging of messages caused by unauthenticated input.

    note(kind, source, now) -> True: log this message in full (the first of its kind, or
    the first after a quiet interval); False: it was counted, do not log it. due(now)
    returns the summary lines of the intervals that have ended; next_due() says when to call
    it next (so a summary comes even if the flood stops). A kind stays in summary mode while
    messages keep coming; an interval with nothing suppressed ends it.
    """

    def __init__(self, interval: float = 10.0, *, max_sources: int = MAX_SOURCES,
                 max_kinds: int = 64):
        self.interval = float(interval)
        self.max_sources = max_sources
        self.max_kinds = max_kinds
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._pending: list[tuple[float, tuple]] = []  # (when closed, record)
        self._soonest = float("inf")  # no window ends before this (due_records' fast path)
        self.suppressed_total = 0

    def note(self, kind: str, source, now: float) -> bool:
        w = self._windows.get(kind)
        if w is not None and now >= w.start + self.interval:
            self._close(kind, w, now)  # a summary is pending: due() reports it
            w = self._windows.get(kind)
        if w is None:
            if len(self._windows) >= self.max_kinds:
                return False  # kinds are a fixed set in the code; this only guards misuse
            self._windows[kind] = _Window(now)
            self._soonest = min(self._soonest, now + self.interval)
            return True
        w.count += 1
        self.suppressed_total += 1
        if not w.sources_capped and source not in w.sources:
            if len(w.sources) >= self.max_sources:
                w.sources_capped = True  # "N+ sources": memory stays bounded
            else:
                w.sources.add(source)
        return False

    def _close(self, kind: str, w: _Window, now: float) -> None:
        if w.count:
            rec = (kind, w.count, len(w.sources), self._line(kind, w, now))
            self._pending.append((now, rec))
            self._windows[kind] = _Window(now)  # still flooding: stay in summary mode
            self._soonest = min(self._soonest, now + self.interval)
        else:
            del self._windows[kind]

    def _line(self, kind: str, w: _Window, now: float) -> str:
        n = len(w.sources)
        src = f"{n}+" if w.sources_capped else str(n)
        secs = max(0, round(now - w.start))
        plural = "" if w.count == 1 else "s"
        splural = "" if n == 1 and not w.sources_capped else "s"
        return (f"suppressed {w.count} '{kind}' message{plural} from {src} source{splural} "
                f"in the last {secs} s")

    def due(self, now: float) -> list[str]:
        """Summary lines of intervals that ended by `now` (call from a timer)."""
        return [rec[3] for rec in self.due_records(now)]

    def due_records(self, now: float) -> list[tuple[str, int, int, str]]:
        """Like due(), as (kind, suppressed count, distinct sources (capped), line)."""
        if not self._pending and now < self._soonest:
            return []  # called per message during a flood: O(1) until a window ends
        for kind, w in list(self._windows.items()):
            if now >= w.start + self.interval:
                self._close(kind, w, now)
        self._soonest = min((w.start + self.interval for w in self._windows.values()), default=float("inf"))
        out, self._pending = [rec for _, rec in self._pending], []
        return out

    def next_due(self) -> float | None:
        times = [w.start + self.interval for w in self._windows.values()]
        times += [t for t, _ in self._pending]
        return min(times) if times else None



# INVALID_SPI (RFC 7296 2.21.3) / INVALID-SPI (RFC 2408 3.14.1) notifies answer ESP/AH for an
# SPI we do not know. Anyone can send such packets from a peer's address, so the answer is
# limited per peer address, never per SPI (random SPIs would each get one): one rule for both
# IKE versions (issues 8.3 and 9).
INVALID_SPI_INTERVAL = 1.0  # at most one notify per peer address per second


def invalid_spi_limiter() -> RateLimiter:
    """The limiter of INVALID_SPI/INVALID-SPI notifies: `allow(peer_ip, now)`, bounded."""
    return RateLimiter(1.0 / INVALID_SPI_INTERVAL, 1)


# Error notifies sent without an authenticated SA (IKEv2 NO_PROPOSAL_CHOSEN, INVALID_SYNTAX,
# ...; IKEv1 NO-PROPOSAL-CHOSEN, INVALID-KEY-INFORMATION ... answering a message 1): they help
# a real peer diagnose, but a spoofed flood must not turn us into a reflector. Per source and
# overall, one rule for both versions (issues 8.2, 9).
ERROR_ANSWER_RATE = 1.0  # per source address, tokens/s
ERROR_ANSWER_BURST = 3
ERROR_ANSWER_OVERALL = 50.0  # all sources together, per second
UNAUTH_LOG_INTERVAL = 10.0  # events caused by unauthenticated input: one summary per interval


def error_answer_limiter() -> RateLimiter:
    """The limiter of unprotected error notifies: `allow(source_ip, now)`, bounded."""
    return RateLimiter(ERROR_ANSWER_RATE, ERROR_ANSWER_BURST, overall=ERROR_ANSWER_OVERALL)


def unauth_log() -> LogSummary:
    """The summariser of events caused by unauthenticated input."""
    return LogSummary(UNAUTH_LOG_INTERVAL)
