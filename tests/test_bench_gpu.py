"""bench/benchmarks/gpu.py runs end to end (on the CPU here, at a tiny size) and reports its rows."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_gpu_bench_runs_on_cpu_and_reports_every_row(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.json"
    module.main(["--device", "cpu", "--preset", "demo", "--series", "2", "--timesteps", "2", "--batch", "2",
                 "--train-steps", "1", "--no-compile", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["fp32_error"] < 1e-4  # channels-last fp32 = the reference to rounding
    rows = {(r["what"], r["precision"]): r for r in report["rows"]}
    assert set(rows) == {("extraction, orthodiff", "fp32"), ("extraction, orthodiff", "bf16"),
                         ("extraction, reference workflow", "fp32"), ("extraction, reference workflow", "bf16 AMP"),
                         ("pretraining, batch 2", "fp32"), ("pretraining, batch 2", "bf16")}
    assert rows[("extraction, reference workflow", "fp32")]["vs reference fp32"] == 1.0
    assert all(math.isfinite(r["series/s"]) and r["series/s"] > 0 for w, r in rows.items() if w[0].startswith("extraction"))
    assert all(r["steps/s"] > 0 for w, r in rows.items() if w[0].startswith("pretraining"))
    assert 1e-4 < rows[("extraction, orthodiff", "bf16")]["error"] < 0.05
    assert "fp32 fast path vs reference: max rel. error" in capsys.readouterr().out
