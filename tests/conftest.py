"""Suite-wide hooks: skip namespace tests when not root; let fixtures see a test's outcome."""
import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0 and os.path.exists("/dev/net/tun"):
        return
    skip = pytest.mark.skip(reason="needs root and /dev/net/tun (network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # item.rep_setup / rep_call / rep_teardown: fixtures attach logs when rep_call.failed.
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def pytest_sessionstart(session):
    # A polite stop (SIGTERM from CI or a supervisor) unwinds like Ctrl-C, so fixtures tear
    # down what they built (namespaces, daemons). SIGKILL cannot be caught: the next
    # topology removes what a dead test process left (tests/netns/topology.reap_orphans).
    import signal

    def _stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _stop)
