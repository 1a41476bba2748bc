"""Which frequency points to profile: (cpu, gpu) pairs, or CPU frequencies alone on a board
without a GPU.

The scaling fit needs each axis at its extremes (to separate the ``1/f`` part from the constant
part) and one interior point (to see the curvature the overlap creates), so the default plan is the
four corners plus the centre. More points are added greedily where they are farthest, in
log-frequency, from every point already planned (maximin), which is what reduces the worst-case
interpolation error fastest; benchmarks/estimator_accuracy.py measures how error falls with them.
"""

from __future__ import annotations

import itertools

import numpy as np


def plan_grid(tables: list[list[int]], n: int = 5) -> list[tuple[int, ...]]:
    """Points to profile over the domains a board has (one table per domain, in its order):
    the corners of the grid (all-fastest first, then all-slowest), the centre, then maximin."""
    if n < 1:
        raise ValueError("plan at least one point")
    if not tables or any(not t for t in tables):
        raise ValueError("every domain needs a non-empty frequency table")
    axes = [sorted(t) for t in tables]
    candidates = list(itertools.product(*axes))
    n = min(n, len(candidates))
    corners = list(itertools.product(*[(a[0], a[-1]) for a in axes]))
    fastest, slowest = tuple(a[-1] for a in axes), tuple(a[0] for a in axes)
    centre = tuple(a[len(a) // 2] for a in axes)
    seed = [fastest, slowest, *[c for c in corners if c not in (fastest, slowest)], centre]
    plan: list[tuple[int, ...]] = []
    for p in seed:
        if p not in plan and len(plan) < n:
            plan.append(p)

    spans = [max(np.log(a[-1] / a[0]), 1e-9) for a in axes]

    def coords(p: tuple[int, ...]) -> np.ndarray:
        # normalised log-frequency, so every axis counts the same
        return np.array([np.log(v / a[0]) / s for v, a, s in zip(p, axes, spans, strict=True)])

    while len(plan) < n:
        chosen = np.array([coords(p) for p in plan])
        best = max(
            (p for p in candidates if p not in plan),
            key=lambda p: float(np.min(np.linalg.norm(chosen - coords(p), axis=1))),
        )
        plan.append(best)
    return plan


def plan_points(cpu_khz: list[int], gpu_hz: list[int], n: int = 5) -> list[tuple[int, int]]:
    """The plan for a CPU + GPU board: (cpu_khz, gpu_hz) pairs."""
    return plan_grid([cpu_khz, gpu_hz], n)  # type: ignore[return-value]
