"""bench/operator_scale.py: the per-second timeline of a first pass (where a slow part of a
pass comes from: the rate of Ready and each process's CPU in every second) and the summary
cells when the raw peer was not measured after the pass.  Its numbers are measured in the
bench, never here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_operator_scale",
                                                  ROOT / "bench" / "operator_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_timeline_counts_ready_and_cpu_per_second() -> None:
    bench = _bench()
    t0 = 100.0
    # 20 resources: 5 Ready in second 0, 10 in second 1, 5 in second 2
    ready = [t0 + 0.5] * 5 + [t0 + 1.2] * 10 + [t0 + 2.9] * 5
    samples = [(t0 + t, {"operator": cpu, "emulator": cpu / 2, "relay": cpu / 4})
               for t, cpu in ((0.0, 0.0), (1.0, 0.8), (2.0, 1.8), (3.0, 2.4))]
    out = bench.phases(ready, samples, t0, 20, raw_rate=10.0)
    assert out["timeline_per_second"] == [
        [0, 5, 0.8, 0.4, 0.2], [1, 10, 1.0, 0.5, 0.25], [2, 5, 0.6, 0.3, 0.15]]
    assert out["first_ready_s"] == 0.5 and out["all_ready_s"] == 2.9


def test_summary_cells_skip_runs_without_a_value() -> None:
    bench = _bench()
    assert bench._median_spread([None, None]) == "-"
    assert bench._median_spread([0.7, None, 0.8, 0.9]) == "0.8 (0.7-0.9)"
