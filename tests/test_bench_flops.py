"""bench/benchmarks/flops.py counts on the meta device what a real forward counts."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "benchmarks" / "flops.py"


@pytest.mark.slow
def test_meta_count_equals_the_count_of_a_real_forward(capsys):
    spec = importlib.util.spec_from_file_location("bench_flops", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    meta = module.middle_flops("demo")
    assert meta == module.middle_flops("demo", device="cpu")
    assert 4.0e9 < meta < 4.4e9  # 4.2 GFLOP per series per timestep
    module.main()
    assert "paper  16x256x256" in capsys.readouterr().out
