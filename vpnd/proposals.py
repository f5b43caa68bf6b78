"""Proposal strings: strongSwan's syntax and Cisco's transform-set words, parsed in one place.

strongSwan syntax: proposals separated by commas, algorithms within one proposal by
dashes; several algorithms of one kind in one proposal are alternatives, in preference
order (`aes128-aes256-sha256-sha1-modp2048-ecp256`). Cisco syntax: the words of a
transform set separated by spaces (`esp-aes 256 esp-sha-hmac`, `ah-sha-hmac esp-gcm 256`),
optionally followed by the PFS group (`group14`).

Everything is reduced to the canonical names of docs/internals.md.

Legacy algorithms (policy of vpnd, documented in conf/vpnd.yaml):
- 3des, md5/prfmd5, modp1024, modp1536 and null encryption are accepted when a proposal
  names them; no default ever contains them.
- des and modp768 (Oakley group 1) are broken outright and are refused unless the
  connection also sets `allow_legacy: true`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ProposalError(ValueError):
    """A proposal string that cannot be used; the message is one line."""


# -- canonical vocabulary (docs/internals.md) ------------------------------------------

AEAD = ("aes128gcm16", "aes192gcm16", "aes256gcm16", "chacha20poly1305")
CBC = ("aes128", "aes192", "aes256", "3des", "des")
ENCRYPTION = AEAD + CBC + ("null",)
INTEGRITY = ("md5", "sha1", "sha256", "sha384", "sha512")
PRF = ("prfmd5", "prfsha1", "prfsha256", "prfsha384", "prfsha512")
DH = (
    "modp768", "modp1024", "modp1536", "modp2048", "modp3072", "modp4096",
    "modp6144", "modp8192", "ecp256", "ecp384", "ecp521", "x25519",
)
LEGACY = frozenset({"des", "modp768"})  # need allow_legacy

# strongSwan's aliases -> canonical (strongSwan's proposal_keywords_static.txt names).
_ALIASES = {
    "aes": "aes128",
    "aes128gcm": "aes128gcm16", "aes192gcm": "aes192gcm16", "aes256gcm": "aes256gcm16",
    "aes128gcm128": "aes128gcm16", "aes192gcm128": "aes192gcm16", "aes256gcm128": "aes256gcm16",
    "aesgcm16": "aes128gcm16", "aesgcm128": "aes128gcm16",
    "sha": "sha1", "sha1_96": "sha1",
    "sha2_256": "sha256", "sha2_384": "sha384", "sha2_512": "sha512",
    "sha256_128": "sha256", "sha384_192": "sha384", "sha512_256": "sha512",
    "md5_96": "md5",
    "prfsha": "prfsha1",
    "curve25519": "x25519",
    # Cisco/IANA group numbers (RFC 2409 6, RFC 3526, RFC 5903, RFC 8031)
    "group1": "modp768", "group2": "modp1024", "group5": "modp1536", "group14": "modp2048",
    "group15": "modp3072", "group16": "modp4096", "group17": "modp6144", "group18": "modp8192",
    "group19": "ecp256", "group20": "ecp384", "group21": "ecp521", "group31": "x25519",
}
_AES_INSTEAD = "use aes256gcm16 (esp-gcm 256) or aes256-sha256 (esp-aes 256 esp-sha256-hmac)"
_MODP_INSTEAD = "use modp2048 (group14) or ecp256 (group19)"
_EC_INSTEAD = "use ecp256 (group19), ecp384 (group20) or x25519 (group31)"
# Names strongSwan/Cisco know but vpnd does not implement -> hint; a pointed message, not
# "unknown algorithm".
_UNSUPPORTED = {
    "aes128gcm8": "use aes128gcm16", "aes128gcm12": "use aes128gcm16",
    "aes128gcm64": "use aes128gcm16", "aes128gcm96": "use aes128gcm16",
    "aes256gcm8": "use aes256gcm16", "aes256gcm12": "use aes256gcm16",
    "aes256gcm64": "use aes256gcm16", "aes256gcm96": "use aes256gcm16",
    # RFC 5114 groups: withdrawn from IOS and deprecated by RFC 8247 2.4 (suspect primes)
    "group22": _MODP_INSTEAD, "group23": _MODP_INSTEAD,
    "group24": "modp2048s256 of RFC 5114; " + _MODP_INSTEAD,
    "modp1024s160": _MODP_INSTEAD, "modp2048s224": _MODP_INSTEAD,
    "modp2048s256": _MODP_INSTEAD,
    "aes128ctr": _AES_INSTEAD, "aes256ctr": _AES_INSTEAD,
    "aes128ccm16": _AES_INSTEAD, "aes256ccm16": _AES_INSTEAD,
    "camellia128": _AES_INSTEAD, "camellia256": _AES_INSTEAD,
    # withdrawn ciphers (not in RFC 8221's list for ESP; gone from current IOS)
    "blowfish": "withdrawn; " + _AES_INSTEAD, "cast128": "withdrawn; " + _AES_INSTEAD,
    "idea": "withdrawn; " + _AES_INSTEAD, "rc5": "withdrawn; " + _AES_INSTEAD,
    "serpent": _AES_INSTEAD, "twofish": _AES_INSTEAD,
    "aesxcbc": "use sha256", "aescmac": "use sha256",
    "prfaesxcbc": "use prfsha256", "prfaescmac": "use prfsha256",
    "md5_128": "use sha256", "sha1_160": "use sha256", "sha256_96": "use sha256",
    "sha2_256_96": "use sha256 (the RFC 4868 128-bit truncation)",
    "curve448": "use x25519 or ecp384", "x448": "use x25519 or ecp384",
    "ecp192": _EC_INSTEAD, "ecp224": _EC_INSTEAD,
    "ecp256bp": _EC_INSTEAD, "ecp384bp": _EC_INSTEAD, "ecp512bp": _EC_INSTEAD,
    "ecp224bp": _EC_INSTEAD,
    # Cisco's SEAL stream cipher was removed from IOS and never had an IETF transform ID
    "esp-seal": "SEAL was withdrawn (removed from IOS; it never had an IPsec transform ID), "
                "use esp-gcm 256 or esp-aes 256 esp-sha256-hmac",
    "seal": "SEAL was withdrawn; use aes256gcm16 or aes256-sha256",
    "esp-gmac": "integrity-only GMAC is not implemented; use esp-null esp-sha256-hmac "
                "(or ah-sha256-hmac) for integrity without encryption, else esp-gcm 256",
}

_PRF_OF_INTEGRITY = {i: "prf" + i for i in INTEGRITY}

# -- strongSwan's display names (as in `swanctl --list-sas`) ----------------------------

_ENC_NAMES = {
    "aes128": "AES_CBC-128", "aes192": "AES_CBC-192", "aes256": "AES_CBC-256",
    "aes128gcm16": "AES_GCM_16-128", "aes192gcm16": "AES_GCM_16-192",
    "aes256gcm16": "AES_GCM_16-256", "chacha20poly1305": "CHACHA20_POLY1305",
    "3des": "3DES_CBC", "des": "DES_CBC", "null": "NULL",
}
_INTEG_NAMES = {
    "md5": "HMAC_MD5_96", "sha1": "HMAC_SHA1_96", "sha256": "HMAC_SHA2_256_128",
    "sha384": "HMAC_SHA2_384_192", "sha512": "HMAC_SHA2_512_256",
}
_PRF_NAMES = {
    "prfmd5": "PRF_HMAC_MD5", "prfsha1": "PRF_HMAC_SHA1", "prfsha256": "PRF_HMAC_SHA2_256",
    "prfsha384": "PRF_HMAC_SHA2_384", "prfsha512": "PRF_HMAC_SHA2_512",
}
_DH_NAMES = {
    **{f"modp{b}": f"MODP_{b}" for b in (768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)},
    "ecp256": "ECP_256", "ecp384": "ECP_384", "ecp521": "ECP_521", "x25519": "CURVE_25519",
}


@dataclass(frozen=True)
class Proposal:
    protocol: str                       # "ike" | "esp" | "ah"
    encryption: tuple[str, ...] = ()    # alternatives, in preference order
    integrity: tuple[str, ...] = ()
    prf: tuple[str, ...] = ()           # ike only
    dh: tuple[str, ...] = ()            # ike: required; esp/ah: non-empty = PFS
    esn: tuple[bool, ...] = (False,)    # esp/ah
    ah_integrity: tuple[str, ...] = ()  # esp only: non-empty = ESP+AH bundle
    compression: tuple[str, ...] = ()   # IPComp (RFC 3173): "lzs" from Cisco's comp-lzs

    @property
    def aead(self) -> bool:
        return bool(self.encryption) and self.encryption[0] in AEAD

    def describe(self) -> str:
        """The first alternative of each kind in strongSwan's words."""
        first = lambda t: t[0] if t else None  # noqa: E731
        if self.protocol == "ike":
            return describe_ike(first(self.encryption), first(self.integrity),
                                first(self.prf), first(self.dh))
        return describe_child(first(self.encryption), first(self.integrity), first(self.dh),
                              self.esn[0] if self.esn else False,
                              ah_integrity=first(self.ah_integrity))

    def __str__(self) -> str:
        parts = [*self.encryption, *self.integrity, *self.prf, *self.dh]
        if self.protocol != "ike" and self.esn != (False,):
            parts += ["esn" if e else "noesn" for e in self.esn]
        text = "-".join(parts)
        if self.ah_integrity:
            text += " +ah:" + "-".join(self.ah_integrity)
        if self.compression:
            text += " +comp:" + "-".join(self.compression)
        return text


