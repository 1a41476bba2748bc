"""The reference policies replay a governed run's frames over every domain the board has."""

from __future__ import annotations

import numpy as np
import pytest

from dvfs_schema.loading import load_board, load_model_spec
from governor.baselines import FrameTrace, all_baselines, oracle, oracle_target, performance
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
