"""The package boundaries a newcomer can rely on: importing every module of the library loads
neither the trainer, the benchmarks, the UI nor gradio."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_the_library_imports_no_trainer_benchmark_or_ui():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "mgpo").rglob("*.py"))
    modules = [m.removesuffix(".__init__") for m in modules if not m.endswith("__main__")]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n"
            "bad = sorted({n.split('.')[0] for n in sys.modules} & {'train', 'bench', 'gradio', 'app', 'ui'})\n"
            "print(len(sys.modules), bad)\nassert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(modules) > 25