def describe_ike(enc: str | None, integ: str | None, prf: str | None, dh: str | None) -> str:
    """`AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048`; absent parts are skipped."""
    parts = [_ENC_NAMES.get(enc, enc) if enc else None,
             _INTEG_NAMES.get(integ, integ) if integ else None,
             _PRF_NAMES.get(prf, prf) if prf else None,
             _DH_NAMES.get(dh, dh) if dh else None]
    return "/".join(p for p in parts if p)


def describe_child(enc: str | None, integ: str | None, dh: str | None, esn: bool,
                   *, ah_integrity: str | None = None) -> str:
    """`AES_GCM_16-128`, `AES_CBC-128/HMAC_SHA2_256_128/MODP_2048/ESN`.

    NO_EXT_SEQ is left out (the contract's status example shows `AES_GCM_16-128`); an
    ESP+AH bundle appends `AH:HMAC_SHA1_96`.
    """
    parts = [_ENC_NAMES.get(enc, enc) if enc else None,
             _INTEG_NAMES.get(integ, integ) if integ else None,
             _DH_NAMES.get(dh, dh) if dh else None,
             "ESN" if esn else None]
    text = "/".join(p for p in parts if p)
    if ah_integrity:
        text += "/AH:" + _INTEG_NAMES.get(ah_integrity, ah_integrity)
    return text


