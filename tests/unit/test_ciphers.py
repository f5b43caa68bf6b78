"""Published vectors for vpnd.crypto.ciphers (every canonical algorithm)."""

import pytest

from vpnd.crypto.ciphers import (
    CipherError, Integrity, cipher_key_size, integrity_icv_size, integrity_key_size,
    make_cipher, make_integrity,
)

h = bytes.fromhex


# RFC 3602 section 4, cases 1 and 2 (AES-128-CBC); NIST SP 800-38A F.2.5 (AES-256-CBC).
@pytest.mark.parametrize("name,key,iv,pt,ct", [
    ("aes128", "06a9214036b8a15b512e03d534120006", "3dafba429d9eb430b422da802c9fac41",
     b"Single block msg".hex(), "e353779c1079aeb82708942dbe77181a"),
    ("aes128", "c286696d887c9aa0611bbb3e2025a45a", "562e17996d093d28ddb3ba695a2e6f58",
     bytes(range(32)).hex(),
     "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1"),
    ("aes256", "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
     "000102030405060708090a0b0c0d0e0f", "6bc1bee22e409f96e93d7e117393172a",
     "f58c4c04d6e5f1ba779eabfb5f7bfbd6"),
    # NIST SP 800-67 rev1 example, whose plaintext is spelled "The qufck brown fox jump"
    # (first block; CBC with a zero IV equals ECB for one block)
    ("3des", "0123456789abcdef23456789abcdef01456789abcdef0123", "0000000000000000",
     b"The qufc".hex(), "a826fd8ce53b855f"),
    # The classic DES worked example (FIPS 46 walk-through), one block, zero IV
    ("des", "133457799bbcdff1", "0000000000000000", "0123456789abcdef", "85e813540f0ab405"),
])
def test_cbc_vectors(name, key, iv, pt, ct):
    c = make_cipher(name, h(key))
    assert c.iv_size == c.block_size == len(h(iv))
    assert c.icv_size == 0 and not c.aead
    assert c.encrypt(h(iv), h(pt)) == h(ct)
    assert c.decrypt(h(iv), h(ct)) == h(pt)


def test_cbc_rejects_partial_blocks():
    c = make_cipher("aes128", bytes(16))
    with pytest.raises(CipherError):
        c.encrypt(bytes(16), b"x" * 15)
    with pytest.raises(CipherError):
        c.decrypt(bytes(16), b"x" * 17)


# draft-mcgrew-gcm-test-01 section 4: the ESP test cases.  Keying material is key || salt
# (RFC 4106 8.1), the ESP IV is the 8 bytes after the salt in the draft's nonce, the AAD is
# SPI || (ESN high ||) seq low as ESP builds it.
@pytest.mark.parametrize("name,key,salt,iv,aad,pt,ct", [
    ("aes128gcm16", "4c80cdefbb5d10da906ac73c3613a634", "2e443b68", "4956ed7e3b244cfe",
     "000043218765432100000000",
     "45000048699a000080114db7c0a80102c0a801010a9bf15638d3010000010000"
     "00000000045f736970045f756470037369700963796265726369747902646b00"
     "0021000101020201",
     "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34"
     "cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce"
     "61bc17d768fd9732459018148f6cbe722fd04796562dfdb4"),
    ("aes192gcm16", "feffe9928665731c6d6a8f9467308308feffe9928665731c", "cafebabe",
     "facedbaddecaf888", "0000a5f80000000a",
     "45000028a4ad4000400678800a01038f0a010612802306b8cb712602dd6bb03e501016d075680001",
     "a5b1f8066029aea40e598b8122de02420938b3ab33f828e687b8858b5bfbdbd0315b27452144cc77"
     "95457b9652037f5318027b5b4cd7a636"),
    ("aes256gcm16", "abbccddef00112233445566778899aababbccddef00112233445566778899aab",
     "11223344", "0102030405060708", "4a2cbfe300000002",
     "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee000000000"
     "7002400020bf0000020405b40101040201020201",
     "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763"
     "748a637985771d347f0545659f14e99def842d8eb335f4eecfdbf831824b4c49"
     "15956c96"),
])
def test_gcm_esp_vectors(name, key, salt, iv, aad, pt, ct):
    c = make_cipher(name, h(key + salt))
    assert (c.iv_size, c.icv_size, c.aead) == (8, 16, True)
    assert c.key_size == cipher_key_size(name) == len(h(key + salt))
    assert c.encrypt(h(iv), h(pt), h(aad)) == h(ct)
    assert c.decrypt(h(iv), h(ct), h(aad)) == h(pt)
    bad = bytearray(h(ct))
    bad[-1] ^= 1
    with pytest.raises(CipherError):
        c.decrypt(h(iv), bytes(bad), h(aad))
    with pytest.raises(CipherError):
        c.decrypt(h(iv), h(ct), h(aad)[:-1] + b"\x01")


