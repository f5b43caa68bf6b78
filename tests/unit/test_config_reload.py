"""Reload as the config side sees it: parsing runs off the event loop (issue 8.8), and a
refused config (issue 7.13: empty) leaves the running one in place."""

import asyncio
import threading

import pytest

from vpnd.config import load_config
from vpnd.daemon import CommandError, Daemon

GOOD = """daemon:
  tun: vpnd0
  control_socket: /tmp/cfg-reload-not-used.sock
connections:
  site-b:
    local: 10.200.0.1
    peer: 10.200.0.2
    psk: "a test key of some length"
    local_ts: [10.1.0.0/16]
    remote_ts: [10.2.0.0/16]
    start: none
"""


def make_daemon(tmp_path, text=GOOD):
    path = tmp_path / "vpnd.yaml"
    path.write_text(text)
    return Daemon(load_config(path), str(path)), path


def test_reload_parses_off_the_event_loop(tmp_path, monkeypatch):
    import vpnd.config
    d, _ = make_daemon(tmp_path)
    real = vpnd.config.load_config
    ticked = threading.Event()

    def slow_load(path):
        # a config that takes long to check; the loop must keep running meanwhile
        ticked.wait(5)
        return real(path)

    monkeypatch.setattr(vpnd.config, "load_config", slow_load)
    monkeypatch.setattr("vpnd.reload.apply_new", lambda d, new: {"reloaded": True})

    async def main():
        d.loop = asyncio.get_running_loop()
        reload = asyncio.ensure_future(d.cmd_reload())
        await asyncio.sleep(0.01)  # runs only if the reload does not hold the loop
        ran_during_load = not reload.done()
        ticked.set()
        return ran_during_load, await reload

    ran_during_load, result = asyncio.run(main())
    assert ran_during_load and result == {"reloaded": True}


@pytest.mark.parametrize("text", ["", "---\n", "connections: {}\n", "daemon: {tun: vpnd0}\n",
                                  "connections:\n"])
def test_reload_to_an_empty_config_is_refused_and_the_old_one_kept(tmp_path, text):
    d, path = make_daemon(tmp_path)
    before = d.config
    path.write_text(text)
    with pytest.raises(CommandError, match="no connections"):
        d.reload()
    assert d.config is before


@pytest.mark.parametrize("text", ["", "---\n", "connections: {}\n", "connections:\n",
                                  "daemon: {tun: vpnd0}\n"])
def test_check_of_an_empty_config_fails(tmp_path, capsys, text):
    from vpnd.cli import vpnd_main
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    assert vpnd_main(["--config", str(f), "--check"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["connections: no connections configured; to run with none on purpose, "
                   "write 'connections: {}' and set daemon.allow_empty: true"]


def test_empty_on_purpose_is_valid(tmp_path):
    f = tmp_path / "empty.yaml"
    f.write_text("daemon: {allow_empty: true}\nconnections: {}\n")
    assert load_config(f).connections == ()
    d, path = make_daemon(tmp_path)
    path.write_text("daemon:\n  control_socket: /tmp/cfg-reload-not-used.sock\n"
                    "  allow_empty: true\nconnections: {}\n")
    d._apply_connections = lambda *a, **k: None  # no kernel here
    assert d.reload()["connections"] == []
