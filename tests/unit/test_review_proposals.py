"""Proposal strings and configs from anywhere (unicode included): a ProposalError or a
ConfigError line, never another exception (`vpnd --check` and SIGHUP must not crash)."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

import pytest

from vpnd.config import ConfigError, parse_config
from vpnd.proposals import ProposalError, parse_proposals

WORDS = ["esp-aes", "esp-gcm", "esp-3des", "esp-sha-hmac", "ah-sha-hmac", "aes128", "sha256",
         "modp2048", "group14", "esn", "prfsha256", "256", "128", "²", "٣", "-", ",", " ", "x25519"]
TEXT = st.one_of(st.text(max_size=40),
                 st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join),
                 st.lists(st.sampled_from(WORDS), max_size=8).map("-".join))


@settings(max_examples=400, deadline=None)
@given(TEXT, st.sampled_from(["ike", "esp", "ah"]), st.booleans())
@example("esp-aes ²", "esp", False)
@example("esp-gcm ¹²⁸", "esp", False)
def test_parse_proposals_raises_only_proposal_error(text, protocol, legacy):
    try:
        parse_proposals(text, protocol, allow_legacy=legacy)
    except ProposalError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("esp", ["esp-aes ²", "esp-gcm ²⁵⁶ esp-sha-hmac"])
def test_unicode_digit_key_size_is_a_config_error(esp):
    with pytest.raises(ConfigError) as e:
        parse_config({"connections": {"x": {"peer": "10.0.0.2", "psk": "k" * 20, "esp": esp}}})
    assert e.value.problems[0].startswith("connections.x.esp: ")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["ike", "esp", "ah", "pfs", "local_id", "remote_id", "mode", "start",
                        "peer", "local", "psk"]), TEXT)
def test_any_string_in_a_connection_key_is_a_problem_line_or_accepted(key, text):
    conn = {"peer": "10.0.0.2", "psk": "k" * 20, key: text}
    try:
        parse_config({"connections": {"x": conn}})
    except ConfigError as e:
        assert all("\n" not in p for p in e.problems)


@pytest.mark.parametrize("conn", [
    {"local_id": "C=C\nH, O=x"}, {"local_id": "a\nb"}, {"remote_id": "@a\nb"},
    {"psk_file": "x\ny"}, {"auth": {"cert": "a\nb", "key": "c\rd", "ca": "e\x00f"}},
    {"esp": "esp-aes\n999"}, {"ike": "aes128-sha256\n-modp2048\n, x"},
])
def test_user_values_with_line_breaks_stay_on_one_problem_line(conn):
    body = {"peer": "10.0.0.2", "version": 1, **conn}
    if "psk_file" not in conn and "auth" not in conn:
        body["psk"] = "k" * 20
    with pytest.raises(ConfigError) as e:
        parse_config({"connections": {"x": body}})
    for line in e.value.problems:
        assert line.isprintable() and line.startswith("connections.x."), line
    assert str(e.value).count("\n") == len(e.value.problems) - 1


@pytest.mark.parametrize("daemon,line", [
    ({"control_socket": "/run/a\x00b.sock"}, "daemon.control_socket: '/run/a\\x00b.sock' is not a valid path"),
    ({"tun": "vpn\x00d"}, "daemon.tun: 'vpn\\x00d' is not a valid interface name (max 15 characters)"),
    ({"tun": "éééééééé"}, "daemon.tun: 'éééééééé' is not a valid interface name (max 15 characters)"),
])
def test_names_the_kernel_would_cut_or_refuse(daemon, line):
    with pytest.raises(ConfigError) as e:
        parse_config({"daemon": daemon})
    assert e.value.problems == [line]


def test_nul_in_a_file_name_is_a_problem_not_a_crash():
    with pytest.raises(ConfigError) as e:
        parse_config({"connections": {"x": {"peer": "10.0.0.2", "psk_file": "a\x00b"}}})
    assert e.value.problems == ["connections.x.psk_file: 'a\\x00b' is not a valid file name"]