# -- parsing ----------------------------------------------------------------------------

def _canonical(word: str) -> str:
    word = word.lower()
    word = _ALIASES.get(word, word)
    if word in _UNSUPPORTED:
        hint = f": {_UNSUPPORTED[word]}" if _UNSUPPORTED[word] else ""
        raise ProposalError(f"algorithm '{word}' is not supported{hint}")
    return word


def _kind(name: str) -> str:
    if name in ENCRYPTION:
        return "encryption"
    if name in INTEGRITY:
        return "integrity"
    if name in PRF:
        return "prf"
    if name in DH:
        return "dh"
    if name in ("esn", "noesn"):
        return "esn"
    raise ProposalError(f"unknown algorithm '{name}'")


class _Builder:
    def __init__(self) -> None:
        self.lists: dict[str, list] = {k: [] for k in
                                       ("encryption", "integrity", "prf", "dh", "esn", "ah", "comp")}

    def add(self, kind: str, value) -> None:
        if value not in self.lists[kind]:
            self.lists[kind].append(value)


_LEGACY_INSTEAD = {
    "des": "DES is withdrawn (RFC 4772; RFC 8221: MUST NOT), use aes256 or aes256gcm16",
    "modp768": "group 1 is broken (RFC 8247: MUST NOT), use modp2048 (group14) or ecp256",
}

