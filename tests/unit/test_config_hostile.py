"""Hostile or mistaken configuration files (issue 8.8): bounded size, bounded YAML alias
expansion, bounded reads of every file a config names, nothing but regular files."""

import os
import subprocess
import sys
import textwrap

import pytest

from vpnd import config as cfgmod
from vpnd.config import ConfigError, load_config

BILLION_LAUGHS = textwrap.dedent("""\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    connections:
      x: {peer: 10.0.0.2, psk: abcdefgh, local_ts: *i}
    """)


def problems(path):
    with pytest.raises(ConfigError) as e:
        load_config(path)
    for p in e.value.problems:
        assert "\n" not in p
    return e.value.problems


def test_billion_laughs_check_fails_fast_with_a_clear_message(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(BILLION_LAUGHS)
    # A separate process with a memory cap: before the fix this ran out of memory.
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
            "from vpnd.cli import vpnd_main; sys.exit(vpnd_main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "--config", str(f), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "alias" in r.stderr and "bomb" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_legit_anchors_and_merge_keys_still_work(tmp_path):
    f = tmp_path / "ok.yaml"
    # unknown top-level keys are refused, so the anchor sits in the first connection
    f.write_text(textwrap.dedent("""\
        connections:
          a: &defaults {peer: 10.0.0.2, psk: "a key of some length", esp: aes128gcm16}
          b: {<<: *defaults, peer: 10.0.0.3}
          c: {<<: *defaults, peer: 10.0.0.4}
        """))
    cfg = load_config(f)
    assert [c.peer for c in cfg.connections] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]


def test_recursive_alias_is_an_error(tmp_path):
    f = tmp_path / "rec.yaml"
    f.write_text("connections: &c\n  x: *c\n")
    (p,) = problems(f)
    assert "recursive YAML alias" in p


def test_config_file_size_is_bounded(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("# " + "x" * (cfgmod.MAX_CONFIG_BYTES + 10) + "\nconnections: {}\n")
    (p,) = problems(f)
    assert p == f"{f}: cannot read: larger than 1 MiB"


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_config_that_is_not_a_regular_file(path):
    (p,) = problems(path)
    assert p == f"{path}: cannot read: not a regular file"


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (p,) = problems(fifo)  # before: open() blocked until a writer came
    assert "not a regular file" in p


def write_conf(tmp_path, body):
    f = tmp_path / "vpnd.yaml"
    f.write_text(textwrap.dedent(body))
    return f


@pytest.mark.parametrize("key", ["psk_file", "auth.cert", "auth.key", "auth.ca"])
def test_credential_files_at_dev_zero_are_refused_with_key_path(tmp_path, key):
    if key == "psk_file":
        body = "connections:\n  x: {peer: 10.0.0.2, psk_file: /dev/zero}\n"
    else:
        files = {"cert": "/dev/zero", "key": "/dev/zero", "ca": "/dev/zero"}
        body = ("connections:\n  x: {peer: 10.0.0.2, auth: {cert: %s, key: %s, ca: %s}}\n"
                % (files["cert"], files["key"], files["ca"]))
    f = write_conf(tmp_path, body)
    ps = problems(f)
    want = f"connections.x.{key}: cannot read '/dev/zero': not a regular file"
    assert want in ps, ps


def test_psk_file_size_is_bounded(tmp_path):
    (tmp_path / "big.psk").write_text("k" * (cfgmod.MAX_PSK_FILE_BYTES + 1))
    os.chmod(tmp_path / "big.psk", 0o600)
    f = write_conf(tmp_path, "connections:\n  x: {peer: 10.0.0.2, psk_file: big.psk}\n")
    (p,) = problems(f)
    assert p == "connections.x.psk_file: cannot read 'big.psk': larger than 64 KiB"


def test_certificate_file_size_is_bounded(tmp_path):
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * (cfgmod.MAX_FILE_BYTES + 1))
    f = write_conf(tmp_path, "connections:\n  x: {peer: 10.0.0.2, auth: {cert: big.pem, "
                             "key: big.pem, ca: big.pem}}\n")
    ps = problems(f)
    assert "connections.x.auth.cert: cannot read 'big.pem': larger than 1 MiB" in ps


def test_read_file_stops_at_the_limit_even_if_size_lies(tmp_path):
    # a file that grows after fstat: read no more than limit + 1 bytes
    f = tmp_path / "f"
    f.write_bytes(b"a" * 100)
    assert cfgmod.read_file(str(f), 100) == b"a" * 100
    with pytest.raises(OSError, match="larger than"):
        cfgmod.read_file(str(f), 99)


def test_vpnctl_default_socket_survives_a_bomb_and_dev_zero(tmp_path, monkeypatch):
    from vpnd.cli import DEFAULT_SOCKET, default_socket
    monkeypatch.delenv("VPND_SOCKET", raising=False)
    f = tmp_path / "bomb.yaml"
    f.write_text(BILLION_LAUGHS.replace("connections:", "daemon: {control_socket: /x.sock}\n"
                                        "connections:"))
    assert default_socket(str(f)) == DEFAULT_SOCKET  # refused, not expanded
    assert default_socket("/dev/zero") == DEFAULT_SOCKET
    ok = tmp_path / "ok.yaml"
    ok.write_text("daemon: {control_socket: /run/x/y.sock}\n")
    assert default_socket(str(ok)) == "/run/x/y.sock"


def test_big_files_use_the_pure_python_loader_same_result(tmp_path):
    # above C_LOADER_MAX_BYTES the loader yields the GIL (reload parses in a thread)
    pad = "#" + "x" * 200 + "\n"
    body = "connections:\n  a: {peer: 10.0.0.2, psk: \"a key of some length\"}\n"
    small, big = tmp_path / "s.yaml", tmp_path / "b.yaml"
    small.write_text(body)
    big.write_text(pad * (cfgmod.C_LOADER_MAX_BYTES // len(pad) + 1) + body)
    os.chmod(small, 0o600)
    os.chmod(big, 0o600)
    assert load_config(small).connections == load_config(big).connections
    big.write_text(pad * (cfgmod.C_LOADER_MAX_BYTES // len(pad) + 1) + BILLION_LAUGHS)
    (p,) = problems(big)
    assert "alias bomb" in p
