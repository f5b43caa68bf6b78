"""Malformed IKEv1 input never raises out of the core, and established SAs keep working."""
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpnd.ike.actions import SendDatagram

from test_ikev1_harness import A_IP, B_IP, pair

_NET = pair()
_MSGS = [(s, dg) for s, dg in _NET.sent]  # every message of a Main Mode + Quick Mode run


def _header(spi_i=b"\x01" * 8, spi_r=b"\x00" * 8, np=1, exch=2, flags=0, mid=0, body=b""):
    return struct.pack("!8s8sBBBBII", spi_i, spi_r, np, 0x10, exch, flags, mid, 28 + len(body)) + body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes(data):
    net = pair(start=False)
    out = net.b.receive_datagram(data, (B_IP, 500), (A_IP, 500), 0.0)
    assert isinstance(out, list)


@settings(max_examples=300, deadline=None)
@given(np=st.integers(0, 255), exch=st.sampled_from([2, 4, 5, 32, 0, 255]), flags=st.integers(0, 255),
       mid=st.integers(0, 2**32 - 1), body=st.binary(max_size=300))
def test_valid_header_garbage_body(np, exch, flags, mid, body):
    net = pair(start=False)
    data = _header(np=np, exch=exch, flags=flags, mid=mid, body=body)
    assert isinstance(net.b.receive_datagram(data, (B_IP, 500), (A_IP, 500), 0.0), list)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(idx=st.integers(0, len(_MSGS) - 1), pos=st.integers(0, 2000), bit=st.integers(0, 7),
       cut=st.integers(0, 2000), mode=st.sampled_from(["flip", "truncate", "extend"]))
def test_mutated_messages_against_established_pair(idx, pos, bit, cut, mode):
    """Replay a mutated message of a real exchange into an established pair: no exception,
    and afterwards a Quick Mode rekey still works over the same ISAKMP SA."""
    net = pair()
    side, dg = _MSGS[idx]
    data = bytearray(dg.data)
    if mode == "flip":
        data[pos % len(data)] ^= 1 << bit
    elif mode == "truncate":
        data = data[: cut % len(data)]
    else:
        data += bytes(cut % 64)
    # send it to whichever side would receive that message, with the right cookies
    mine = net.sent[idx][1]
    target = net.b if side == "A" else net.a
    fixed = bytearray(mine.data)  # this run's message at the same position
    if mode == "flip":
        fixed[pos % len(fixed)] ^= 1 << bit
    elif mode == "truncate":
        fixed = fixed[: cut % len(fixed)]
    else:
        fixed += bytes(cut % 64)
    for blob in (bytes(data), bytes(fixed)):
        out = target.receive_datagram(blob, mine.remote, mine.local, net.now)
        assert isinstance(out, list)
        net.feed(target, [x for x in out if not isinstance(x, SendDatagram)])
    before = len(net.installs("A"))
    net.feed(net.a, net.a.rekey("site", net.now + 1))
    net.advance(2)
    assert len(net.installs("A")) == before + 1, net.events("A")[-5:]


def test_garbage_flood_is_counted_not_logged_each_time():
    net = pair(start=False)
    events = []
    for i in range(200):
        out = net.b.receive_datagram(_header(body=b"\xff" * 40), (B_IP, 500), (A_IP, 500), 0.001 * i)
        events += [e for e in out if getattr(e, "kind", "") == "drop"]
    assert net.b.drops == 200 and len(events) == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(0, 8), pos=st.integers(0, 2000), bit=st.integers(0, 7),
       aggressive=st.booleans())
def test_mutated_message_injected_mid_exchange(k, pos, bit, aggressive):
    """A forged copy (one flipped bit) of the k-th message arrives just before the real one,
    in every state of Main/Aggressive/Quick Mode: no exception escapes and the tunnel still
    comes up."""
    conf = {"aggressive": aggressive}
    net = pair(conf, conf, start=False)
    count = {"n": 0}
    orig_feed = net.feed

    def feed(core, actions):
        out = []
        for x in actions:
            if isinstance(x, SendDatagram) and x.data != b"\xff":
                if count["n"] == k:
                    forged = bytearray(x.data)
                    forged[pos % len(forged)] ^= 1 << bit
                    other = net.b if core is net.a else net.a
                    res = other.receive_datagram(bytes(forged), x.remote, x.local, net.now)
                    assert isinstance(res, list)
                    # answers to the forgery go nowhere (an attacker's address in reality)
                count["n"] += 1
            out.append(x)
        orig_feed(core, out)

    net.feed = feed
    net.feed(net.a, net.a.initiate("site", 0.0))
    net.advance(120)
    # a forged unauthenticated phase-1 message may spoil one attempt (RFC 2409 offers no
    # protection there), but the connection (start: start) tries again and comes up
    assert len(net.live_children("A")) == 1 and len(net.live_children("B")) == 1, \
        (k, pos, bit, [e.message for e in net.events("A")][-4:], [e.message for e in net.events("B")][-4:])
