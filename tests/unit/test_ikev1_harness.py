"""Two IKEv1 cores talking in memory with a fake clock (shared by tests/unit/test_ikev1_*.py; holds no tests)."""
from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

import dataclasses

from vpnd import sadb
from vpnd.config import parse_config
from vpnd.ike.actions import (CHILD_ACTIONS, ActivateOutbound, DeleteChildSA, Event, InstallChildSA,
                              SendDatagram)
from vpnd.ike.v1.core import Ikev1Core

A_IP, B_IP = "10.200.0.1", "10.200.0.2"
LAN_A, LAN_B = "10.1.0.0/16", "10.2.0.0/16"
PSK = "in-memory test psk 0123456789"


def conn_conf(local, peer, lts, rts, **kw):
    c = {"version": 1, "local": local, "peer": peer, "psk": PSK, "local_ts": [lts], "remote_ts": [rts],
         "ike": "aes128-sha1-modp2048", "esp": "aes128-sha1-modp2048", "start": "start",
         "dpd": {"interval": 30, "retry": 5, "mode": "periodic", "action": "clear"}}
    for k, v in kw.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def make_config(local, conns: dict, **daemon):
    return parse_config({"daemon": {"listen": local, **daemon}, "connections": conns})


class Net:
    """Delivers datagrams between cores; hooks can drop, duplicate or rewrite them."""

    def __init__(self, a: Ikev1Core, b: Ikev1Core, *, nat_a=None):
        self.a, self.b = a, b
        self.now = 0.0
        self.log: list[tuple[str, object]] = []  # (side, action)
        self.drop = lambda side, dg: False
        self.dup = lambda side, dg: False
        self.nat_a = nat_a  # (public ip, port map) applied to A's packets as B sees them
        self.sent: list[tuple[str, SendDatagram]] = []
        self.nat_map: dict = {}
        # each side's child actions go into the daemon's real SA table (vpnd/sadb.py)
        self.tables = {"A": sadb.SATable(a.config), "B": sadb.SATable(b.config)}
        # (side, child id, SPIs, action): a side sent on SPIs the other could not receive
        self.violations: list = []

    def sending(self, side) -> set[int]:
        """SPIs the outbound policies of `side` send on."""
        return {k.spi for c in self.tables[side].children.values() if c.policy_id is not None
                for k in c.outbound}

    def receiving(self, side) -> set[int]:
        return {k.spi for c in self.tables[side].children.values() for k in c.inbound}

    def _child_action(self, side, x) -> None:
        self.tables[side].apply(x, self.now)
        for me, peer in (("A", "B"), ("B", "A")):
            lost = self.sending(me) - self.receiving(peer)
            if lost:
                self.violations.append((me, sorted(lost), x))

    def side(self, core):
        return "A" if core is self.a else "B"

    def _translate(self, side, dg: SendDatagram):
        """-> (data, local as the receiver sees it, remote as the receiver sees it)."""
        if self.nat_a is None:
            return dg.data, dg.remote, dg.local
        if side == "A":
            key = dg.local
            if key not in self.nat_map:
                self._nat_next = getattr(self, "_nat_next", 30000) + 1
                self.nat_map[key] = (self.nat_a, self._nat_next)
            pub = self.nat_map[key]
            return dg.data, dg.remote, pub
        # B -> A: B sends to the NAT's public address; undo the mapping
        for inside, pub in self.nat_map.items():
            if tuple(dg.remote) == pub:
                return dg.data, inside, dg.local
        return None

    def feed(self, side_core, actions):
        self.feed_pairs([(side_core, x) for x in actions])

    def feed_pairs(self, q: list):
        """Deliver (core, action) pairs in order, answers after everything already queued
        (breadth first: two exchanges started at once interleave message by message)."""
        q = list(q)
        while q:
            core, x = q.pop(0)
            side = self.side(core)
            self.log.append((side, x))
            if isinstance(x, CHILD_ACTIONS):
                self._child_action(side, x)
            if not isinstance(x, SendDatagram):
                continue
            self.sent.append((side, x))
            if x.data == b"\xff":
                continue  # NAT keepalive
            if self.drop(side, x):
                continue
            other = self.b if core is self.a else self.a
            t = self._translate(side, x)
            if t is None:
                continue
            data, local, remote = t
            n = 2 if self.dup(side, x) else 1
            for _ in range(n):
                q += [(other, y) for y in other.receive_datagram(data, tuple(local), tuple(remote), self.now)]

    def advance(self, seconds: float, step: float = 1.0):
        end = self.now + seconds
        while self.now < end:
            nxt = [t for t in (self.a.next_timer(), self.b.next_timer()) if t is not None]
            t = min([end] + [x for x in nxt if x > self.now - 1e-9])
            self.now = max(self.now, min(t, end))
            for core in (self.a, self.b):
                nt = core.next_timer()
                if nt is not None and nt <= self.now:
                    self.feed(core, core.handle_timer(self.now))
            if self.now >= end:
                break
            if not nxt or min(nxt) > end:
                self.now = end

    def of(self, side, cls):
        return [x for s, x in self.log if s == side and isinstance(x, cls)]

    def events(self, side, kind=None):
        return [x for x in self.of(side, Event) if kind is None or x.kind == kind]

    def installs(self, side):
        """Completed SA pairs, in the order they started to send (an inbound-only install
        completed by ActivateOutbound counts as the whole pair, then); a Quick Mode
        responder's inbound-only first half (installed with message 2) is in inbound_only()."""
        out, first = [], {}
        for x in self.of(side, (InstallChildSA, ActivateOutbound)):
            if isinstance(x, InstallChildSA):
                first[x.child_id] = x
                if x.outbound:
                    out.append(x)
            elif x.child_id in first:
                out.append(dataclasses.replace(first[x.child_id], outbound=x.outbound, replaces=x.replaces))
        return out

    def inbound_only(self, side):
        return [x for x in self.of(side, InstallChildSA) if not x.outbound]

    def live_children(self, side):
        ids = [i.child_id for i in self.installs(side)]
        gone = {d.child_id for d in self.of(side, DeleteChildSA)}
        return [i for i in ids if i not in gone]


