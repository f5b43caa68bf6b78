"""CI's short run of the fuzz targets (fuzz/targets.py): every kept corpus input, then a few
hundred mutations of them per target, with a fixed seed. The long, coverage-guided runs are
`fuzz/run.py` (10^6 inputs per target; figures in bench/README.md)."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
sys.path.insert(0, str(FUZZ))

import targets  # noqa: E402

MUTATIONS = 150


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_target_smoke(name):
    t = targets.TARGETS[name]()
    corpus = [p.read_bytes() for p in sorted((FUZZ / "corpus" / name).iterdir())]
    assert corpus, f"fuzz/corpus/{name} is empty"
    for data in corpus:
        t(data)
    rnd = random.Random(name)
    for _ in range(MUTATIONS):
        t(targets.mutate(rnd.choice(corpus), rnd))


def test_fuzz_finds_an_internal_error_event():
    """The IKE targets report a caught internal failure as a finding: a target that could not
    fail would prove nothing."""
    from vpnd.ike.actions import Event

    with pytest.raises(targets.Finding):
        targets._no_error_events([Event("error", "x", "boom")], "test")