# RFC 7539 (8439) 2.8.2 AEAD vector.  Its nonce 07000000 || 4041424344454647 splits exactly
# into RFC 7634's salt (last 4 bytes of keying material) and 8-byte ESP IV.
# (RFC 7634's own appendix A ESP example was not available offline here.)
def test_chacha20poly1305_vector():
    key = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f") + h("07000000")
    aad = h("50515253c0c1c2c3c4c5c6c7")
    pt = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
          b"for the future, sunscreen would be it.")
    ct = h("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca96712"
           "82fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58"
           "fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116"
           "1ae10b594f09e26a7e902ecbd0600691")
    c = make_cipher("chacha20poly1305", key)
    assert (c.key_size, c.iv_size, c.icv_size) == (36, 8, 16)
    assert c.encrypt(h("4041424344454647"), pt, aad) == ct
    assert c.decrypt(h("4041424344454647"), ct, aad) == pt
    with pytest.raises(CipherError):
        c.decrypt(h("4041424344454648"), ct, aad)
    with pytest.raises(CipherError):
        c.decrypt(h("4041424344454647"), ct[:10], aad)   # shorter than the tag


def test_null_cipher():
    c = make_cipher("null")
    assert (c.iv_size, c.icv_size, c.key_size) == (0, 0, 0)
    assert c.encrypt(b"", b"abc") == b"abc" == c.decrypt(b"", b"abc")


# RFC 2202 (MD5, SHA-1) and RFC 4231 (SHA-2) test cases 1 and 2, truncated to the ESP/AH/IKE
# ICV length (RFC 2403, 2404, 4868).  "Jefe" is shorter than the fixed IPsec key size,
# hence strict_key=False; the strict check is tested below.
@pytest.mark.parametrize("name,key,data,full", [
    ("md5", "0b" * 16, b"Hi There", "9294727a3638bb1c13f48ef8158bfc9d"),
    ("md5", b"Jefe".hex(), b"what do ya want for nothing?", "750c783e6ab0b503eaa86e310a5db738"),
    ("sha1", "0b" * 20, b"Hi There", "b617318655057264e28bc0b6fb378c8ef146be00"),
    ("sha1", b"Jefe".hex(), b"what do ya want for nothing?",
     "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
    ("sha256", "0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    ("sha256", b"Jefe".hex(), b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    ("sha384", b"Jefe".hex(), b"what do ya want for nothing?",
     "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
     "8e2240ca5e69e2c78b3239ecfab21649"),
    ("sha512", b"Jefe".hex(), b"what do ya want for nothing?",
     "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
     "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
    # RFC 4231 test case 5 is itself the 128-bit truncation
    ("sha256", "0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
])
def test_hmac_vectors(name, key, data, full):
    icv_len = {"md5": 12, "sha1": 12, "sha256": 16, "sha384": 24, "sha512": 32}[name]
    m = Integrity(name, h(key), strict_key=False)
    assert m.icv_size == icv_len == integrity_icv_size(name)
    assert m.sign(data) == h(full)[:icv_len]
    assert m.verify(data, h(full)[:icv_len])
    assert not m.verify(data + b"x", h(full)[:icv_len])
    assert not m.verify(data, h(full)[:icv_len - 1])


@pytest.mark.parametrize("name,size", [("md5", 16), ("sha1", 20), ("sha256", 32),
                                       ("sha384", 48), ("sha512", 64)])
def test_integrity_key_sizes(name, size):
    assert integrity_key_size(name) == size
    make_integrity(name, bytes(size))
    with pytest.raises(ValueError):
        make_integrity(name, bytes(size - 1))


@pytest.mark.parametrize("name,size", [("aes128", 16), ("aes192", 24), ("aes256", 32),
                                       ("3des", 24), ("des", 8), ("aes128gcm16", 20),
                                       ("aes256gcm16", 36), ("chacha20poly1305", 36)])
def test_cipher_key_sizes(name, size):
    assert make_cipher(name, bytes(size)).key_size == size
    with pytest.raises(ValueError):
        make_cipher(name, bytes(size + 1))


def test_unknown_names_and_no_key_in_repr():
    with pytest.raises(ValueError):
        make_cipher("aes999", b"")
    with pytest.raises(ValueError):
        make_integrity("sha3", b"")
    key = bytes(range(1, 21))
    assert key.hex() not in repr(make_cipher("aes128gcm16", key))
    assert key.hex() not in repr(make_integrity("sha1", key))


@pytest.mark.parametrize("name", ["aes128", "aes256", "3des", "des"])
def test_cbc_persistent_context_matches_fresh_cbc(name):
    """The SA-lifetime CBC contexts (chained, first block corrected) must give exactly the
    standard CBC of each message under its own IV, in any order of calls."""
    import os
    import random

    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = os.urandom(cipher_key_size(name))
    c = make_cipher(name, key)
    algo = algorithms.AES(key) if name.startswith("aes") else TripleDES(key * 3 if name == "des" else key)
    bs = c.block_size
    rng = random.Random(7)
    for _ in range(60):
        iv = os.urandom(bs)
        msg = os.urandom(bs * rng.randint(0, 20))
        e = Cipher(algo, modes.CBC(iv)).encryptor()
        ref = e.update(msg) + e.finalize()
        if rng.random() < 0.5:
            assert c.encrypt(iv, msg) == ref
            assert c.decrypt(iv, ref) == msg
        else:
            assert c.decrypt(iv, ref) == msg
            assert c.encrypt(iv, msg) == ref