# Accepted when named, but deprecated: --check warns with the replacement (RFC 8221 for
# ESP/AH, RFC 8247 for IKEv2; IOS marks the same as deprecated).
DEPRECATED = {
    "3des": "3des is deprecated (RFC 8221, RFC 8247: SHOULD NOT); use aes256 or aes256gcm16",
    "md5": "md5 is deprecated (RFC 8221, RFC 8247: MUST NOT); use sha256",
    "prfmd5": "prfmd5 is deprecated (RFC 8247: MUST NOT); use prfsha256",
    "modp1024": "modp1024 (group2) is deprecated (RFC 8247: SHOULD NOT); use modp2048 (group14)",
    "modp1536": "modp1536 (group5) is weak; use modp2048 (group14) or ecp256 (group19)",
}


def deprecated_in(proposals) -> list[str]:
    """The DEPRECATED messages for the algorithms these proposals name, each once."""
    seen: dict[str, str] = {}
    for p in proposals:
        for name in (*p.encryption, *p.integrity, *p.prf, *p.dh, *p.ah_integrity):
            if name in DEPRECATED:
                seen.setdefault(name, DEPRECATED[name])
    return list(seen.values())


def _check_legacy(names, allow_legacy: bool) -> None:
    for name in names:
        if name in LEGACY and not allow_legacy:
            raise ProposalError(
                f"algorithm '{name}' is insecure and needs 'allow_legacy: true'; "
                f"{_LEGACY_INSTEAD[name]}")


# Cisco transform-set words (the seed's `crypto ipsec transform-set`).
_CISCO_ESP_ENC = {"esp-aes": "aes", "esp-3des": "3des", "esp-des": "des", "esp-null": "null",
                  "esp-gcm": "gcm", "esp-chacha20-poly1305": "chacha20poly1305"}
_CISCO_HMAC = re.compile(r"^(esp|ah)-(md5|sha|sha256|sha384|sha512)-hmac$")


def _parse_cisco(words: list[str], b: _Builder) -> None:
    i = 0
    while i < len(words):
        w = words[i].lower()
        i += 1
        if w in _CISCO_ESP_ENC:
            base = _CISCO_ESP_ENC[w]
            bits = None
            # ASCII digits only: str.isdigit() also accepts '²', which int() refuses
            if i < len(words) and words[i].isascii() and words[i].isdigit():
                bits = int(words[i])
                i += 1
            if base in ("aes", "gcm"):
                bits = bits or 128
                if bits not in (128, 192, 256):
                    raise ProposalError(f"key size {bits} of '{w}' must be 128, 192 or 256")
                b.add("encryption", f"aes{bits}" + ("gcm16" if base == "gcm" else ""))
            elif bits is not None:
                raise ProposalError(f"'{w}' takes no key size")
            else:
                b.add("encryption", base)
            continue
        if w == "comp-lzs":
            # IPComp with LZS (RFC 2395), innermost in the bundle (RFC 3173)
            b.add("comp", "lzs")
            continue
        m = _CISCO_HMAC.match(w)
        if m:
            alg = _canonical(m.group(2))
            b.add("integrity" if m.group(1) == "esp" else "ah", alg)
            continue
        name = _canonical(w)
        kind = _kind(name)
        if kind not in ("dh", "esn"):
            raise ProposalError(f"'{words[i - 1]}' is not a transform-set word "
                                "(esp-aes [128|192|256], esp-gcm [128|256], esp-3des, esp-des, "
                                "esp-null, esp-sha-hmac, esp-md5-hmac, ah-sha-hmac, comp-lzs, "
                                "groupN)")
        b.add(kind, name == "esn" if kind == "esn" else name)


