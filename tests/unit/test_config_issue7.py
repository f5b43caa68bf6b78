"""Config side of issue 7.3 (no ESP+AH bundles with IKEv2), 7.4 (the ISAKMP policy's
lifetime reaches the IKE SA) and issue 12 (withdrawn algorithms named with a replacement)."""

import pytest

from vpnd.config import ConfigError, parse_config


def conn(**kw):
    c = {"peer": "10.200.0.2", "psk": "secret key 123"}
    c.update(kw)
    return {"connections": {"x": c}}


def problems(data):
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return e.value.problems


@pytest.mark.parametrize("kw,key", [
    ({"esp": "ah-sha-hmac esp-aes 256 esp-sha-hmac"}, "esp"),
    ({"esp": "aes256-sha256", "ah": "sha256"}, "ah"),
    ({"esp": "esp-aes 256 esp-sha-hmac", "ah": "sha1"}, "ah"),
])
def test_ikev2_esp_ah_bundle_is_refused_with_advice(kw, key):
    (p,) = problems(conn(version=2, **kw))
    assert p.startswith(f"connections.x.{key}: IKEv2 has no ESP+AH bundles; use ESP with "
                        "integrity"), p
    assert "AH alone" in p and "version: 1" in p


@pytest.mark.parametrize("kw", [
    {"version": 1, "esp": "ah-sha-hmac esp-aes 256 esp-sha-hmac"},
    {"version": 1, "esp": "aes256-sha256", "ah": "sha256"},
    {"version": 2, "esp": "none", "ah": "sha256"},
    {"version": 2, "esp": "ah-sha256-hmac"},
])
def test_bundle_with_ikev1_and_ah_alone_with_ikev2_stay_valid(kw):
    parse_config(conn(**kw))


def test_isakmp_policy_lifetime_becomes_the_ike_sa_lifetime():
    (c,) = parse_config(conn(version=1, ike=[
        {"seq": 10, "encryption": "aes 256", "hash": "sha256", "group": 14, "lifetime": 3600},
        {"seq": 20, "encryption": "aes", "hash": "sha", "group": 14},
    ])).connections
    assert c.lifetime.ike == 3600
    assert c.lifetime.seconds == 3600 and c.lifetime.kilobytes == 4608000


def test_isakmp_policy_lifetimes_that_differ_are_refused():
    (p,) = problems(conn(version=1, ike=[
        {"seq": 10, "encryption": "aes 256", "hash": "sha256", "group": 14, "lifetime": 3600},
        {"seq": 20, "encryption": "aes", "hash": "sha", "group": 14, "lifetime": 7200},
    ]))
    assert p.startswith("connections.x.ike[1].lifetime: 7200 differs from "
                        "connections.x.ike[0].lifetime (3600)")


def test_isakmp_policy_lifetime_against_lifetime_ike():
    data = conn(version=1, lifetime={"ike": 28800}, ike=[
        {"seq": 10, "encryption": "aes 256", "hash": "sha256", "group": 14, "lifetime": 3600}])
    (p,) = problems(data)
    assert p.startswith("connections.x.lifetime.ike: 28800 differs from")
    data["connections"]["x"]["lifetime"] = {"ike": 3600, "seconds": 1800}
    (c,) = parse_config(data).connections
    assert (c.lifetime.ike, c.lifetime.seconds) == (3600, 1800)


@pytest.mark.parametrize("esp,hint", [
    ("esp-seal esp-sha-hmac", "SEAL was withdrawn"),
    ("esp-gmac", "esp-null esp-sha256-hmac"),
    ("blowfish-sha256", "use aes256gcm16"),
    ("esp-aes esp-sha-hmac group24", "use modp2048 (group14)"),
    ("des-sha1", "DES is withdrawn"),
])
def test_withdrawn_algorithms_are_named_with_what_to_use(esp, hint):
    (p,) = problems(conn(esp=esp))
    assert p.startswith("connections.x.esp: algorithm '") and hint in p, p
    if "seal" in esp:
        assert p == ("connections.x.esp: algorithm 'esp-seal' is not supported: SEAL was "
                     "withdrawn (removed from IOS; it never had an IPsec transform ID), use "
                     "esp-gcm 256 or esp-aes 256 esp-sha256-hmac")


def test_deprecated_algorithms_are_accepted_with_a_warning():
    cfg = parse_config(conn(version=1, ike="3des-md5-modp1024", esp="esp-3des esp-md5-hmac"))
    w = cfg.warnings
    assert "connections.x.ike: 3des is deprecated (RFC 8221, RFC 8247: SHOULD NOT); use " \
           "aes256 or aes256gcm16" in w
    assert any(x.startswith("connections.x.ike: modp1024 (group2) is deprecated") for x in w)
    assert any(x.startswith("connections.x.esp: md5 is deprecated") for x in w)
    assert parse_config(conn()).warnings == ()


def test_check_prints_deprecation_warnings(tmp_path, capsys):
    from vpnd.cli import vpnd_main
    f = tmp_path / "c.yaml"
    f.write_text("connections:\n  x: {peer: 10.0.0.2, psk: abcdefghij, esp: esp-3des esp-sha-hmac}\n")
    os = __import__("os")
    os.chmod(f, 0o600)
    assert vpnd_main(["--config", str(f), "--check"]) == 0
    err = capsys.readouterr().err
    assert "warning: connections.x.esp: 3des is deprecated" in err
