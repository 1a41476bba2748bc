"""The reference policies replay a governed run's frames over every domain the board has."""

from __future__ import annotations

import numpy as np
import pytest

from dvfs_schema.loading import load_board, load_model_spec
from governor.baselines import (
    FrameTrace,
    NoiseQuantiles,
    PointGrid,
    all_baselines,
    joint_frames,
    noise_quantile,
    oracle,
    oracle_joint,
    oracle_target,
    performance,
)
from sysfs_backends.virtual.simulator import Simulator


def frames_at(board, sim, point, deadline_ms, n=12, capped=False):
    out = []
    for k in range(n):
        r = sim.run(point["cpu"], point.get("gpu"), None, np.random.default_rng(k), mem_hz=point.get("mem"))
        e = board.frame_energy_j(point["cpu"], point.get("gpu"), r.host_busy_ns, r.gpu_busy_ns, r.latency_ns,
                                 mem_hz=point.get("mem"))
        out.append(FrameTrace(t_s=k * 0.033, deadline_ms=deadline_ms, period_ms=33.3, context_len=None,
                              background_load=0.0, capped=capped, seed=k, cpu_khz=point["cpu"],
                              gpu_hz=point.get("gpu"), mem_hz=point.get("mem"),
                              latency_ms=float(r.latency_ns[0]) / 1e6, energy_j=float(e[0])))
    return out


@pytest.mark.parametrize("board_name", ["sd888_phone", "rk3588", "orin_nano"])
def test_oracle_searches_the_memory_clock_too(board_name):
    board = load_board(board_name)
    assert "mem" in board.domain_tables
    sim = Simulator(board, load_model_spec("yolo_tiny"))
    top = {name: table[-1] for name, table in board.domain_tables.items()}
    fastest = float(sim.run(top["cpu"], top.get("gpu"), None, None, mem_hz=top["mem"]).latency_ns[0]) / 1e6
    frames = frames_at(board, sim, top, 1.6 * fastest)
    with_mem = oracle(board, sim, frames)
    # the cheapest point with the memory held at its top (what a CPU x GPU oracle would find)
    t = board.domain_tables
    c, g = (a.ravel() for a in np.meshgrid(t["cpu"], t.get("gpu", [0]), indexing="ij"))
    gpu = g if "gpu" in t else None
    r = sim.run(c, gpu, None, None, mem_hz=top["mem"])
    e = board.frame_energy_j(c, gpu, r.host_busy_ns, r.gpu_busy_ns, r.latency_ns, mem_hz=top["mem"])
    at_top_mem = float(np.min(np.where(r.latency_ns / 1e6 <= frames[0].deadline_ms, e, np.inf))) * len(frames)
    # the memory clock is one more way to save: never dearer than the memory held at its top
    assert with_mem.misses == 0 and with_mem.energy_j < at_top_mem - 1e-3
    assert with_mem.energy_j < performance(board, sim, frames).energy_j


def test_oracle_pick_is_the_cheapest_point_of_the_whole_grid():
    board = load_board("sd888_phone")
    sim = Simulator(board, load_model_spec("yolo_tiny"))
    t = board.domain_tables
    top = {name: table[-1] for name, table in t.items()}
    fastest = float(sim.run(top["cpu"], top["gpu"], None, None, mem_hz=top["mem"]).latency_ns[0]) / 1e6
    frame = frames_at(board, sim, top, 1.3 * fastest, n=1)
    best = np.inf
    for c in t["cpu"][::3] + [t["cpu"][-1]]:  # an independent search over a sub-grid bounds the oracle
        for g in t["gpu"]:
            for m in t["mem"]:
                r = sim.run(c, g, None, None, mem_hz=m)
                if r.latency_ns[0] / 1e6 <= frame[0].deadline_ms:
                    best = min(best, float(board.frame_energy_j(c, g, r.host_busy_ns, r.gpu_busy_ns,
                                                                r.latency_ns, mem_hz=m)[0]))
    assert oracle(board, sim, frame).energy_j <= round(best, 4) + 1e-4


def test_thermal_cap_bounds_every_policy_and_boards_with_one_domain_work():
    board = load_board("sd888_phone")
    sim = Simulator(board, load_model_spec("yolo_tiny"))
    top = {name: table[-1] for name, table in board.domain_tables.items()}
    uncapped = frames_at(board, sim, top, 25.0, n=4)
    capped = frames_at(board, sim, top, 25.0, n=4, capped=True)
    assert performance(board, sim, capped).energy_j < performance(board, sim, uncapped).energy_j
    one = load_board("rpi5")
    sim1 = Simulator(one, load_model_spec("yolo_tiny"))
    res = all_baselines(one, sim1, frames_at(one, sim1, {"cpu": one.domain_tables["cpu"][-1]}, 500.0, n=3))
    assert set(res) == {"performance", "ondemand", "oracle"} and res["oracle"]["energy_j"] > 0