def _parse_one(item: str, protocol: str, allow_legacy: bool) -> Proposal:
    b = _Builder()
    words = item.split()
    cisco = len(words) > 1 or any(
        w.lower().startswith(("esp-", "ah-", "comp-")) for w in words)
    if cisco:
        if protocol == "ike":
            raise ProposalError(f"Cisco transform-set words in an IKE proposal: '{item}'")
        _parse_cisco(words, b)
    else:
        for token in item.split("-"):
            if not token:
                raise ProposalError(f"empty algorithm name in '{item}'")
            name = _canonical(token)
            kind = _kind(name)
            b.add(kind, name == "esn" if kind == "esn" else name)

    L = b.lists
    _check_legacy(L["encryption"] + L["dh"], allow_legacy)
    aead = [e for e in L["encryption"] if e in AEAD]
    classic = [e for e in L["encryption"] if e not in AEAD]
    if aead and classic:
        raise ProposalError(f"AEAD '{aead[0]}' and non-AEAD '{classic[0]}' cannot share one "
                            "proposal; separate them with a comma")

    if protocol == "ah":
        # An `ah:` proposal names only integrity: AH has no cipher (RFC 4302 3).
        if L["encryption"]:
            raise ProposalError(f"AH cannot encrypt: '{L['encryption'][0]}'")
        if L["prf"]:
            raise ProposalError(f"PRF '{L['prf'][0]}' is not used in AH proposals")
        integ = L["integrity"] + [a for a in L["ah"] if a not in L["integrity"]]
        if not integ:
            raise ProposalError("AH proposal needs an integrity algorithm")
        return Proposal("ah", integrity=tuple(integ), dh=tuple(L["dh"]),
                        esn=tuple(L["esn"]) or (False,), compression=tuple(L["comp"]))

    if protocol == "esp" and cisco and L["ah"] and not L["encryption"] and not L["integrity"]:
        # A transform set of AH words only: an AH SA, not ESP.
        return Proposal("ah", integrity=tuple(L["ah"]), dh=tuple(L["dh"]),
                        esn=tuple(L["esn"]) or (False,), compression=tuple(L["comp"]))

    if protocol == "ike":
        if L["ah"]:
            raise ProposalError("AH transforms are not IKE proposals")
        if L["comp"]:
            raise ProposalError("IP compression is not an IKE proposal")
        if L["esn"]:
            raise ProposalError("ESN is not used in IKE proposals")
        if not L["encryption"]:
            raise ProposalError("IKE proposal needs an encryption algorithm")
        if "null" in L["encryption"]:
            raise ProposalError("IKE cannot use null encryption")
        if aead and L["integrity"]:
            raise ProposalError(f"AEAD algorithm '{aead[0]}' cannot be combined with "
                                f"integrity '{L['integrity'][0]}'")
        if not aead and not L["integrity"]:
            raise ProposalError("IKE proposal needs an integrity algorithm")
        prf = L["prf"]
        if not prf:
            if aead:
                raise ProposalError(f"AEAD IKE proposal '{item}' needs a PRF, "
                                    "e.g. prfsha256")
            # strongSwan: a missing PRF is taken from the integrity algorithms.
            prf = [_PRF_OF_INTEGRITY[i] for i in L["integrity"]]
        if not L["dh"]:
            raise ProposalError("IKE proposal needs a DH group")
        return Proposal("ike", encryption=tuple(L["encryption"]),
                        integrity=tuple(L["integrity"]), prf=tuple(prf), dh=tuple(L["dh"]))

    if protocol != "esp":
        raise ProposalError(f"unknown protocol '{protocol}'")
    if L["prf"]:
        raise ProposalError(f"PRF '{L['prf'][0]}' is not used in ESP proposals")
    if not L["encryption"]:
        raise ProposalError("ESP proposal needs an encryption algorithm (null for none)")
    if aead and L["integrity"]:
        raise ProposalError(f"AEAD algorithm '{aead[0]}' cannot be combined with "
                            f"integrity '{L['integrity'][0]}'")
    if not aead and not L["integrity"]:
        # Encryption without integrity is open to cut-and-paste attacks (RFC 4303 3.2).
        raise ProposalError(f"ESP proposal '{item}' needs an integrity algorithm "
                            "(or an AEAD cipher)")
    return Proposal("esp", encryption=tuple(L["encryption"]), integrity=tuple(L["integrity"]),
                    dh=tuple(L["dh"]), esn=tuple(L["esn"]) or (False,),
                    ah_integrity=tuple(L["ah"]), compression=tuple(L["comp"]))


