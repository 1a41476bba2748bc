"""The asynchronous CPU-GPU recursion on cases checked by hand."""

from __future__ import annotations

import numpy as np

from estimator.recursion import simulate_pipeline


def run(kinds, host, dispatch, exe, tail=0.0):
    col = lambda xs: np.array(xs, dtype=float)[:, None]  # noqa: E731
    return simulate_pipeline(np.array([k == "gpu" for k in kinds]), col(host), col(dispatch),
                             col(exe), np.array([tail]))


def test_pure_overlap_gpu_bound():
    # launches end at 10, 20, 30; kernels run back to back [10,60] [60,110] [110,160]
    b = run(["gpu"] * 3, [10, 10, 10], [0, 0, 0], [50, 50, 50], tail=5)
    assert b.latency[0] == 165
    assert b.gpu_busy[0] == 150 and b.host_busy[0] == 35
    assert b.overlap[0] == 20  # host busy [0,30] overlaps the first kernel [10,60] by 20
    assert b.bubble[0] == 15 and b.host_wait[0] == 130


def test_pure_bubbles_launch_bound():
    # each kernel waits for its own launch: GPU idles between them
    b = run(["gpu"] * 3, [50, 50, 50], [0, 0, 0], [10, 10, 10])
    assert b.latency[0] == 160
    assert b.bubble[0] == 130
    assert b.overlap[0] == 20  # kernels [50,60] and [100,110] run while the host launches


def test_host_fallback_waits_for_drain_and_dispatch_delay():
    # k1 [10,110]; host op waits for drain, runs [110,130]; k2 launched by 140, +3 dispatch
    b = run(["gpu", "cpu", "gpu"], [10, 20, 10], [0, 0, 3], [100, 0, 5])
    assert b.latency[0] == 148
    assert b.host_busy[0] == 40
    assert b.overlap[0] == 0
    assert b.gpu_busy[0] == 105


def test_vectorised_over_grid_matches_scalar():
    rng = np.random.default_rng(3)
    n, g = 40, 7
    kinds = rng.random(n) < 0.8
    host, disp, exe = rng.random((n, g)) * 50, rng.random((n, g)) * 5, rng.random((n, g)) * 80
    tail = rng.random(g)
    grid = simulate_pipeline(kinds, host, disp, exe, tail)
    for j in range(g):
        one = simulate_pipeline(kinds, host[:, j:j + 1], disp[:, j:j + 1], exe[:, j:j + 1],
                                tail[j:j + 1])
        assert np.isclose(one.latency[0], grid.latency[j])
        assert np.isclose(one.overlap[0], grid.overlap[j])
    # the identity latency = host_busy + gpu_busy - overlap + (time neither is busy >= 0)
    assert np.all(grid.latency >= grid.host_busy + grid.gpu_busy - grid.overlap - 1e-9)


def test_bounded_queue_holds_the_host_back():
    # 4 kernels of 50 launched every 10: with a queue of 2 the 3rd launch waits for the 1st to end
    free = run(["gpu"] * 4, [10] * 4, [0] * 4, [50] * 4)
    bounded = simulate_pipeline(np.array([True] * 4), np.full((4, 1), 10.0), np.zeros((4, 1)),
                                np.full((4, 1), 50.0), np.zeros(1), queue_depth=2)
    assert free.latency[0] == bounded.latency[0] == 210  # the device is the bottleneck either way
    assert free.host_wait[0] == 210 - 40
    # but the host is busy launching until the 2nd kernel ends: overlap grows
    assert bounded.overlap[0] >= free.overlap[0]
