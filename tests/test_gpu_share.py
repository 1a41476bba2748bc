"""The apps' GPU share per point (governor/gpu_share.py): the points at which the apps sharing the
GPU keep up, from their rates and their frames' GPU time."""

from __future__ import annotations

import numpy as np

from governor.gpu_share import GpuShare

GPU_MS = np.array([12.0, 8.0, 5.0, 4.0])  # one model's GPU time at four points, slowest first


def feed(share: GpuShare, app: str, start_s: float, period_s: float, frames: int, deadline_ms: float,
         gpu_ms: np.ndarray = GPU_MS) -> float:
    t = start_s
    for _ in range(frames):
        share.note(app, t, gpu_ms, deadline_ms)
        t += period_s
    return t


def test_one_app_alone_is_never_held():
    """An app's own frames run one after another: alone it is held at no point, however busy."""
    share = GpuShare(len(GPU_MS))
    feed(share, "cam", 0.0, 0.004, 10, 5.0)  # 12 ms of GPU work every 5 ms at the slowest point
    allowed = np.ones(4, dtype=bool)
    assert share.total() is None and share.keeps_up(allowed).all() and not share.overloaded()


def test_points_where_two_apps_need_more_than_the_gpu_are_left_out():
    """Two cameras at 100 fps (deadline = period): each needs GPU_MS / 10 ms of the GPU; together
    2.4 and 1.6 of it at the two slowest points, 1.0 and 0.8 at the others."""
    share = GpuShare(len(GPU_MS))
    feed(share, "a", 0.0, 0.010, 6, 10.0)
    feed(share, "b", 0.005, 0.010, 6, 10.0)
    np.testing.assert_allclose(share.total(), 2 * GPU_MS / 10.0)
    allowed = np.ones(4, dtype=bool)
    assert share.keeps_up(allowed).tolist() == [False, False, True, True]
    assert share.keeps_up(np.array([True, True, True, False])).tolist() == [False, False, True, False]
    assert not share.overloaded()


def test_a_deadline_longer_than_the_period_counts_the_deadline():
    """A token generator whose next token follows the last (period ~ latency) needs the GPU only
    for one token per deadline: counted at max(period, deadline)."""
    share = GpuShare(len(GPU_MS))
    feed(share, "llm", 0.0, 0.004, 6, 40.0)
    feed(share, "cam", 0.002, 0.020, 6, 20.0)
    np.testing.assert_allclose(share.total(), GPU_MS / 40.0 + GPU_MS / 20.0)


def test_an_overload_keeps_to_the_points_of_least_share():
    """Four cameras at 100 fps need 1.6x the GPU even at its fastest: the points left are those
    where the queue grows slowest."""
    share = GpuShare(len(GPU_MS))
    for k in range(4):
        feed(share, f"cam{k}", k * 0.001, 0.010, 6, 10.0)
    assert share.overloaded()
    assert share.keeps_up(np.ones(4, dtype=bool)).tolist() == [False, False, False, True]
    # under a cap that rules the fastest point out: the least share among the rest
    assert share.keeps_up(np.array([True, True, True, False])).tolist() == [False, False, True, False]


def test_an_app_that_stops_stops_counting():
    """Three periods (or deadlines) without a frame and an app is gone; ``forget`` at once."""
    share = GpuShare(len(GPU_MS))
    end_a = feed(share, "a", 0.0, 0.010, 6, 10.0)
    feed(share, "b", 0.005, 0.010, 6, 10.0)
    feed(share, "c", 0.003, 0.010, 3, 10.0)
    assert share.total() is not None
    share.forget("c")
    np.testing.assert_allclose(share.total(), 2 * GPU_MS / 10.0)
    version = share.version
    feed(share, "a", end_a + 0.2, 0.010, 1, 10.0)  # b silent for ~0.2 s: gone
    assert share.version != version and share.total() is None


def test_a_rate_that_moves_is_followed():
    """The period is a moving average of the gaps: an app that slows from 100 to 25 fps needs a
    quarter of the share once its average has followed."""
    share = GpuShare(len(GPU_MS))
    for k in range(8):
        share.note("a", k * 0.010, GPU_MS, 10.0)
        share.note("b", k * 0.010 + 0.005, GPU_MS, 10.0)
    before = share.total().copy()
    t = 0.075
    for _ in range(40):  # a every 40 ms, b still every 10 ms
        t += 0.040
        share.note("a", t, GPU_MS, 10.0)
        for j in range(4):
            share.note("b", t + 0.005 + j * 0.010, GPU_MS, 10.0)
    after = share.total()
    np.testing.assert_allclose(after - GPU_MS / 10.0, (before - GPU_MS / 10.0) / 4, rtol=0.06)


def test_apps_gone_quiet_stop_counting_before_the_next_decision():
    """``tick`` (called before each decision) lets quiet apps go without waiting for a frame to be
    noted: the decision right after a quiet spell is not held back by apps that stopped."""
    share = GpuShare(len(GPU_MS))
    feed(share, "a", 0.0, 0.010, 6, 10.0)
    end = feed(share, "b", 0.005, 0.010, 6, 10.0)
    share.tick(end + 0.05)
    assert share.total() is not None  # within their stale time (0.1 s at least)
    share.tick(end + 0.2)
    assert share.total() is None