def parse_proposals(text: str, protocol: str, *, allow_legacy: bool = False
                    ) -> tuple[Proposal, ...]:
    """Parse a comma-separated proposal list for protocol "ike", "esp" or "ah".

    Raises ProposalError with a one-line message. A Cisco transform set given for "esp"
    that holds only AH words yields an "ah" Proposal; with ESP words too, an ESP proposal
    whose `ah_integrity` makes it an ESP+AH bundle.
    """
    if protocol not in ("ike", "esp", "ah"):
        raise ProposalError(f"unknown protocol '{protocol}'")
    if not isinstance(text, str):
        raise ProposalError(f"expected a proposal string, got {type(text).__name__}")
    # whitespace runs (newlines of a folded YAML string too) count as one space, so that
    # every message quoting a proposal stays on one line
    items = [" ".join(i.split()) for i in text.split(",")]
    if not any(items):
        raise ProposalError("no proposal given")
    out: list[Proposal] = []
    for item in items:
        if not item:
            raise ProposalError("empty proposal between commas")
        p = _parse_one(item, protocol, allow_legacy)
        if p not in out:
            out.append(p)
    kinds = {p.protocol for p in out}
    if len(kinds) > 1:
        raise ProposalError("a list of transform sets cannot mix AH-only and ESP sets")
    return tuple(out)


# -- Cisco `crypto isakmp policy N` words (encryption / hash / group / authentication) ----
# The policy's words reduced to the canonical names above; config.py checks the structure
# (seq, required keys, lifetime) and reports key paths.

ISAKMP_ENCRYPTION = {"des": "des", "3des": "3des", "aes": "aes128", "aes 128": "aes128",
                     "aes 192": "aes192", "aes 256": "aes256", "aes128": "aes128",
                     "aes192": "aes192", "aes256": "aes256"}
ISAKMP_HASH = {"md5": "md5", "sha": "sha1", "sha1": "sha1", "sha256": "sha256",
               "sha384": "sha384", "sha512": "sha512"}
ISAKMP_AUTHENTICATION = {"pre-share": "psk", "rsa-sig": "cert", "rsa-encr": "rsa_encr"}


def isakmp_word(table: dict[str, str], value, shown: str) -> str:
    """`encryption aes 256` -> "aes256" (table ISAKMP_ENCRYPTION / ISAKMP_HASH);
    ProposalError naming the choices otherwise (`shown`: the value as quoted to the user)."""
    key = " ".join(str(value).lower().split()) if isinstance(value, (str, int)) else None
    if key not in table:
        raise ProposalError(f"{shown} is not one of: {', '.join(sorted(table))}")
    return table[key]


def isakmp_group(value, kind: str) -> str:
    """`group 14` / 14 / "modp2048" -> a group word parse_proposals knows (`kind`: the
    value's type name for the error)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ProposalError(f"expected a group number, got {kind}")
    s = str(value).lower()
    return s if s.startswith(("group", "modp", "ecp", "x25519", "curve")) else f"group{s}"


def isakmp_policy(encryption: str, hash_: str, group: str, *,
                  allow_legacy: bool = False) -> Proposal:
    """One ISAKMP policy as an IKE proposal (IKEv1's PRF is the hash's HMAC)."""
    (prop,) = parse_proposals(f"{encryption}-{hash_}-{group}", "ike", allow_legacy=allow_legacy)
    return prop
