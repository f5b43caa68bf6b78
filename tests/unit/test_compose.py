"""docker-compose.yml: its structure against conf/demo, and validation by a compose tool.

The validator is Compose itself: `docker compose` (the v2 plugin) when present, else
`docker-compose` (Debian package `docker-compose`, v1.29, which checks files against the
compose-spec JSON schema). `config` parses, interpolates and validates without an engine.
"""

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vpnd.config import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SITES = {"a": ("gw-a", "host-a", "lan-a"), "b": ("gw-b", "host-b", "lan-b")}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def _addr(service, network):
    return ipaddress.ip_address(service["networks"][network]["ipv4_address"])


def _subnet(compose, network):
    (cfg,) = compose["networks"][network]["ipam"]["config"]
    return ipaddress.ip_network(cfg["subnet"]), ipaddress.ip_address(cfg["gateway"])


def _demo_config(service, variant=""):
    (vol,) = service["volumes"]
    src, dst, mode = vol.replace("${VPND_DEMO_VARIANT:-}", variant).split(":")
    assert dst == "/etc/vpnd/vpnd.yaml" and mode == "ro"
    path = ROOT / src
    assert path.is_file(), src
    return load_config(path)


def test_services_and_networks(compose):
    assert set(compose["services"]) == {"gw-a", "gw-b", "host-a", "host-b"}
    assert set(compose["networks"]) == {"wan", "lan-a", "lan-b"}


@pytest.mark.parametrize("gw", ["gw-a", "gw-b"])
def test_gateways_can_run_vpnd(compose, gw):
    s = compose["services"][gw]
    assert {"NET_ADMIN", "NET_RAW"} <= set(s["cap_add"])
    assert "/dev/net/tun:/dev/net/tun" in s["devices"]
    assert str(s["sysctls"]["net.ipv4.ip_forward"]) == "1"
    assert s["command"] == ["vpnd", "--config", "/etc/vpnd/vpnd.yaml"]
    assert s["build"]["dockerfile"] == "docker/Dockerfile"


@pytest.mark.parametrize("variant", ["", "-manual"])
@pytest.mark.parametrize("site,other", [("a", "b"), ("b", "a")])
def test_addresses_match_demo_configs(compose, site, other, variant):
    gw, host, lan = SITES[site]
    ogw, ohost, olan = SITES[other]
    svc = compose["services"]
    cfg = _demo_config(svc[gw], variant)
    (conn,) = cfg.connections
    # The peer of this site's config is the other gateway's WAN address, and vice versa.
    assert ipaddress.ip_address(conn.peer) == _addr(svc[ogw], "wan")
    if conn.local:
        assert ipaddress.ip_address(conn.local) == _addr(svc[gw], "wan")
    # The protected subnets are the LAN networks of the compose file.
    lan_net, lan_docker_gw = _subnet(compose, lan)
    olan_net, _ = _subnet(compose, olan)
    assert conn.local_ts == (lan_net,) and conn.remote_ts == (olan_net,)
    assert _addr(svc[gw], lan) in lan_net and _addr(svc[host], lan) in lan_net
    # The control socket the container's vpnctl uses is the one the config names.
    assert svc[gw]["environment"]["VPND_SOCKET"] == cfg.daemon.control_socket


def test_docker_bridge_addresses_do_not_collide(compose):
    used = {_addr(s, n) for s in compose["services"].values() for n in s["networks"]}
    for name in compose["networks"]:
        net, gw = _subnet(compose, name)
        assert gw in net and gw not in used, name
        for s in compose["services"].values():
            if name in s["networks"]:
                assert _addr(s, name) in net


@pytest.mark.parametrize("site,other", [("a", "b"), ("b", "a")])
def test_hosts_route_the_remote_site_via_their_gateway(compose, site, other):
    gw, host, lan = SITES[site]
    svc = compose["services"]
    cmd = " ".join(svc[host]["command"])
    m = re.search(r"ip route replace (\S+) via (\S+)", cmd)
    assert m, cmd
    assert ipaddress.ip_network(m.group(1)) == _subnet(compose, SITES[other][2])[0]
    assert ipaddress.ip_address(m.group(2)) == _addr(svc[gw], lan)
    assert "NET_ADMIN" in svc[host]["cap_add"]  # to add that route


def test_dockerfile_copies_only_what_exists():
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _dest = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), src


def _compose_cmd():
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


COMPOSE_CMD = _compose_cmd()
needs_compose = pytest.mark.skipif(
    COMPOSE_CMD is None,
    reason="no compose tool: install Debian's 'docker-compose' or the docker compose plugin")


def _config(path: Path, *extra, env=None):
    return subprocess.run([*COMPOSE_CMD, "-f", str(path), "config", *extra], cwd=path.parent,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@needs_compose
def test_compose_tool_accepts_the_file():
    r = _config(COMPOSE, "-q")
    assert r.returncode == 0, r.stderr


@needs_compose
def test_compose_tool_resolves_the_manual_variant():
    r = _config(COMPOSE, env={"VPND_DEMO_VARIANT": "-manual"})
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    vol = resolved["services"]["gw-a"]["volumes"][0]
    src = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
    assert src == str(ROOT / "conf/demo/site-a-manual.yaml")


@needs_compose
def test_compose_tool_rejects_a_broken_copy(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("hostname: gw-a", "hostnme: gw-a"))
    r = _config(broken, "-q")
    assert r.returncode != 0 and "hostnme" in (r.stderr + r.stdout)
