"""systemd/vpnd.service checked by systemd's own tools (systemd-analyze, Debian package `systemd`)."""

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "vpnd.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian package 'systemd')")


def directives(text: str) -> dict[str, list[str]]:
    """Unit file directives as section.key -> values (keys may repeat, as in systemd)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


@pytest.fixture
def fake_root(tmp_path):
    """A root for `systemd-analyze --root`: the unit byte for byte at its installed path,
    the real system units, and executables at the paths ExecStart names."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/vpnd.service")
    units = Path("/usr/lib/systemd/system")
    if units.is_dir():
        shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    for exe in ("usr/local/bin/vpnd", "bin/kill"):
        p = root / exe
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return root


def analyze(*args):
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=120)


@needs_analyze
def test_systemd_analyze_verify_is_clean(fake_root):
    r = analyze("verify", f"--root={fake_root}", "/etc/systemd/system/vpnd.service")
    # verify exits 0 even for unknown keys or unparsable values, printing a warning:
    # any line about our unit is a failure.
    complaints = [line for line in r.stderr.splitlines() if "vpnd.service" in line]
    assert r.returncode == 0 and not complaints, r.stderr


@needs_analyze
def test_verify_would_catch_a_broken_unit(fake_root):
    unit = fake_root / "etc/systemd/system/vpnd.service"
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    r = analyze("verify", f"--root={fake_root}", "/etc/systemd/system/vpnd.service")
    assert "Failed to parse service type" in r.stderr


@needs_analyze
def test_security_exposure_is_low(fake_root):
    # --threshold: exit non-zero when the exposure (x10) is above it; 3.0 is "OK" territory.
    # 2.5 before issue 8.13 (as root); 1.9 with User=vpnd and PrivateMounts=yes
    r = analyze("security", "--offline=yes", f"--root={fake_root}", "--threshold=19",
                "--no-pager", "/etc/systemd/system/vpnd.service")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


def test_required_directives():
    d = directives(UNIT.read_text())
    assert d["Service.Type"] == ["notify"] and d["Service.NotifyAccess"] == ["main"]
    assert d["Service.ExecStart"] == ["/usr/local/bin/vpnd --config /etc/vpnd/vpnd.yaml"]
    assert d["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Service.Restart"] == ["on-failure"]
    caps = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}
    assert set(d["Service.CapabilityBoundingSet"][0].split()) == caps
    assert set(d["Service.AmbientCapabilities"][0].split()) == caps
    assert d["Service.DeviceAllow"] == ["/dev/net/tun rw"]
    assert set(d["Service.RestrictAddressFamilies"][0].split()) == \
        {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert d["Service.ProtectSystem"] == ["strict"]
    assert d["Service.RuntimeDirectory"] == ["vpnd"]
    assert d["Service.ReadWritePaths"] == ["/run/vpnd"]
    # issue 8.13: never root; the system user comes from systemd/vpnd.sysusers
    assert d["Service.User"] == ["vpnd"] and d["Service.Group"] == ["vpnd"]
    sysusers = (ROOT / "systemd" / "vpnd.sysusers").read_text()
    assert any(line.split()[:2] == ["u", "vpnd"] for line in sysusers.splitlines())
    for flag in ("ProtectHome", "NoNewPrivileges", "PrivateTmp", "PrivateMounts"):
        assert d[f"Service.{flag}"] == ["yes"], flag
    # An invalid config exits 1 (--check): restarting would loop for nothing.
    assert d["Service.RestartPreventExitStatus"] == ["1"]
    # issue 11: the watchdog (vpnd/watchdog.py pings at half of it)
    assert d["Service.WatchdogSec"] == ["30s"]


def test_default_control_socket_is_writable_under_the_sandbox():
    from vpnd.config import DaemonConfig
    d = directives(UNIT.read_text())
    sock_dir = str(Path(DaemonConfig().control_socket).parent)
    assert sock_dir in d["Service.ReadWritePaths"]
    assert sock_dir == "/run/" + d["Service.RuntimeDirectory"][0]
