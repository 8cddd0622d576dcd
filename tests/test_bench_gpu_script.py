"""The GPU benchmark script (bench/bench_gpu.py) runs end to end, on the CPU with a tiny model.

No GPU is lent to this project's CI; the script is what a session with one runs, so it must not rot.
This checks that it runs and that its correctness checks hold (the same rewards as the reference
approach, the same first losses in both training arms); it asserts no timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_smoke_on_cpu(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("bench_gpu", None)
    import bench_gpu

    res = bench_gpu.main(["--device", "cpu", "--dtype", "float32", "--tiny", "--texts", "48", "--train-pairs", "16",
                          "--check-texts", "48"])
    assert res["reward_max_abs_diff_fp32"] < 1e-4
    arms = res["training"]
    assert arms["scpo"]["losses"][:2] == pytest.approx(arms["pad512"]["losses"][:2], abs=1e-5)
    assert arms["scpo"]["padding"] < arms["pad512"]["padding"]
    assert "scoring achieved" in capsys.readouterr().out