def test_the_oracle_at_the_miss_target_leaves_room_for_the_noise():
    """The fair reference for a governor with a miss target: it pays for the noise's quantile, so
    it costs at least the noise-free oracle, more the stricter the target, and with each frame's
    real noise it is late far less often than the noise-free oracle's picks would be."""
    board = load_board("sd888_phone")
    sim = Simulator(board, load_model_spec("yolo_tiny"))
    top = {name: table[-1] for name, table in board.domain_tables.items()}
    fastest = float(sim.run(top["cpu"], top["gpu"], None, None, mem_hz=top["mem"]).latency_ns[0]) / 1e6
    frames = frames_at(board, sim, top, 1.3 * fastest, n=200)
    free = oracle(board, sim, frames)
    loose, strict = oracle_target(board, sim, frames, 0.2), oracle_target(board, sim, frames, 0.01)
    assert free.energy_j < loose.energy_j < strict.energy_j
    assert free.misses_with_noise > 40 and strict.misses <= 6 < free.misses_with_noise
    assert set(all_baselines(board, sim, frames[:3], 0.01)) == {"performance", "ondemand", "oracle", "oracle_target"}
    # a tail the caller gives (no grid of its own): no room for noise plans as the noise-free oracle
    flat = NoiseQuantiles.given(np.ones(len(PointGrid(board, sim).c)))
    none = oracle_target(board, sim, frames, 0.01, quantiles=flat)
    assert none.energy_j == pytest.approx(free.energy_j, abs=1e-4)


def _trace(deadline_ms, start_ms, noise=1.0, ctx=None):
    return FrameTrace(t_s=0.0, deadline_ms=deadline_ms, period_ms=0.0, context_len=ctx, background_load=0.0,
                      capped=False, seed=0, cpu_khz=0, gpu_hz=0, latency_ms=0.0, energy_j=0.0,
                      start_ns=int(start_ms * 1e6), noise=noise)


def test_the_joint_oracle_of_one_app_whose_frames_never_overlap_is_the_per_frame_oracle():
    board = load_board("sd888_phone")
    sim = Simulator(board, load_model_spec("yolo_tiny"))
    top = {name: table[-1] for name, table in board.domain_tables.items()}
    fastest = float(sim.run(top["cpu"], top["gpu"], None, None, mem_hz=top["mem"]).latency_ns[0]) / 1e6
    # deadlines from tight to slack, one frame per 100 ms: each frame alone on the board
    frames = [_trace(fastest * f, 100.0 * k) for k, f in enumerate((1.05, 1.2, 1.6, 2.5, 4.0))]
    per_frame = oracle(board, sim, frames)
    (joint,) = oracle_joint(board, [(sim, frames)], None)
    assert joint.misses == per_frame.misses == 0
    assert joint.energy_j == pytest.approx(per_frame.energy_j, abs=1e-4)  # (rounded there to 0.1 mJ)


def test_one_point_for_overlapping_frames_costs_more_and_serves_both():
    board = load_board("sd888_phone")
    det, lm = (Simulator(board, load_model_spec(m)) for m in ("yolo_tiny", "smollm_135m"))
    top = {name: table[-1] for name, table in board.domain_tables.items()}

    def fastest(sim, ctx=None):
        r = sim.run(top["cpu"], top["gpu"], ctx, None, mem_hz=top["mem"])
        return float(r.latency_ns[0]) / 1e6, float(r.gpu_busy_ns[0]) / 1e6

    (d_lat, d_gpu), (l_lat, l_gpu) = fastest(det), fastest(lm, 256)
    # both apps start a frame together every 100 ms; each deadline leaves room for the other's GPU work
    dets = [_trace(1.6 * (d_lat + l_gpu), 100.0 * k) for k in range(4)]
    lms = [_trace(1.6 * (l_lat + d_gpu), 100.0 * k + 0.5, ctx=256) for k in range(4)]
    joint = oracle_joint(board, [(det, dets), (lm, lms)], None)
    per_app = [oracle_joint(board, [(det, dets)], None)[0], oracle_joint(board, [(lm, lms)], None)[0]]
    per_frame = [oracle(board, det, dets), oracle(board, lm, lms)]
    for j, alone, pf in zip(joint, per_app, per_frame, strict=True):
        assert j.misses == 0 and j.frames == 4
        assert alone.energy_j == pytest.approx(pf.energy_j, abs=1e-4)  # alone: the per-frame oracle
    # one point at a time, and the second frame waits for the first's GPU work: dearer than each alone
    assert sum(j.energy_j for j in joint) > sum(a.energy_j for a in per_app) * 1.02
    # planned at a noise quantile above the noise the frames had, none is late either
    noisy = oracle_joint(board, [(det, dets), (lm, lms)], 0.01,
                         quantiles=[NoiseQuantiles.given(np.full(len(board.domain_tables["cpu"])
                                                                 * len(board.domain_tables["gpu"])
                                                                 * len(board.domain_tables["mem"]), 1.05))] * 2)
    assert all(j.misses == 0 for j in noisy)
    assert sum(j.energy_j for j in noisy) >= sum(j.energy_j for j in joint)


