"""Fixtures for the network-namespace tests: one fresh topology per test (see topology.py)."""
import pytest

from .topology import Topology


@pytest.fixture
def topo(request):
    """hosta — gwa — WAN — gwb — hostb, namespaces named hns-ROLE-SUFFIX, removed afterwards."""
    with Topology(prefix="hns") as t:
        yield t


@pytest.fixture
def topo_nat(request):
    """As `topo`, with a masquerading `nat` namespace between gwa and gwb."""
    with Topology(prefix="hns", nat=True) as t:
        yield t


@pytest.fixture
def make_topology():
    """Factory for tests that need options or several topologies: make_topology(nat=True)."""
    made = []

    def make(**kw):
        kw.setdefault("prefix", "hns")
        t = Topology(**kw)
        made.append(t)
        return t.__enter__()

    yield make
    for t in made:
        t.close()


@pytest.fixture
def make_charon(request):
    """make_charon(topo, "gwb", debug=2) -> a started Charon; stopped at teardown, and its
    log appended to the failure report when the test failed."""
    from .charon import Charon

    started = []

    def make(topology, role, **kw):
        ch = Charon(topology, role, **kw)
        started.append(ch)
        return ch.start()

    yield make
    rep = getattr(request.node, "rep_call", None)
    for ch in started:
        if rep is not None and rep.failed:
            rep.sections.append((f"charon log ({ch.role})", ch.log()[-20000:]))
        ch.stop()
