#!/usr/bin/env python3
"""Fuzz vpnd's attack surfaces and report crashes and coverage.

    .venv/bin/python fuzz/run.py                       # every target, 10^6 inputs each
    .venv/bin/python fuzz/run.py esp_decap --runs 20000
    .venv/bin/python fuzz/run.py --list

With atheris installed (`.venv/bin/pip install -e '.[fuzz]'`) each target runs under
libFuzzer in its own process, coverage-guided over the vpnd package (instrumented on import);
its `cov:`/`ft:` figures are the edges and features reached. Without atheris the script
mutates the kept corpus itself (no coverage guidance, no coverage figure). Either way the
kept corpus in fuzz/corpus/TARGET/ is replayed first; `--save` adds the inputs libFuzzer found
new coverage with (minimised with -merge=1) to it. A crashing input is written to
fuzz/crashes/TARGET-<sha1> and the run exits 1.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"


def corpus_files(name: str) -> list[Path]:
    d = CORPUS / name
    return sorted(d.iterdir()) if d.is_dir() else []


def write_seeds(name: str, target) -> int:
    d = CORPUS / name
    d.mkdir(parents=True, exist_ok=True)
    n = 0
    for data in target.seeds():
        (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
        n += 1
    return n


def run_one(target, data: bytes) -> str | None:
    """None, or the traceback of what went wrong."""
    try:
        target(data)
    except Exception:  # noqa: BLE001 - any escape is a finding
        return traceback.format_exc()
    return None


def save_crash(name: str, data: bytes) -> Path:
    CRASHES.mkdir(exist_ok=True)
    p = CRASHES / f"{name}-{hashlib.sha1(data).hexdigest()}"
    p.write_bytes(data)
    return p


def mutate_engine(name: str, runs: int, seconds: float | None, seed: int) -> dict:
    import targets

    t = targets.TARGETS[name]()
    pool = [p.read_bytes() for p in corpus_files(name)] or list(t.seeds())
    rnd = random.Random(seed)
    start = time.monotonic()
    crashes = []
    n = 0
    for data in pool:  # the kept corpus first, unchanged
        n += 1
        tb = run_one(t, data)
        if tb:
            crashes.append((save_crash(name, data), tb))
    while n < runs and (seconds is None or time.monotonic() - start < seconds):
        data = targets.mutate(rnd.choice(pool), rnd)
        n += 1
        tb = run_one(t, data)
        if tb:
            crashes.append((save_crash(name, data), tb))
            if len(crashes) >= 5:
                break
    return {"target": name, "engine": "mutate", "runs": n, "seconds": time.monotonic() - start,
            "crashes": crashes, "coverage": "n/a"}


def atheris_child(name: str, argv: list[str]) -> None:
    """Runs inside its own process: libFuzzer owns it until -runs are done or a crash."""
    import atheris

    with atheris.instrument_imports(include=["vpnd"]):
        import vpnd.config, vpnd.control, vpnd.esp, vpnd.ike.manager  # noqa: E401,F401
        import targets
    t = targets.TARGETS[name]()

    def one(data: bytes) -> None:
        t(data)

    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


def atheris_engine(name: str, runs: int, seconds: float | None, save: bool) -> dict:
    CRASHES.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"vpnd-fuzz-{name}-"))
    seeds = CORPUS / name
    args = [str(work), str(seeds), f"-runs={runs}", "-max_len=4096", "-print_final_stats=1",
            f"-artifact_prefix={CRASHES}/{name}-", "-rss_limit_mb=4096"]
    if seconds:
        args.append(f"-max_total_time={int(seconds)}")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--_child", name, "--", *args],
                          capture_output=True, text=True)
    out = proc.stderr + proc.stdout
    res = {"target": name, "engine": "atheris", "seconds": time.monotonic() - start, "crashes": []}
    m = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    res["runs"] = int(m.group(1)) if m else None
    covs = re.findall(r"cov: (\d+) ft: (\d+)", out)
    res["coverage"] = f"cov {covs[-1][0]} ft {covs[-1][1]}" if covs else "?"
    if proc.returncode != 0:
        arts = re.findall(r"Test unit written to (\S+)", out)
        tb = "\n".join(line for line in out.splitlines()[-60:])
        res["crashes"].append((arts[0] if arts else "?", tb))
    if save and not res["crashes"]:
        seeds.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, __file__, "--_child", name, "--", str(seeds), str(work),
                        "-merge=1", "-max_len=4096"], capture_output=True, text=True)
    shutil.rmtree(work, ignore_errors=True)
    return res


def main() -> int:
    import targets

    if len(sys.argv) > 2 and sys.argv[1] == "--_child":
        atheris_child(sys.argv[2], sys.argv[4:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", help="targets (default: all)")
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    ap.add_argument("--seconds", type=float, help="time limit per target")
    ap.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--save", action="store_true", help="add new-coverage inputs to fuzz/corpus")
    ap.add_argument("--make-seeds", action="store_true", help="(re)write each target's seed inputs")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    names = a.targets or list(targets.TARGETS)
    for n in names:
        if n not in targets.TARGETS:
            ap.error(f"unknown target {n!r} (one of: {', '.join(targets.TARGETS)})")
    if a.list:
        for n, cls in targets.TARGETS.items():
            print(f"{n:16} {cls.__doc__.strip().splitlines()[0]}")
        return 0
    if a.make_seeds:
        for n in names:
            print(f"{n}: {write_seeds(n, targets.TARGETS[n]())} seeds")
        return 0
    engine = a.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "mutate"
    print(f"engine {engine}, {a.runs} inputs per target" + (f", at most {a.seconds:.0f} s" if a.seconds else ""))
    print(f"{'target':16} {'runs':>9} {'seconds':>8} {'inputs/s':>9}  {'coverage':18} crashes")
    bad = 0
    for n in names:
        if engine == "atheris":
            r = atheris_engine(n, a.runs, a.seconds, a.save)
        else:
            r = mutate_engine(n, a.runs, a.seconds, a.seed)
        rate = (r["runs"] or 0) / r["seconds"] if r["seconds"] else 0
        print(f"{n:16} {r['runs'] or '?':>9} {r['seconds']:8.1f} {rate:9.0f}  {r['coverage']:18} {len(r['crashes'])}",
              flush=True)
        seen = set()
        for path, tb in r["crashes"]:
            bad += 1
            last = tb.strip().splitlines()[-1]
            if last in seen:
                print(f"  crash input: {path} (same as above)")
                continue
            seen.add(last)
            print(f"  crash input: {path}\n" + "\n".join("    " + line for line in tb.strip().splitlines()[-25:]))
    print("no crashes" if not bad else f"{bad} crash(es)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
