"""`vpnctl import-ios running-config.txt > vpnd.yaml`: the crypto part of a Cisco IOS
configuration (the seed's commands) as a vpnd configuration.

One connection per crypto map entry (`crypto map NAME SEQ ipsec-isakmp|ipsec-manual`, and
the entries of a dynamic map it references, as `peer: %any`). The proposals keep Cisco's
words (`ike:` as a list of `crypto isakmp policy` entries, `esp:` as transform-set words):
vpnd's config parser reads those itself, so there is one Cisco vocabulary, in
vpnd/proposals.py and vpnd/config.py. Every line of the crypto part that has no vpnd
equivalent is reported on stderr (and as a comment at the top of the output) with its line
number; secrets are never echoed in the report.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field

import yaml


@dataclass
class Line:
    no: int
    text: str               # stripped
    children: list["Line"] = field(default_factory=list)

    @property
    def words(self) -> list[str]:
        return self.text.split()


def parse_blocks(text: str) -> list[Line]:
    """IOS's indentation as a tree: top-level commands and their sub-mode lines. A file with
    no indented line at all is taken as typed commands (the seed's form, one per line as
    entered in config mode) and its sub-mode commands are attached by their mode."""
    lines = [(no, raw) for no, raw in enumerate(text.replace("\t", " ").splitlines(), 1)]
    if not any(raw.startswith(" ") and raw.strip() for _, raw in lines):
        return _flat_blocks(lines)
    roots: list[Line] = []
    stack: list[tuple[int, Line]] = []
    for no, raw in lines:
        if not raw.strip() or raw.strip().startswith("!"):
            if raw.strip().startswith("!") and not raw.startswith(" "):
                stack.clear()  # '!' at column 0 ends a block
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        line = Line(no, raw.strip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack:
            stack[-1][1].children.append(line)
        else:
            roots.append(line)
        stack.append((indent, line))
    return roots


# Typed configuration: which commands belong to the mode the previous ones entered.
_MODE_WORDS = {
    "map": {"set", "match", "reverse-route", "qos", "description"},
    "policy": {"encryption", "hash", "group", "authentication", "lifetime"},
    "tset": {"mode"},
    "chain": {"addressed-key", "named-key"},
    "key": {"address", "key-string"},
    "iface": {"ip", "crypto", "description", "shutdown", "ipv6"},
    "acl": {"permit", "deny", "remark"},
}


def _enters(words: list[str], mode: str | None) -> str | None:
    low = [w.lower() for w in words]
    if mode is None:
        if low[:2] in (["crypto", "map"], ["crypto", "dynamic-map"]) and len(low) >= 4:
            return "map"
        if low[:3] == ["crypto", "isakmp", "policy"]:
            return "policy"
        if low[:3] == ["crypto", "ipsec", "transform-set"]:
            return "tset"
        if low[:4] == ["crypto", "key", "pubkey-chain", "rsa"]:
            return "chain"
        if low[:1] == ["interface"]:
            return "iface"
        if low[:3] == ["ip", "access-list", "extended"]:
            return "acl"
    elif mode == "chain" and low[:1] and low[0] in ("addressed-key", "named-key"):
        return "key"
    elif mode == "key" and low[:1] == ["key-string"]:
        return "hex"
    return None


def _fits(words: list[str], mode: str) -> bool:
    w = words[0].lower()
    if mode == "hex":
        return w == "quit" or all(re.fullmatch(r"[0-9A-Fa-f]+", x) for x in words)
    if mode == "iface" and w == "crypto":
        return len(words) == 3 and words[1].lower() == "map"
    if mode == "acl" and w.isdigit():
        return True
    return w in _MODE_WORDS.get(mode, ())


def _flat_blocks(lines) -> list[Line]:
    roots: list[Line] = []
    stack: list[tuple[str, Line]] = []
    for no, raw in lines:
        s = raw.strip()
        if not s or s.startswith("!"):
            continue
        line = Line(no, s)
        words = line.words
        if s.lower() == "exit":
            if stack:
                stack.pop()
            continue
        while stack and not _fits(words, stack[-1][0]):
            stack.pop()
        if stack:
            stack[-1][1].children.append(line)
            if stack[-1][0] == "hex" and s.lower() == "quit":
                stack.pop()
                continue
            m = _enters(words, stack[-1][0])
        else:
            roots.append(line)
            m = _enters(words, None)
        if m:
            stack.append((m, line))
    return roots


def _mask_to_prefix(mask: str, wildcard: bool) -> int:
    m = int(ipaddress.IPv4Address(mask))
    if wildcard:
        m ^= 0xFFFFFFFF
    bits = bin(m).count("1")
    if m != (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF:
        raise ValueError(f"non-contiguous mask {mask}")
    return bits


class Importer:
    def __init__(self, text: str, *, keys_dir: str | None = None, local_key: str | None = None):
        self.roots = parse_blocks(text)
        self.report: list[str] = []
        self.keys_dir = keys_dir
        self.local_key = local_key
        self.hostname: str | None = None
        self.domain: str | None = None
        self.policies: list[dict] = []
        self.policy_auth: dict[int, str] = {}
        self.psks: list[tuple[ipaddress.IPv4Network | None, str | None, str, int]] = []
        self.transform_sets: dict[str, tuple[str, str, int]] = {}   # name -> (words, mode, line)
        self.acls: dict[str, list[Line]] = {}
        self.maps: dict[str, dict[int, tuple[Line, str]]] = {}      # name -> seq -> (line, kind)
        self.dyn_maps: dict[str, dict[int, Line]] = {}
        self.iface_addr: dict[str, str] = {}                        # crypto map -> local address
        self.if_addrs: dict[str, str] = {}                          # interface -> its address
        self.map_local_if: dict[str, str] = {}                      # crypto map -> local-address
        self.pubkeys: dict[str, tuple[str, str, int]] = {}          # address/name -> (pem, usage, line)
        self.glob: dict = {}
        self.identity = "address"
        self.isakmp_enabled = True
        self.global_lifetime: dict = {}
        self.global_sa: dict = {}                                   # replay_window, idle_time

    def skip(self, line: Line, why: str, text: str | None = None) -> None:
        self.report.append(f"line {line.no}: '{text or line.text}': {why}")

    # -- reading -------------------------------------------------------------------------

    def read(self) -> None:
        for top in self.roots:
            w = top.words
            low = [x.lower() for x in w]
            if low[:1] == ["hostname"] and len(w) == 2:
                self.hostname = w[1]
            elif low[:2] == ["ip", "domain-name"] and len(w) == 3:
                self.domain = w[2]
            elif low[:2] == ["ip", "domain"] and low[2:3] == ["name"] and len(w) == 4:
                self.domain = w[3]
            elif low[:1] == ["interface"]:
                self._interface(top)
            elif low[:1] == ["access-list"] and len(w) > 2:
                self.acls.setdefault(w[1], []).append(top)
            elif low[:3] == ["ip", "access-list", "extended"] and len(w) == 4:
                self.acls.setdefault(w[3], []).extend(top.children)
            elif low[:1] == ["crypto"]:
                try:
                    self._crypto(top, w, low)
                except (ValueError, IndexError):
                    self.skip_block(top, "not understood")
            elif low[:2] == ["no", "crypto"]:
                if low[2:4] == ["isakmp", "enable"]:
                    self.isakmp_enabled = False
                else:
                    self.skip(top, "not mapped")

    def _interface(self, top: Line) -> None:
        addr = None
        maps = []
        for c in top.children:
            cw = c.words
            if cw[:2] == ["ip", "address"] and len(cw) >= 4 and cw[-1] != "secondary":
                addr = cw[2]
            elif cw[:2] == ["crypto", "map"] and len(cw) == 3:
                maps.append(cw[2])
        if addr and len(top.words) > 1:
            self.if_addrs[top.words[1].lower()] = addr
        for m in maps:
            if addr:
                self.iface_addr.setdefault(m, addr)

    def _crypto(self, top: Line, w: list[str], low: list[str]) -> None:
        if low[:3] == ["crypto", "isakmp", "policy"] and len(w) == 4:
            self._policy(top, int(w[3]))
        elif low[:3] == ["crypto", "isakmp", "key"]:
            self._isakmp_key(top, w)
        elif low[:3] == ["crypto", "isakmp", "keepalive"]:
            self._keepalive(top, w)
        elif low[:4] == ["crypto", "isakmp", "nat", "keepalive"] and len(w) == 5:
            self.glob["nat_keepalive"] = int(w[4])
        elif low == ["crypto", "isakmp", "aggressive-mode", "disable"]:
            self.glob["aggressive_mode"] = False
        elif low == ["crypto", "isakmp", "invalid-spi-recovery"]:
            self.glob["invalid_spi_recovery"] = True
        elif low[:3] == ["crypto", "isakmp", "identity"] and len(w) == 4:
            self.identity = low[3]
            if self.identity not in ("address", "hostname", "dn"):
                self.skip(top, "unknown identity type")
        elif low == ["crypto", "isakmp", "enable"]:
            pass
        elif low[:3] == ["crypto", "ipsec", "transform-set"] and len(w) >= 5:
            mode = "tunnel"
            for c in top.children:
                cw = [x.lower() for x in c.words]
                if cw[:1] == ["mode"] and len(cw) == 2 and cw[1] in ("tunnel", "transport"):
                    mode = cw[1]
                else:
                    self.skip(c, "not mapped (transform-set sub-command)")
            self.transform_sets[w[3]] = (" ".join(w[4:]), mode, top.no)
        elif low[:4] == ["crypto", "ipsec", "security-association", "replay"]:
            # global defaults of every crypto map (an entry's own set ... wins)
            if low[4:] == ["disable"]:
                self.global_sa["replay_window"] = 0
            elif low[4:5] == ["window-size"] and len(w) == 6 and w[5].isdigit():
                self.global_sa["replay_window"] = int(w[5])
            else:
                self.skip(top, "not understood")
        elif low[:4] == ["crypto", "ipsec", "security-association", "idle-time"] and len(w) == 5 \
                and w[4].isdigit():
            self.global_sa["idle_time"] = int(w[4])
        elif low[:2] == ["crypto", "map"] and len(w) == 5 and low[3] == "local-address":
            self.map_local_if[w[2]] = w[4].lower()  # IKE from this interface's address
        elif low[:4] == ["crypto", "ipsec", "security-association", "lifetime"] and len(w) == 6:
            if low[4] in ("seconds", "kilobytes"):
                self.global_lifetime[low[4]] = int(w[5])
            else:
                self.skip(top, "not mapped")
        elif low[:2] == ["crypto", "map"] and len(w) >= 4 and w[3].isdigit():
            kind = " ".join(low[4:]) or "ipsec-isakmp"
            self.maps.setdefault(w[2], {})[int(w[3])] = (top, kind)
        elif low[:2] == ["crypto", "map"]:
            self.skip_block(top, "not mapped (crypto map option)")
        elif low[:2] == ["crypto", "dynamic-map"] and len(w) == 4 and w[3].isdigit():
            self.dyn_maps.setdefault(w[2], {})[int(w[3])] = top
        elif low[:4] == ["crypto", "key", "pubkey-chain", "rsa"]:
            self._pubkey_chain(top)
        elif low[:3] == ["crypto", "key", "generate"]:
            self.skip(top, "keys are made with `vpnctl pki genkey` (see README)")
        else:
            self.skip_block(top, "not mapped")

    def skip_block(self, top: Line, why: str) -> None:
        self.skip(top, why)
        for c in top.children:
            self.skip_block(c, "not mapped (inside an unmapped block)")

    _ENC = {"des": "des", "3des": "3des", "aes": "aes", "aes 128": "aes 128",
            "aes 192": "aes 192", "aes 256": "aes 256"}

    def _policy(self, top: Line, seq: int) -> None:
        # IOS defaults (des, sha, group 1, rsa-sig, 86400) written out: vpnd assumes none.
        pol = {"seq": seq, "encryption": "des", "hash": "sha", "group": 1,
               "authentication": "rsa-sig"}
        for c in top.children:
            cw = [x.lower() for x in c.words]
            if cw[:1] == ["encryption"] and " ".join(cw[1:]) in self._ENC:
                pol["encryption"] = " ".join(cw[1:])
            elif cw[:1] == ["hash"] and len(cw) == 2:
                pol["hash"] = cw[1]
            elif cw[:1] == ["group"] and len(cw) == 2 and cw[1].isdigit():
                pol["group"] = int(cw[1])
            elif cw[:1] == ["authentication"] and len(cw) == 2:
                pol["authentication"] = cw[1]
            elif cw[:1] == ["lifetime"] and len(cw) == 2 and cw[1].isdigit():
                pol["lifetime"] = int(cw[1])
            else:
                self.skip(c, "not mapped (isakmp policy sub-command)")
        if pol["encryption"] == "des" or pol["group"] == 1:
            self.report.append(f"line {top.no}: 'crypto isakmp policy {seq}': des or group 1 "
                               "(the IOS defaults when not given) kept, with allow_legacy: true; "
                               "better change it on both ends")
        self.policies.append(pol)

    def _isakmp_key(self, top: Line, w: list[str]) -> None:
        rest = w[3:]
        if rest and rest[0] in ("0", "6") and len(rest) > 1 and rest[1] not in ("address", "hostname"):
            if rest[0] == "6":
                self.skip(top, "type 6 (encrypted) keys cannot be read back: give psk: yourself",
                          "crypto isakmp key 6 ***")
                return
            rest = rest[1:]
        if len(rest) < 3:
            self.skip(top, "not understood", "crypto isakmp key ***")
            return
        psk, how, target = rest[0], rest[1].lower(), rest[2]
        extra = rest[3:]
        shown = f"crypto isakmp key *** {' '.join(rest[1:])}"
        if "no-xauth" in extra:
            extra.remove("no-xauth")  # vpnd does no XAUTH anyway
        if how == "address":
            try:
                mask = extra[0] if extra else "255.255.255.255"
                net = ipaddress.IPv4Network(f"{target}/{mask}", strict=False)
            except (ValueError, IndexError):
                self.skip(top, "address not understood", shown)
                return
            self.psks.append((net, None, psk, top.no))
        elif how == "hostname":
            self.psks.append((None, target, psk, top.no))
        else:
            self.skip(top, "not understood", shown)

    def _keepalive(self, top: Line, w: list[str]) -> None:
        args = [x.lower() for x in w[3:]]
        dpd = {}
        nums = [a for a in args if a.isdigit()]
        if not nums:
            self.skip(top, "not understood")
            return
        dpd["interval"] = int(nums[0])
        if len(nums) > 1:
            dpd["retry"] = int(nums[1])
        # IOS: "periodic" or the default on-demand
        dpd["mode"] = "periodic" if "periodic" in args else "on-demand"
        self.glob["dpd"] = dpd

    def _pubkey_chain(self, top: Line) -> None:
        from vpnd import pki
        for c in top.children:
            cw = c.words
            if len(cw) >= 2 and cw[0].lower() in ("addressed-key", "named-key"):
                usage = cw[2].lower() if len(cw) > 2 else "both"
                names = [cw[1]]
                body: list[str] = []
                in_key = False
                for cc in c.children:
                    ccw = cc.words
                    if ccw[:1] == ["address"] and len(ccw) == 2:
                        names.append(ccw[1])
                    elif ccw[:1] == ["key-string"]:
                        # the hex is indented under key-string or level with it, up to quit
                        in_key = True
                        body += [x.text for x in cc.children if x.text.lower() != "quit"]
                    elif in_key and cc.text.lower() == "quit":
                        in_key = False
                    elif in_key:
                        body.append(cc.text)
                    else:
                        self.skip(cc, "not mapped (pubkey-chain sub-command)")
                try:
                    key = pki.parse_key_string("\n".join(body))
                except pki.PkiError as e:
                    self.skip(c, f"key-string unreadable: {e}")
                    continue
                pem = key.public_bytes(pki.PEM, pki.SPKI).decode()
                for n in names:
                    self.pubkeys[n] = (pem, usage, c.no)
            else:
                self.skip(c, "not mapped (pubkey-chain sub-command)")

    # -- building ----------------------------------------------------------------------

    def acl_selectors(self, name: str, where: Line) -> tuple[list[str], list[str]] | None:
        lines = self.acls.get(name)
        if not lines:
            self.skip(where, f"access-list {name} not found")
            return None
        local: list[str] = []
        remote: list[str] = []
        for l in lines:
            w = l.words
            if w[0].lower() == "access-list":
                w = w[2:]
            if w and w[0].lower() in ("remark",):
                continue
            if w and w[0].isdigit():  # sequence numbers of named ACLs
                w = w[1:]
            if not w:
                continue
            if w[0].lower() == "deny":
                self.skip(l, "deny entries are not mapped: vpnd's selectors list what is "
                             "protected (traffic outside them is not encrypted)")
                continue
            if w[0].lower() != "permit" or len(w) < 2:
                self.skip(l, "not mapped")
                continue
            proto = w[1].lower()
            try:
                src, rest = self._acl_addr(w[2:])
                dst, rest = self._acl_addr(self._skip_ports(rest))
                rest = self._skip_ports(rest)
            except (ValueError, IndexError) as e:
                self.skip(l, f"address not understood ({e})")
                continue
            if proto != "ip" or [x for x in rest if x.lower() not in ("log", "log-input")]:
                self.report.append(f"line {l.no}: '{l.text}': vpnd selectors are addresses only: "
                                   f"the protocol/port part ('{proto}') is not kept, all IP "
                                   "traffic between these addresses is protected")
            local.append(src)
            remote.append(dst)
        if not local:
            return None
        if len(lines) > 1 and (len(set(local)) > 1 and len(set(remote)) > 1):
            self.report.append(f"line {where.no}: '{where.text}': access-list {name} has several "
                               "entries; vpnd protects every local_ts with every remote_ts")
        return list(dict.fromkeys(local)), list(dict.fromkeys(remote))

    def acl_filter(self, name: str, where: Line) -> list[str] | None:
        """`set ip access-group NAME in|out`: the ACL's entries as vpnd's access_group
        entries (the same IOS words; vpnd/acl.py checks each)."""
        from vpnd.acl import AclError, parse_ace
        lines = self.acls.get(name)
        if not lines:
            self.skip(where, f"access-list {name} not found")
            return None
        standard = name.isdigit() and (1 <= int(name) <= 99 or 1300 <= int(name) <= 1999)
        out: list[str] = []
        for l in lines:
            w = l.words
            if w[0].lower() == "access-list":
                w = w[2:]
            if w and w[0].isdigit():
                w = w[1:]
            if not w or w[0].lower() == "remark":
                continue
            if standard and len(w) >= 2:
                # a standard ACL names sources only: `permit ip SOURCE any`
                rest = w[1:]
                if rest[0].lower() == "any":
                    n = 1
                elif rest[0].lower() == "host" or (len(rest) > 1 and
                                                   re.fullmatch(r"\d+\.\d+\.\d+\.\d+", rest[1])):
                    n = 2
                else:
                    n = 1
                w = [w[0], "ip", *rest[:n], "any", *rest[n:]]
            if w[-1].lower() in ("log", "log-input"):
                self.report.append(f"line {l.no}: '{l.text}': 'log' dropped: `vpnctl conns` "
                                   "counts each entry's matches")
                w = w[:-1]
            text = " ".join(w)
            try:
                parse_ace(text)
            except AclError as e:
                self.skip(l, f"not mapped ({e})")
                continue
            out.append(text)
        return out or None

    @staticmethod
    def _acl_addr(w: list[str]) -> tuple[str, list[str]]:
        if w[0].lower() == "any":
            return "0.0.0.0/0", w[1:]
        if w[0].lower() == "host":
            return str(ipaddress.IPv4Address(w[1])) + "/32", w[2:]
        addr = ipaddress.IPv4Address(w[0])
        if len(w) > 1 and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", w[1]):
            bits = _mask_to_prefix(w[1], wildcard=True)
            return str(ipaddress.IPv4Network(f"{addr}/{bits}", strict=True)), w[2:]
        return str(addr) + "/32", w[1:]

    @staticmethod
    def _skip_ports(w: list[str]) -> list[str]:
        if w and w[0].lower() in ("eq", "gt", "lt", "neq"):
            return w[2:]
        if w and w[0].lower() == "range":
            return w[3:]
        return w

    def entry(self, name: str, line: Line, dynamic: bool, local: str | None) -> dict | None:
        conn: dict = {"version": 1, **self.global_sa}
        peers: list[str] = []
        tsets: list[str] = []
        acl = None
        lifetime = dict(self.global_lifetime)
        sess: dict = {"inbound": {}, "outbound": {}}
        rri = None
        manual = False
        for c in line.children:
            cw = c.words
            lw = [x.lower() for x in cw]
            if lw[:2] == ["set", "peer"] and len(cw) >= 3:
                peers.append(cw[2])
                if len(cw) > 3:
                    self.skip(c, "the 'default' keyword is not mapped")
            elif lw[:2] == ["set", "transform-set"] and len(cw) >= 3:
                tsets.extend(cw[2:])
            elif lw[:2] == ["match", "address"] and len(cw) == 3:
                acl = (cw[2], c)
            elif lw[:2] == ["set", "pfs"]:
                grp = lw[2] if len(lw) > 2 else "group1"  # IOS: no group given = group 1
                conn["pfs"] = grp
                if grp in ("group1",):
                    self.skip(c, "PFS group 1 (modp768) is insecure: kept with allow_legacy: true")
            elif lw[:3] == ["set", "security-association", "lifetime"] and len(lw) == 5 \
                    and lw[3] in ("seconds", "kilobytes") and lw[4].isdigit():
                lifetime[lw[3]] = int(lw[4])
            elif lw[:3] == ["set", "security-association", "idle-time"] and len(lw) >= 4 \
                    and lw[3].isdigit():
                conn["idle_time"] = int(lw[3])
                if len(lw) > 4:
                    self.skip(c, "'default' is not mapped")
            elif lw == ["set", "security-association", "level", "per-host"]:
                conn["per_host"] = True
            elif lw[:3] == ["set", "security-association", "replay"]:
                if lw[3:] == ["disable"]:
                    conn["replay_window"] = 0
                elif lw[3:4] == ["window-size"] and len(lw) == 5 and lw[4].isdigit():
                    conn["replay_window"] = int(lw[4])
                else:
                    self.skip(c, "not understood")
            elif lw[:3] == ["set", "ip", "access-group"] and len(lw) == 5 \
                    and lw[4] in ("in", "out"):
                entries = self.acl_filter(cw[3], c)
                if entries:
                    conn.setdefault("access_group", {})[lw[4]] = entries
            elif lw[:1] == ["reverse-route"]:
                rri = self._rri(c, lw[1:])
            elif lw[:2] == ["set", "session-key"]:
                manual = True
                self._session_key(c, cw, sess)
            else:
                self.skip(c, "not mapped")
        if not peers and not dynamic:
            self.skip(line, "no 'set peer': entry skipped")
            return None
        if len(peers) > 1:
            self.report.append(f"line {line.no}: '{line.text}': several 'set peer' (backup peers): "
                               f"only the first, {peers[0]}, is used")
        if not dynamic:
            try:
                ipaddress.ip_address(peers[0])
            except ValueError:
                self.skip(line, f"peer {peers[0]!r} is not an IP address (vpnd's peer is): "
                                "entry skipped")
                return None
        conn["peer"] = "%any" if dynamic else peers[0]
        if local:
            conn["local"] = local
        if dynamic:
            conn["start"] = "none"  # a dynamic map only answers (the seed)
        mode = "tunnel"
        if tsets:
            words = []
            modes = set()
            for t in tsets:
                if t not in self.transform_sets:
                    self.skip(line, f"transform-set {t} not found")
                    continue
                words.append(self.transform_sets[t][0])
                modes.add(self.transform_sets[t][1])
            if words:
                conn["esp"] = words if len(words) > 1 else words[0]
            if len(modes) > 1:
                self.report.append(f"line {line.no}: '{line.text}': transform sets with different "
                                   "modes: vpnd has one mode per connection (tunnel used)")
            elif modes == {"transport"}:
                mode = "transport"
        if acl is not None:
            sel = self.acl_selectors(*acl)
            if sel:
                conn["local_ts"], conn["remote_ts"] = sel
        elif not dynamic:
            self.skip(line, "no 'match address': vpnd protects the peers' own addresses")
        if mode == "transport":
            hosts = conn.get("local_ts", [None]) + conn.get("remote_ts", [None])
            if all(h and h.endswith("/32") for h in hosts) or not acl:
                conn["mode"] = "transport"
            else:
                self.report.append(f"line {line.no}: '{line.text}': transport mode with subnets: "
                                   "IOS tunnels such traffic (the seed), so does vpnd (mode: tunnel)")
        if manual:
            conn["manual"] = {d: v for d, v in sess.items() if v}
            if any("ah" in v for v in sess.values()) and not any("esp" in v for v in sess.values()):
                conn["ah"] = conn.pop("esp", None)
            if "idle_time" in self.global_sa and conn.get("idle_time") == self.global_sa["idle_time"]:
                conn.pop("idle_time")  # the global default: no meaning here, nothing to say
            for k in ("pfs", "idle_time", "per_host"):
                if k in conn:
                    self.report.append(f"line {line.no}: '{line.text}': {k} has no meaning "
                                       "with manual keys: dropped")
                    conn.pop(k)
            lifetime = {}
        else:
            self._ike_auth(conn, line, dynamic)
            for k, v in self.glob.items():
                if k in ("dpd", "nat_keepalive"):
                    conn[k] = v
        if lifetime:
            conn["lifetime"] = lifetime
        if rri is not None:
            conn["rri"] = rri
        # Without reverse-route vpnd's default routes stay: they are how traffic reaches its
        # TUN device at all (what the crypto map on the interface does in IOS).
        esp = conn.get("esp") or conn.get("ah") or ""
        words = " ".join(esp if isinstance(esp, list) else [esp]).split()
        if (conn.get("pfs") == "group1" or "esp-des" in words
                or any(p["encryption"] == "des" or p["group"] == 1 for p in conn.get("ike", ()))):
            conn["allow_legacy"] = True  # des / modp768, as IOS had them
        order = ("version", "peer", "local", "start", "psk", "auth", "local_id", "remote_id",
                 "ike", "esp", "ah", "pfs", "mode", "local_ts", "remote_ts", "lifetime",
                 "idle_time", "replay_window", "per_host", "dpd", "nat_keepalive", "rri",
                 "access_group", "allow_legacy", "manual")
        # copies: no YAML anchors between connections
        return {k: (dict(conn[k]) if isinstance(conn[k], dict) else conn[k])
                for k in order if k in conn}

    def _entry_or_report(self, name, line, dynamic, local) -> dict | None:
        try:
            return self.entry(name, line, dynamic, local)
        except (ValueError, IndexError) as e:
            self.skip(line, f"entry not understood ({e}): skipped")
            return None

    def _rri(self, c: Line, args: list[str]) -> dict:
        r: dict = {"enabled": True}
        i = 0
        while i < len(args):
            a = args[i]
            if a == "static":
                r["static"] = True
            elif a == "tag" and i + 1 < len(args) and args[i + 1].isdigit():
                tag = int(args[i + 1])
                if 1 <= tag <= 255:
                    r["tag"] = tag
                else:
                    self.skip(c, f"tag {tag}: vpnd's tags are 1..255 (the Linux route protocol)")
                i += 1
            elif a == "remote-peer":
                r["remote_peer"] = True
                if i + 1 < len(args) and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", args[i + 1]):
                    r["next_hop"] = args[i + 1]
                    r.pop("remote_peer")  # IOS: a next hop replaces the peer route (the seed)
                    i += 1
            else:
                self.skip(c, f"'{a}' not mapped")
            i += 1
        return r

    def _session_key(self, c: Line, cw: list[str], sess: dict) -> None:
        # set session-key {inbound|outbound} esp SPI cipher HEX [authenticator HEX]
        # set session-key {inbound|outbound} ah SPI HEX
        lw = [x.lower() for x in cw]
        shown = " ".join(cw[:5]) + " ***"
        try:
            direction, proto, spi = lw[2], lw[3], int(cw[4])
            if direction not in ("inbound", "outbound"):
                raise ValueError
            if proto == "esp":
                sa: dict = {"spi": spi}
                rest = lw[5:]
                while rest:
                    if rest[0] == "cipher" and len(rest) > 1:
                        sa["enc_key"] = rest[1]
                        rest = rest[2:]
                    elif rest[0] == "authenticator" and len(rest) > 1:
                        sa["auth_key"] = rest[1]
                        rest = rest[2:]
                    else:
                        raise ValueError
                sess[direction]["esp"] = sa
            elif proto == "ah" and len(cw) == 6:
                sess[direction]["ah"] = {"spi": spi, "key": lw[5]}
            else:
                raise ValueError
        except (ValueError, IndexError):
            self.skip(c, "not understood", shown)

    def _ike_auth(self, conn: dict, line: Line, dynamic: bool) -> None:
        peer = None if dynamic else ipaddress.IPv4Address(conn["peer"])
        psk = None
        for net, host, key, _ in self.psks:
            if net is not None and (peer in net if peer else net.prefixlen == 0):
                # the most specific address key wins, as in IOS
                if psk is None or (psk[0] is not None and net.prefixlen > psk[0].prefixlen):
                    psk = (net, key)
        hostname_keys = [(h, k) for n, h, k, _ in self.psks if h]
        methods = {p["authentication"] for p in self.policies} or {"rsa-sig"}
        pol_for = None
        if psk and "pre-share" in methods:
            conn["psk"] = psk[1]
            pol_for = "pre-share"
        elif dynamic and hostname_keys and "pre-share" in methods:
            h, k = hostname_keys[0]
            conn["psk"] = k
            conn["remote_id"] = "@" + h
            pol_for = "pre-share"
        elif "rsa-encr" in methods and self._peer_pubkey(conn, line, peer):
            pol_for = "rsa-encr"
        elif "rsa-sig" in methods:
            name = (self.hostname or "local").lower()
            conn["auth"] = {"cert": f"/etc/vpnd/certs/{name}.pem",
                            "key": f"/etc/vpnd/private/{name}.key", "ca": "/etc/vpnd/certs/ca.pem"}
            self.report.append(f"line {line.no}: '{line.text}': rsa-sig: IOS keeps certificates "
                               "in its trustpoints; put ours, its key and the CA at the auth: paths "
                               "(vpnctl pki can make them)")
            pol_for = "rsa-sig"
        else:
            self.report.append(f"line {line.no}: '{line.text}': no pre-shared key or peer key "
                               f"for {conn['peer']}: give psk: yourself")
            conn["psk"] = "CHANGE-ME"
        if self.policies:
            pols = [dict(p) for p in sorted(self.policies, key=lambda p: p["seq"])
                    if pol_for is None or p["authentication"] == pol_for]
            if pols:
                conn["ike"] = pols
        if self.identity == "hostname":
            if self.hostname:
                fq = self.hostname + ("." + self.domain if self.domain else "")
                conn["local_id"] = "@" + fq
            else:
                self.report.append("crypto isakmp identity hostname: no hostname in the file")
        elif self.identity == "dn" and "auth" not in conn:
            self.report.append("crypto isakmp identity dn: needs a certificate; local_id left "
                               "as the address")

    def _peer_pubkey(self, conn: dict, line: Line, peer) -> bool:
        entry = self.pubkeys.get(str(peer)) if peer else None
        if entry is None or entry[1] == "signature":
            return False
        if not self.keys_dir:
            self.report.append(f"line {entry[2]}: rsa-encr key of {peer}: give --keys-dir DIR to "
                               "write it as a PEM file for auth.rsa_encr.peer_pubkey")
            return False
        os.makedirs(self.keys_dir, exist_ok=True)
        path = os.path.join(os.path.abspath(self.keys_dir), f"{peer}.pub")
        with open(path, "w") as f:
            f.write(entry[0])
        key = self.local_key or f"/etc/vpnd/private/{(self.hostname or 'local').lower()}.key"
        if not self.local_key:
            self.report.append(f"line {line.no}: '{line.text}': rsa-encr: our private key is in "
                               f"the router's NVRAM; put it at {key} (or give --local-key)")
        conn["auth"] = {"rsa_encr": {"key": key, "peer_pubkey": path}}
        return True

    def build(self) -> dict:
        self.read()
        daemon: dict = {}
        if "aggressive_mode" in self.glob:
            daemon["aggressive_mode"] = False
        # IOS answers unknown SPIs with INVALID_SPI only with invalid-spi-recovery
        daemon["invalid_spi_recovery"] = bool(self.glob.get("invalid_spi_recovery"))
        conns: dict = {}
        used_dyn = set()
        for mname, entries in self.maps.items():
            local = self.iface_addr.get(mname)
            if mname in self.map_local_if:
                local = self.if_addrs.get(self.map_local_if[mname], local)
            if local is None:
                first = min(entries.values(), key=lambda e: e[0].no)[0]
                self.report.append(f"line {first.no}: crypto map {mname} is on no interface "
                                   "with an address: local: left to the routing table")
            for seq, (line, kind) in sorted(entries.items()):
                base = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{mname}-{seq}").lower()
                if kind.startswith("ipsec-isakmp dynamic"):
                    dname = line.words[6] if len(line.words) > 6 else None
                    if len(line.words) > 7:
                        self.skip(line, "'discover' (tunnel endpoint discovery) is not mapped")
                    if dname not in self.dyn_maps:
                        self.skip(line, f"dynamic map {dname} not found")
                        continue
                    used_dyn.add(dname)
                    for dseq, dline in sorted(self.dyn_maps[dname].items()):
                        c = self._entry_or_report(f"{base}", dline, True, local)
                        if c and self.isakmp_enabled:
                            conns[re.sub(r"[^a-z0-9_.-]", "-", f"{base}-{dname}-{dseq}".lower())] = c
                elif kind in ("ipsec-isakmp", "ipsec-manual"):
                    if kind == "ipsec-isakmp" and not self.isakmp_enabled:
                        self.skip(line, "IKE is disabled (no crypto isakmp enable)")
                        continue
                    c = self._entry_or_report(base, line, False, local)
                    if c is None:
                        continue
                    if kind == "ipsec-manual" and "manual" not in c:
                        self.skip(line, "ipsec-manual without set session-key: skipped")
                        continue
                    if kind == "ipsec-isakmp" and "manual" in c:
                        self.skip(line, "session keys in an ipsec-isakmp entry are ignored")
                        c.pop("manual")
                    conns[base] = c
                else:
                    self.skip(line, "not mapped")
        for d, entries in self.dyn_maps.items():
            if d not in used_dyn:
                first = min(entries.values(), key=lambda l: l.no)
                self.skip(first, f"dynamic map {d} is used by no crypto map: skipped")
        out: dict = {}
        if daemon:
            out["daemon"] = daemon
        out["connections"] = conns
        return out


def convert(text: str, **kw) -> tuple[dict, list[str]]:
    imp = Importer(text, **kw)
    doc = imp.build()
    def lineno(r):
        m = re.match(r"line (\d+):", r)
        return int(m.group(1)) if m else 0
    return doc, sorted(imp.report, key=lineno)


def render(doc: dict, report: list[str], source: str) -> str:
    head = [f"# vpnd configuration imported from {source} by vpnctl import-ios.",
            "# Check it with: vpnd --config FILE --check"]
    if report:
        head.append("# Not mapped (see the IOS line numbers):")
        head += [f"#   {r}" for r in report]
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None,
                                                   width=100)


def register(sub) -> None:
    p = sub.add_parser("import-ios", help="convert a Cisco IOS crypto configuration to vpnd YAML")
    p.add_argument("file", metavar="FILE", help="IOS configuration (show running-config); - = stdin")
    p.add_argument("--out", metavar="FILE", help="write here (mode 0600) instead of stdout")
    p.add_argument("--keys-dir", metavar="DIR",
                   help="write the pubkey-chain's rsa-encr peer keys here as PEM files")
    p.add_argument("--local-key", metavar="FILE", help="our RSA private key for rsa-encr")


def main(args, parser=None) -> int:
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8", errors="replace") as f:
                text = f.read()
    except OSError as e:
        print(f"vpnctl import-ios: {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    doc, report = convert(text, keys_dir=args.keys_dir, local_key=args.local_key)
    for r in report:
        print(f"import-ios: {r}", file=sys.stderr)
    if not doc["connections"]:
        print("vpnctl import-ios: no crypto map entry found", file=sys.stderr)
        return 1
    out = render(doc, report, args.file)
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # it holds pre-shared keys
        with os.fdopen(fd, "w") as f:
            f.write(out)
    else:
        try:  # `> vpnd.yaml` made a file with the umask's mode: the PSKs must not be readable
            st = os.fstat(sys.stdout.fileno())
            import stat
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                os.fchmod(sys.stdout.fileno(), 0o600)
        except (OSError, ValueError, AttributeError):
            pass
        sys.stdout.write(out)
    return 0
