"""IKEv1 / ISAKMP numbers (RFC 2408, RFC 2409 appendix A, RFC 2407 IPsec DOI, RFC 3947,
RFC 3706) and their mapping to the canonical algorithm names of docs/internals.md.

IANA numbers live only here and in the payload bodies; everything above speaks canonical names.
"""

from __future__ import annotations

import hashlib

# -- exchange types (RFC 2408 3.1, RFC 2409 5) ------------------------------------------
EXCH_MAIN = 2  # Identity Protection
EXCH_AGGRESSIVE = 4
EXCH_INFO = 5
EXCH_QUICK = 32
EXCHANGE_NAMES = {EXCH_MAIN: "Main", EXCH_AGGRESSIVE: "Aggressive", EXCH_INFO: "Informational",
                  EXCH_QUICK: "Quick"}

# -- payload types (RFC 2408 3.1, RFC 3947 3.2/5.2 and the draft numbers) ---------------
PL_SA = 1
PL_PROPOSAL = 2
PL_TRANSFORM = 3
PL_KE = 4
PL_ID = 5
PL_CERT = 6
PL_CR = 7
PL_HASH = 8
PL_SIG = 9
PL_NONCE = 10
PL_NOTIFY = 11
PL_DELETE = 12
PL_VID = 13
PL_NATD = 20
PL_NATOA = 21
PL_NATD_DRAFT = 130  # draft-ietf-ipsec-nat-t-ike-02/03
PL_NATOA_DRAFT = 131

# -- DOI / protocols (RFC 2407 4.2, 4.4.1) ------------------------------------------------
DOI_IPSEC = 1
SIT_IDENTITY_ONLY = 1
PROTO_ISAKMP = 1
PROTO_AH = 2
PROTO_ESP = 3
KEY_IKE = 1  # the only phase-1 transform ID (RFC 2407 4.4.2)

# -- phase-1 attributes (RFC 2409 appendix A) --------------------------------------------
P1_ENC = 1
P1_HASH = 2
P1_AUTH = 3
P1_GROUP = 4
P1_LIFE_TYPE = 11
P1_LIFE_DURATION = 12
P1_KEY_LENGTH = 14

LIFE_SECONDS = 1
LIFE_KILOBYTES = 2

AUTH_PSK = 1
AUTH_RSA_SIG = 3
AUTH_RSA_ENCR = 4
AUTH_NAMES = {AUTH_PSK: "pre-share", AUTH_RSA_SIG: "rsa-sig", AUTH_RSA_ENCR: "rsa-encr"}
AUTH_BY_NAME = {v: k for k, v in AUTH_NAMES.items()}

# canonical encryption -> (P1 encryption ID, key length attribute or None)
P1_ENC_IDS = {
    "des": (1, None),
    "3des": (5, None),
    "aes128": (7, 128),
    "aes192": (7, 192),
    "aes256": (7, 256),
}
# canonical integrity/hash -> P1 hash ID; in IKEv1 the prf is the HMAC of this hash.
P1_HASH_IDS = {"md5": 1, "sha1": 2, "sha256": 4, "sha384": 5, "sha512": 6}
HASHLIB = {"md5": "md5", "sha1": "sha1", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}

# Oakley groups (RFC 2409 6, RFC 3526, RFC 5903, RFC 8031 numbering as strongSwan uses it)
GROUP_IDS = {
    "modp768": 1, "modp1024": 2, "modp1536": 5, "modp2048": 14, "modp3072": 15,
    "modp4096": 16, "modp6144": 17, "modp8192": 18, "ecp256": 19, "ecp384": 20,
    "ecp521": 21, "x25519": 31,
}
GROUP_NAMES = {v: k for k, v in GROUP_IDS.items()}

# -- phase-2 (IPsec DOI, RFC 2407 4.4.4, 4.5; RFC 4106; RFC 4868) --------------------------
ESP_TRANSFORM_IDS = {"des": 2, "3des": 3, "null": 11, "aes128": 12, "aes192": 12, "aes256": 12,
                     "aes128gcm16": 20, "aes192gcm16": 20, "aes256gcm16": 20}
