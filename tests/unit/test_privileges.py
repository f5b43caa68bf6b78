"""Issue 8.13 without namespaces: the privilege drop in a child process (as root), the
daemon.user key, and warnings for secrets that others can read."""

import os
import subprocess
import sys

import pytest

from vpnd.config import ConfigError, load_config

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@root_only
def test_drop_keeps_only_three_capabilities_and_no_new_privs():
    code = """
import socket
from vpnd.net import privileges as p
print(p.drop(p.resolve("nobody")))
st = dict(l.split(":", 1) for l in open("/proc/self/status"))
print(st["Uid"].split(), st["CapEff"].strip(), st["CapPrm"].strip(), st["CapBnd"].strip(),
      st["CapInh"].strip(), st["CapAmb"].strip(), st["NoNewPrivs"].strip())
socket.socket(socket.AF_INET, socket.SOCK_RAW, 50).close()          # NET_RAW
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); s.close()
try:
    open("/etc/shadow").read()
    print("shadow readable")
except PermissionError:
    print("shadow refused")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == ("running as user nobody (uid 65534) with CAP_NET_BIND_SERVICE "
                        "CAP_NET_ADMIN CAP_NET_RAW")
    assert lines[1] == ("['65534', '65534', '65534', '65534'] 0000000000003400 0000000000003400 "
                        "0000000000003400 0000000000000000 0000000000000000 1")
    assert lines[2] == "shadow refused"


def write(tmp_path, text, mode=0o600, name="vpnd.yaml"):
    f = tmp_path / name
    f.write_text(text)
    os.chmod(f, mode)
    return f


PSK_CONF = "connections:\n  x: {peer: 10.0.0.2, psk: \"a secret key\"}\n"


def test_inline_psk_in_a_config_readable_by_others_is_a_warning(tmp_path):
    # issue 8.13 / 11: only psk_file was checked
    f = write(tmp_path, PSK_CONF, 0o644)
    assert load_config(f).warnings == (
        f"connections.x: '{f}' holds a pre-shared key and is readable by everyone; chmod 600 it",)
    os.chmod(f, 0o600)
    assert load_config(f).warnings == ()


@root_only
def test_group_readable_by_a_foreign_group_is_a_warning(tmp_path):
    f = write(tmp_path, PSK_CONF, 0o640)
    os.chown(f, 0, 65534)
    import grp
    name = grp.getgrgid(65534).gr_name
    (w,) = load_config(f).warnings
    assert w.startswith(f"connections.x: '{f}' holds a pre-shared key and is readable by "
                        f"group '{name}'; chmod 600 it, or give it the group vpnd runs as")
    # the group vpnd runs as (daemon.user's) may read it
    f.write_text("daemon: {user: nobody}\n" + PSK_CONF)
    os.chown(f, 0, __import__("pwd").getpwnam("nobody").pw_gid)
    assert load_config(f).warnings == ()


def test_manual_keys_in_a_readable_config_are_a_warning(tmp_path):
    f = write(tmp_path, """connections:
  m:
    peer: 10.0.0.2
    esp: aes128gcm16
    manual:
      inbound: {esp: {spi: 0x1001, enc_key: "000102030405060708090a0b0c0d0e0f10111213"}}
      outbound: {esp: {spi: 0x1002, enc_key: "000102030405060708090a0b0c0d0e0f10111213"}}
""", 0o604)
    (w,) = load_config(f).warnings
    assert w == f"connections.m: '{f}' holds manual keys and is readable by everyone; chmod 600 it"


def test_unknown_daemon_user_is_a_key_path_error(tmp_path):
    f = write(tmp_path, "daemon: {user: no-such-user-vpnd}\n" + PSK_CONF)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    (p,) = e.value.problems
    assert p.startswith("daemon.user: no such user 'no-such-user-vpnd' (create it")
    f = write(tmp_path, "daemon: {user: root}\n" + PSK_CONF)
    assert load_config(f).daemon.user == "root"


@root_only
def test_modules_loaded_lazily_still_import_after_the_drop():
    # This Python may live where the daemon's user cannot read (here: under /root): the
    # daemon preloads vpnd and what it imports lazily before dropping root.
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory(prefix="vpnd-priv-") as d:  # /tmp/pytest-of-root is 0700
        _lazy_imports(Path(d))


def _lazy_imports(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("daemon: {control_group: '0', user: nobody}\n"
                    "connections:\n  x: {peer: 10.0.0.2, psk: \"a secret key\"}\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(conf, 0o644)
    code = f"""
import sys
from vpnd.net import privileges as p
p.preload()
p.drop(p.resolve("nobody"))
from vpnd.config import load_config
from vpnd.crypto import auth  # cryptography, hashlib
cfg = load_config({str(conf)!r})
print("ok", cfg.daemon.control_group, "grp" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["ok", "0", "True"]
