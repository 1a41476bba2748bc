"""The Pareto-frontier decision (governor/frontier.py) chooses exactly what the brute force chooses:
random grids, masks, ties, points in force on and off the grid, transition costs and hysteresis;
then the real governor on the virtual board, with and without the frontier, frame by frame."""

from __future__ import annotations

import numpy as np
import pytest

from governor.app import fit_on_virtual_board
from governor.configs import load_board
from governor.core import Governor
from governor.frontier import Frontier, GridGeometry, choose_brute
from sysfs_backends.virtual.board import VirtualBoard


def random_case(rng: np.random.Generator):
    n_dom = int(rng.integers(1, 3))
    tables = [np.sort(rng.choice(np.arange(100, 3000, 100), size=int(rng.integers(1, 9)), replace=False))
              for _ in range(n_dom)]
    mesh = np.meshgrid(*tables, indexing="ij")
    points = np.stack([m.ravel() for m in mesh], axis=1).astype(np.int64)
    n = len(points)
    # latencies and energies with deliberate ties (few distinct values) half of the time
    if rng.random() < 0.5:
        lat = rng.choice(rng.uniform(1, 20, size=4), size=n)
        energy = rng.choice(rng.uniform(1, 50, size=3), size=n)
    else:
        lat = rng.uniform(1, 20, size=n)
        energy = rng.uniform(1, 50, size=n)
        if rng.random() < 0.3:  # the no-power-table ranking: sum of normalised frequencies
            energy = (points / points.max(axis=0)).sum(axis=1)
    allowed = rng.random(n) < rng.uniform(0.2, 1.0)
    if not allowed.any():
        allowed[:] = True  # the governor's rule for an empty mask
    if rng.random() < 0.8:
        cur = tuple(int(v) for v in points[int(rng.integers(n))])
    else:  # the kernel shows a frequency off the estimator's table in some domain
        cur = tuple(int(v) + int(rng.integers(0, 2)) * 50 for v in points[int(rng.integers(n))])
    cur_index = 0
    for value, table in zip(cur, tables, strict=True):
        cur_index = cur_index * len(table) + min(int(np.searchsorted(table, value)), len(table) - 1)
    costs = tuple(float(rng.choice([0.0, 0.02, 0.2, rng.uniform(0, 3)])) for _ in range(n_dom))
    corr = float(rng.uniform(0.5, 2.0))
    deadline = float(rng.uniform(0.5, 25)) if rng.random() < 0.8 else float(lat[int(rng.integers(n))] * corr)
    hyst = float(rng.choice([0.0, 0.03, rng.uniform(0, 0.5)]))
    return points, lat, energy, allowed, corr, deadline, cur_index, cur, costs, hyst


def test_frontier_matches_brute_force_on_random_grids_masks_and_ties():
    rng = np.random.default_rng(11)
    for case in range(4000):
        points, lat, energy, allowed, corr, deadline, cur_index, cur, costs, hyst = random_case(rng)
        front = Frontier(GridGeometry(points), lat, energy, allowed)
        expected = choose_brute(points, lat, energy, allowed, corr, deadline, cur_index, cur, costs, hyst)
        got = front.choose(corr, deadline, cur_index, cur, costs, hyst)
        assert got == expected, f"case {case}: frontier {got} != brute force {expected}"
        # one frontier serves every deadline and factor (what makes it cacheable)
        for _ in range(5):
            c2, d2 = float(rng.uniform(0.5, 2.0)), float(rng.uniform(0.5, 25))
            assert front.choose(c2, d2, cur_index, cur, costs, hyst) == \
                choose_brute(points, lat, energy, allowed, c2, d2, cur_index, cur, costs, hyst), case


def test_frontier_is_sorted_by_latency_with_energy_decreasing_and_dominates_every_allowed_point():
    rng = np.random.default_rng(5)
    for _ in range(300):
        points, lat, energy, allowed, *_ = random_case(rng)
        front = Frontier(GridGeometry(points), lat, energy, allowed)
        assert front.f_lat == sorted(front.f_lat)
        assert all(a >= b for a, b in zip(front.f_energy, front.f_energy[1:], strict=False))
        assert all(allowed[i] for i in front.f_index)
        for i in np.flatnonzero(allowed):  # nothing allowed is both faster-or-equal and cheaper
            k = max(j for j, fl in enumerate(front.f_lat) if fl <= lat[i]) if front.f_lat[0] <= lat[i] else None
            assert k is not None and front.f_energy[k] <= energy[i]


def test_a_deadline_exactly_at_a_latency_is_met_as_the_brute_force_meets_it():
    points = np.array([[100], [200], [300]])
    lat = np.array([0.1 * 3, 0.2, 0.1])  # 0.30000000000000004: rounding at the boundary
    energy = np.array([1.0, 2.0, 3.0])
    front = Frontier(GridGeometry(points), lat, energy, np.ones(3, bool))
    for deadline in (0.3, float(lat[0]), 0.2, 0.1, 0.05):
        for corr in (1.0, 1 / 3, 3.0, 0.1):
            assert front.choose(corr, deadline, 2, (300,), (0.0,), 0.0) == \
                choose_brute(points, lat, energy, np.ones(3, bool), corr, deadline, 2, (300,), (0.0,), 0.0)


@pytest.fixture(scope="module")
def yolo():
    board = load_board("sd888_phone")
    return board, fit_on_virtual_board(board, "yolo_tiny")


def test_the_governor_decides_as_before_frame_by_frame(tmp_path, yolo, monkeypatch):
    """Two governors on two virtual boards, one deciding by the frontier, the other by the brute
    force, fed the same deadlines and measured latencies: the same pair on every frame."""
    board, est = yolo
    govs = []
    for name in ("fast", "brute"):
        vb = VirtualBoard(tmp_path / name, board)
        govs.append(Governor(vb.backend(tmp_path / f"{name}.json"), board, {"yolo": est}))
    fast, brute = govs
    monkeypatch.setattr(brute, "_frontiers_for", lambda grid, level: None)  # the numpy path
    rng = np.random.default_rng(3)
    deadline = 20.0
    with fast, brute:
        for i in range(600):
            if i % 50 == 0:
                deadline = float(rng.choice([8.0, 12.0, 20.0, 35.0]))
            slow = 1.0 + (0.4 if 200 <= i < 300 else 0.0)  # a load phase: the correction moves
            got = []
            for gov in (fast, brute):
                d = gov.before_frame("yolo", deadline, app="cam")
                got.append((d.cpu_khz, d.gpu_hz, d.feasible, d.changed, d.predicted_ms))
            assert got[0] == got[1], f"frame {i}"
            measured = got[0][4] * slow * float(rng.uniform(0.85, 1.02))
            for gov in (fast, brute):
                gov.after_frame(i + 1, measured)