def test_the_noise_tail_is_taken_at_the_load_the_frames_ran_under():
    """The reference at a miss target plans with the (1 - target) quantile of the noise. Under
    background load the host's outliers land on the critical path and the tail grows; planned with
    the no-load tail, the reference missed several times its target in a load phase. Fresh frames
    (another seed) at load 0.6 exceed the load's own quantile about as often as the target says,
    and the no-load one far more often."""
    board = load_board("sd888_phone")
    grid = PointGrid(board, Simulator(board, load_model_spec("mobilenet_v2")))
    target, load = 0.01, 0.6
    qs = NoiseQuantiles(grid, None, target)
    base, _ = grid.at(None, load)
    rng = np.random.default_rng(7)
    fresh = np.stack([grid.run(grid.c, grid.g, grid.m, None, load, rng)[0].latency_ns / 1e6 / base
                      for _ in range(400)])
    over_own = (fresh > qs.at(load)).mean(axis=0)
    over_idle = (fresh > qs.at(0.0)).mean(axis=0)
    assert np.median(over_own) <= 2 * target
    assert np.quantile(over_own, 0.9) <= 3 * target
    assert np.quantile(over_idle, 0.9) >= 3 * target  # the tail without load is not the tail under it
    assert qs.at(load) is qs.at(0.6000001)  # taken once per load
    assert np.array_equal(qs.at(0.0), noise_quantile(grid, None, target))


def test_the_causal_reference_plans_each_frame_with_what_its_app_last_ran_under():
    """``joint_frames(causal=True)`` plans a frame with its app's previous frame's slowdown and load:
    a burst's first frame (slowdown 1.35) is planned as an ordinary one and is late, the second is
    planned for the burst and is not; the plain replay sees the burst coming and misses neither.
    Where nothing changes from frame to frame the two are the same replay."""
    board = load_board("sd888_phone")
    sim = Simulator(board, load_model_spec("yolo_tiny"))
    top = {name: table[-1] for name, table in board.domain_tables.items()}
    fastest = float(sim.run(top["cpu"], top["gpu"], None, None, mem_hz=top["mem"]).latency_ns[0]) / 1e6
    slows = (1.0, 1.0, 1.35, 1.35, 1.35, 1.0, 1.0)
    frames = [_trace(1.6 * fastest, 100.0 * k) for k in range(len(slows))]
    for f, s in zip(frames, slows, strict=True):
        f.slowdown = s
    (plain_frames,) = joint_frames(board, [(sim, frames)], None)
    (causal_frames,) = joint_frames(board, [(sim, frames)], None, causal=True)
    plain_e, plain = (list(x) for x in zip(*plain_frames, strict=True))
    causal_e, causal = (list(x) for x in zip(*causal_frames, strict=True))
    assert plain == [False] * len(slows)
    assert causal == [False, False, True, False, False, False, False]
    # the burst's first frame ran at the ordinary point (cheaper, late); after the burst the causal
    # one still plans for it (dearer, in time); elsewhere the same point
    assert causal_e[2] < plain_e[2] and causal_e[5] > plain_e[5]
    assert causal_e[:2] == plain_e[:2] and causal_e[3:5] == plain_e[3:5] and causal_e[6] == plain_e[6]
    steady = [_trace(1.6 * fastest, 100.0 * k) for k in range(4)]
    assert joint_frames(board, [(sim, steady)], 0.01, causal=True) == joint_frames(board, [(sim, steady)], 0.01)
