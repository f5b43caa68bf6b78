"""issue 11 basics, used as an operator would: --version, shell completion, man pages,
package metadata and the README's install lines for the samples."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import metadata, version
from pathlib import Path

import pytest

from vpnd import cli, completion

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("prog", ["vpnd", "vpnctl"])
def test_version_from_package_metadata(prog):
    out = subprocess.run([str(BIN / prog), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{prog} {pyproject()['project']['version']}"
    assert version("vpnd") == pyproject()["project"]["version"]


def test_metadata_license_and_no_placeholder_urls():
    proj = pyproject()["project"]
    assert proj["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    md = metadata("vpnd")
    assert md["License-Expression"] == "MIT"
    assert any(c.startswith("Topic :: System :: Networking") for c in md.get_all("Classifier"))
    for url in proj.get("urls", {}).values():  # only real addresses, never example.* ones
        assert "example" not in url


def complete(script: str, words: list[str]) -> set[str]:
    """What bash's completion offers after typing WORDS (the last one being completed)."""
    w = " ".join(f"'{x}'" for x in words)
    prog = f"""{script}
COMP_WORDS=({w}); COMP_CWORD={len(words) - 1}; COMPREPLY=()
_vpnctl
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "--norc", "-c", prog], capture_output=True, text=True, check=True,
                         cwd="/")
    return set(out.stdout.split())


def test_bash_completion_offers_every_subcommand_and_its_options():
    script = subprocess.run([str(BIN / "vpnctl"), "completion", "bash"], capture_output=True,
                            text=True, check=True).stdout
    parser = cli.vpnctl_parser()
    model = completion.model(parser)
    assert {"status", "up", "down", "rekey", "reload", "completion"} <= set(model)
    assert complete(script, ["vpnctl", ""]) >= set(model)
    assert complete(script, ["vpnctl", "st"]) == {"status"}
    assert "--json" in complete(script, ["vpnctl", "status", "--"])
    assert "--ike" in complete(script, ["vpnctl", "--socket", "/x.sock", "rekey", "site-b", "--"])
    for name, c in model.items():
        offered = complete(script, ["vpnctl", name, ""])
        assert set(c["sub"]) <= offered or set(c["options"]) <= offered, name
        for sname, s in c["sub"].items():
            assert set(s["options"]) <= complete(script, ["vpnctl", name, sname, "--"]), sname


def test_bash_completion_offers_the_daemons_connection_names(tmp_path):
    """`vpnctl up <TAB>` asks the running daemon (status --json over the socket given)."""
    import json
    import socket
    import threading

    path = str(tmp_path / "ctl.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def serve():
        for _ in range(2):
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                c.recv(65536)
                st = {"connections": [{"name": "site-b"}, {"name": "lab"}], "ike_sas": []}
                c.sendall(json.dumps({"ok": True, "result": st}).encode() + b"\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        script = subprocess.run([str(BIN / "vpnctl"), "completion", "bash"], capture_output=True,
                                text=True, check=True).stdout
        prog = str(BIN / "vpnctl")
        assert complete(script, [prog, "--socket", path, "up", ""]) >= {"site-b", "lab"}
        assert complete(script, [prog, "-s", path, "rekey", "si"]) == {"site-b"}
        assert complete(script, [prog, "--socket", path, "status", ""]) == {"--help", "--json",
                                                                          "--socket"}
    finally:
        srv.close()
        t.join(5)
    # no daemon: no names, no error output
    assert complete(script, [prog, "--socket", str(tmp_path / "none.sock"), "down", ""]) == {
        "--all", "--help", "--peer", "--socket", "--timeout"}


def test_zsh_completion_is_valid_zsh_if_zsh_is_there():
    script = subprocess.run([str(BIN / "vpnctl"), "completion", "zsh"], capture_output=True,
                            text=True, check=True).stdout
    assert "bashcompinit" in script and "complete -F _vpnctl vpnctl" in script
    if shutil.which("zsh"):  # registered with zsh's completion system
        r = subprocess.run(["zsh", "-f", "-c", script + "\nprint -r -- ${_comps[vpnctl]}"],
                           capture_output=True, text=True, check=True, cwd="/")
        assert r.stdout.strip() == "_bash_complete -F _vpnctl" and r.stderr == ""


def build_man(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build-man"), str(tmp_path)],
                   check=True, capture_output=True)
    return {p.name: p for p in tmp_path.iterdir()}


@pytest.mark.skipif(not shutil.which("groff"), reason="groff not installed")
def test_man_pages_build_and_render_without_warnings(tmp_path):
    pages = build_man(tmp_path)
    assert set(pages) == {"vpnd.8", "vpnctl.8", "vpnd.yaml.5"}
    for p in pages.values():
        r = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(p)], capture_output=True,
                           text=True)
        assert r.returncode == 0 and r.stderr == "", (p.name, r.stderr)
    env = dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING="0")
    text = subprocess.run(["man", "-l", str(pages["vpnd.yaml.5"])], capture_output=True, text=True,
                          env=env, check=True)
    assert text.stderr == ""
    plain = re.sub(".\b", "", text.stdout)
    # every key of the README's configuration tables is in vpnd.yaml(5)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration reference")[1].split("\n## ")[0]
    keys = re.findall(r"^\| `([a-z_]+)`", section, re.M)
    assert len(keys) > 20
    for k in keys:
        assert k in plain, k
    vpnctl = re.sub(".\b", "", subprocess.run(["man", "-l", str(pages["vpnctl.8"])],
                                               capture_output=True, text=True, env=env).stdout)
    assert "vpnctl --version" in vpnctl and "OPERATING VPND" in vpnctl
    vpnd = re.sub(".\b", "", subprocess.run(["man", "-l", str(pages["vpnd.8"])],
                                             capture_output=True, text=True, env=env).stdout)
    assert "--check" in vpnd and "SYSTEMD" in vpnd


def test_readme_installs_sample_secrets_0600(tmp_path):
    """The README's install lines, run into a scratch root: the secrets end up 0600."""
    readme = (ROOT / "README.md").read_text()
    lines = [l.split("#")[0].strip() for l in readme.splitlines()
             if l.startswith("install ") and "conf/" in l]
    assert lines
    for l in lines:
        argv = l.split()
        argv = [a.replace("/etc/", f"{tmp_path}/etc/") for a in argv]
        # owner/group: the system user vpnd (systemd/vpnd.sysusers) may not exist here;
        # the modes are what this test checks
        argv = [a for i, a in enumerate(argv)
                if a not in ("-o", "-g") and argv[i - 1] not in ("-o", "-g")]
        subprocess.run(argv, cwd=ROOT, check=True)
    files = list((tmp_path / "etc" / "vpnd").iterdir())
    assert {f.name for f in files} >= {"vpnd.yaml", "roadwarriors.psk"}
    for f in files:
        assert f.stat().st_mode & 0o077 == 0, f
