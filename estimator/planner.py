"""Which frequency points to profile: tuples over the board's domains (CPU, GPU, memory).

The scaling fit needs each axis at its extremes (to separate the ``1/f`` part from the constant
part) and one interior point (to see the curvature the overlap creates), so the default plan over
one or two domains is the corners plus the centre (5 points for two). More points are added
greedily where they are farthest, in log-frequency, from every point already planned (maximin),
which is what reduces the worst-case interpolation error fastest; benchmarks/estimator_accuracy.py
measures how error falls with them.

Three domains (CPU, GPU, memory): no segment depends on all three clocks at once: a kernel runs on
the GPU and memory clocks, host work on the CPU and memory clocks (estimator.roofline), and the
pipeline that couples them is replayed, not fitted. Each pair of domains must be seen at its four
corners, and an end-to-end fit (only whole-inference latencies) must also see each domain's
effect on its own: slowing the GPU at a slow CPU shows only the host's launch stream, which then
sets the pace, and at a slow memory only the memory-bound kernels. So the default plan is
**8 points**, in this order:

1. all fastest: the reference every other point is compared with;
2. CPU slowest (the rest fastest): the host's ``1/f_cpu`` share alone;
3. GPU slowest: the kernels' arithmetic share alone;
4. memory slowest: the kernels' and host operators' byte share alone;
5. GPU and memory slowest, CPU fastest: with 3 and 4, whether a kernel's arithmetic and memory
   times overlap (a roofline) or add up, which 2-4 alone cannot tell;
6. all slowest: the far corner, so that no estimate is an extrapolation;
7. the centre (middle of every table): where kernels cross from compute- to memory-bound between
   the corners, and the curvature of the pipeline's overlap;
8. CPU and memory slowest, GPU fastest: host operators' instructions against their memory
   traffic (with 2 and 4, the CPU x memory pair's fourth corner);

then maximin points. Each pair of domains sees its four corners from 6 points on. With 5 points
there is no room for both the one-domain points and the far corner, and the far corner matters
more (benchmarks/estimator_accuracy.py, end to end at 5 points over seeds): a 5-point plan is the
fastest point, the three corners with two domains slowest (each pair of domains then sees its four
corners) and the slowest. 8 points is what a segment's roofline (at most 5 fitted numbers:
amplitude, theta, sharpness, own-clock term, constant) needs to be seen at 8 distinct points; with
5 or 6 its sharpness is fixed (estimator.roofline) and errors grow. This is the one planner:
`dvfs-gov plan`, `simulate` and `profile` and the benchmarks all take their points from here.
"""

from __future__ import annotations

import itertools

import numpy as np

DEFAULT_POINTS_3D = 8


def default_points(n_domains: int) -> int:
    """How many points the plan has unless told: 5 over one or two domains, 8 over three."""
    return DEFAULT_POINTS_3D if n_domains >= 3 else 5


def plan_grid(tables: list[list[int]], n: int | None = None) -> list[tuple[int, ...]]:
    """Points to profile over the domains a board has (one table per domain, in its order).
    One or two domains: the corners (all-fastest first, then all-slowest), the centre, then
    maximin. Three: see the module docs; ``n`` defaults to ``default_points``. A table with one
    level makes points coincide; they are planned once, so the plan is shorter than ``n`` only
    when the grid is."""
    if n is None:
        n = default_points(len(tables))
    if n < 1:
        raise ValueError("plan at least one point")
    if not tables or any(not t for t in tables):
        raise ValueError("every domain needs a non-empty frequency table")
    axes = [sorted(set(t)) for t in tables]
    candidates = list(itertools.product(*axes))
    n = min(n, len(candidates))
    corners = list(itertools.product(*[(a[0], a[-1]) for a in axes]))
    fastest, slowest = tuple(a[-1] for a in axes), tuple(a[0] for a in axes)
    centre = tuple(a[len(a) // 2] for a in axes)
    if len(axes) == 3:
        def low(*which: int) -> tuple[int, ...]:  # these domains at their slowest, the rest fastest
            return tuple(a[0] if i in which else a[-1] for i, a in enumerate(axes))

        if n <= 5:  # corners with an even number of low clocks: every pair of domains sees its 4
            even = [c for c in corners if sum(v == a[0] for v, a in zip(c, axes, strict=True)) % 2 == 0]
            seed = [fastest, *[c for c in even if c != fastest], slowest]
        else:
            seed = [fastest, low(0), low(1), low(2), low(1, 2), slowest, centre, low(0, 2)]
    else:
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