def pair(conf_a: dict | None = None, conf_b: dict | None = None, *, daemon_a=None, daemon_b=None,
         nat_a=None, start=True, seed=None):
    conf_a = conf_a or {}
    conf_b = conf_b or {}
    a = Ikev1Core(make_config(A_IP, {"site": conn_conf(A_IP, B_IP, LAN_A, LAN_B, **conf_a)}, **(daemon_a or {})),
                  now=0.0)
    b = Ikev1Core(make_config(B_IP, {"site": conn_conf(B_IP, nat_a or A_IP, LAN_B, LAN_A,
                                                       **{"start": "none", **conf_b})}, **(daemon_b or {})),
                  now=0.0)
    net = Net(a, b, nat_a=nat_a)
    if start:
        net.feed(a, a.initiate("site", 0.0))
        net.advance(1)  # Aggressive Mode starts Quick Mode a moment after message 3
    return net


def make_pki(tmp_path, names=("gwa", "gwb")):
    """A CA and one RSA certificate per name (subject CN=name, SAN DNS name and IP)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpnd test"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "vpnd test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": str(tmp_path / "ca.pem")}
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    import ipaddress
    for i, n in enumerate(names):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subj = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpnd test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, n)])
        ip = [A_IP, B_IP][i] if i < 2 else None
        sans = [x509.DNSName(f"{n}.test")] + ([x509.IPAddress(ipaddress.ip_address(ip))] if ip else [])
        cert = (x509.CertificateBuilder().subject_name(subj).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(100 + i)
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(ca_key, hashes.SHA256()))
        (tmp_path / f"{n}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kp = tmp_path / f"{n}.key"
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        os.chmod(kp, 0o600)
        (tmp_path / f"{n}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        out[n] = {"cert": str(tmp_path / f"{n}.pem"), "key": str(kp), "pub": str(tmp_path / f"{n}.pub"),
                  "dn": f"C=CH, O=vpnd test, CN={n}"}
    return out
