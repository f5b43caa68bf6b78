"""IKEv2 numbers (RFC 7296 3, IANA "IKEv2 Parameters") and their canonical-name mappings."""

from __future__ import annotations

# The AUTH method and RFC 7427 hash numbers are defined once, next to the signers that use them
from vpnd.crypto.auth import (  # noqa: F401
    AUTH_DIGITAL_SIGNATURE, AUTH_ECDSA_256, AUTH_ECDSA_384, AUTH_ECDSA_521, AUTH_PSK, AUTH_RSA,
    HASH_SHA1, HASH_SHA256, HASH_SHA384, HASH_SHA512,
)
from vpnd.crypto.dh import GROUP_IDS
from vpnd.crypto.prf import PRF_IDS

# Exchange types (RFC 7296 3.1)
IKE_SA_INIT = 34
IKE_AUTH = 35
CREATE_CHILD_SA = 36
INFORMATIONAL = 37
EXCHANGE_NAMES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}

# Header flags (3.1)
FLAG_I = 0x08  # sent by the original initiator of the IKE SA
FLAG_R = 0x20  # response

# Payload types (RFC 7296 3.2)
PT_SA = 33
PT_KE = 34
PT_IDI = 35
PT_IDR = 36
PT_CERT = 37
PT_CERTREQ = 38
PT_AUTH = 39
PT_NONCE = 40
PT_NOTIFY = 41
PT_DELETE = 42
PT_VENDOR = 43
PT_TSI = 44
PT_TSR = 45
PT_SK = 46
PT_CP = 47
PT_EAP = 48
PT_SKF = 53

# Protocol IDs (RFC 7296 3.3.1)
PROTO_IKE = 1
PROTO_AH = 2
PROTO_ESP = 3
PROTO_NAMES = {1: "ike", 2: "ah", 3: "esp"}
PROTO_IDS = {v: k for k, v in PROTO_NAMES.items()}

# Transform types (RFC 7296 3.3.2)
TT_ENCR = 1
TT_PRF = 2
TT_INTEG = 3
TT_DH = 4
TT_ESN = 5
ATTR_KEY_LENGTH = 14

# canonical encryption name -> (transform id, key length attribute or None)
ENCR_IDS: dict[str, tuple[int, int | None]] = {
    "des": (2, None),
    "3des": (3, None),
    "null": (11, None),
    "aes128": (12, 128),
    "aes192": (12, 192),
    "aes256": (12, 256),
    "aes128gcm16": (20, 128),
    "aes192gcm16": (20, 192),
    "aes256gcm16": (20, 256),
    "chacha20poly1305": (28, None),
}
ENCR_NAMES: dict[tuple[int, int | None], str] = {v: k for k, v in ENCR_IDS.items()}
INTEG_IDS = {"md5": 1, "sha1": 2, "sha256": 12, "sha384": 13, "sha512": 14}
INTEG_NAMES = {v: k for k, v in INTEG_IDS.items()}
PRF_IDS_BY_NAME = PRF_IDS
PRF_NAMES = {v: k for k, v in PRF_IDS.items()}
DH_IDS = GROUP_IDS
DH_NAMES = {v: k for k, v in GROUP_IDS.items()}

# Notify message types (RFC 7296 3.10.1 and later RFCs)
N_UNSUPPORTED_CRITICAL_PAYLOAD = 1
N_INVALID_IKE_SPI = 4
N_INVALID_MAJOR_VERSION = 5
N_INVALID_SYNTAX = 7
N_INVALID_MESSAGE_ID = 9
N_INVALID_SPI = 11
N_NO_PROPOSAL_CHOSEN = 14
N_INVALID_KE_PAYLOAD = 17
N_AUTHENTICATION_FAILED = 24
N_SINGLE_PAIR_REQUIRED = 34
N_NO_ADDITIONAL_SAS = 35
N_INTERNAL_ADDRESS_FAILURE = 36
N_FAILED_CP_REQUIRED = 37
N_TS_UNACCEPTABLE = 38
N_INVALID_SELECTORS = 39
N_TEMPORARY_FAILURE = 43
N_CHILD_SA_NOT_FOUND = 44
N_INITIAL_CONTACT = 16384
N_SET_WINDOW_SIZE = 16385
N_ADDITIONAL_TS_POSSIBLE = 16386
N_IPCOMP_SUPPORTED = 16387
N_NAT_DETECTION_SOURCE_IP = 16388
N_NAT_DETECTION_DESTINATION_IP = 16389
N_COOKIE = 16390
N_USE_TRANSPORT_MODE = 16391
N_REKEY_SA = 16393
N_ESP_TFC_PADDING_NOT_SUPPORTED = 16394
N_NON_FIRST_FRAGMENTS_ALSO = 16395
N_MULTIPLE_AUTH_SUPPORTED = 16404
N_SIGNATURE_HASH_ALGORITHMS = 16431

NOTIFY_NAMES = {
    1: "UNSUPPORTED_CRITICAL_PAYLOAD", 4: "INVALID_IKE_SPI", 5: "INVALID_MAJOR_VERSION",
    7: "INVALID_SYNTAX", 9: "INVALID_MESSAGE_ID", 11: "INVALID_SPI", 14: "NO_PROPOSAL_CHOSEN",
    17: "INVALID_KE_PAYLOAD", 24: "AUTHENTICATION_FAILED", 34: "SINGLE_PAIR_REQUIRED",
    35: "NO_ADDITIONAL_SAS", 36: "INTERNAL_ADDRESS_FAILURE", 37: "FAILED_CP_REQUIRED",
    38: "TS_UNACCEPTABLE", 39: "INVALID_SELECTORS", 43: "TEMPORARY_FAILURE",
    44: "CHILD_SA_NOT_FOUND",
}

# ID types (RFC 7296 3.5)
ID_IPV4_ADDR = 1
ID_FQDN = 2
ID_RFC822_ADDR = 3
ID_IPV6_ADDR = 5
ID_DER_ASN1_DN = 9
ID_KEY_ID = 11

# AUTH methods (RFC 7296 3.8, RFC 4754, RFC 7427): AUTH_*, imported above from crypto/auth.py

# Certificate encodings (RFC 7296 3.6)
CERT_X509_SIGNATURE = 4

# RFC 7427 4: hash algorithm identifiers in SIGNATURE_HASH_ALGORITHMS: HASH_SHA*, imported above

# Traffic selector types (RFC 7296 3.13.1)
TS_IPV4_ADDR_RANGE = 7
TS_IPV6_ADDR_RANGE = 8
