"""MODP Diffie-Hellman (crypto/dh.py: OpenSSL through cryptography's deprecated FFDH API,
Python's pow where that API is gone) checked against an independent OpenSSL key, the two
implementations against each other, and the rules of RFC 7296 2.14 / RFC 6989 2.1 /
RFC 3526 8."""

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


def _exponent(kx: KeyExchange) -> int:
    impl = kx._priv
    return impl._key.private_numbers().x if isinstance(impl, dh._ModpOpenSSL) else impl._x


# RFC 3526 8: the lower strength estimate of each group, times two (NIST SP 800-56A asks
# for at least twice the security strength); RFC 2409's 1024-bit group: 80 bits
@pytest.mark.parametrize("group,min_bits", [("modp1024", 160), ("modp1536", 180),
                                            ("modp2048", 220), ("modp3072", 260),
                                            ("modp4096", 300), ("modp8192", 380)])
@pytest.mark.parametrize("impl", ["openssl", "python"])
def test_private_exponent_has_twice_the_strength(group, min_bits, impl):
    if impl == "openssl" and dh.MODP_BACKEND != "openssl":
        pytest.skip("cryptography has no finite-field DH")
    cls = dh._ModpOpenSSL if impl == "openssl" else dh._ModpPython
    keys = [KeyExchange(group, _modp=cls) for _ in range(16)]
    # the exponent is drawn from [1, 2^n) with n >= min_bits: 16 draws all below
    # 2^(min_bits) happen with probability < 2^-80 for every group here
    assert max(_exponent(k).bit_length() for k in keys) >= min_bits
    assert len({k.public for k in keys}) == 16


def test_modp_is_computed_by_the_library():
    # issue 8.11: OpenSSL (constant time, ~10x faster), not Python integers, for every group
    assert dh.MODP_BACKEND == "openssl"
    for group in ("modp1536", "modp2048", "modp3072", "modp4096", "modp6144", "modp8192"):
        assert isinstance(KeyExchange(group)._priv, dh._ModpOpenSSL), group
    # RFC 2409's legacy groups: OpenSSL re-proves their unnamed primes for every peer value
    for group in ("modp768", "modp1024"):
        assert isinstance(KeyExchange(group)._priv, dh._ModpPython), group


def test_no_deprecation_warning_escapes():
    # cryptography 50 warns on every access to its FFDH names; vpnd takes them once,
    # silenced, so a daemon run with warnings as errors (or logged) sees none
    code = ("import warnings\n"
            "warnings.simplefilter('error')\n"
            "from vpnd.crypto import dh\n"
            "for g in ('modp1024', 'modp2048'):\n"
            "    a, b = dh.KeyExchange(g), dh.KeyExchange(g)\n"
            "    assert a.shared(b.public) == b.shared(a.public), g\n"
            "print(dh.MODP_BACKEND)\n")
    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "openssl", out.stderr[-500:]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        a, b = KeyExchange("modp2048"), KeyExchange("modp2048")
        a.shared(b.public)
    assert not seen, [str(w.message) for w in seen]


@pytest.mark.parametrize("group", MODP)
def test_openssl_and_python_implementations_agree(group):
    if dh.MODP_BACKEND != "openssl":
        pytest.skip("cryptography has no finite-field DH")
    a = KeyExchange(group, _modp=dh._ModpOpenSSL)
    b = KeyExchange(group, _modp=dh._ModpPython)
    assert a.shared(b.public) == b.shared(a.public)
    fixed = (0x1234567 << 150).to_bytes(24, "big")
    assert KeyExchange(group, fixed, _modp=dh._ModpOpenSSL).public == \
        KeyExchange(group, fixed, _modp=dh._ModpPython).public


@pytest.mark.parametrize("impl", ["openssl", "python"])
def test_short_secret_is_zero_padded_to_the_prime_length(impl):
    if impl == "openssl" and dh.MODP_BACKEND != "openssl":
        pytest.skip("cryptography has no finite-field DH")
    cls = dh._ModpOpenSSL if impl == "openssl" else dh._ModpPython
    # x = 5 and the peer's y = 2 give g^xy = 32: one significant byte, 255 zero bytes before it
    a = KeyExchange("modp2048", (5).to_bytes(1, "big"), _modp=cls)
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
