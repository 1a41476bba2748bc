"""Speed of the estimator: a 200-layer model over a 20x10 (cpu x gpu) grid.

Target (issue 2): the whole-grid evaluation in < 5 ms. Reports the median and p99 over repeated
evaluations, latency only (what the governor precomputes) and with the full breakdown (overlap
accounting), plus one fit. Prints JSON.
"""

from __future__ import annotations

import json
import time

import numpy as np

from dvfs_schema.loading import load_board
from dvfs_schema.workload import ModelSpec
from estimator.model import Estimator
from estimator.planner import plan_points
from estimator.profile import parse_profile
from sysfs_backends.virtual.simulator import Simulator


def synthetic_200_layer_model() -> ModelSpec:
    block = [
        {"name": "pw", "op": "conv", "h": 28, "w": 28, "cin": 64, "cout": 64, "k": 1},
        {"name": "dw", "op": "dwconv", "h": 28, "w": 28, "c": 64},
        {"name": "act", "op": "elementwise", "n": 50176, "inputs": 1},
        {"name": "add", "op": "elementwise", "n": 50176},
    ]
    return ModelSpec.model_validate({
        "name": "synthetic200", "kind": "detector",
        "layers": [{"repeat": 49, "layers": block},
                   {"name": "decode", "op": "host", "kind": "decode", "n": 10000},
                   {"name": "head", "op": "gemm", "m": 1, "n": 1000, "k": 1024},
                   {"name": "softmax", "op": "softmax", "rows": 1, "cols": 1000},
                   {"name": "nms", "op": "host", "kind": "nms", "n": 1000}],
    })


def timed(fn, repeats: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples) * 1e3), float(np.percentile(samples, 99) * 1e3)


def main() -> None:
    board = load_board("sd888_phone")
    cpus = np.linspace(600_000, 2_800_000, 20).astype(int).tolist()
    gpus = np.linspace(250_000_000, 850_000_000, 10).astype(int).tolist()
    board = board.model_copy(deep=True)
    board.cpu.inference.frequencies_khz = cpus
    board.gpu.frequencies_hz = gpus
    spec = synthetic_200_layer_model()
    assert len(spec.flat_layers()) == 200
    sim = Simulator(board, spec)
    profile = parse_profile(sim.profile(plan_points(cpus, gpus), 3, None, np.random.default_rng(0)))
    t0 = time.perf_counter()
    est = Estimator.fit(profile)
    fit_ms = (time.perf_counter() - t0) * 1e3
    est.grid(with_overlap=False)  # warm-up
    lat_med, lat_p99 = timed(lambda: est.grid(with_overlap=False), 300)
    full_med, full_p99 = timed(lambda: est.grid(with_overlap=True), 300)
    pair_med, pair_p99 = timed(lambda: est.latency_ms(1_500_000, 500_000_000), 300)
    print(json.dumps({
        "benchmark": "estimator_speed", "layers": 200, "grid": "20x10", "pairs": 200,
        "grid_latency_ms": {"median": round(lat_med, 3), "p99": round(lat_p99, 3)},
        "grid_with_breakdown_ms": {"median": round(full_med, 3), "p99": round(full_p99, 3)},
        "one_pair_ms": {"median": round(pair_med, 3), "p99": round(pair_p99, 3)},
        "fit_ms": round(fit_ms, 1),
        "target_grid_under_5ms": lat_med < 5.0 and full_med < 5.0,
    }, indent=1))


if __name__ == "__main__":
    main()
