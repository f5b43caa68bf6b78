"""vpnd/ has no import cycle (scripts/check-imports, issue 9), and the checker finds one."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "check-imports"


def test_vpnd_has_no_import_cycle():
    r = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_checker_sees_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import x\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    r = subprocess.run([sys.executable, str(CHECK), str(pkg)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "pkg.a -> pkg.b -> pkg.a" in r.stdout
