"""vpnd/ike/limits.py: bounded per-key token buckets and log summaries (issue 8)."""

import random

import pytest

from vpnd.ike.limits import LogSummary, RateLimiter


def test_bucket_allows_burst_then_rate():
    rl = RateLimiter(rate=1.0, burst=2)
    assert rl.allow("a", 0.0) and rl.allow("a", 0.0)
    assert not rl.allow("a", 0.0)
    assert not rl.allow("a", 0.5)
    assert rl.allow("a", 1.6)  # refilled one token
    assert not rl.allow("a", 1.7)
    assert rl.allow("b", 1.7)  # keys are independent
    assert rl.denied == 3


def test_bucket_refill_is_capped_at_burst():
    rl = RateLimiter(rate=10.0, burst=3)
    for _ in range(3):
        assert rl.allow("a", 0.0)
    # a long pause refills to burst, not to 1000 tokens
    assert sum(rl.allow("a", 100.0) for _ in range(10)) == 3


def test_key_table_is_bounded_whatever_the_attacker_sends():
    rl = RateLimiter(rate=1.0, burst=1, max_keys=100)
    rnd = random.Random(1)
    for i in range(20000):
        rl.allow(f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}", i * 1e-4)
        assert len(rl) <= 100
    assert len(rl) == 100


def test_lru_keeps_the_busy_key():
    rl = RateLimiter(rate=1.0, burst=1, max_keys=10)
    assert rl.allow("peer", 0.0)
    for i in range(1000):
        rl.allow(f"x{i}", 0.0)
        rl.allow("peer", 0.0)  # used all the time: never evicted, stays limited
    assert not rl.allow("peer", 0.5)


def test_overall_cap_bounds_table_churn():
    rl = RateLimiter(rate=1.0, burst=1, max_keys=10, overall=5.0, overall_burst=5)
    allowed = sum(rl.allow(f"k{i}", 0.0) for i in range(1000))
    assert allowed == 5


def test_sweep_forgets_full_buckets():
    rl = RateLimiter(rate=1.0, burst=1)
    rl.allow("a", 0.0)
    rl.allow("b", 0.9)
    rl.sweep(1.5)
    assert len(rl) == 1  # a is full again, b is not


def test_bad_parameters():
    with pytest.raises(ValueError):
        RateLimiter(rate=0)


def test_summary_first_in_full_then_counts():
    s = LogSummary(interval=10.0)
    assert s.note("no connection for peer", "192.0.2.1", 0.0) is True
    for i in range(29311):
        assert s.note("no connection for peer", f"src{i % 10000}", 0.001 * i / 10) is False
    assert s.due(5.0) == []
    assert s.next_due() == 10.0
    lines = s.due(10.0)
    assert lines == ["suppressed 29311 'no connection for peer' messages from 10000 sources "
                     "in the last 10 s"]
    # nothing more in the next interval: the kind goes back to logging the first in full
    assert s.due(20.0) == []
    assert s.next_due() is None
    assert s.note("no connection for peer", "192.0.2.1", 21.0) is True


def test_summary_per_interval_while_flood_lasts():
    s = LogSummary(interval=10.0)
    full = 0
    lines = []
    t = 0.0
    while t < 60.0:
        full += s.note("k", "a", t)
        lines += s.due(t)
        t += 0.01
    lines += s.due(70.0)
    assert full == 1
    assert len(lines) == 6  # one per 10 s, never one per message
    assert all(x.startswith("suppressed ") for x in lines)


def test_summary_kinds_are_separate_and_sources_capped():
    s = LogSummary(interval=1.0, max_sources=50)
    assert s.note("a", 1, 0.0) and s.note("b", 1, 0.0)
    for i in range(1000):
        s.note("a", i, 0.5)
    s.note("b", 1, 0.5)
    lines = sorted(s.due(1.0))
    assert lines == sorted(["suppressed 1000 'a' messages from 50+ sources in the last 1 s",
                         "suppressed 1 'b' message from 1 source in the last 1 s"])


def test_summary_closed_by_note_is_reported_by_due():
    s = LogSummary(interval=1.0)
    s.note("a", 1, 0.0)
    s.note("a", 2, 0.5)
    assert s.note("a", 3, 5.0) is False  # window over: summary pending, still flooding
    assert s.next_due() == 5.0
    assert s.due(5.0) == ["suppressed 1 'a' message from 1 source in the last 5 s"]
