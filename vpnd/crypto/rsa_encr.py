"""RSA operations IKEv1 needs beyond what `cryptography` offers directly.

- IKEv1 RSA signatures (RFC 2409 5.1) sign HASH_I/HASH_R with PKCS#1 v1.5 block type 1
  padding but *without* the DigestInfo wrapper (the "signature" is the private-key
  encryption of the bare hash, as strongSwan's SIGN_RSA_EMSA_PKCS1_NULL). `cryptography`
  always adds DigestInfo when signing, so the padding is built here and the private-key
  operation is done with blinding (fresh r per signature) so its timing does not depend on
  the data signed.
- RSA-encrypted nonces/IDs (RFC 2409 5.2) use PKCS#1 v1.5 encryption, which `cryptography`
  has; thin wrappers turn its errors into one exception type.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives.asymmetric import padding, rsa


class RsaError(Exception):
    """Signature/decryption failed or the key cannot do the operation; no secret inside."""


def _modulus_len(n: int) -> int:
    return (n.bit_length() + 7) // 8


def sign_raw_pkcs1(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """EMSA-PKCS1-v1_5 padding (00 01 FF.. 00 || data) without DigestInfo, then RSASP1."""
    priv = key.private_numbers()
    pub = priv.public_numbers
    n, e = pub.n, pub.e
    k = _modulus_len(n)
    if len(data) > k - 11:
        raise RsaError("hash too long for the RSA modulus")
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data
    m = int.from_bytes(em, "big")
    # blinding: s = (m * r^e)^d * r^-1 mod n
    while True:
        r = secrets.randbelow(n - 2) + 2
        try:
            r_inv = pow(r, -1, n)
            break
        except ValueError:
            continue
    mb = (m * pow(r, e, n)) % n
    # CRT for the private exponentiation
    s1 = pow(mb, priv.dmp1, priv.p)
    s2 = pow(mb, priv.dmq1, priv.q)
    h = (priv.iqmp * (s1 - s2)) % priv.p
    sb = s2 + h * priv.q
    s = (sb * r_inv) % n
    # check against the public key: a fault must not leak a broken signature
    if pow(s, e, n) != m:
        raise RsaError("RSA signature self-check failed")
    return s.to_bytes(k, "big")


def verify_raw_pkcs1(key: rsa.RSAPublicKey, data: bytes, signature: bytes) -> bool:
    """True when `signature` is the raw PKCS#1 v1.5 signature of `data` (no DigestInfo)."""
    try:
        recovered = key.recover_data_from_signature(signature, padding.PKCS1v15(), None)
    except Exception:  # InvalidSignature, ValueError on bad lengths
        return False
    return secrets.compare_digest(recovered, data)


def encrypt_pkcs1(key: rsa.RSAPublicKey, data: bytes) -> bytes:
    try:
        return key.encrypt(data, padding.PKCS1v15())
    except ValueError as e:
        raise RsaError(f"cannot RSA-encrypt {len(data)} bytes: {e}") from None


def decrypt_pkcs1(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    try:
        return key.decrypt(data, padding.PKCS1v15())
    except ValueError:
        raise RsaError("RSA decryption failed") from None


