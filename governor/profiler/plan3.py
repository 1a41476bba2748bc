"""Which (cpu, gpu, mem) points to profile on a board with a memory domain.

A kernel on the GPU is bound by its arithmetic (``a / f_gpu``) or by its bytes (``b / f_mem``),
whichever is slower (a roofline: the two overlap, they do not add), plus a part neither clock moves;
a host operator pays ``a / f_cpu`` for its instructions and ``b / f_mem`` for its memory traffic; and
the pipeline's overlap and bubbles change as the sides' speeds change. Identifying that takes, for
every domain, its slope apart from the others, one point where the GPU's two bounds compete, and
the far corner, so the default plan is **7 points**, in this order:

1. all fastest: the reference every other point is compared with;
2. CPU slowest (the rest fastest): the host's ``1/f_cpu`` share alone;
3. GPU slowest: each kernel's arithmetic share alone;
4. memory slowest: each kernel's and host operator's byte share alone;
5. GPU and memory slowest, CPU fastest: with 3 and 4, whether a kernel's arithmetic and memory
   times overlap (max, the roofline) or add up (latency-bound kernels), which 2-4 alone cannot tell;
6. all slowest: the far corner, so that no estimate is an extrapolation;
7. the centre (middle of every table): where kernels switch between compute- and memory-bound
   between the corners, and the curvature of the pipeline's overlap.

``n = 8`` adds CPU and memory slowest with the GPU fastest (host operators' instructions against
their memory traffic); more points are added where they are farthest, in normalised
log-frequency, from every point planned (maximin), as the two-domain planner does. Fewer than 7
keeps the head of the list: 5 still gives every domain a slope and one roofline interaction, but
leaves the slow corner extrapolated. A table with one level makes its points coincide; duplicates
are dropped, so the plan may be shorter than ``n`` only when the grid is.
"""

from __future__ import annotations

import itertools

import numpy as np

DEFAULT_POINTS = 7


def plan_roofline(cpu_khz: list[int], gpu_hz: list[int], mem_hz: list[int],
                  n: int = DEFAULT_POINTS) -> list[tuple[int, int, int]]:
    """The first ``n`` points of the plan above, as (cpu_khz, gpu_hz, mem_hz) triples."""
    if n < 1:
        raise ValueError("plan at least one point")
    for name, table in (("cpu_khz", cpu_khz), ("gpu_hz", gpu_hz), ("mem_hz", mem_hz)):
        if not table or any(v <= 0 for v in table):
            raise ValueError(f"{name}: needs a non-empty table of positive frequencies")
    axes = [sorted(set(t)) for t in (cpu_khz, gpu_hz, mem_hz)]
    (c, cc), (g, gg), (m, mm) = [(a[0], a[-1]) for a in axes]
    mid = tuple(a[len(a) // 2] for a in axes)
    seed = [(cc, gg, mm), (c, gg, mm), (cc, g, mm), (cc, gg, m), (cc, g, m), (c, g, m), mid, (c, gg, m)]
    plan: list[tuple[int, int, int]] = []
    for p in seed:
        if p not in plan and len(plan) < n:
            plan.append(p)
    candidates = [p for p in itertools.product(*axes) if p not in plan]
    spans = [max(np.log(a[-1] / a[0]), 1e-9) for a in axes]

    def coords(p: tuple[int, ...]) -> np.ndarray:
        return np.array([np.log(v / a[0]) / s for v, a, s in zip(p, axes, spans, strict=True)])

    while len(plan) < n and candidates:
        chosen = np.array([coords(p) for p in plan])
        best = max(candidates, key=lambda p: float(np.min(np.linalg.norm(chosen - coords(p), axis=1))))
        plan.append(best)
        candidates.remove(best)
    return plan
