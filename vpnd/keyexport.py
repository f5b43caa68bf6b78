"""`vpnctl keys --wireshark`: the current SA keys in Wireshark's decryption tables, so that
a capture (tcpdump on the outer interface) can be decrypted: `esp_sa` (ESP, RFC 4303),
`ikev2_decryption_table` (IKEv2 SK_e*/SK_a*, RFC 7296 2.14) and `ikev1_decryption_table`
(ISAKMP, the phase 1 encryption key of RFC 2409 appendix B).

Refused unless the daemon's config says `daemon.allow_key_export: true`: the keys leave the
daemon only through its control socket (mode 0600, root or control_group), and each export
is logged (without keys).
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("vpnd.control.keys")

# Wireshark's names (epan/dissectors/packet-ipsec.c, packet-isakmp.c; Wireshark 3.x/4.x)
ESP_ENC = {"aes128": "AES-CBC [RFC3602]", "aes192": "AES-CBC [RFC3602]",
           "aes256": "AES-CBC [RFC3602]", "3des": "TripleDES-CBC [RFC2451]",
           "des": "DES-CBC [RFC2405]", "null": "NULL",
           "aes128gcm16": "AES-GCM with 16 octet ICV [RFC4106]",
           "aes192gcm16": "AES-GCM with 16 octet ICV [RFC4106]",
           "aes256gcm16": "AES-GCM with 16 octet ICV [RFC4106]"}
ESP_AUTH = {None: "NULL", "md5": "HMAC-MD5-96 [RFC2403]", "sha1": "HMAC-SHA-1-96 [RFC2404]",
            "sha256": "HMAC-SHA-256-128 [RFC4868]", "sha384": "HMAC-SHA-384-192 [RFC4868]",
            "sha512": "HMAC-SHA-512-256 [RFC4868]"}
IKEV2_ENC = {"aes128": "AES-CBC-128 [RFC3602]", "aes192": "AES-CBC-192 [RFC3602]",
             "aes256": "AES-CBC-256 [RFC3602]", "3des": "3DES [RFC2451]",
             "aes128gcm16": "AES-GCM-128 with 16 octet ICV [RFC5282]",
             "aes192gcm16": "AES-GCM-192 with 16 octet ICV [RFC5282]",
             "aes256gcm16": "AES-GCM-256 with 16 octet ICV [RFC5282]"}
IKEV2_INTEG = {None: "NONE [RFC4306]", "md5": "HMAC_MD5_96 [RFC2403]",
               "sha1": "HMAC_SHA1_96 [RFC2404]", "sha256": "HMAC_SHA2_256_128 [RFC4868]",
               "sha384": "HMAC_SHA2_384_192 [RFC4868]", "sha512": "HMAC_SHA2_512_256 [RFC4868]"}


# -- in the daemon -------------------------------------------------------------------------

def export(daemon) -> dict:
    """The keys of every installed ESP SA and established IKE SA (control command "keys")."""
    from vpnd.control import CommandError
    if not getattr(daemon.config.daemon, "allow_key_export", False):
        raise CommandError("key export is off: set daemon.allow_key_export: true in the "
                           "config (and reload) to allow it")
    esp = []
    for child in list(daemon.children.values()):
        act = child.action
        local, remote = str(act.local[0]), str(act.remote[0])
        for keys, src, dst, direction in ((act.inbound, remote, local, "in"),
                                          (act.outbound, local, remote, "out")):
            for k in keys:
                if k.protocol != "esp":
                    continue  # AH is not encrypted: Wireshark dissects it without keys
                esp.append({"connection": act.connection, "direction": direction,
                            "src": src, "dst": dst, "spi": k.spi, "encryption": k.encryption,
                            "integrity": k.integrity, "enc_key": k.enc_key.hex(),
                            "auth_key": k.auth_key.hex()})
    ikev2, ikev1 = [], []
    ike = getattr(daemon, "ike", None)
    for sa in list(getattr(getattr(ike, "v2", None), "sas", {}).values()):
        keys = getattr(sa, "keys", None)
        if keys is None or not getattr(sa, "spi_r", b""):
            continue
        ikev2.append({"connection": getattr(getattr(sa, "conn", None), "name", None),
                      "spi_i": sa.spi_i.hex(), "spi_r": sa.spi_r.hex(),
                      "encryption": keys.encryption, "integrity": keys.integrity,
                      "sk_ei": keys.sk_ei.hex(), "sk_er": keys.sk_er.hex(),
                      "sk_ai": keys.sk_ai.hex(), "sk_ar": keys.sk_ar.hex()})
    for sa in list(getattr(getattr(ike, "v1", None), "sas", {}).values()):
        keys = getattr(sa, "keys", None)
        if keys is None or not getattr(keys, "enc_key", b""):
            continue
        ikev1.append({"connection": getattr(getattr(sa, "conn", None), "name", None),
                      "cky_i": sa.cky_i.hex(), "cky_r": sa.cky_r.hex(),
                      "enc_key": keys.enc_key.hex()})
    log.warning("SA keys exported to a control client (daemon.allow_key_export): %d ESP, "
                "%d IKEv2, %d IKEv1 SA(s)", len(esp), len(ikev2), len(ikev1))
    return {"esp_sa": esp, "ikev2": ikev2, "ikev1": ikev1}


# -- Wireshark's UAT files -------------------------------------------------------------------

def _q(*fields) -> str:
    return ",".join(f'"{f}"' for f in fields)


def _uat(*fields: tuple[str, bool]) -> str:
    """A UAT line: strings quoted, byte fields (Wireshark's hex buffers) bare."""
    return ",".join(f'"{v}"' if quoted else v for v, quoted in fields)


def esp_sa_lines(entries: list[dict]) -> tuple[list[str], list[str]]:
    """(lines of the esp_sa file, notes on SAs Wireshark cannot decrypt)."""
    lines, notes = [], []
    for e in entries:
        enc, integ = ESP_ENC.get(e["encryption"]), ESP_AUTH.get(e["integrity"], None)
        if enc is None or (e["integrity"] is not None and integ is None):
            notes.append(f"{e['connection']} spi 0x{e['spi']:08x}: Wireshark has no "
                         f"{e['encryption']}/{e['integrity']} for ESP")
            continue
        fam = "IPv6" if ":" in e["src"] else "IPv4"
        lines.append(_q(fam, e["src"], e["dst"], f"0x{e['spi']:08x}", enc, f"0x{e['enc_key']}",
                        integ, f"0x{e['auth_key']}" if e["auth_key"] else ""))
    return lines, notes


def ikev2_lines(entries: list[dict]) -> tuple[list[str], list[str]]:
    lines, notes = [], []
    for e in entries:
        enc, integ = IKEV2_ENC.get(e["encryption"]), IKEV2_INTEG.get(e["integrity"])
        if enc is None or integ is None:
            notes.append(f"{e['connection']} IKE SA {e['spi_i']}: Wireshark has no "
                         f"{e['encryption']}/{e['integrity']} for IKEv2")
            continue
        lines.append(_uat((e["spi_i"], False), (e["spi_r"], False), (e["sk_ei"], False),
                          (e["sk_er"], False), (enc, True), (e["sk_ai"], False),
                          (e["sk_ar"], False), (integ, True)))
    return lines, notes


def ikev1_lines(entries: list[dict]) -> list[str]:
    return [_uat((e["cky_i"], False), (e["enc_key"], False)) for e in entries]


# -- vpnctl side -----------------------------------------------------------------------------

def register(sub) -> None:
    p = sub.add_parser("keys", help="export the current SA keys for Wireshark (needs "
                                    "daemon.allow_key_export: true)")
    p.add_argument("--wireshark", action="store_true", required=True,
                   help="Wireshark's esp_sa / ikev2_decryption_table / ikev1_decryption_table")
    p.add_argument("--dir", metavar="DIR",
                   help="write the three files here (a Wireshark configuration directory, e.g. "
                        "~/.config/wireshark; mode 0600) instead of printing them")


def _write(path: str, lines: list[str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# This file is generated by vpnctl keys --wireshark\n")
        f.writelines(l + "\n" for l in lines)


def main(args, parser=None) -> int:
    from vpnd.control import vpnctl_request
    code, res = vpnctl_request(args, {"command": "keys"}, timeout=15.0)
    if code:
        return code
    res = res or {}
    esp, n1 = esp_sa_lines(res.get("esp_sa", []))
    v2, n2 = ikev2_lines(res.get("ikev2", []))
    v1 = ikev1_lines(res.get("ikev1", []))
    for n in n1 + n2:
        print(f"vpnctl keys: {n}", file=sys.stderr)
    if args.dir:
        os.makedirs(args.dir, mode=0o700, exist_ok=True)
        for name, lines in (("esp_sa", esp), ("ikev2_decryption_table", v2),
                            ("ikev1_decryption_table", v1)):
            _write(os.path.join(args.dir, name), lines)
        print(f"{len(esp)} ESP SA(s), {len(v2)} IKEv2 SA(s), {len(v1)} IKEv1 SA(s) written "
              f"to {args.dir}")
        return 0
    if sys.stdout.isatty():
        print("vpnctl keys: printing SA keys to the terminal", file=sys.stderr)
    for name, lines in (("esp_sa", esp), ("ikev2_decryption_table", v2),
                        ("ikev1_decryption_table", v1)):
        print(f"# {name}")
        for l in lines:
            print(l)
    return 0
