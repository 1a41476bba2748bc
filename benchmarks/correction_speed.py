"""Cost of the correction's per-frame update (what ``Governor.after_frame`` spends learning).

Feeds a Correction the frames of a noisy run (columns from a real fitted grid, frames at two
points) and times every ``add`` call. Prints JSON: median, p99 and mean in microseconds.

    python benchmarks/correction_speed.py
"""

from __future__ import annotations

import json
import time

import numpy as np

from dvfs_schema.loading import load_board
from governor.app import fit_on_virtual_board
from governor.config import GovernorSettings
from governor.core import compute_grid
from governor.correction import Correction


def main(frames: int = 20000) -> dict:
    board = load_board("sd888_phone")
    est = fit_on_virtual_board(board, "yolo_tiny")
    grid = compute_grid(est, board, None, None)
    rng = np.random.default_rng(0)
    corr = Correction(GovernorSettings())
    home, other = 120, 95
    times_ns = []
    for k in range(frames):
        column = grid.latency_ms[:, other if k % 200 == 199 else home]
        measured = float(column[2]) * rng.lognormal(0.0, 0.01)
        t0 = time.perf_counter_ns()
        corr.add(column, measured)
        times_ns.append(time.perf_counter_ns() - t0)
    t = np.array(times_ns[1000:]) / 1e3
    return {"benchmark": "correction_speed", "frames": len(t), "median_us": round(float(np.median(t)), 2),
            "p99_us": round(float(np.quantile(t, 0.99)), 2), "mean_us": round(float(t.mean()), 2)}


if __name__ == "__main__":
    print(json.dumps(main()))