ESP_KEY_BITS = {"aes128": 128, "aes192": 192, "aes256": 256,
                "aes128gcm16": 128, "aes192gcm16": 192, "aes256gcm16": 256}
AH_TRANSFORM_IDS = {"md5": 2, "sha1": 3, "sha256": 5, "sha384": 6, "sha512": 7}
AUTH_ALG_IDS = {"md5": 1, "sha1": 2, "sha256": 5, "sha384": 6, "sha512": 7}
AUTH_ALG_NAMES = {v: k for k, v in AUTH_ALG_IDS.items()}

P2_LIFE_TYPE = 1
P2_LIFE_DURATION = 2
P2_GROUP = 3
P2_ENCAP = 4
P2_AUTH_ALG = 5
P2_KEY_LENGTH = 6
P2_ESN = 11  # RFC 4304

ENCAP_TUNNEL = 1
ENCAP_TRANSPORT = 2
ENCAP_UDP_TUNNEL = 3  # RFC 3947 5.1
ENCAP_UDP_TRANSPORT = 4
ENCAP_UDP_TUNNEL_DRAFT = 61443  # draft-ietf-ipsec-nat-t-ike-00..03
ENCAP_UDP_TRANSPORT_DRAFT = 61444
ENCAP_MODES = {
    ENCAP_TUNNEL: ("tunnel", False),
    ENCAP_TRANSPORT: ("transport", False),
    ENCAP_UDP_TUNNEL: ("tunnel", True),
    ENCAP_UDP_TRANSPORT: ("transport", True),
    ENCAP_UDP_TUNNEL_DRAFT: ("tunnel", True),
    ENCAP_UDP_TRANSPORT_DRAFT: ("transport", True),
}

# -- identities (RFC 2407 4.6.2.1) ---------------------------------------------------------
ID_IPV4_ADDR = 1
ID_FQDN = 2
ID_USER_FQDN = 3
ID_IPV4_ADDR_SUBNET = 4
ID_IPV6_ADDR = 5
ID_IPV6_ADDR_SUBNET = 6
ID_IPV4_ADDR_RANGE = 7
ID_IPV6_ADDR_RANGE = 8
ID_DER_ASN1_DN = 9
ID_KEY_ID = 11

CERT_X509_SIG = 4  # RFC 2408 3.9

# -- notify messages (RFC 2408 3.14.1, RFC 2407 4.6.3, RFC 3706) ---------------------------
N_INVALID_PAYLOAD_TYPE = 1
N_INVALID_EXCHANGE_TYPE = 7
N_INVALID_SPI = 11
N_NO_PROPOSAL_CHOSEN = 14
N_PAYLOAD_MALFORMED = 16
N_INVALID_KEY_INFORMATION = 17
N_INVALID_ID_INFORMATION = 18
N_INVALID_HASH_INFORMATION = 23
N_AUTHENTICATION_FAILED = 24
N_INVALID_SIGNATURE = 25
N_CONNECTED = 16384
N_RESPONDER_LIFETIME = 24576
N_REPLAY_STATUS = 24577
N_INITIAL_CONTACT = 24578
N_R_U_THERE = 36136
N_R_U_THERE_ACK = 36137

# -- vendor IDs ----------------------------------------------------------------------------
VID_DPD = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")  # RFC 3706 2.1 (with major/minor)
VID_NATT_RFC = hashlib.md5(b"RFC 3947").digest()  # RFC 3947 3.1
VID_NATT_DRAFT_02 = bytes.fromhex("cd60464335df21f87cfdb2fc68b6a448")
VID_NATT_DRAFT_02N = bytes.fromhex("90cb80913ebb696e086381b5ec427b1f")
VID_NATT_DRAFT_03 = bytes.fromhex("7d9419a65310ca6f2c179d9215529d56")
VIDS_NATT = (VID_NATT_RFC, VID_NATT_DRAFT_03, VID_NATT_DRAFT_02N, VID_NATT_DRAFT_02)
