"""MODP Diffie-Hellman by plain modular exponentiation (crypto/dh.py) checked against an
independent implementation (OpenSSL through cryptography's deprecated FFDH API, while it
still exists) and against the rules of RFC 7296 2.14 / RFC 6989 2.1 / RFC 3526 8."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import warnings

import pytest

from vpnd.crypto import dh
from vpnd.crypto.dh import InvalidPublicValue, KeyExchange

MODP = ["modp768", "modp1024", "modp1536", "modp2048", "modp3072", "modp4096"]


def _openssl_dh():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from cryptography.hazmat.primitives.asymmetric import dh as cdh
        except ImportError:  # removed from cryptography: nothing independent left to compare
            pytest.skip("cryptography no longer has finite-field DH")
    return cdh


@pytest.mark.parametrize("group", MODP)
def test_modp_agrees_with_openssl_both_ways(group):
    cdh = _openssl_dh()
    bits = int(group[4:])
    p = dh.modp_prime(bits)
    ours = KeyExchange(group)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pn = cdh.DHParameterNumbers(p, 2)
        theirs = pn.parameters().generate_private_key()
        their_y = theirs.public_key().public_numbers().y
        our_pub = cdh.DHPublicNumbers(int.from_bytes(ours.public, "big"), pn).public_key()
        # OpenSSL strips leading zeros of the secret; IKE pads to the prime's length (RFC 7296 2.14)
        openssl_secret = theirs.exchange(our_pub).rjust(bits // 8, b"\0")
    assert ours.shared(their_y.to_bytes(bits // 8, "big")) == openssl_secret


def test_modp_works_without_cryptographys_ffdh():
    # cryptography announced the removal of finite-field DH: every group must keep working
    # in an interpreter where any use of it fails, with warnings turned into errors.
    # cryptography >= 50 imports its own dh module from `serialization`, so the module is
    # replaced (after that import) by one whose every name raises ImportError.
    code = ("import sys, types\n"
            "import cryptography.hazmat.primitives.serialization\n"
            "import cryptography.hazmat.primitives.asymmetric as asym\n"
            "gone = types.ModuleType('cryptography.hazmat.primitives.asymmetric.dh')\n"
            "def _gone(name): raise ImportError('no finite-field DH: ' + name)\n"
            "gone.__getattr__ = _gone\n"
            "sys.modules[gone.__name__] = asym.dh = gone\n"
            "from vpnd.crypto.dh import KeyExchange, GROUP_IDS\n"
            "for g in GROUP_IDS:\n"
            "    if g != 'modp8192':\n"
            "        a, b = KeyExchange(g), KeyExchange(g)\n"
            "        assert a.shared(b.public) == b.shared(a.public), g\n"
            "print('ok')\n")
    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-500:]


@pytest.mark.parametrize("group,min_bits", [("modp1024", 160), ("modp2048", 224),
                                            ("modp3072", 256), ("modp4096", 304),
                                            ("modp8192", 400)])
def test_private_exponent_has_twice_the_strength(group, min_bits):
    # NIST SP 800-56A: at least 2 x the security strength; RFC 3526 8 gives the strengths
    seen = {KeyExchange(group)._priv.bit_length() for _ in range(8)}
    assert min(seen) >= min_bits and len({KeyExchange(group).public for _ in range(4)}) == 4


def test_short_secret_is_zero_padded_to_the_prime_length():
    # x = 5 and the peer's y = 2 give g^xy = 32: one significant byte, 255 zero bytes before it
    a = KeyExchange("modp2048", (5).to_bytes(1, "big"))
    assert a.public == (32).to_bytes(256, "big")
    assert a.shared((2).to_bytes(256, "big")) == (32).to_bytes(256, "big")


@pytest.mark.parametrize("y", [0, 1, "p-1", "p", "p+1"])
def test_public_values_outside_1_to_p_minus_1_refused(y):
    p = dh.modp_prime(1024)
    value = {"p-1": p - 1, "p": p, "p+1": p + 1}.get(y, y)
    data = value.to_bytes(129, "big")[-128:] if value < 2**1024 else b"\xff" * 128
    with pytest.raises(InvalidPublicValue):
        KeyExchange("modp1024").shared(data)
    with pytest.raises(InvalidPublicValue):  # wrong length, RFC 7296 3.4
        KeyExchange("modp1024").shared(data + b"\0")
