"""Which (cpu, gpu) frequency pairs to profile.

The scaling fit needs each axis at its extremes (to separate the ``1/f`` part from the constant
part) and one interior point (to see the curvature the overlap creates), so the default plan is the
four corners plus the centre. More points are added greedily where they are farthest, in
log-frequency, from every point already planned (maximin), which is what reduces the worst-case
interpolation error fastest; benchmarks/estimator_accuracy.py measures how error falls with them.
"""

from __future__ import annotations

import numpy as np


def plan_points(cpu_khz: list[int], gpu_hz: list[int], n: int = 5) -> list[tuple[int, int]]:
    if n < 1:
        raise ValueError("plan at least one point")
    cpu, gpu = sorted(cpu_khz), sorted(gpu_hz)
    candidates = [(c, g) for c in cpu for g in gpu]
    n = min(n, len(candidates))
    mid_c, mid_g = cpu[len(cpu) // 2], gpu[len(gpu) // 2]
    seed = [(cpu[-1], gpu[-1]), (cpu[0], gpu[0]), (cpu[0], gpu[-1]), (cpu[-1], gpu[0]),
            (mid_c, mid_g)]
    plan: list[tuple[int, int]] = []
    for p in seed:
        if p not in plan and len(plan) < n:
            plan.append(p)

    def coords(p: tuple[int, int]) -> np.ndarray:
        # normalised log-frequency, so both axes count the same
        return np.array([
            np.log(p[0] / cpu[0]) / max(np.log(cpu[-1] / cpu[0]), 1e-9),
            np.log(p[1] / gpu[0]) / max(np.log(gpu[-1] / gpu[0]), 1e-9),
        ])

    while len(plan) < n:
        chosen = np.array([coords(p) for p in plan])
        best = max(
            (p for p in candidates if p not in plan),
            key=lambda p: float(np.min(np.linalg.norm(chosen - coords(p), axis=1))),
        )
        plan.append(best)
    return plan
