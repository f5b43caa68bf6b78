"""The contract's command lines, run as commands: `vpnd --check` exit codes and one line
per problem with its key path; vpnctl's socket from --socket (before or after the
command), VPND_SOCKET, and daemon.control_socket of the default config."""

import subprocess
import sys
from pathlib import Path

import pytest

from vpnd import cli

ROOT = Path(__file__).resolve().parents[2]


def run(*argv, env=None):
    return subprocess.run([sys.executable, "-c", "import sys; from vpnd.cli import {0}; sys.exit({0}(sys.argv[1:]))"
                           .format(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT)


@pytest.mark.parametrize("conf", ["conf/vpnd.yaml", "conf/manual.yaml", "conf/demo/site-a.yaml",
                                  "conf/demo/site-b.yaml", "conf/demo/site-a-manual.yaml",
                                  "conf/demo/site-b-manual.yaml"])
def test_shipped_configs_pass_check(conf):
    r = run("vpnd_main", "--config", str(ROOT / conf), "--check")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


def test_check_reports_each_problem_on_one_line_with_its_key_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("daemon: {mtu: 10}\nconnections:\n  site-b:\n    peer: 10.200.0.2\n"
                   "    psk: \"secret value 42\"\n    esp: aes999\n    mode: tunell\n")
    r = run("vpnd_main", "--config", str(bad), "--check")
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert "connections.site-b.esp: unknown algorithm 'aes999'" in lines
    assert any(line.startswith("daemon.mtu: ") for line in lines)
    assert any(line.startswith("connections.site-b.mode: ") for line in lines)
    assert len(lines) == 3 and "secret value 42" not in r.stderr


def test_check_of_a_missing_file_is_one_line_exit_1(tmp_path):
    r = run("vpnd_main", "--config", str(tmp_path / "none.yaml"), "--check")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["--socket", "/a.sock", "status"], ["status", "--socket", "/a.sock"],
                                  ["up", "x", "--socket", "/a.sock"], ["-s", "/a.sock", "reload"],
                                  ["rekey", "x", "--ike", "-s", "/a.sock"]])
def test_socket_before_or_after_the_command(argv):
    assert cli.vpnctl_parser().parse_args(argv).socket == "/a.sock"


def test_socket_absent_is_none_so_the_default_applies():
    assert cli.vpnctl_parser().parse_args(["status"]).socket is None


def test_unreachable_daemon_exit_3_and_env_socket_used(tmp_path):
    env = {"VPND_SOCKET": str(tmp_path / "gone.sock"), "PYTHONPATH": str(ROOT)}
    r = run("vpnctl_main", "status", env=env)
    assert r.returncode == 3 and str(tmp_path / "gone.sock") in r.stderr
    r = run("vpnctl_main", "status", "--socket", str(tmp_path / "other.sock"), env=env)
    assert r.returncode == 3 and "other.sock" in r.stderr  # --socket wins over VPND_SOCKET


def test_readme_examples_are_valid():
    """The YAML of README.md's manual-keying section parses; its opening commands exist."""
    import re

    import yaml

    from vpnd.config import parse_config
    text = (ROOT / "README.md").read_text()
    # the README opens with exactly the two commands (run as root; Debian minimal has no sudo)
    opening = re.search(r"```sh\n(.*?)```", text, re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in opening] == ["./scripts/demo", "./scripts/test"]
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        cfg = parse_config(yaml.safe_load(block))
        assert cfg.connections[0].manual is not None
    for cmd in ("status", "up", "down", "rekey", "reload"):
        assert f"vpnctl {cmd}" in text


def test_check_with_a_checker_bug_is_one_line(tmp_path, monkeypatch, capsys):
    import vpnd.config

    def bug(path):
        raise KeyError("psk value 99")

    monkeypatch.setattr(vpnd.config, "load_config", bug)
    assert cli.vpnd_main(["--config", str(tmp_path / "x.yaml"), "--check"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "psk value" not in err


def test_status_footer_shows_internal_errors_only_when_they_moved():
    from vpnd.status import format_status
    base = {"connections": [], "ike_sas": [], "daemon": {"tun": "vpnd0", "mtu": 1400, "uptime_s": 1,
                                                         "routes": [], "loop_errors": 0, "tun_read_errors": 0}}
    assert "drops: none" in format_status(base)
    base["daemon"].update(loop_errors=3, tun_read_errors=2)
    out = format_status(base)
    assert "loop_errors 3" in out and "tun_read_errors 2" in out
